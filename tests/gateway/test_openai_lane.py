"""The OpenAI lane (`POST /v1/chat/completions`, `POST /v1/embeddings`, served as plain ASGI ahead
of FastAPI): a client that hangs up stops its call, another method is a 405 that says which one to
use, and a request the wire models refuse is a 400 that names the field.

A live gateway on 127.0.0.1 in front of one fake OpenAI upstream (`tests/fakes/openai_upstream.py`),
no local model: the gateway is shared by the module, the upstream is reset before each test. The
raw-HTTP cases test_http_errors.py covers against the local model are not repeated here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from llmforge.core.settings import load_settings
from llmforge.gateway import create_app
from llmforge.traces import Trace, TraceStore
from tests.fakes.openai_upstream import FakeOpenAI, Fault
from tests.fakes.server import serve

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
MESSAGES = "/v1/messages"
LANE_PATHS = [CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES]
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    with serve(fake.app) as base:
        yield fake, base + "/v1"


@pytest.fixture
def up(upstream: tuple[FakeOpenAI, str]) -> FakeOpenAI:
    upstream[0].reset()
    return upstream[0]


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: tuple[FakeOpenAI, str]
) -> Iterator[tuple[str, FastAPI]]:
    """(base URL, app). Each hang-up test names its own model, so its trace is the only one."""

    def remote(name: str) -> dict[str, Any]:
        return {"name": name, "provider": "openai", "base_url": upstream[1], "model_id": "echo"}

    settings = load_settings(
        None,
        database=f"sqlite:///{tmp_path_factory.mktemp('lane') / 'gw.db'}",
        models=[
            remote("remote"),
            remote("hangup-chat"),
            remote("hangup-stream"),
            remote("hangup-messages"),
            remote("hangup-text"),
        ],
        embeddings=[
            {"name": "hash", "provider": "fake", "dimensions": 8},
            remote("hangup-embed"),
        ],
        server={"preload": False},
    )
    app = create_app(settings)
    with serve(app) as base:
        yield base, app


@pytest.fixture
def base(gateway: tuple[str, FastAPI]) -> str:
    return gateway[0]


def only_trace(app: FastAPI, model: str, done: Callable[[Trace], bool]) -> Trace:
    """The one trace of `model`, once the recorder has written it and `done` holds for it."""
    store: TraceStore = app.state.ctx.traces
    deadline = time.monotonic() + 5
    while True:
        traces = store.list(limit=5, model=model)
        if traces and done(traces[0]):
            assert len(traces) == 1, [t.status for t in traces]
            return traces[0]
        assert time.monotonic() < deadline, f"no finished trace for {model}: {traces}"
        time.sleep(0.02)


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def post(base: str, path: str, content: bytes) -> httpx.Response:
    return httpx.post(
        base + path, content=content, headers={"content-type": "application/json"}, timeout=10
    )


def assert_error(r: httpx.Response, status: int, param: str | None, code: str) -> str:
    """The OpenAI error shape; returns the message."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, code)
    assert err["message"]
    return str(err["message"])


# -- a client that hangs up ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "model", "body"),
    [
        (CHAT, "hangup-chat", {"messages": HELLO}),
        (CHAT, "hangup-stream", {"messages": HELLO, "stream": True}),  # before its first token
        (EMBEDDINGS, "hangup-embed", {"input": "hello there"}),
        (MESSAGES, "hangup-messages", {"messages": HELLO, "max_tokens": 1500}),
        (COMPLETIONS, "hangup-text", {"prompt": "hello there"}),
    ],
    ids=["chat", "stream-before-first-token", "embeddings", "anthropic-messages", "completions"],
)
def test_client_hanging_up_before_the_answer_cancels_the_upstream_call(
    gateway: tuple[str, FastAPI], up: FakeOpenAI, path: str, model: str, body: dict[str, Any]
) -> None:
    up.always = Fault(delay_s=5)  # far longer than the client waits
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):  # no status, no headers, no request id: just gone
        httpx.post(gateway[0] + path, json={"model": model, **body}, timeout=0.5)
    wait_for(lambda: up.abandoned == 1 and up.active == 0)  # the upstream saw it hang up too
    assert time.monotonic() - started < 3  # not the upstream's 5 s
    trace = only_trace(gateway[1], model, lambda t: t.status != "ok")
    assert trace.status == "cancelled" and trace.error is None
    assert up.calls == 1  # neither retried nor sent elsewhere
    up.always = None
    again = httpx.post(gateway[0] + path, json={"model": model, **body}, timeout=5)
    assert again.status_code == 200  # nothing of the abandoned call is left in the way


def test_call_answered_before_the_client_leaves_is_traced_ok(
    gateway: tuple[str, FastAPI], up: FakeOpenAI
) -> None:
    up.always = Fault(delay_s=0.2)  # a slow answer is still an answer, not a hang-up
    r = httpx.post(gateway[0] + CHAT, json={"model": "remote", "messages": HELLO}, timeout=5)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hello there"
    assert up.abandoned == 0
    store: TraceStore = gateway[1].state.ctx.traces
    cid = r.headers["x-request-id"]
    wait_for(lambda: any(t.id == cid for t in store.list(limit=50, model="remote")))
    assert store.get(cid).status == "ok"


# -- another method ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", LANE_PATHS)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_method_other_than_post_is_405_naming_post(base: str, path: str, method: str) -> None:
    r = httpx.request(method, base + path, timeout=10)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    if path == MESSAGES:  # in the shape of the API spoken
        assert r.json()["type"] == "error" and err["type"] == "invalid_request_error"
        return
    assert (err["type"], err["code"], err["param"]) == (
        "invalid_request_error",
        "method_not_allowed",
        None,
    )
    assert err["message"] == "Method Not Allowed"


# -- what the wire models refuse -------------------------------------------------------------------
# test_http_errors.py has malformed JSON on both routes, non-object bodies on chat, and
# messages / messages.0.content / model / stream on chat, input / encoding_format on embeddings.


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"null", b""])
def test_embeddings_body_that_is_not_an_object_is_400(base: str, body: bytes) -> None:
    message = assert_error(post(base, EMBEDDINGS, body), 400, None, "invalid_request")
    if body:
        assert message == "The request body must be a JSON object."


@pytest.mark.parametrize("path", [CHAT, EMBEDDINGS])
@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe{}", b'{"model": "hash"} trailing', b'{"model": "hash", "input": "x",}'],
    ids=["not-utf8", "trailing-garbage", "trailing-comma"],
)
def test_body_that_is_not_json_is_400_not_500(base: str, path: str, body: bytes) -> None:
    message = assert_error(post(base, path, body), 400, None, "invalid_request")
    assert message.startswith("Malformed JSON body")


CHAT_FIELDS = [
    ({"messages": HELLO}, "model"),  # missing
    ({"model": "", "messages": HELLO}, "model"),
    ({"model": "remote", "messages": "hello"}, "messages"),
    ({"model": "remote", "messages": []}, "messages"),
    ({"model": "remote", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"model": "remote", "messages": [{"content": "x"}]}, "messages.0.role"),
    ({"model": "remote", "messages": HELLO, "max_tokens": "10"}, "max_tokens"),
    ({"model": "remote", "messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ({"model": "remote", "messages": HELLO, "temperature": "0.5"}, "temperature"),
    ({"model": "remote", "messages": HELLO, "temperature": 3}, "temperature"),
    ({"model": "remote", "messages": HELLO, "top_p": 0}, "top_p"),
    ({"model": "remote", "messages": HELLO, "seed": 1.5}, "seed"),
    ({"model": "remote", "messages": HELLO, "stop": 7}, "stop"),
    ({"model": "remote", "messages": HELLO, "stop": ["x"] * 17}, "stop"),
    ({"model": "remote", "messages": HELLO, "n": 17}, "n"),
    ({"model": "remote", "messages": HELLO, "logit_bias": {"50256": -100}}, "logit_bias"),
    (
        {
            "model": "remote",
            "messages": HELLO,
            "stream": True,
            "stream_options": {"include_usage": 1},
        },
        "stream_options.include_usage",
    ),
]


@pytest.mark.parametrize(
    ("body", "param"), CHAT_FIELDS, ids=[f"{p}-{i}" for i, (_, p) in enumerate(CHAT_FIELDS)]
)
def test_chat_field_the_wire_model_refuses_is_400_naming_it(
    base: str, up: FakeOpenAI, body: dict[str, Any], param: str
) -> None:
    r = httpx.post(base + CHAT, json=body, timeout=10)
    message = assert_error(r, 400, param, "invalid_request")
    assert message.startswith(param + ": ")
    assert up.calls == 0  # refused before any model was asked


EMBEDDING_FIELDS = [
    ({"input": "x"}, "model"),  # missing
    ({"model": 3, "input": "x"}, "model"),
    ({"model": "hash"}, "input"),  # missing
    ({"model": "hash", "input": 5}, "input"),
    ({"model": "hash", "input": [[1, 2]]}, "input"),
    ({"model": "hash", "input": "x", "dimensions": "8"}, "dimensions"),
    ({"model": "hash", "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": "hash", "input": "x", "encoding_format": 1}, "encoding_format"),
]


@pytest.mark.parametrize(
    ("body", "param"),
    EMBEDDING_FIELDS,
    ids=[f"{p}-{i}" for i, (_, p) in enumerate(EMBEDDING_FIELDS)],
)
def test_embeddings_field_the_wire_model_refuses_is_400_naming_it(
    base: str, up: FakeOpenAI, body: dict[str, Any], param: str
) -> None:
    r = httpx.post(base + EMBEDDINGS, json=body, timeout=10)
    message = assert_error(r, 400, param, "invalid_request")
    assert message.startswith(param + ": ")
    assert up.calls == 0


def test_a_valid_request_on_each_route_still_passes(base: str, up: FakeOpenAI) -> None:
    chat = httpx.post(base + CHAT, json={"model": "remote", "messages": HELLO}, timeout=10)
    assert chat.status_code == 200 and chat.headers["x-request-id"]
    vectors = httpx.post(base + EMBEDDINGS, json={"model": "hash", "input": ["a", "b"]}, timeout=10)
    assert vectors.status_code == 200 and len(vectors.json()["data"]) == 2
