"""Every registered ChatModel and Embedder backend behaves the same way through the protocols."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import NamedTuple

import pytest

from llmforge.core.config import EmbeddingConfig, ModelConfig
from llmforge.core.settings import load_settings
from llmforge.core.types import Message, Sampling
from llmforge.kb import shared_knowledge_bases
from llmforge.models import (
    ChatModel,
    Embedder,
    ModelCatalog,
    TextModel,
    chat_models,
    collect,
    embedders,
)
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.server import serve

ASK = [Message(role="user", content="Name three colours of the rainbow.")]
GREEDY = Sampling(temperature=0, max_tokens=16)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve(FakeOpenAI().app) as base:
        yield base + "/v1"


@pytest.fixture(scope="module")
def anthropic_upstream() -> Iterator[str]:
    with serve(FakeAnthropic().app) as base:
        yield base


class Upstreams(NamedTuple):
    """Base URLs of the fake servers, one per wire protocol."""

    openai: str
    anthropic: str


def _at_fake_openai(provider: str) -> Callable[[Upstreams], ModelConfig]:
    return lambda up: ModelConfig(name="m", provider=provider, base_url=up.openai, model_id="echo")


OPENAI_COMPATIBLE = ("openai", "deepseek", "qwen", "vllm", "llama-server", "ollama")
CHAT_CONFIGS: dict[str, Callable[[Upstreams], ModelConfig]] = {
    "fake": lambda _: ModelConfig(name="m", provider="fake", responses=["red orange yellow green"]),
    "llamacpp": lambda _: ModelConfig(
        name="m", provider="llamacpp", path="builtin:smollm2", context_length=1024
    ),
    **{provider: _at_fake_openai(provider) for provider in OPENAI_COMPATIBLE},
    "anthropic": lambda up: ModelConfig(
        name="m", provider="anthropic", base_url=up.anthropic, model_id="echo"
    ),
    "rag": lambda _: ModelConfig(name="m", provider="rag", kb="colours", model="writer"),
}
EMBED_CONFIGS: dict[str, Callable[[str], EmbeddingConfig]] = {
    "fake": lambda _: EmbeddingConfig(name="e", provider="fake", dimensions=16),
    "sentence-transformers": lambda _: EmbeddingConfig(
        name="e", provider="sentence-transformers", path="builtin:all-minilm-l6-v2"
    ),
    "openai": lambda url: EmbeddingConfig(name="e", provider="openai", base_url=url),
}


# Providers built over a whole subsystem (a run of graphs, a registry of trained versions, a
# labelled file): their behaviour as models is specified by their own packages' tests, through a
# live gateway — tests/agents/test_runs.py (agent as an OpenAI model), tests/distill (distilled,
# answer-key).
COVERED_ELSEWHERE = {"agent", "distilled", "answer-key"}


def test_every_registered_backend_is_covered() -> None:
    # what the package declares (other tests register throwaway names of their own)
    declared = {ep.name for ep in entry_points(group="llmforge.models")}
    assert declared <= set(CHAT_CONFIGS) | COVERED_ELSEWHERE
    assert declared <= set(chat_models.names())
    declared = {ep.name for ep in entry_points(group="llmforge.embedders")}
    assert declared <= set(EMBED_CONFIGS) and declared <= set(embedders.names())


@pytest.fixture(params=sorted(CHAT_CONFIGS))
async def chat(
    request: pytest.FixtureRequest,
    upstream: str,
    anthropic_upstream: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ChatModel]:
    config = CHAT_CONFIGS[request.param](Upstreams(upstream, anthropic_upstream))
    if config.provider == "rag":  # built on other parts: a knowledge base and a chat model
        tmp = tmp_path_factory.mktemp("rag")
        catalog = await _rag_catalog(tmp, config)
        yield catalog.chat(config.name)
        await catalog.aclose()
        return
    model = chat_models.get(config.provider)(config, ModelCatalog([], []))
    yield model
    await model.aclose()


async def _rag_catalog(tmp: Path, config: ModelConfig) -> ModelCatalog:
    writer = {"name": "writer", "provider": "fake", "responses": ["red orange yellow green"]}
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp / 'rag.db'}",
        embeddings=[{"name": "e", "provider": "fake", "dimensions": 512}],
        kb={"path": str(tmp / "kbs")},
        models=[writer, config.model_dump()],
    )
    catalog = ModelCatalog.from_settings(settings)
    (tmp / "rainbow.txt").write_text(
        "Name three colours of the rainbow: red, orange and yellow come first.", encoding="utf-8"
    )
    kb = await shared_knowledge_bases(catalog).create("colours")
    await kb.ingest([tmp / "rainbow.txt"])
    return catalog


@pytest.fixture(params=sorted(EMBED_CONFIGS))
async def embedder(request: pytest.FixtureRequest, upstream: str) -> AsyncIterator[Embedder]:
    config = EMBED_CONFIGS[request.param](upstream)
    model = embedders.get(config.provider)(config)
    yield model
    await model.aclose()


async def test_chat_stream_and_complete_agree(chat: ChatModel) -> None:
    assert isinstance(chat, ChatModel)
    whole = await chat.complete(ASK, GREEDY)
    deltas = [d async for d in chat.stream(ASK, GREEDY)]
    assert whole.text
    assert "".join(d.text for d in deltas) == whole.text
    assert [d.finish_reason for d in deltas if d.finish_reason] == [whole.finish_reason]
    assert deltas[-1].finish_reason is not None and deltas[-1].usage == whole.usage
    assert whole.usage.completion_tokens > 0


async def test_chat_max_tokens_ends_with_length(chat: ChatModel) -> None:
    out = await chat.complete(ASK, Sampling(temperature=0, max_tokens=1))
    assert out.finish_reason == "length"
    assert out.usage.completion_tokens == 1


async def test_chat_stream_closed_early_leaves_the_model_usable(chat: ChatModel) -> None:
    stream = chat.stream(ASK, Sampling(temperature=0, max_tokens=200))
    first = await anext(stream)
    await stream.aclose()
    assert first is not None
    again = await collect(chat.stream(ASK, GREEDY))
    assert again.text


async def test_text_model_continues_a_prompt_and_honours_max_tokens(chat: ChatModel) -> None:
    if not isinstance(chat, TextModel):
        pytest.skip("not a TextModel: the gateway refuses /v1/completions for it")
    deltas = [d async for d in chat.stream_text("Red, orange, yellow,", GREEDY)]
    assert "".join(d.text for d in deltas)
    assert [d.finish_reason for d in deltas if d.finish_reason] == [deltas[-1].finish_reason]
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens > 0
    out = await collect(
        chat.stream_text("Red, orange, yellow,", Sampling(temperature=0, max_tokens=1))
    )
    assert (out.finish_reason, out.usage.completion_tokens) == ("length", 1)


async def test_embedder_returns_one_vector_per_text_in_order(embedder: Embedder) -> None:
    assert isinstance(embedder, Embedder)
    out = await embedder.embed(["short", "a much longer text", "中文文本"])
    assert len(out.vectors) == 3
    assert len({len(v) for v in out.vectors}) == 1
    assert out.vectors[0] != out.vectors[1]
    assert out.prompt_tokens > 0
    assert (await embedder.embed([])).vectors == []
