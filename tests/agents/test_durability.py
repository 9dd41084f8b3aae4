"""Runs that outlive their server: an approval pause across a restart (on SQLite and PostgreSQL),
and a run killed with SIGKILL mid-step that the next server resumes without repeating finished
tool calls."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
import sqlalchemy as sa
import yaml

from llmforge.gateway import create_app
from tests.agents.conftest import agent_settings, events, start
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.reply import Call, Reply
from tests.fakes.server import free_port, serve


def test_approval_pause_survives_a_restart_and_resumes_on_approve(
    upstream: tuple[str, FakeOpenAI], tmp_path: Path, database_url: str
) -> None:
    """On SQLite and on PostgreSQL: runs, checkpoints (LangGraph's saver for each) and the audit
    log in the configured database."""
    base, fake = upstream
    fake.reset()
    settings = agent_settings(tmp_path, base).model_copy(update={"database": database_url})
    fake.respond(Reply(calls=(Call("python", '{"code": "print(6 * 6)"}'),)))
    with serve(create_app(settings)) as url:
        evs = start(url, "guarded", "compute something", thread_id="approve-me")
        assert evs[-1]["type"] == "approval_needed"
        run_id = evs[-1]["run_id"]
        assert evs[-1]["calls"] == [
            {
                "call_id": evs[-1]["calls"][0]["call_id"],
                "name": "python",
                "arguments": {"code": "print(6 * 6)"},
            }
        ]
    # a new server over the same database: the run is still pending
    fake.respond(Reply(text="The result is 42."))
    with serve(create_app(settings)) as url:
        pending = httpx.get(f"{url}/v1/agents/pending").json()["data"]
        assert [(p["id"], p["status"]) for p in pending] == [(run_id, "waiting_approval")]
        call_id = pending[0]["pending"][0]["call_id"]
        r = httpx.post(
            f"{url}/v1/agents/guarded/runs/{run_id}/approve",
            json={"arguments": {call_id: {"code": "print(6 * 7)"}}, "stream": True},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        after = events(r)
    result = next(e for e in after if e["type"] == "tool_result")
    assert result["text"].splitlines()[1] == "42"  # ran with the edited arguments
    assert after[-1]["status"] == "done" and after[-1]["output"] == "The result is 42."
    assert fake.requests[-1]["messages"][-1]["content"].endswith("42\n")
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:  # everything in the configured database (on PostgreSQL, the test's own schema)
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"agent_runs", "agent_events", "checkpoints"} <= tables


class _Counter(BaseHTTPRequestHandler):
    hits: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        _Counter.hits[self.path] = _Counter.hits.get(self.path, 0) + 1
        if self.path == "/slow" and _Counter.hits[self.path] == 1:
            time.sleep(60)  # the first time only: the server is killed meanwhile
        body = f"page {self.path}".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def counter() -> Iterator[str]:
    _Counter.hits = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _serve_process(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmforge", "serve", "--config", str(config), "--port", str(port)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code < 500:
                return proc
        except httpx.TransportError:
            pass
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError("server did not start: " + log.read_text())


def test_killed_run_resumes_from_its_checkpoint_without_repeating_tool_calls(
    upstream: tuple[str, FakeOpenAI], tmp_path: Path, counter: str
) -> None:
    base, fake = upstream
    fake.reset()
    settings = agent_settings(tmp_path, base)
    config = tmp_path / "llmforge.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude={"config_path"})))
    # step 1 fetches two pages: the first answers, the second hangs -> the server is killed
    # while the second is in flight; step 2 answers
    both = (
        Call("http_fetch", f'{{"url": "{counter}/fast"}}'),
        Call("http_fetch", f'{{"url": "{counter}/slow"}}'),
    )
    fake.respond(Reply(calls=both))
    port = free_port()
    log = tmp_path / "server.log"
    proc = _serve_process(config, port, log)
    url = f"http://127.0.0.1:{port}"
    try:

        def post() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server dies under it
                httpx.post(f"{url}/v1/agents/fetcher/runs", json={"input": "x"}, timeout=60)

        client = threading.Thread(target=post, daemon=True)
        client.start()
        deadline = time.monotonic() + 20
        while not _Counter.hits.get("/slow") and time.monotonic() < deadline:
            time.sleep(0.02)
        run_id = httpx.get(f"{url}/v1/agents/fetcher/runs").json()["data"][0]["id"]
        assert _Counter.hits == {"/fast": 1, "/slow": 1}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    fake.respond(Reply(text="Both fetched."))
    proc = _serve_process(config, port, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            run = httpx.get(f"{url}/v1/agents/fetcher/runs/{run_id}?events=true").json()
            if run["status"] != "running" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert run["status"] == "done", run
    assert run["output"] == "Both fetched."
    results = [e for e in run["events"] if e["type"] == "tool_result"]
    fast = [e for e in results if "/fast" in e["text"]]
    assert fast[-1]["replayed"] is True  # reused from the record, not fetched again
    assert _Counter.hits == {"/fast": 1, "/slow": 2}  # the unfinished GET (idempotent) again
    # the model got both results once, in order, and was asked exactly twice in all
    assert fake.calls == 2
    tool_messages = [m for m in fake.requests[-1]["messages"] if m["role"] == "tool"]
    assert [m["content"].split("\n")[0] for m in tool_messages] == [
        f"[200 {counter}/fast]",
        f"[200 {counter}/slow]",
    ]
