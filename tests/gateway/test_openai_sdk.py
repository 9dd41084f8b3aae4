"""The official `openai` SDK against a live LLMForge: chat, stream, embeddings, models, errors."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest

from llmforge.core.db import open_engine
from llmforge.core.settings import Settings
from llmforge.traces import TraceStore

pytestmark = pytest.mark.slow

CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def client(live: tuple[str, Settings]) -> openai.OpenAI:
    return openai.OpenAI(base_url=live[0] + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_chat_and_embedding_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["local", "fake", "slow", "unreachable", "minilm", "hash"]


def test_local_model_answers_greedily_and_deterministically(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="local", messages=CAPITAL, temperature=0, max_tokens=12
    )
    second = client.chat.completions.create(
        model="local", messages=CAPITAL, temperature=0, max_tokens=12
    )
    text = first.choices[0].message.content or ""
    assert "Paris" in text
    assert text == second.choices[0].message.content
    assert first.usage is not None and first.usage.prompt_tokens > 10
    assert 0 < first.usage.completion_tokens <= 12
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert first.model == "local" and first.id.startswith("chatcmpl-")


def test_stream_yields_the_same_text_as_the_plain_call(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model="local", messages=CAPITAL, temperature=0, max_tokens=12
    )
    chunks = list(
        client.chat.completions.create(
            model="local",
            messages=CAPITAL,
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens  # type: ignore[union-attr]
    assert (
        len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    )  # really streamed


def test_max_tokens_and_stop_are_honoured(client: openai.OpenAI) -> None:
    capped = client.chat.completions.create(
        model="local", messages=CAPITAL, temperature=0, max_completion_tokens=1
    )
    assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 1  # type: ignore[union-attr]
    stopped = client.chat.completions.create(model="fake", messages=CAPITAL, stop=["fake"])
    assert stopped.choices[0].message.content == "Hello from the "


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    runs = {
        client.chat.completions.create(
            model="local", messages=CAPITAL, temperature=0.9, seed=7, max_tokens=10
        )
        .choices[0]
        .message.content
        for _ in range(2)
    }
    assert len(runs) == 1


def test_embeddings_float_and_base64_agree(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(
        model="minilm", input=["国王", "a king", "a queen"], encoding_format="float"
    )
    assert [d.index for d in floats.data] == [0, 1, 2]
    vecs = np.array([d.embedding for d in floats.data])
    assert vecs.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-3)
    assert vecs[1] @ vecs[2] > 0.5  # king ~ queen
    raw = client.embeddings.with_raw_response.create(
        model="minilm", input="a king", encoding_format="base64"
    )
    b64 = raw.http_response.json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(b64), dtype="<f4")
    assert np.allclose(decoded, vecs[1], atol=1e-6)
    single = client.embeddings.create(model="minilm", input="a king")  # SDK asks base64 by default
    assert np.allclose(single.data[0].embedding, vecs[1], atol=1e-6)
    assert single.usage.prompt_tokens > 0


def test_unknown_model_is_a_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-17", messages=CAPITAL)
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found" and body["param"] == "model"
    assert "local" in body["message"]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.NotFoundError):
        list(client.chat.completions.create(model="gpt-17", messages=CAPITAL, stream=True))


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": []}, "messages"),
        ({"messages": CAPITAL, "temperature": 5}, "temperature"),
        ({"messages": CAPITAL, "max_tokens": "ten"}, "max_tokens"),
        ({"messages": CAPITAL, "n": 0}, "n"),
        ({"messages": CAPITAL, "top_p": 0}, "top_p"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(
    client: openai.OpenAI, kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="local", **kwargs)  # type: ignore[call-overload]
    body = err.value.body
    assert (
        isinstance(body, dict)
        and body["param"] == param
        and body["type"] == "invalid_request_error"
    )


def test_chat_model_used_for_embeddings_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="chat model"):
        client.embeddings.create(model="local", input="x")


def test_unreachable_upstream_is_a_502_not_a_500(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="unreachable", messages=CAPITAL)
    assert err.value.status_code == 502


def test_every_call_is_traced(client: openai.OpenAI, live: tuple[str, Settings]) -> None:
    reply = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "你好"}]
    )
    client.embeddings.create(model="hash", input=["a", "b"])
    store = TraceStore(open_engine(live[1].database))
    import time

    deadline = time.time() + 5
    while time.time() < deadline:
        traces = {t.id: t for t in store.list(limit=50)}
        if reply.id in traces and any(t.kind == "embedding" for t in traces.values()):
            break
        time.sleep(0.05)
    chat = traces[reply.id]
    assert (
        chat.status == "ok" and chat.model == "fake" and chat.output == "Hello from the fake model."
    )
    assert chat.request["messages"] == [{"role": "user", "content": "你好"}]
    assert chat.latency_ms > 0
    emb = next(t for t in traces.values() if t.kind == "embedding")
    assert emb.model == "hash" and emb.request == {"input": ["a", "b"]}
    failed = [t for t in traces.values() if t.model == "unreachable"]
    assert all(t.status == "error" and t.error for t in failed)
