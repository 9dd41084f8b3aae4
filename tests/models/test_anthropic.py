"""The `anthropic` backend against a local server that speaks the Anthropic Messages API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmforge.core.config import ModelConfig
from llmforge.core.errors import (
    ConfigError,
    InvalidRequestError,
    UpstreamError,
    UpstreamTimeoutError,
)
from llmforge.core.types import Message, Sampling
from llmforge.models import chat_models, collect
from llmforge.models.anthropic import AnthropicChatModel
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.server import serve

HELLO = [Message(role="user", content="hello there general kenobi")]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic()
    with serve(fake.app) as base:
        yield fake, base


def model(base: str, model_id: str = "echo", **kw: object) -> AnthropicChatModel:
    config = ModelConfig(
        name="claude", provider="anthropic", base_url=base, model_id=model_id, **kw
    )  # type: ignore[arg-type]
    return chat_models.get("anthropic")(config)  # type: ignore[return-value]


async def test_complete_returns_text_finish_and_usage(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1])
    out = await m.complete(HELLO, Sampling(max_tokens=2, temperature=0, top_p=0.5))
    assert (out.text, out.finish_reason) == ("hello there", "length")
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (4, 2)
    sent, headers = upstream[0].requests[-1], upstream[0].headers[-1]
    assert sent["model"] == "echo" and sent["max_tokens"] == 2
    assert sent["temperature"] == 0 and sent["top_p"] == 0.5
    assert headers["anthropic-version"] == "2023-06-01"
    assert "stream" not in sent
    await m.aclose()


async def test_max_tokens_defaults_to_the_models_max_output_or_4096(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1])
    assert (await m.complete(HELLO, Sampling())).finish_reason == "stop"
    assert upstream[0].requests[-1]["max_tokens"] == 4096
    capped = model(upstream[1], max_output_tokens=3)
    out = await capped.complete(HELLO, Sampling())
    assert upstream[0].requests[-1]["max_tokens"] == 3 and out.finish_reason == "length"
    await m.aclose()
    await capped.aclose()


async def test_system_messages_go_top_level_and_same_role_turns_merge(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1])
    conversation = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="first part"),
        Message(role="user", content="second part"),
        Message(role="assistant", content=""),
        Message(role="developer", content="No emoji."),
        Message(role="user", content="third"),
    ]
    out = await m.complete(conversation, Sampling())
    sent = upstream[0].requests[-1]
    assert sent["system"] == "Be brief.\n\nNo emoji."
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "first part"},
                {"type": "text", "text": "second part"},
                {"type": "text", "text": "third"},
            ],
        }
    ]
    assert out.text == "first partsecond partthird"
    assert out.usage.prompt_tokens == 2 + 5  # system words + message words
    await m.aclose()


async def test_stop_becomes_stop_sequences_and_ends_with_stop(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1])
    for answer in (
        await m.complete(HELLO, Sampling(stop=("general",))),
        await collect(m.stream(HELLO, Sampling(stop=("general",)))),
    ):
        assert upstream[0].requests[-1]["stop_sequences"] == ["general"]
        assert (answer.text, answer.finish_reason) == ("hello there", "stop")
    await m.aclose()


async def test_temperature_above_anthropics_maximum_is_capped(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1])
    await m.complete(HELLO, Sampling(temperature=1.7, seed=3, presence_penalty=0.5))
    sent = upstream[0].requests[-1]
    assert sent["temperature"] == 1.0
    assert "seed" not in sent and "presence_penalty" not in sent
    await m.aclose()


async def test_stream_parses_events_into_deltas_with_usage(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1])
    deltas = [d async for d in m.stream(HELLO, Sampling(max_tokens=3))]
    assert [d.text for d in deltas] == ["hello", " there", " general", ""]
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].usage is not None
    assert (deltas[-1].usage.prompt_tokens, deltas[-1].usage.completion_tokens) == (4, 3)
    assert upstream[0].requests[-1]["stream"] is True
    await m.aclose()


async def test_api_key_goes_in_x_api_key(
    upstream: tuple[FakeAnthropic, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", "sk-ant-test")
    m = model(upstream[1], api_key_env="FAKE_ANTHROPIC_KEY")
    await m.complete(HELLO, Sampling())
    headers = upstream[0].headers[-1]
    assert headers["x-api-key"] == "sk-ant-test" and "authorization" not in headers
    monkeypatch.delenv("FAKE_ANTHROPIC_KEY")
    with pytest.raises(ConfigError, match="FAKE_ANTHROPIC_KEY is not set"):
        await m.complete(HELLO, Sampling())
    await m.aclose()


@pytest.mark.parametrize(
    ("status", "client_status", "retry_after"),
    [(529, 502, None), (500, 502, None), (429, 502, 2.0), (400, 400, None)],
)
async def test_error_statuses_become_forge_errors(
    upstream: tuple[FakeAnthropic, str], status: int, client_status: int, retry_after: float | None
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
        assert err.value.retry_after_s == retry_after
        assert f"scripted {status}" in err.value.message
    await m.aclose()


async def test_a_conversation_without_turns_is_refused_before_sending(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1])
    sent = len(upstream[0].requests)
    with pytest.raises(InvalidRequestError, match="at least one user or assistant message"):
        await m.complete([Message(role="system", content="only a system prompt")], Sampling())
    assert len(upstream[0].requests) == sent
    await m.aclose()


async def test_timeout_is_an_upstream_timeout(upstream: tuple[FakeAnthropic, str]) -> None:
    m = model(upstream[1], model_id="hang", timeout_s=0.3)
    with pytest.raises(UpstreamTimeoutError):
        await m.complete(HELLO, Sampling())
    with pytest.raises(UpstreamTimeoutError):
        await collect(m.stream(HELLO, Sampling()))
    await m.aclose()


async def test_error_event_mid_stream_raises_after_the_first_token(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1], model_id="midstream-error")
    got = []
    with pytest.raises(UpstreamError, match="Overloaded") as err:
        async for d in m.stream(HELLO, Sampling()):
            got.append(d.text)
    assert got == ["hello"]
    assert err.value.status_code == 529
    await m.aclose()


async def test_a_stream_cut_before_message_stop_is_an_error(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1], model_id="no-stop")
    with pytest.raises(UpstreamError, match="before message_stop"):
        await collect(m.stream(HELLO, Sampling()))
    await m.aclose()


async def test_unreachable_and_garbage_upstreams_are_clear_errors(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    closed = model("http://127.0.0.1:9")
    with pytest.raises(UpstreamError, match=r"cannot reach upstream http://127\.0\.0\.1:9"):
        await closed.complete(HELLO, Sampling())
    with pytest.raises(UpstreamError, match="cannot reach"):
        await collect(closed.stream(HELLO, Sampling()))
    garbage = model(upstream[1], model_id="garbage")
    with pytest.raises(UpstreamError, match="invalid JSON"):
        await garbage.complete(HELLO, Sampling())
    await closed.aclose()
    await garbage.aclose()
