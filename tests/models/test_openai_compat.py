"""The `openai` backend against a local server that speaks the OpenAI wire protocol."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from llmforge.core.config import EmbeddingConfig, ModelConfig
from llmforge.core.errors import ConfigError, UpstreamError, UpstreamTimeoutError
from llmforge.core.types import (
    Delta,
    ImagePart,
    Message,
    ResponseFormat,
    Sampling,
    Tool,
    ToolCall,
    ToolChoice,
)
from llmforge.models import TextModel, collect
from llmforge.models.base import CompletionBuilder
from llmforge.models.openai_compat import OpenAICompatChatModel, OpenAICompatEmbedder
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.reply import Call, Reply
from tests.fakes.server import serve

HELLO = [Message(role="user", content="hello there general kenobi")]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    with serve(fake.app) as base:
        yield fake, base + "/v1"


@pytest.fixture(autouse=True)
def fresh(upstream: tuple[FakeOpenAI, str]) -> None:
    upstream[0].reset()


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


# -- tools --------------------------------------------------------------------------------------

WEATHER = Tool(
    name="get_weather",
    description="Weather in a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
    strict=True,
)
TIME = Tool(name="get_time", parameters={"type": "object", "properties": {"tz": {"enum": ["UTC"]}}})


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        (None, None),
        (ToolChoice(mode="auto"), "auto"),
        (ToolChoice(mode="none"), "none"),
        (ToolChoice(mode="required"), "required"),
        (
            ToolChoice(mode="function", name="get_time"),
            {"type": "function", "function": {"name": "get_time"}},
        ),
    ],
)
async def test_tools_and_tool_choice_are_sent_as_openai_spells_them(
    upstream: tuple[FakeOpenAI, str], choice: ToolChoice | None, wire: object
) -> None:
    m = model(upstream[1])
    sampling = Sampling(tools=(WEATHER, TIME), tool_choice=choice, parallel_tool_calls=False)
    await m.complete(HELLO, sampling)
    sent = upstream[0].requests[-1]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER.parameters,
                "description": "Weather in a city",
                "strict": True,
            },
        },
        {"type": "function", "function": {"name": "get_time", "parameters": TIME.parameters}},
    ]
    assert sent.get("tool_choice") == wire
    assert sent["parallel_tool_calls"] is False
    await m.aclose()


async def test_tool_choice_and_parallel_flag_are_not_sent_without_tools(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    m = model(upstream[1])
    out = await m.complete(
        HELLO, Sampling(tool_choice=ToolChoice(mode="none"), parallel_tool_calls=True)
    )
    assert out.text == "hello there general kenobi"  # OpenAI would refuse either without tools
    sent = upstream[0].requests[-1]
    assert not {"tools", "tool_choice", "parallel_tool_calls", "n", "logprobs"} & set(sent)
    await m.aclose()


async def test_a_tool_call_comes_back_whole_with_valid_arguments(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    m = model(upstream[1], model_id="tools")
    out = await m.complete(HELLO, Sampling(tools=(WEATHER, TIME)))
    assert (out.text, out.finish_reason) == ("", "tool_calls")
    [call] = out.tool_calls
    assert call.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "x", "days": 1}
    await m.aclose()


async def test_streamed_tool_calls_come_in_pieces_that_reassemble(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    m = model(upstream[1], model_id="parallel-tools")
    deltas = [d async for d in m.stream(HELLO, Sampling(tools=(WEATHER, TIME)))]
    pieces = [p for d in deltas for p in d.tool_calls]
    firsts = [p for p in pieces if p.id is not None]
    assert [(p.index, p.name) for p in firsts] == [(0, "get_weather"), (1, "get_time")]
    assert all(p.name is None for p in pieces if p.id is None)  # id and name come once
    assert len([p for p in pieces if p.index == 0 and p.arguments]) > 1  # in several pieces
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["tool_calls"]
    builder = CompletionBuilder()
    for d in deltas:
        builder.add(d)
    calls = builder.tool_calls()
    assert [c.id for c in calls] == [p.id for p in firsts]
    assert [json.loads(c.arguments) for c in calls] == [{"city": "x", "days": 1}, {"tz": "UTC"}]
    await m.aclose()


async def test_parallel_tool_calls_false_gets_a_single_call(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    m = model(upstream[1], model_id="parallel-tools")
    out = await m.complete(HELLO, Sampling(tools=(WEATHER, TIME), parallel_tool_calls=False))
    assert [c.name for c in out.tool_calls] == ["get_weather"]
    await m.aclose()


async def test_text_and_tool_calls_in_one_answer_are_both_kept(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    m = model(upstream[1])
    reply = Reply(text="Let me look.", calls=(Call("get_time", '{"tz": "UTC"}'),), piece=3)
    upstream[0].respond(reply, reply)
    whole = await m.complete(HELLO, Sampling(tools=(TIME,)))
    streamed = await collect(m.stream(HELLO, Sampling(tools=(TIME,))))
    for out in (whole, streamed):
        assert (out.text, out.finish_reason) == ("Let me look.", "tool_calls")
        assert [(c.name, c.arguments) for c in out.tool_calls] == [("get_time", '{"tz": "UTC"}')]
    await m.aclose()


async def test_tool_calls_tool_results_and_images_in_the_history_are_sent_as_openai_expects(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    m = model(upstream[1], model_id="tools")
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo", "days": 2}')
    history = [
        Message(role="system", content="Be brief."),
        Message(
            role="user",
            content="What is this, and the weather?",
            images=(
                ImagePart(url="https://example.com/a.png", detail="low"),
                ImagePart(url="data:image/png;base64,iVBORw0KGgo="),
            ),
        ),
        Message(role="assistant", tool_calls=(call,)),
        Message(role="tool", content="sunny", tool_call_id="call_1", name="get_weather"),
    ]
    out = await m.complete(history, Sampling(tools=(WEATHER,)))
    assert (out.text, out.finish_reason) == ("The tool said: sunny", "stop")
    assert upstream[0].requests[-1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this, and the weather?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/a.png", "detail": "low"},
                },
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 2}'},
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},  # no name: OpenAI refuses
    ]
    await m.aclose()


# -- structured output, logprobs, n --------------------------------------------------------------


async def test_response_formats_are_passed_through(upstream: tuple[FakeOpenAI, str]) -> None:
    m = model(upstream[1], model_id="json")
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    strict = ResponseFormat(type="json_schema", json_schema=schema, name="person", strict=True)
    out = await m.complete(HELLO, Sampling(response_format=strict))
    assert upstream[0].requests[-1]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": schema, "strict": True},
    }
    assert json.loads(out.text) == {"name": "x", "age": 1}
    out = await m.complete(HELLO, Sampling(response_format=ResponseFormat(type="json_object")))
    assert upstream[0].requests[-1]["response_format"] == {"type": "json_object"}
    assert json.loads(out.text) == {"answer": "hello there general kenobi"}
    await m.aclose()


async def test_n_choices_and_logprobs_come_back_for_every_choice(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    m = model(upstream[1])
    sampling = Sampling(n=3, logprobs=True, top_logprobs=2)
    out = await m.complete([Message(role="user", content="a b c")], sampling)
    sent = upstream[0].requests[-1]
    assert (sent["n"], sent["logprobs"], sent["top_logprobs"]) == (3, True, 2)
    assert [c.text for c in out.choices()] == ["a b c", "b c a", "c a b"]
    assert [c.index for c in out.extra_choices] == [1, 2]
    assert out.logprobs is not None and [t.token for t in out.logprobs] == ["a", " b", " c"]
    first = out.logprobs[0]
    assert (first.logprob, first.bytes) == (-0.1, [97])
    assert [(t.token, t.logprob) for t in first.top_logprobs] == [("a", -0.1), ("alt1", -1.1)]
    assert all(c.logprobs and len(c.logprobs) == 3 for c in out.extra_choices)
    assert out.usage.completion_tokens == 9
    await m.aclose()


async def test_a_stream_of_n_choices_ends_each_choice_and_puts_usage_last(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    m = model(upstream[1])
    sampling = Sampling(n=2, logprobs=True)
    deltas = [d async for d in m.stream([Message(role="user", content="a b c")], sampling)]
    assert {d.choice for d in deltas} == {0, 1}
    finishes = [(d.choice, d.finish_reason) for d in deltas if d.finish_reason]
    assert sorted(finishes) == [(0, "stop"), (1, "stop")]
    assert [d for d in deltas if d.usage] == [deltas[-1]] and deltas[-1].finish_reason
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 6
    builder = CompletionBuilder()
    for d in deltas:
        builder.add(d)
    out = builder.result(logprobs=True)
    assert [c.text for c in out.choices()] == ["a b c", "b c a"]
    assert [t.token for t in out.extra_choices[0].logprobs or ()] == ["b", " c", " a"]
    await m.aclose()


async def test_logprobs_asked_for_but_not_sent_are_an_empty_list(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    m = model(upstream[1])
    answer = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}
    upstream[0].respond_raw(answer, answer)
    assert (await m.complete(HELLO, Sampling(logprobs=True))).logprobs == []
    assert (await m.complete(HELLO, Sampling())).logprobs is None
    await m.aclose()


# -- vendors' variations and malformed answers --------------------------------------------------


async def test_lenient_where_vendors_differ(upstream: tuple[FakeOpenAI, str]) -> None:
    m = model(upstream[1])
    upstream[0].respond_raw(
        # content null, no usage, no index, arguments as an object, a finish reason we do not know
        {
            "choices": [
                {
                    "message": {
                        "content": None,
                        "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
                    },
                    "finish_reason": "tool_use",
                }
            ]
        },
        {"choices": [{"message": {"content": "cut"}, "finish_reason": "eos"}], "usage": None},
    )
    out = await m.complete(HELLO, Sampling())
    assert (out.text, out.finish_reason, out.usage.total_tokens) == ("", "tool_calls", 0)
    [call] = out.tool_calls
    assert (call.name, json.loads(call.arguments)) == ("f", {"a": 1}) and call.id
    out = await m.complete(HELLO, Sampling())
    assert (out.text, out.finish_reason) == ("cut", "stop")
    await m.aclose()


async def test_streamed_tool_calls_without_index_or_with_repeated_names_are_normalised(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    def piece(**call: Any) -> dict[str, Any]:
        return {"choices": [{"delta": {"tool_calls": [call]}}]}

    upstream[0].respond_raw(
        [
            {"choices": [{"delta": {"role": "assistant"}, "finish_reason": ""}]},
            piece(id="a", function={"name": "f", "arguments": '{"x"'}),
            piece(id="a", function={"name": "f", "arguments": ": 1}"}),
            piece(id="b", function={"name": "g", "arguments": "{}"}),
            {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
        ]
    )
    m = model(upstream[1])
    deltas = [d async for d in m.stream(HELLO, Sampling())]
    pieces = [(p.index, p.id, p.name, p.arguments) for d in deltas for p in d.tool_calls]
    assert pieces == [(0, "a", "f", '{"x"'), (0, None, None, ": 1}"), (1, "b", "g", "{}")]
    assert deltas[-1].finish_reason == "tool_calls" and deltas[-1].usage is not None
    await m.aclose()


@pytest.mark.parametrize(
    "answer",
    [
        {"id": "x"},  # no choices
        {"choices": []},
        {"choices": [{"finish_reason": "stop"}]},  # no message
        {"choices": [{"message": {"tool_calls": [{"id": "c", "function": {}}]}}]},  # no name
        "not an object",
    ],
    ids=["no-choices", "empty-choices", "no-message", "nameless-call", "a-string"],
)
async def test_a_malformed_answer_is_an_upstream_error_naming_the_model(
    upstream: tuple[FakeOpenAI, str], answer: object
) -> None:
    m = model(upstream[1])
    upstream[0].respond_raw(answer)
    with pytest.raises(UpstreamError, match="model 'remote': upstream sent an answer") as err:
        await m.complete(HELLO, Sampling())
    assert "OpenAI-compatible" in err.value.message
    await m.aclose()


async def test_a_malformed_stream_chunk_is_an_upstream_error(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    m = model(upstream[1])
    upstream[0].respond_raw([{"choices": [{"delta": {"content": "hi"}}]}, {"choices": "nope"}])
    got: list[Delta] = []
    with pytest.raises(UpstreamError, match=r"model 'remote'.*choices"):
        async for d in m.stream(HELLO, Sampling()):
            got.append(d)
    assert [d.text for d in got] == ["hi"]
    await m.aclose()


async def test_an_embedding_answer_without_data_is_an_upstream_error(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    e = OpenAICompatEmbedder(EmbeddingConfig(name="e", provider="openai", base_url=upstream[1]))
    upstream[0].respond_raw({"object": "list", "model": "x"})
    with pytest.raises(UpstreamError, match=r"model 'e'.*data"):
        await e.embed(["a"])
    await e.aclose()


# -- legacy text completion ---------------------------------------------------------------------


async def test_text_completion_goes_to_the_upstreams_completions(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    m = model(upstream[1])
    assert isinstance(m, TextModel)
    sampling = Sampling(max_tokens=2, logprobs=True, top_logprobs=2, n=2, stop=("zz",))
    whole = await m.complete_text("one two three", sampling)
    sent = upstream[0].requests[-1]
    assert sent["prompt"] == "one two three" and "messages" not in sent
    assert (sent["logprobs"], sent["n"], sent["max_tokens"], sent["stop"]) == (2, 2, 2, ["zz"])
    streamed = await collect(m.stream_text("one two three", sampling))
    assert upstream[0].requests[-1]["stream_options"] == {"include_usage": True}
    for out in (whole, streamed):
        assert [(c.text, c.finish_reason) for c in out.choices()] == [
            ("one two", "length"),
            ("two three", "length"),
        ]
        assert out.usage.completion_tokens == 4
    assert whole.logprobs is not None
    assert [(t.token, t.logprob) for t in whole.logprobs] == [("one", -0.1), (" two", -0.2)]
    assert [(t.token, t.logprob) for t in whole.logprobs[1].top_logprobs] == [
        (" two", -0.2),
        ("alt1", -1.2),
    ]
    await m.aclose()


async def test_streamed_text_completion_carries_logprobs_per_piece(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    m = model(upstream[1])
    deltas = [d async for d in m.stream_text("one two", Sampling(logprobs=True))]
    assert upstream[0].requests[-1]["logprobs"] == 0
    assert [(d.text, [t.token for t in d.logprobs or ()]) for d in deltas if d.text] == [
        ("one", ["one"]),
        (" two", [" two"]),
    ]
    assert deltas[-1].finish_reason == "stop" and deltas[-1].usage is not None
    await m.aclose()
