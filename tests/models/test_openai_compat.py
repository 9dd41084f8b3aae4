"""The `openai` backend against a local server that speaks the OpenAI wire protocol."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmforge.core.config import EmbeddingConfig, ModelConfig
from llmforge.core.errors import ConfigError, UpstreamError, UpstreamTimeoutError
from llmforge.core.types import Message, Sampling
from llmforge.models import collect
from llmforge.models.openai_compat import OpenAICompatChatModel, OpenAICompatEmbedder
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.server import serve

HELLO = [Message(role="user", content="hello there general kenobi")]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    with serve(fake.app) as base:
        yield fake, base + "/v1"


def model(base: str, model_id: str = "echo", **kw: object) -> OpenAICompatChatModel:
    return OpenAICompatChatModel(
        ModelConfig(name="remote", provider="openai", base_url=base, model_id=model_id, **kw)
    )  # type: ignore[arg-type]


async def test_complete_returns_text_finish_and_usage(upstream: tuple[FakeOpenAI, str]) -> None:
    m = model(upstream[1])
    out = await m.complete(HELLO, Sampling(max_tokens=2, temperature=0))
    assert (out.text, out.finish_reason) == ("hello there", "length")
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (7, 2)
    sent = upstream[0].requests[-1]
    assert sent["model"] == "echo" and sent["max_tokens"] == 2 and sent["temperature"] == 0
    await m.aclose()


async def test_stream_parses_sse_into_deltas_with_usage(upstream: tuple[FakeOpenAI, str]) -> None:
    m = model(upstream[1])
    deltas = [d async for d in m.stream(HELLO, Sampling())]
    assert "".join(d.text for d in deltas) == "hello there general kenobi"
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 4
    assert upstream[0].requests[-1]["stream_options"] == {"include_usage": True}
    await m.aclose()


async def test_api_key_comes_from_the_named_env_var(
    upstream: tuple[FakeOpenAI, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KEY", "sk-test-123")
    m = model(upstream[1], api_key_env="FAKE_KEY")
    await m.complete(HELLO, Sampling())
    assert upstream[0].headers[-1]["authorization"] == "Bearer sk-test-123"
    monkeypatch.delenv("FAKE_KEY")
    with pytest.raises(ConfigError, match="FAKE_KEY is not set"):
        await m.complete(HELLO, Sampling())
    await m.aclose()


@pytest.mark.parametrize(("status", "client_status"), [(500, 502), (503, 502), (400, 400)])
async def test_error_statuses_become_forge_errors(
    upstream: tuple[FakeOpenAI, str], status: int, client_status: int
) -> None:
    m = model(upstream[1], model_id=f"fail-{status}")
    for call in (
        lambda: m.complete(HELLO, Sampling()),
        lambda: collect(m.stream(HELLO, Sampling())),
    ):
        with pytest.raises(UpstreamError) as err:
            await call()
        assert err.value.status_code == status
        assert err.value.http_status == client_status
        assert f"scripted {status}" in err.value.message
    await m.aclose()


async def test_timeout_is_an_upstream_timeout(upstream: tuple[FakeOpenAI, str]) -> None:
    m = model(upstream[1], model_id="hang", timeout_s=0.3)
    with pytest.raises(UpstreamTimeoutError):
        await m.complete(HELLO, Sampling())
    with pytest.raises(UpstreamTimeoutError):
        await collect(m.stream(HELLO, Sampling()))
    await m.aclose()


async def test_mid_stream_error_event_raises_after_the_first_token(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    m = model(upstream[1], model_id="midstream-error")
    got = []
    with pytest.raises(UpstreamError, match="mid-stream"):
        async for d in m.stream(HELLO, Sampling()):
            got.append(d.text)
    assert got == ["hello"]
    await m.aclose()


async def test_unreachable_and_garbage_upstreams_are_clear_errors(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    closed = model("http://127.0.0.1:9/v1")
    with pytest.raises(UpstreamError, match="cannot reach"):
        await closed.complete(HELLO, Sampling())
    garbage = model(upstream[1], model_id="garbage")
    with pytest.raises(UpstreamError, match="invalid JSON"):
        await garbage.complete(HELLO, Sampling())


def test_missing_base_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs `base_url`"):
        OpenAICompatChatModel(ModelConfig(name="x", provider="openai"))


async def test_embeddings_come_back_in_input_order(upstream: tuple[FakeOpenAI, str]) -> None:
    e = OpenAICompatEmbedder(EmbeddingConfig(name="e", provider="openai", base_url=upstream[1]))
    out = await e.embed(["a", "bbb"])
    assert [v[0] for v in out.vectors] == [1.0, 3.0]
    assert out.prompt_tokens == 2
    await e.aclose()
