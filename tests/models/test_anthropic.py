"""The `anthropic` backend against a local server that speaks the Anthropic Messages API."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from llmforge.core.config import ModelConfig
from llmforge.core.errors import (
    ConfigError,
    InvalidRequestError,
    UpstreamError,
    UpstreamTimeoutError,
)
from llmforge.core.types import (
    ImagePart,
    Message,
    ResponseFormat,
    Sampling,
    Tool,
    ToolCall,
    ToolChoice,
)
from llmforge.models import TextModel, chat_models, collect
from llmforge.models.anthropic import AnthropicChatModel
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.reply import Call, Reply
from tests.fakes.server import serve

HELLO = [Message(role="user", content="hello there general kenobi")]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic()
    with serve(fake.app) as base:
        yield fake, base


@pytest.fixture(autouse=True)
def fresh(upstream: tuple[FakeAnthropic, str]) -> None:
    upstream[0].reset()


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


# -- tools ---------------------------------------------------------------------------------------

WEATHER = Tool(
    name="get_weather",
    description="Weather in a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
)
CLOCK = Tool(name="get_time", parameters={"type": "object", "properties": {}})


@pytest.mark.parametrize(
    ("choice", "parallel", "wire"),
    [
        (None, None, {"type": "auto"}),
        (ToolChoice(mode="auto"), False, {"type": "auto", "disable_parallel_tool_use": True}),
        (ToolChoice(mode="required"), None, {"type": "any"}),
        (ToolChoice(mode="function", name="get_time"), None, {"type": "tool", "name": "get_time"}),
        (ToolChoice(mode="none"), False, {"type": "none"}),
    ],
)
async def test_tools_and_tool_choice_are_translated(
    upstream: tuple[FakeAnthropic, str],
    choice: ToolChoice | None,
    parallel: bool | None,
    wire: dict[str, object],
) -> None:
    m = model(upstream[1])
    sampling = Sampling(tools=(WEATHER, CLOCK), tool_choice=choice, parallel_tool_calls=parallel)
    await m.complete(HELLO, sampling)
    sent = upstream[0].requests[-1]
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "input_schema": WEATHER.parameters,
            "description": "Weather in a city",
        },
        {"name": "get_time", "input_schema": CLOCK.parameters},
    ]
    assert sent["tool_choice"] == wire
    await m.aclose()


async def test_a_tool_use_answer_becomes_a_tool_call(upstream: tuple[FakeAnthropic, str]) -> None:
    m = model(upstream[1], model_id="tools")
    out = await m.complete(HELLO, Sampling(tools=(WEATHER,)))
    assert (out.text, out.finish_reason) == ("", "tool_calls")
    [call] = out.tool_calls
    assert call.name == "get_weather" and call.id.startswith("toolu_")
    assert json.loads(call.arguments) == {"city": "x", "days": 1}
    await m.aclose()


async def test_streamed_tool_use_becomes_tool_call_pieces(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1], model_id="parallel-tools")
    deltas = [d async for d in m.stream(HELLO, Sampling(tools=(WEATHER, CLOCK)))]
    pieces = [p for d in deltas for p in d.tool_calls]
    firsts = [p for p in pieces if p.id is not None]
    assert [(p.index, p.name, p.arguments) for p in firsts] == [
        (0, "get_weather", ""),
        (1, "get_time", ""),
    ]
    weather = "".join(p.arguments for p in pieces if p.index == 0)
    assert json.loads(weather) == {"city": "x", "days": 1}
    assert len([p for p in pieces if p.index == 0 and p.arguments]) > 1  # in several pieces
    out = await collect(m.stream(HELLO, Sampling(tools=(WEATHER, CLOCK))))
    assert [(c.name, json.loads(c.arguments)) for c in out.tool_calls] == [
        ("get_weather", {"city": "x", "days": 1}),
        ("get_time", {}),
    ]
    assert out.finish_reason == "tool_calls" and out.usage.completion_tokens > 0
    await m.aclose()


async def test_a_tool_call_without_input_pieces_has_empty_object_arguments(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1])
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 3}}}
    block = {"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}
    upstream[0].respond_raw(
        [
            start,
            {"type": "content_block_start", "index": 0, "content_block": block},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {}},
            {"type": "message_stop"},
        ]
    )
    deltas = [d async for d in m.stream(HELLO, Sampling(tools=(CLOCK,)))]
    pieces = [(p.id, p.name, p.arguments) for d in deltas for p in d.tool_calls]
    assert pieces == [("toolu_1", "get_time", ""), (None, None, "{}")]
    assert deltas[-1].finish_reason == "tool_calls"
    await m.aclose()


async def test_text_and_tool_use_in_one_answer_are_both_kept(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1])
    reply = Reply(text="Let me look.", calls=(Call("get_time", "{}"),))
    upstream[0].respond(reply, reply)
    for out in (
        await m.complete(HELLO, Sampling(tools=(CLOCK,))),
        await collect(m.stream(HELLO, Sampling(tools=(CLOCK,)))),
    ):
        assert (out.text, out.finish_reason) == ("Let me look.", "tool_calls")
        assert [(c.name, c.arguments) for c in out.tool_calls] == [("get_time", "{}")]
    await m.aclose()


async def test_a_conversation_with_tool_results_and_images_is_translated(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1], model_id="tools")
    calls = (
        ToolCall(id="toolu_a", name="get_weather", arguments='{"city": "Oslo", "days": 2}'),
        ToolCall(id="toolu_b", name="get_time"),
    )
    history = [
        Message(
            role="user",
            content="What is this, and the weather?",
            images=(
                ImagePart(url="https://example.com/a.png", detail="high"),
                ImagePart(url="data:image/png;base64,iVBORw0KGgo="),
            ),
        ),
        Message(role="assistant", content="Checking.", tool_calls=calls),
        Message(role="tool", content="sunny", tool_call_id="toolu_a"),
        Message(role="user", content="Thanks."),
        Message(role="tool", content="noon", tool_call_id="toolu_b"),
    ]
    out = await m.complete(history, Sampling(tools=(WEATHER, CLOCK)))
    assert (out.text, out.finish_reason) == ("The tool said: sunny; noon", "stop")
    assert upstream[0].requests[-1]["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
                {"type": "text", "text": "What is this, and the weather?"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_a",
                    "name": "get_weather",
                    "input": {"city": "Oslo", "days": 2},
                },
                {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [  # results first, merged into one turn, as Anthropic requires
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": "noon"},
                {"type": "text", "text": "Thanks."},
            ],
        },
    ]
    await m.aclose()


@pytest.mark.parametrize(
    ("history", "problem"),
    [
        (
            [
                Message(
                    role="assistant",
                    tool_calls=(ToolCall(id="t", name="get_time", arguments="[1]"),),
                ),
                Message(role="tool", content="noon", tool_call_id="t"),
            ],
            "not a JSON object",
        ),
        (
            [Message(role="user", content="x", images=(ImagePart(url="data:image/png,abc"),))],
            "must be base64",
        ),
        ([Message(role="tool", content="noon")], "needs the `tool_call_id`"),
    ],
    ids=["arguments-not-an-object", "data-url-not-base64", "tool-result-without-id"],
)
async def test_a_history_anthropic_cannot_take_is_refused_before_sending(
    upstream: tuple[FakeAnthropic, str], history: list[Message], problem: str
) -> None:
    m = model(upstream[1])
    sent = len(upstream[0].requests)
    with pytest.raises(InvalidRequestError, match=problem) as err:
        await m.complete(history, Sampling(tools=(CLOCK,)))
    assert err.value.param == "messages" and err.value.http_status == 400
    assert len(upstream[0].requests) == sent
    await m.aclose()


# -- structured output ---------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


async def test_a_json_schema_is_a_forced_tool_whose_input_is_the_answer(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1])
    fmt = ResponseFormat(type="json_schema", json_schema=PERSON, name="person", strict=True)
    ask = [Message(role="user", content='{"name": "Ada", "age": 36}')]  # echoed as the input
    whole = await m.complete(ask, Sampling(response_format=fmt))
    sent = upstream[0].requests[-1]
    assert sent["tools"] == [
        {
            "name": "json_answer",
            "description": "Give your answer (person) as this tool's input.",
            "input_schema": PERSON,
        }
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "json_answer"}
    streamed = await collect(m.stream(ask, Sampling(response_format=fmt)))
    for out in (whole, streamed):
        assert json.loads(out.text) == {"name": "Ada", "age": 36}
        assert (out.finish_reason, out.tool_calls) == ("stop", ())
    await m.aclose()


async def test_json_object_and_a_non_object_schema_come_back_as_json_text(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1])
    listing = ResponseFormat.for_schema({"type": "array", "items": {"type": "integer"}})
    for fmt, expected in ((ResponseFormat(type="json_object"), {}), (listing, [1])):
        whole = await m.complete(HELLO, Sampling(response_format=fmt))
        streamed = await collect(m.stream(HELLO, Sampling(response_format=fmt)))
        assert json.loads(whole.text) == json.loads(streamed.text) == expected
    schema = upstream[0].requests[-1]["tools"][0]["input_schema"]
    assert schema == {
        "type": "object",
        "properties": {"value": {"type": "array", "items": {"type": "integer"}}},
        "required": ["value"],
    }
    await m.aclose()


async def test_a_json_schema_next_to_tools_makes_some_tool_call_required(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1])
    fmt = ResponseFormat.for_schema(PERSON)
    await m.complete(HELLO, Sampling(tools=(CLOCK,), response_format=fmt))
    sent = upstream[0].requests[-1]
    assert [t["name"] for t in sent["tools"]] == ["get_time", "json_answer"]
    assert sent["tool_choice"] == {"type": "any"}
    with pytest.raises(InvalidRequestError, match="rename the tool"):
        await m.complete(HELLO, Sampling(tools=(Tool(name="json_answer"),), response_format=fmt))
    await m.aclose()


# -- what Anthropic does not do ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampling", "param"),
    [
        (Sampling(logprobs=True), "logprobs"),
        (Sampling(logprobs=True, top_logprobs=3), "logprobs"),
        (Sampling(n=2), "n"),
    ],
)
async def test_logprobs_and_several_choices_are_refused_with_a_400(
    upstream: tuple[FakeAnthropic, str], sampling: Sampling, param: str
) -> None:
    m = model(upstream[1])
    assert not isinstance(m, TextModel)  # no legacy text completion either
    sent = len(upstream[0].requests)
    for call in (lambda: m.complete(HELLO, sampling), lambda: collect(m.stream(HELLO, sampling))):
        with pytest.raises(InvalidRequestError, match="Anthropic") as err:
            await call()
        assert err.value.param == param and err.value.http_status == 400
    assert len(upstream[0].requests) == sent
    await m.aclose()


async def test_a_malformed_answer_is_an_upstream_error_naming_the_model(
    upstream: tuple[FakeAnthropic, str],
) -> None:
    m = model(upstream[1])
    upstream[0].respond_raw(
        {"type": "message", "stop_reason": "end_turn"},  # no content
        [{"type": "content_block_start", "index": 0, "content_block": {"text": "no type"}}],
    )
    with pytest.raises(UpstreamError, match=r"model 'claude'.*content.*Anthropic Messages API"):
        await m.complete(HELLO, Sampling())
    with pytest.raises(UpstreamError, match=r"model 'claude'.*content_block\.type"):
        await collect(m.stream(HELLO, Sampling()))
    await m.aclose()
