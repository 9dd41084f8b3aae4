"""Tools on their own: schemas from typed signatures, the sandbox's limits, the fetch allow-list,
the calculator's refusals."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import Field

from llmforge.agents import ToolContext, ToolResult, tool
from llmforge.agents.calculator import CalculationError, evaluate
from llmforge.agents.fetch import Fetcher
from llmforge.agents.sandbox import Sandbox, describe
from llmforge.core.config import FetchConfig, SandboxConfig


def _context(tmp_path: Path) -> ToolContext:
    return ToolContext(run_id="r1", thread_id="t1", user_id="u1", scratch=tmp_path)


async def test_schema_comes_from_the_typed_signature(tmp_path: Path) -> None:
    @tool
    def book(
        city: Annotated[str, Field(description="where to")],
        nights: int,
        context: ToolContext,
        room: Literal["single", "double"] = "single",
    ) -> str:
        """Book a hotel room.

        Args:
            nights: how many nights to stay
        """
        return f"{context.user_id}: {nights} x {room} in {city}"

    assert book.name == "book" and book.description == "Book a hotel room."
    assert book.parameters == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "city": {"type": "string", "description": "where to"},
            "nights": {"type": "integer", "description": "how many nights to stay"},
            "room": {"type": "string", "enum": ["single", "double"], "default": "single"},
        },
        "required": ["city", "nights"],
    }
    ok = await book.call({"city": "Oslo", "nights": 2}, _context(tmp_path))
    assert ok == ToolResult(text="u1: 2 x single in Oslo")
    bad = await book.call({"city": "Oslo", "nights": "two", "extra": 1}, _context(tmp_path))
    assert bad.is_error and "nights" in bad.text and "extra" in bad.text


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bool]]]:
    """A TCP port on 127.0.0.1 that records whether anything connected."""
    connected: list[bool] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                connected.append(True)
                conn.close()
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], connected
    stop.set()
    thread.join()
    server.close()


async def test_sandbox_refuses_the_network(
    tmp_path: Path, listener: tuple[int, list[bool]]
) -> None:
    port, connected = listener
    sandbox = Sandbox(SandboxConfig(scratch=str(tmp_path)))
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
    run = await sandbox.run(code, sandbox.folder("r1"))
    assert run.exit_code == 1 and "PermissionError: sandbox: network access" in run.output
    sub = "import subprocess\nsubprocess.run(['curl', 'http://127.0.0.1'])\n"
    refused = await sandbox.run(sub, sandbox.folder("r1"))
    assert "subprocess.Popen is not allowed" in refused.output
    assert connected == []


async def test_sandbox_kills_runaway_scripts(tmp_path: Path) -> None:
    config = SandboxConfig(scratch=str(tmp_path), cpu_s=1, wall_s=2, memory_mb=128)
    sandbox = Sandbox(config)
    folder = sandbox.folder("r1")
    started = time.monotonic()
    busy = await sandbox.run("while True:\n    pass\n", folder)
    assert busy.killed == "cpu" and time.monotonic() - started < 5
    assert "CPU-time limit of 1 s" in describe(busy, config).text
    asleep = await sandbox.run("import time\ntime.sleep(60)\n", folder)
    assert asleep.killed == "wall"
    hungry = await sandbox.run("x = bytearray(1024 ** 3)\n", folder)
    assert hungry.exit_code == 1 and "MemoryError" in hungry.output
    assert time.monotonic() - started < 12


async def test_sandbox_keeps_a_scratch_folder_per_run(tmp_path: Path) -> None:
    config = SandboxConfig(scratch=str(tmp_path), max_output_chars=100)
    sandbox = Sandbox(config)
    await sandbox.run("open('notes.txt', 'w').write('kept')", sandbox.folder("r1"))
    again = await sandbox.run("print(open('notes.txt').read())", sandbox.folder("r1"))
    assert again.output == "kept\n" and (tmp_path / "r1" / "notes.txt").exists()
    other = await sandbox.run("import os; print(os.listdir('.'))", sandbox.folder("r2"))
    assert other.output == "[]\n"
    loud = await sandbox.run("print('x' * 10_000)", sandbox.folder("r1"))
    assert loud.truncated and len(loud.output) == 100


class _Pages(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/away":
            self.send_response(302)
            self.send_header("location", "http://example.com/")
            self.end_headers()
            return
        body = b"<html><script>x()</script><h1>Title</h1><p>Hello &amp; welcome</p></html>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def pages() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_fetch_reads_allowed_hosts_only(pages: str) -> None:
    fetcher = Fetcher(FetchConfig(allow=["127.0.0.1"]))
    page = await fetcher.get(pages + "/")
    assert not page.is_error and page.text.splitlines()[1:] == ["Title", "Hello & welcome"]
    away = await fetcher.get(pages + "/away")
    assert away.is_error and "example.com/, which is not on the allow-list" in away.text
    closed = await Fetcher(FetchConfig(allow=["*.example.org"])).get(pages + "/")
    assert closed.is_error and "not on the allow-list" in closed.text
    scheme = await fetcher.get("file:///etc/passwd")
    assert scheme.is_error


def test_calculator_computes_and_refuses_everything_else() -> None:
    assert evaluate("(17 * 23) + sqrt(16)") == 395.0
    assert evaluate("2^10") == 1024
    for bad in ("__import__('os')", "9 ** 99999999", "1 / 0", "x + 1", "().__class__"):
        with pytest.raises(CalculationError):
            evaluate(bad)
