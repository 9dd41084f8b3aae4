"""Provider `vllm` with a local `path`: LLMForge starts `vllm serve` as a managed process and
answers through it. With a fake `vllm` executable (tests/fakes/vllm_cli.py: vLLM's command line,
`/health` and OpenAI API): the model answers through a real gateway, whole and streamed, with the
command line the config asks for; a vLLM killed with SIGKILL is restarted and the next call
succeeds; nothing is left running after shutdown, even when LLMForge itself is killed; a path that
is not a local folder, a missing executable and a vLLM that cannot start are errors that say how to
fix them. One `gpu` test starts a real vLLM on a small local model (LLMFORGE_TEST_VLLM_MODEL)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmforge.core.config import ModelConfig
from llmforge.core.errors import ConfigError
from llmforge.core.settings import load_settings
from llmforge.core.types import Message, Sampling
from llmforge.gateway import create_app
from llmforge.models import chat_models, collect
from llmforge.models import vllm as vllm_module
from llmforge.models.openai_compat import OpenAICompatChatModel
from llmforge.models.vllm import ManagedVllmChatModel, create
from tests.fakes.server import serve
from tests.models.processes import assert_engine_dies_with_its_parent, gone, group_gone

ROOT = Path(__file__).resolve().parents[2]
REAL_MODEL_ENV = "LLMFORGE_TEST_VLLM_MODEL"
HELLO = [Message(role="user", content="hello from the gateway")]


def fake_vllm(where: Path) -> Path:
    """An executable named `vllm` that runs tests/fakes/vllm_cli.py with this Python."""
    exe = where / "vllm"
    exe.write_text(
        f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m tests.fakes.vllm_cli "$@"\n',
        encoding="utf-8",
    )
    exe.chmod(0o755)
    return exe


def weights(where: Path) -> Path:
    """A folder shaped like Hugging Face weights (the fake reads only config.json)."""
    folder = where / "tiny-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    return folder


def vllm_config(folder: Path, exe: Path | None, **overrides: object) -> ModelConfig:
    fields: dict[str, object] = {
        "name": "gpu-chat",
        "provider": "vllm",
        "path": str(folder),
        "context_length": 2048,
        "timeout_s": 30,
        "vllm": {
            "binary": str(exe) if exe else None,
            "tensor_parallel_size": 1,
            "gpu_memory_utilization": 0.5,
            "args": ["--dtype", "half"],
            "start_timeout_s": 60,
        },
        **overrides,
    }
    return ModelConfig.model_validate(fields)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("vllm")
    config = vllm_config(weights(tmp), fake_vllm(tmp))
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp / 'gw.db'}",
        models=[config.model_dump(exclude_none=True)],
        embeddings=[],
        server={"preload": True},
    )
    with serve(create_app(settings)) as base:
        yield base


def _chat(base: str, **more: object) -> httpx.Response:
    body = {
        "model": "gpu-chat",
        "messages": [{"role": "user", "content": "hello from the gateway"}],
        **more,
    }
    return httpx.post(base + "/v1/chat/completions", json=body, timeout=60)


def test_the_model_answers_through_the_gateway_whole_and_streamed(gateway: str) -> None:
    whole = _chat(gateway)
    assert whole.status_code == 200, whole.text
    assert whole.json()["choices"][0]["message"]["content"] == "hello from the gateway"

    body = {
        "model": "gpu-chat",
        "messages": [{"role": "user", "content": "hello from the gateway"}],
        "stream": True,
    }
    with httpx.stream("POST", gateway + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    pieces = [json.loads(e)["choices"] for e in events[:-1]]
    text = "".join(c[0]["delta"].get("content") or "" for c in pieces if c)
    assert text == "hello from the gateway"

    engine = _engine_pid()
    environ = _read(Path(f"/proc/{engine}/environ")).split("\x00")
    assert "HF_HUB_OFFLINE=1" in environ  # vLLM never downloads
    args = _cmdline(engine)
    assert args[1] == "serve" and Path(args[2]).name == "tiny-model", args
    for flag, value in [
        ("--host", "127.0.0.1"),
        ("--served-model-name", "gpu-chat"),
        ("--tensor-parallel-size", "1"),
        ("--max-model-len", "2048"),
        ("--gpu-memory-utilization", "0.5"),
        ("--dtype", "half"),
    ]:
        assert args[args.index(flag) + 1] == value, args


def test_a_killed_vllm_is_restarted_and_the_next_call_succeeds(gateway: str) -> None:
    assert _chat(gateway).status_code == 200
    engine = _engine_pid()
    os.kill(engine, signal.SIGKILL)
    after = _chat(gateway)
    assert after.status_code == 200, after.text
    assert after.json()["choices"][0]["message"]["content"] == "hello from the gateway"
    assert _engine_pid() != engine and gone(engine)


def test_gateway_shutdown_leaves_no_vllm_process(tmp_path: Path) -> None:
    config = vllm_config(weights(tmp_path), fake_vllm(tmp_path), name="short-lived")
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp_path / 'gw.db'}",
        models=[config.model_dump(exclude_none=True)],
        embeddings=[],
        server={"preload": True},
    )
    with serve(create_app(settings)) as base:
        ask = {"model": "short-lived", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(base + "/v1/chat/completions", json=ask, timeout=60).status_code == 200
        engine = _engine_pid("short-lived")
    assert group_gone(engine), f"vLLM {engine} (or its children) outlived the gateway"


async def test_a_closed_model_leaves_no_process_and_answers_text_too(tmp_path: Path) -> None:
    model = create(vllm_config(weights(tmp_path), fake_vllm(tmp_path)))
    assert isinstance(model, ManagedVllmChatModel)
    await model.load()
    pid = model.process.pid
    assert pid is not None and not gone(pid)
    streamed = await collect(model.stream(HELLO, Sampling(max_tokens=2)))
    assert streamed.text == "hello from" and streamed.finish_reason == "length"
    raw = await collect(model.stream_text("continue this", Sampling()))
    assert raw.text
    await model.aclose()
    assert group_gone(pid)


def test_a_killed_llmforge_leaves_no_vllm_behind(tmp_path: Path) -> None:
    config = vllm_config(weights(tmp_path), fake_vllm(tmp_path))
    script = (
        "import asyncio, sys\n"
        "from llmforge.core.config import ModelConfig\n"
        "from llmforge.models.vllm import create\n"
        "async def main():\n"
        "    m = create(ModelConfig.model_validate_json(sys.argv[1]))\n"
        "    await m.load()\n"
        "    print(m.process.pid, flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    assert_engine_dies_with_its_parent(script, config.model_dump_json(), what="vLLM", cwd=ROOT)


def test_a_path_that_is_not_a_local_folder_is_refused_saying_how_to_fix_it(
    tmp_path: Path,
) -> None:
    exe = fake_vllm(tmp_path)
    with pytest.raises(ConfigError, match=r"not a folder.*never downloads.*--local-dir"):
        create(vllm_config(Path("Qwen/Qwen2.5-0.5B-Instruct"), exe))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"no config.json"):
        create(vllm_config(empty, exe))
    both = vllm_config(weights(tmp_path), exe, base_url="http://gpu:8000/v1")
    with pytest.raises(ConfigError, match=r"`path`.*or `base_url`.*not both"):
        create(both)


async def test_a_missing_vllm_executable_is_a_clear_error_at_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = weights(tmp_path)
    configured = create(vllm_config(folder, tmp_path / "nope" / "vllm"))  # no error yet
    with pytest.raises(ConfigError, match=r"vllm\.binary '.*nope/vllm' is not an executable"):
        await configured.complete(HELLO, Sampling())
    await configured.aclose()

    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    monkeypatch.setattr(vllm_module, "PYTHON_BIN", tmp_path / "nothing-here")
    unset = create(vllm_config(folder, None))
    assert isinstance(unset, ManagedVllmChatModel)
    with pytest.raises(ConfigError, match=r"needs the `vllm` executable.*pip install vllm"):
        await unset.load()
    await unset.aclose()


async def test_a_vllm_that_cannot_start_says_why(tmp_path: Path) -> None:
    config = vllm_config(
        weights(tmp_path),
        fake_vllm(tmp_path),
        vllm={"binary": str(fake_vllm(tmp_path)), "args": ["--port", "not-a-port"]},
    )
    model = create(config)
    assert isinstance(model, ManagedVllmChatModel)
    try:
        with pytest.raises(ConfigError, match=r"vLLM exited with exit code 2.*not-a-port"):
            await model.load()
    finally:
        await model.aclose()


def test_without_a_path_vllm_is_a_server_you_run() -> None:
    remote = ModelConfig(name="m", provider="vllm", base_url="http://gpu:8000/v1")
    assert isinstance(chat_models.get("vllm")(remote, None), OpenAICompatChatModel)  # type: ignore[arg-type]


@pytest.mark.gpu
async def test_a_real_vllm_on_a_small_local_model_answers_and_leaves_nothing_behind() -> None:
    folder = os.environ.get(REAL_MODEL_ENV)
    if not folder:
        pytest.skip(f"set {REAL_MODEL_ENV} to a local folder of a small HF chat model")
    config = ModelConfig.model_validate(
        {
            "name": "real-vllm",
            "provider": "vllm",
            "path": folder,
            "context_length": 2048,
            "timeout_s": 120,
            "vllm": {"gpu_memory_utilization": 0.4, "start_timeout_s": 900},
        }
    )
    try:
        vllm_module.binary(config)
    except ConfigError as e:
        pytest.skip(f"no vLLM here: {e.message}")
    model = create(config)
    assert isinstance(model, ManagedVllmChatModel)
    try:
        await model.load()
        pid = model.process.pid
        assert pid is not None
        ask = [Message(role="user", content="What is the capital of France? One word.")]
        greedy = Sampling(temperature=0, max_tokens=8)
        whole = await model.complete(ask, greedy)
        streamed = await collect(model.stream(ask, greedy))
        assert "Paris" in whole.text and streamed.text == whole.text
        assert whole.usage.prompt_tokens > 0 and whole.usage.completion_tokens > 0
    finally:
        await model.aclose()
    assert group_gone(pid)


def _engine_pid(name: str = "gpu-chat") -> int:
    """The healthy (fake) vLLM serving `name` among this process's children."""
    deadline = time.monotonic() + 30
    while True:
        children = {
            int(c)
            for task in Path(f"/proc/{os.getpid()}/task").iterdir()
            for c in _read(task / "children").split()
        }
        engines = [
            p
            for p in children
            if not gone(p) and f"--served-model-name\x00{name}\x00" in _raw_cmdline(p)
        ]
        if len(engines) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(engines) == 1, engines
    return engines[0]


def _raw_cmdline(pid: int) -> str:
    return _read(Path(f"/proc/{pid}/cmdline"))


def _read(path: Path) -> str:
    """A /proc file's text ("" once its process or thread is gone)."""
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _cmdline(pid: int) -> list[str]:
    """The command line as the executable `vllm` got it (after the fake's own interpreter)."""
    args = _raw_cmdline(pid).split("\x00")[:-1]
    start = args.index("tests.fakes.vllm_cli")
    return ["vllm", *args[start + 1 :]]
