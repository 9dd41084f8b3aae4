"""The `llmforge` command as a user runs it: a real process, real config files, real exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.cli_process import llmforge
from tests.fakes.server import free_port

FAKE_CONFIG = """
database: sqlite:///{db}
models:
  - name: fake
    provider: fake
    responses: ["你好, from the fake model."]
  - name: local
    provider: llamacpp
    path: builtin:smollm2
    context_length: 1024
embeddings:
  - name: hash
    provider: fake
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "llmforge.yaml"
    path.write_text(FAKE_CONFIG.format(db=tmp_path / "cli.db"), encoding="utf-8")
    return path


def test_models_list_json(config: Path, tmp_path: Path) -> None:
    out = llmforge("models", "list", "--json", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["name"], r["kind"], r["provider"]) for r in rows] == [
        ("fake", "chat", "fake"),
        ("local", "chat", "llamacpp"),
        ("hash", "embedding", "fake"),
    ]


def test_chat_streams_the_answer_and_records_a_trace(config: Path, tmp_path: Path) -> None:
    out = llmforge("chat", "hello", "--model", "fake", cwd=tmp_path)  # ./llmforge.yaml is found
    assert out.returncode == 0, out.stderr
    assert out.stdout == "你好, from the fake model.\n"
    traces = llmforge("traces", "list", "--json", "--limit", "5", cwd=tmp_path)
    rows = json.loads(traces.stdout)
    assert len(rows) == 1
    assert rows[0]["model"] == "fake" and rows[0]["status"] == "ok" and rows[0]["stream"] is True
    assert rows[0]["request"]["messages"] == [{"role": "user", "content": "hello"}]
    table = llmforge("traces", "list", cwd=tmp_path)
    assert "fake" in table.stdout and "ok" in table.stdout


@pytest.mark.slow
def test_chat_with_the_local_model(config: Path, tmp_path: Path) -> None:
    out = llmforge(
        "chat",
        "What is the capital of France? One word.",
        "--model",
        "local",
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["chat", "hi", "--model", "nope"],
            "error: The model 'nope' does not exist. Known: fake, hash, local.",
        ),
        (
            ["models", "list", "--config", "missing.yaml"],
            "error: Config file 'missing.yaml' not found.",
        ),
    ],
)
def test_errors_are_one_line_with_exit_code_1(
    config: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = llmforge(*args, cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.startswith(message)
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_invalid_config_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "llmforge.yaml").write_text(
        "models:\n  - name: a\n    provider: fake\n    pth: x\n"
    )
    out = llmforge("models", "list", cwd=tmp_path)
    assert out.returncode == 1
    assert "llmforge.yaml: models[0].pth: unknown key" in out.stderr
    assert "Traceback" not in out.stderr
    debug = llmforge("--debug", "models", "list", cwd=tmp_path)
    assert "Traceback" in debug.stderr


def test_version_and_help(tmp_path: Path) -> None:
    assert llmforge("--version", cwd=tmp_path).stdout.strip() == "0.1.0"
    helptext = llmforge("--help", cwd=tmp_path).stdout
    for command in ("serve", "chat", "models", "traces"):
        assert command in helptext


def test_serve_starts_the_api_and_the_chat_page(config: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmforge", "serve", "--config", str(config), "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LLMFORGE_SERVER__PRELOAD": "false"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        page = httpx.get(base + "/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        reply = httpx.post(
            base + "/v1/chat/completions",
            json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert reply.json()["choices"][0]["message"]["content"] == "你好, from the fake model."
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/" in out
