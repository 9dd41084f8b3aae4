"""The rest of the everyday OpenAI surface, with the `openai` SDK: the legacy `/v1/completions`,
`logprobs` / `top_logprobs`, `n` choices and image parts — from the local model, passed through to
a remote one, or refused with a 400 that says why."""

from __future__ import annotations

import math
from typing import Any

import openai
import pytest

from tests.gateway.conftest import trace_of

pytestmark = pytest.mark.slow  # the real local model

HELLO: Any = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def client(protocol: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=protocol + "/v1", api_key="unused", max_retries=0)


def test_local_text_completion_continues_the_prompt(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="local", prompt="The capital of France is", max_tokens=6, temperature=0
    )
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text.strip() and r.choices[0].finish_reason in ("length", "stop")
    assert r.usage is not None and r.usage.completion_tokens <= 6
    streamed = client.completions.create(
        model="local", prompt="The capital of France is", max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text


def test_text_completion_with_logprobs_and_echo(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="local", prompt="One, two,", max_tokens=4, temperature=0, logprobs=2
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens and len(lp.tokens) == len(lp.token_logprobs or [])
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(len(top) <= 2 for top in lp.top_logprobs or [])
    echoed = client.completions.create(
        model="local", prompt="One, two,", max_tokens=4, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "One, two," + r.choices[0].text


def test_remote_text_completion_is_passed_through(protocol_app: Any) -> None:
    base, app = protocol_app
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    r = client.completions.create(model="echo", prompt="alpha beta gamma", max_tokens=2)
    assert r.choices[0].text.split() == ["alpha", "beta"]
    trace = trace_of(app, r.id)
    assert trace.kind == "text" and trace.request["prompt"] == "alpha beta gamma"


def test_models_without_text_completion_say_so(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="claude", prompt="x", max_tokens=2)
    assert "does not do text completion" in str(e.value)


def test_local_chat_logprobs_with_alternatives(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="local", messages=HELLO, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and "".join(t.token for t in content) == r.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and 1 <= len(token.top_logprobs) <= 3
        best = max(t.logprob for t in token.top_logprobs)
        assert math.isclose(token.logprob, best, abs_tol=1e-3)  # greedy picks the likeliest


def test_n_choices_local_and_remote(client: openai.OpenAI) -> None:
    local = client.chat.completions.create(
        model="local", messages=HELLO, max_tokens=6, temperature=0.9, seed=3, n=2
    )
    assert [c.index for c in local.choices] == [0, 1]
    assert all(c.message.content for c in local.choices)
    remote = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "a b c"}], n=3
    )
    assert len(remote.choices) == 3
    stream = client.chat.completions.create(
        model="local", messages=HELLO, max_tokens=4, temperature=0.9, n=2, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    finished = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_images_pass_to_remote_models_and_are_refused_by_text_models(
    client: openai.OpenAI,
) -> None:
    image: Any = [{"role": "user", "content": [
        {"type": "text", "text": "What is in it?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=",
                                            "detail": "low"}},
    ]}]  # fmt: skip
    r = client.chat.completions.create(model="echo", messages=image)
    assert r.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="local", messages=image)
    assert "text" in str(e.value)
