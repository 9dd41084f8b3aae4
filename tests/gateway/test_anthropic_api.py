"""Anthropic's wire protocol both ways through a live LLMForge.

In: the official `anthropic` SDK calls `/v1/messages` with the scripted fake model and the real
local model (greedy), streaming and not, and meets errors in Anthropic's shape. Out: the official
`openai` SDK calls a model whose provider is `anthropic`, served by a fake Anthropic upstream; and
the `anthropic` SDK calls that same model, so a request crosses both translations.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from llmforge.core.db import open_engine
from llmforge.core.settings import Settings, load_settings
from llmforge.gateway import create_app
from llmforge.traces import Trace, TraceStore
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.server import serve

pytestmark = pytest.mark.slow

CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
HELLO = [{"role": "user", "content": "hello there general kenobi"}]
# This SDK takes no sampling arguments any more; they still go in the body.
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic()
    with serve(fake.app) as base:
        yield fake, base


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, upstream: tuple[FakeAnthropic, str]
) -> Iterator[tuple[str, Settings]]:
    def claude(name: str, model_id: str) -> dict[str, object]:
        return {
            "name": name,
            "provider": "anthropic",
            "base_url": upstream[1],
            "model_id": model_id,
            "retries": 0,
            "timeout_s": 10,
        }

    settings = load_settings(
        None,
        database=f"sqlite:///{tmp_path_factory.mktemp('anthropic') / 'gw.db'}",
        models=[
            {
                "name": "local",
                "provider": "llamacpp",
                "path": "builtin:smollm2",
                "context_length": 2048,
            },
            {"name": "fake", "provider": "fake", "responses": ["Hello from the fake model."]},
            {"name": "echo", "provider": "fake"},
            claude("claude", "echo"),
            claude("claude-overloaded", "fail-529"),
            claude("claude-midstream", "midstream-error"),
        ],
        embeddings=[],
    )
    with serve(create_app(settings)) as base:
        yield base, settings


@pytest.fixture(scope="module")
def client(live: tuple[str, Settings]) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=live[0], api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def openai_client(live: tuple[str, Settings]) -> openai.OpenAI:
    return openai.OpenAI(base_url=live[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def traced(settings: Settings, trace_id: str) -> Trace:
    store = TraceStore(open_engine(settings.database))
    deadline = time.monotonic() + 5
    while True:
        found = {t.id: t for t in store.list(limit=50)}
        if trace_id in found or time.monotonic() > deadline:
            return found[trace_id]
        time.sleep(0.05)


# -- Anthropic clients in ------------------------------------------------------------------------


def test_create_answers_in_anthropics_shape_and_is_traced(
    client: anthropic.Anthropic, live: tuple[str, Settings]
) -> None:
    raw = client.messages.with_raw_response.create(
        model="fake", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    reply = raw.parse()
    assert reply.id.startswith("msg_") and raw.headers["x-request-id"] == reply.id
    assert (reply.type, reply.role, reply.model) == ("message", "assistant", "fake")
    assert [(b.type, b.text) for b in reply.content] == [("text", "Hello from the fake model.")]  # type: ignore[union-attr]
    assert (reply.stop_reason, reply.stop_sequence) == ("end_turn", None)
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (1, 5)
    trace = traced(live[1], reply.id)
    assert trace.model == "fake" and trace.status == "ok"
    assert trace.output == "Hello from the fake model."


def test_system_blocks_and_max_tokens_reach_the_model(client: anthropic.Anthropic) -> None:
    reply = client.messages.create(
        model="echo",
        max_tokens=3,
        system=[{"type": "text", "text": "You repeat words."}],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "one two "},
                    {"type": "text", "text": "three four five"},
                ],
            },
        ],
    )
    assert reply.content[0].text == "one two three "  # type: ignore[union-attr]
    assert reply.stop_reason == "max_tokens" and reply.usage.output_tokens == 3
    assert reply.usage.input_tokens == 3 + 5  # the system prompt is part of the prompt


def test_local_model_answers_greedily_and_its_stream_agrees(client: anthropic.Anthropic) -> None:
    whole = client.messages.create(
        model="local",
        max_tokens=12,
        extra_body=GREEDY,
        messages=CAPITAL,  # type: ignore[arg-type]
    )
    text = whole.content[0].text  # type: ignore[union-attr]
    assert "Paris" in text
    assert whole.usage.input_tokens > 10 and 0 < whole.usage.output_tokens <= 12
    with client.messages.stream(
        model="local",
        max_tokens=12,
        extra_body=GREEDY,
        messages=CAPITAL,  # type: ignore[arg-type]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == text  # really streamed, same greedy answer
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == whole.stop_reason
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        whole.usage.input_tokens,
        whole.usage.output_tokens,
    )


def test_stream_sends_the_anthropic_event_sequence(live: tuple[str, Settings]) -> None:
    body = {"model": "fake", "max_tokens": 2, "stream": True, "messages": HELLO}
    with httpx.stream("POST", live[0] + "/v1/messages", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        names = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    # Anthropic allows pings anywhere; ours follows message_start because the first block's kind
    # (text or tool_use) is only known once the model has produced something.
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_unknown_model_is_not_found_in_anthropics_shape(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="gpt-17", max_tokens=5, messages=HELLO)  # type: ignore[arg-type]
    assert err.value.status_code == 404
    body = err.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error" and "fake" in body["error"]["message"]
    with (
        pytest.raises(anthropic.NotFoundError),
        client.messages.stream(model="gpt-17", max_tokens=5, messages=HELLO) as stream,  # type: ignore[arg-type]
    ):
        list(stream.text_stream)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"extra_body": {"temperature": 1.5}}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "hi"}]}, "messages.0.role"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "AA==",
                                },
                            }
                        ],
                    }
                ]
            },
            "does not do image parts",
        ),
        (
            {"tools": [{"name": "f", "input_schema": {"type": "object"}}]},
            "does not do tool calls",
        ),
    ],
)
def test_bad_requests_are_400_invalid_request_errors(
    client: anthropic.Anthropic, kwargs: dict[str, object], says: str
) -> None:
    request: dict[str, object] = {"model": "fake", "max_tokens": 5, "messages": HELLO, **kwargs}
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(**request)  # type: ignore[call-overload]
    body = err.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error"
    assert says in body["error"]["message"]


def test_missing_max_tokens_is_a_400_naming_it(live: tuple[str, Settings]) -> None:
    r = httpx.post(live[0] + "/v1/messages", json={"model": "fake", "messages": HELLO}, timeout=30)
    assert r.status_code == 400
    assert r.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "max_tokens: required field is missing",
        },
    }


def test_oversized_body_is_a_413_in_anthropics_shape(live: tuple[str, Settings]) -> None:
    limit = live[1].server.max_body_bytes
    huge = [{"role": "user", "content": "x" * (limit + 1)}]
    r = httpx.post(
        live[0] + "/v1/messages",
        json={"model": "fake", "max_tokens": 5, "messages": huge},
        timeout=30,
    )
    assert r.status_code == 413
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "request_too_large"
    assert "server.max_body_bytes" in body["error"]["message"]


def test_authentication_errors_come_in_anthropics_shape(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp_path / 'keys.db'}",
        models=[{"name": "fake", "provider": "fake", "responses": ["ok"]}],
        embeddings=[],
        master_key="sk-master-anthropic-test",
    )
    with serve(create_app(settings)) as base:
        wrong = anthropic.Anthropic(base_url=base, api_key="sk-wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as err:
            wrong.messages.create(model="fake", max_tokens=5, messages=HELLO)  # type: ignore[arg-type]
        assert err.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        right = anthropic.Anthropic(base_url=base, api_key="sk-master-anthropic-test")
        reply = right.messages.create(model="fake", max_tokens=5, messages=HELLO)  # type: ignore[arg-type]
        assert reply.content[0].text == "ok"  # type: ignore[union-attr]


# -- a model whose provider is `anthropic` out ----------------------------------------------------


def test_openai_client_gets_an_anthropic_models_answer_translated(
    openai_client: openai.OpenAI, upstream: tuple[FakeAnthropic, str]
) -> None:
    reply = openai_client.chat.completions.create(
        model="claude",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there general kenobi"},
        ],
        max_tokens=2,
        temperature=0,
        stop=["kenobi"],
    )
    sent = upstream[0].requests[-1]
    assert sent["system"] == "Be brief."
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hello there general kenobi"}]}
    ]
    assert (sent["max_tokens"], sent["temperature"], sent["stop_sequences"]) == (2, 0, ["kenobi"])
    assert reply.choices[0].message.content == "hello there"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (2 + 4, 2)


def test_openai_client_streams_an_anthropic_model(openai_client: openai.OpenAI) -> None:
    chunks = list(
        openai_client.chat.completions.create(
            model="claude",
            messages=HELLO,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hello there general kenobi"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_anthropic_upstream_errors_reach_the_openai_client(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        openai_client.chat.completions.create(model="claude-overloaded", messages=HELLO)  # type: ignore[arg-type]
    assert err.value.status_code == 502
    assert "529" in str(err.value.message)


def test_anthropic_client_through_an_anthropic_model_round_trips(
    client: anthropic.Anthropic, upstream: tuple[FakeAnthropic, str]
) -> None:
    reply = client.messages.create(
        model="claude",
        max_tokens=10,
        system="Be brief.",
        stop_sequences=["general"],
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "hello there general kenobi"},
        ],
    )
    sent = upstream[0].requests[-1]
    assert sent["system"] == "Be brief." and sent["stop_sequences"] == ["general"]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert reply.content[0].text == "hello there"  # type: ignore[union-attr]
    assert reply.stop_reason == "end_turn"  # the core does not say which stop sequence matched
    with client.messages.stream(
        model="claude",
        max_tokens=2,
        messages=HELLO,  # type: ignore[arg-type]
    ) as stream:
        assert "".join(stream.text_stream) == "hello there"
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (4, 2)


def test_failure_after_the_first_token_ends_the_stream_with_an_error_event(
    client: anthropic.Anthropic,
) -> None:
    got: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as err,
        client.messages.stream(
            model="claude-midstream",
            max_tokens=10,
            messages=HELLO,  # type: ignore[arg-type]
        ) as stream,
    ):
        for text in stream.text_stream:
            got.append(text)
    assert got == ["hello"]
    body = err.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "api_error"
    assert "Overloaded" in body["error"]["message"]
