"""The in-process llama.cpp backend with the real SmolLM2 model: greedy output, template, limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from llmforge.core.config import ModelConfig
from llmforge.core.errors import ConfigError, InvalidRequestError, OverloadedError
from llmforge.core.types import Message, Sampling
from llmforge.models import collect
from llmforge.models.llamacpp import LlamaCppChatModel, StopMatcher

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

CAPITAL = [Message(role="user", content="What is the capital of France? Answer in one word.")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def model() -> AsyncIterator[LlamaCppChatModel]:
    m = LlamaCppChatModel(
        ModelConfig(
            name="local",
            provider="llamacpp",
            path="builtin:smollm2",
            context_length=512,
            max_queue=0,
        )
    )
    await m.load()
    yield m
    await m.aclose()


async def test_greedy_answer_is_correct_and_repeatable(model: LlamaCppChatModel) -> None:
    runs = [await model.complete(CAPITAL, Sampling(temperature=0, max_tokens=10)) for _ in range(2)]
    assert "Paris" in runs[0].text
    assert runs[0] == runs[1]
    assert runs[0].usage.prompt_tokens > 10


async def test_the_models_own_chat_template_is_used(model: LlamaCppChatModel) -> None:
    plain = LlamaCppChatModel(
        ModelConfig(
            name="plain",
            provider="llamacpp",
            path="builtin:smollm2",
            context_length=512,
            chat_template="{% for m in messages %}{{ m.content }}{% endfor %}",
        )
    )
    own = await model.complete(CAPITAL, Sampling(temperature=0, max_tokens=1))
    bare = await plain.complete(CAPITAL, Sampling(temperature=0, max_tokens=1))
    await plain.aclose()
    # SmolLM2's template wraps turns in <|im_start|>role ... <|im_end|> and adds a system prompt
    assert own.usage.prompt_tokens > bare.usage.prompt_tokens + 8


async def test_a_prompt_longer_than_the_context_is_a_clear_400(model: LlamaCppChatModel) -> None:
    long = [Message(role="user", content="word " * 600)]
    with pytest.raises(InvalidRequestError, match="context of 512") as err:
        await model.complete(long, Sampling(max_tokens=5))
    assert err.value.http_status == 400 and err.value.param == "messages"


async def test_stop_sequences_cut_the_answer(model: LlamaCppChatModel) -> None:
    full = await model.complete(CAPITAL, Sampling(temperature=0, max_tokens=10))
    cut = full.text[2:5]
    stopped = await model.complete(CAPITAL, Sampling(temperature=0, max_tokens=10, stop=(cut,)))
    assert stopped.text == full.text[: full.text.index(cut)]
    assert stopped.finish_reason == "stop"


async def test_a_full_queue_refuses_instead_of_piling_up(model: LlamaCppChatModel) -> None:
    busy = model.stream(CAPITAL, Sampling(temperature=0, max_tokens=50))
    await anext(busy)
    with pytest.raises(OverloadedError, match="busy"):
        await collect(model.stream(CAPITAL, Sampling(max_tokens=2)))
    await busy.aclose()
    assert (await model.complete(CAPITAL, Sampling(temperature=0, max_tokens=2))).text


async def test_generation_never_blocks_the_event_loop(model: LlamaCppChatModel) -> None:
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await model.complete(
        [Message(role="user", content="Tell me a story.")], Sampling(temperature=0, max_tokens=60)
    )
    tick.cancel()
    assert len(gaps) > 20 and max(gaps) < 0.25


async def test_missing_or_broken_model_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        LlamaCppChatModel(
            ModelConfig(name="x", provider="llamacpp", path=str(tmp_path / "none.gguf"))
        )._ensure_loaded()
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(ConfigError, match="cannot load GGUF"):
        LlamaCppChatModel(
            ModelConfig(name="x", provider="llamacpp", path=str(junk))
        )._ensure_loaded()
    with pytest.raises(ConfigError, match="needs `path`"):
        LlamaCppChatModel(ModelConfig(name="x", provider="llamacpp"))


@pytest.mark.parametrize(
    ("pieces", "stops", "expected"),
    [
        (["Hel", "lo wor", "ld"], ["wor"], ("Hello ", True)),
        (["a<", "/s", "> b"], ["</s>"], ("a", True)),
        (["ab", "c"], ["x"], ("abc", False)),
        (["a<", "b"], ["</s>"], ("a<b", False)),
    ],
)
async def test_stop_matcher_holds_back_partial_matches(
    pieces: list[str], stops: list[str], expected: tuple[str, bool]
) -> None:
    m = StopMatcher(stops)
    out, hit = "", False
    for p in pieces:
        text, hit = m.feed(p)
        out += text
        if hit:
            break
    if not hit:
        out += m.flush()
    assert (out, hit) == expected
