"""A `llamacpp` model served by a managed llama-server (`parallel` > 1) with the real SmolLM2:
concurrent streams give the greedy answers they give alone, a long generation does not hold up short
ones, a later turn reuses its prefix, tool calls and JSON validate as in-process, a killed engine is
restarted while its calls in flight fail cleanly (an error event through the gateway), and nothing
is left running after shutdown, even when LLMForge itself is killed.

Skipped when llama-server is not built (`make llama-tools`; `make test` builds it), except under
CI=true, where that fails."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest
import pytest_asyncio

from llmforge.core.config import ModelConfig
from llmforge.core.errors import ConfigError, UpstreamError
from llmforge.core.settings import load_settings
from llmforge.core.types import Message, ResponseFormat, Sampling, Tool, ToolChoice
from llmforge.gateway import create_app
from llmforge.models import CompletionBuilder, collect
from llmforge.models import llama_server as llama_server_module
from llmforge.models.llama_served import ServedLlamaChatModel
from llmforge.models.llamacpp import LlamaCppChatModel, create
from tests.fakes.server import serve
from tests.models.processes import assert_engine_dies_with_its_parent, gone


def _require_binary() -> None:
    if llama_server_module.default_binary().is_file():
        return
    reason = (
        f"llama-server is not built ({llama_server_module.default_binary()}); "
        "run `make llama-tools` (make test builds it)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def served_config(**overrides: object) -> ModelConfig:
    """One thread: threads that wait for each other at every layer slow down many times over
    when the machine's cores are busy with other work."""
    fields: dict[str, object] = {
        "name": "local",
        "provider": "llamacpp",
        "path": "builtin:smollm2",
        "context_length": 2048,
        "threads": 1,
        "parallel": 4,
        "max_queue": 8,
        **overrides,
    }
    return ModelConfig.model_validate(fields)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def model() -> AsyncIterator[ServedLlamaChatModel]:
    _require_binary()
    m = create(served_config())
    assert isinstance(m, ServedLlamaChatModel)
    await m.load()
    yield m
    await m.aclose()


module = pytest.mark.asyncio(loop_scope="module")
pytestmark = [pytest.mark.slow]

GREEDY = Sampling(temperature=0, max_tokens=24)
ASKS = [[Message(role="user", content=f"Name an animal that starts with {c}.")] for c in "BCDS"]


@module
async def test_concurrent_streams_finish_with_the_same_greedy_text_as_alone(
    model: ServedLlamaChatModel,
) -> None:
    alone = [(await model.complete(ask, GREEDY)).text for ask in ASKS]
    firsts: list[float] = []
    ends: list[float] = []

    async def streamed(ask: list[Message]) -> str:
        parts = []
        async for delta in model.stream(ask, GREEDY):
            if not parts:
                firsts.append(time.perf_counter())
            parts.append(delta.text)
        ends.append(time.perf_counter())
        return "".join(parts)

    together = await asyncio.gather(*(streamed(ask) for ask in ASKS))
    assert together == alone and all(alone)
    assert max(firsts) < min(ends)  # decoded side by side, not one after another


@module
async def test_a_long_generation_does_not_hold_up_short_calls(
    model: ServedLlamaChatModel,
) -> None:
    story = [Message(role="user", content="Tell me a very long story about the sea.")]
    long = model.stream(story, Sampling(temperature=0, max_tokens=1500))
    await anext(long)
    started = time.perf_counter()
    short = await model.complete(ASKS[0], Sampling(temperature=0, max_tokens=8))
    took = time.perf_counter() - started
    still_going = await anext(long)  # the long answer is still being generated
    await long.aclose()
    assert short.text and still_going is not None
    assert took < 20, f"a short call waited {took:.1f}s behind a long one"


@module
async def test_a_later_turn_reuses_the_conversation_so_far(model: ServedLlamaChatModel) -> None:
    rules = " ".join(f"Rule {i}: answer briefly and politely, in English." for i in range(80))
    turn = [
        Message(role="system", content=f"Session {time.time_ns()}. {rules}"),
        Message(role="user", content="What colour is the sky?"),
    ]

    async def first_token(messages: list[Message]) -> tuple[float, str]:
        started = time.perf_counter()
        stream = model.stream(messages, Sampling(temperature=0, max_tokens=12))
        await anext(stream)
        ttft = time.perf_counter() - started
        rest = await collect(stream)
        return ttft, rest.text

    first, answer = await first_token(turn)
    turn += [
        Message(role="assistant", content=answer),
        Message(role="user", content="And the grass?"),
    ]
    second, _ = await first_token(turn)
    assert second < first / 2, f"turn 2 took {second:.2f}s to its first token, turn 1 {first:.2f}s"


WEATHER = Tool(
    name="get_weather",
    description="The weather in a city.",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
)
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
WEATHER_ASK = [Message(role="user", content="What is the weather in Paris?")]


@module
async def test_tool_calls_and_json_validate_as_in_process(model: ServedLlamaChatModel) -> None:
    forced = Sampling(
        temperature=0, max_tokens=80, tools=(WEATHER,), tool_choice=ToolChoice(mode="required")
    )
    answer = await model.complete(WEATHER_ASK, forced)
    assert answer.finish_reason == "tool_calls" and answer.tool_calls and answer.text == ""
    for call in answer.tool_calls:
        assert call.name == "get_weather" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.arguments), WEATHER.parameters)
    pieces = CompletionBuilder()
    async for delta in model.stream(WEATHER_ASK, forced):
        pieces.add(delta)
    streamed = pieces.result()
    assert [(c.name, c.arguments) for c in streamed.tool_calls] == [
        (c.name, c.arguments) for c in answer.tool_calls
    ]
    assert model.count_prompt_tokens(WEATHER_ASK, forced) == answer.usage.prompt_tokens

    fmt = ResponseFormat(type="json_schema", json_schema=PERSON, name="person", strict=True)
    describe = [Message(role="user", content="Describe a person as JSON.")]
    person = await model.complete(
        describe, Sampling(temperature=0, max_tokens=60, response_format=fmt)
    )
    assert person.finish_reason == "stop"
    jsonschema.validate(json.loads(person.text), PERSON)


@module
async def test_logprobs_n_stops_and_raw_text_work_as_in_process(
    model: ServedLlamaChatModel,
) -> None:
    capital = [Message(role="user", content="What is the capital of France? Answer in one word.")]
    sampling = Sampling(temperature=0, max_tokens=10, logprobs=True, top_logprobs=2)
    answer = await model.complete(capital, sampling)
    assert "Paris" in answer.text and answer.logprobs is not None
    assert len(answer.logprobs) == answer.usage.completion_tokens
    assert "".join(lp.token for lp in answer.logprobs) == answer.text
    for lp in answer.logprobs:
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 2
        assert lp.top_logprobs[0].token == lp.token  # greedy picks the most likely

    two = await model.complete(capital, Sampling(temperature=0, max_tokens=10, n=2))
    assert [c.text for c in two.choices()] == [answer.text, answer.text]
    assert two.usage.prompt_tokens == answer.usage.prompt_tokens
    assert two.usage.completion_tokens == 2 * answer.usage.completion_tokens

    cut = answer.text[2:5]
    stopped = await model.complete(capital, Sampling(temperature=0, max_tokens=10, stop=(cut,)))
    assert stopped.text == answer.text[: answer.text.index(cut)]
    assert stopped.finish_reason == "stop"

    raw = await collect(model.stream_text("The capital of France is", GREEDY))
    assert raw.text.startswith(" Paris") and raw.usage.prompt_tokens == 5


@module
async def test_a_killed_engine_is_restarted_and_its_call_fails_cleanly(
    model: ServedLlamaChatModel,
) -> None:
    pid = model.server.pid
    assert pid is not None
    story = [Message(role="user", content="Tell me a very long story about a dragon.")]
    stream = model.stream(story, Sampling(temperature=0, max_tokens=1500))
    await anext(stream)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(UpstreamError, match="llama-server engine"):
        async with asyncio.timeout(30):
            async for _ in stream:
                pass
    answer = await model.complete(ASKS[0], GREEDY)  # waits for the restarted process
    assert answer.text
    assert model.server.pid not in (None, pid)
    assert gone(pid)


async def test_shutdown_leaves_no_process() -> None:
    _require_binary()
    m = create(served_config(parallel=2))
    assert isinstance(m, ServedLlamaChatModel)
    await m.load()
    pid = m.server.pid
    assert pid is not None and not gone(pid)
    await m.aclose()
    assert gone(pid)


def test_a_killed_llmforge_leaves_no_engine_behind(tmp_path: Path) -> None:
    _require_binary()
    script = (
        "import asyncio, sys\n"
        "from llmforge.core.config import ModelConfig\n"
        "from llmforge.models.llamacpp import create\n"
        "async def main():\n"
        "    m = create(ModelConfig(name='x', provider='llamacpp', path='builtin:smollm2',\n"
        "                           context_length=256, threads=1, parallel=2))\n"
        "    await m.load()\n"
        "    print(m.server.pid, flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    assert_engine_dies_with_its_parent(script, what="llama-server", cwd=Path.cwd())


def test_without_the_binary_the_model_runs_in_process_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/llmforge/llama.cpp-*/bin here
    with caplog.at_level(logging.WARNING):
        m = create(served_config())
    assert isinstance(m, LlamaCppChatModel)
    assert "llama-server is not built" in caplog.text and "make llama-tools" in caplog.text
    assert isinstance(create(served_config(parallel=1)), LlamaCppChatModel)
    with pytest.raises(ConfigError, match="llama_server '/nope' is not an executable"):
        create(served_config(llama_server="/nope"))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _require_binary()
    tmp = tmp_path_factory.mktemp("served")
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp / 'gw.db'}",
        models=[served_config(parallel=2, context_length=1536).model_dump(exclude_none=True)],
        embeddings=[],
        server={"preload": True},
    )
    with serve(create_app(settings)) as base:
        yield base


def test_through_the_gateway_a_dying_engine_ends_the_stream_with_an_error_event(
    gateway: str,
) -> None:
    body = {
        "model": "local",
        "messages": [{"role": "user", "content": "Tell me a very long story about a ship."}],
        "max_tokens": 1500,
        "temperature": 0,
        "stream": True,
    }
    metrics = httpx.get(gateway + "/metrics").text
    assert 'llmforge_local_slots{deployment="local"} 2.0' in metrics
    warm = {**body, "stream": False, "max_tokens": 1}
    assert httpx.post(gateway + "/v1/chat/completions", json=warm, timeout=60).status_code == 200
    engine = _engine_pid()
    lines = []
    with httpx.stream("POST", gateway + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            lines.append(line)
            if len(lines) == 6:
                os.kill(engine, signal.SIGKILL)
    events = [line[5:].strip() for line in lines if line.startswith("data:")]
    assert events[-1] != "[DONE]" and "error" in json.loads(events[-1])
    after = httpx.post(
        gateway + "/v1/chat/completions",
        json={**body, "stream": False, "max_tokens": 4},
        timeout=60,
    )
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"]
    metrics = httpx.get(gateway + "/metrics").text
    assert "llmforge_local_queue_wait_seconds_count" in metrics


def _engine_pid() -> int:
    """The llama-server the `gateway` fixture started: a child of this process with its
    2 x 1536 tokens of context."""
    children = {
        int(c)
        for task in Path(f"/proc/{os.getpid()}/task").iterdir()
        for c in (task / "children").read_text().split()
    }
    engines = [
        p
        for p in children
        if not gone(p) and "--ctx-size\x003072\x00" in Path(f"/proc/{p}/cmdline").read_text()
    ]
    assert len(engines) == 1, engines
    return engines[0]
