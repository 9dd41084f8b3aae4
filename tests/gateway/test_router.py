"""The router end to end: a live LLMForge in front of three fake upstreams, driven with the official
`openai` SDK (its own retries off, so only the gateway's count).

Upstreams `a` and `b` are the two replicas of `primary`; `c` serves `backup`, the fallback. Each
test gets a fresh gateway (fresh circuits) and freshly reset upstreams, and scripts the failures it
needs on the fakes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai.types.chat import ChatCompletionMessageParam

from llmforge.core.errors import NotFoundError
from llmforge.core.settings import load_settings
from llmforge.gateway import create_app
from llmforge.gateway.router import Router
from llmforge.traces import Trace, TraceStore
from tests.fakes.openai_upstream import FakeOpenAI, Fault
from tests.fakes.server import serve

HELLO: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "hello there general kenobi"}
]
ROUTER = {"retries": 2, "backoff_s": 0.01, "max_backoff_s": 1.0, "circuit_failures": 3}


@dataclass
class Upstreams:
    a: FakeOpenAI
    b: FakeOpenAI
    c: FakeOpenAI
    urls: dict[str, str]


@dataclass
class Live:
    base: str
    app: FastAPI
    client: openai.OpenAI

    @property
    def router(self) -> Router:
        return self.app.state.ctx.gateway.router

    def trace(self, call_id: str) -> Trace:
        """The call's trace, once the recorder has written it."""
        store: TraceStore = self.app.state.ctx.traces
        deadline = time.monotonic() + 5
        while True:
            try:
                return store.get(call_id)
            except NotFoundError:
                assert time.monotonic() < deadline, f"no trace {call_id}"
                time.sleep(0.02)


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    a, b, c = FakeOpenAI(), FakeOpenAI(), FakeOpenAI()
    with serve(a.app) as ua, serve(b.app) as ub, serve(c.app) as uc:
        yield Upstreams(a, b, c, {"a": ua + "/v1", "b": ub + "/v1", "c": uc + "/v1"})


@pytest.fixture
def up(upstreams: Upstreams) -> Upstreams:
    for fake in (upstreams.a, upstreams.b, upstreams.c):
        fake.reset()
    return upstreams


def models(urls: dict[str, str]) -> list[dict[str, Any]]:
    def remote(name: str, on: str, **kw: Any) -> dict[str, Any]:
        return {"name": name, "provider": "openai", "base_url": urls[on], "model_id": "echo", **kw}

    return [
        remote(
            "primary",
            "a",
            deployments=[{"id": "a"}, {"id": "b", "base_url": urls["b"]}],
            fallbacks=["backup"],
        ),
        remote("solo", "a", fallbacks=["backup"]),
        remote("sleepy", "a", timeout_s=0.3, retries=1, fallbacks=["backup"]),
        remote("tiny", "a", context_length=16, fallbacks=["backup"]),
        remote("tiny-alone", "a", context_length=16),
        remote("chained", "a", fallbacks=["second", "backup"]),
        remote("second", "b", model_id="fail-503"),
        remote("backup", "c"),
    ]


@pytest.fixture
def gateway(tmp_path: Path, up: Upstreams) -> Iterator[Callable[..., Live]]:
    """Starts a live gateway; keyword arguments override `router:` settings."""
    with ExitStack() as servers:

        def start(**router: Any) -> Live:
            settings = load_settings(
                None,
                database=f"sqlite:///{tmp_path / 'gw.db'}",
                models=models(up.urls),
                embeddings=[],
                router={"circuit_cooldown_s": 0.5, **ROUTER, **router},
                server={"preload": False},
            )
            app = create_app(settings)
            base = servers.enter_context(serve(app))
            client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=30)
            return Live(base, app, client)

        yield start


@pytest.fixture
def gw(gateway: Callable[..., Live]) -> Live:
    return gateway()


def chat(live: Live, model: str, **kw: Any) -> tuple[str, dict[str, str], str]:
    """(answer, response headers, call id)"""
    raw = live.client.chat.completions.with_raw_response.create(
        model=model, messages=kw.pop("messages", HELLO), **kw
    )
    reply = raw.parse()
    return reply.choices[0].message.content or "", dict(raw.headers), reply.id


def stream_text(live: Live, model: str) -> tuple[str, dict[str, str]]:
    raw = live.client.chat.completions.with_raw_response.create(
        model=model, messages=HELLO, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    return text, dict(raw.headers)


# -- deployments -------------------------------------------------------------------------------


def test_response_names_the_deployment_that_served_it(gw: Live, up: Upstreams) -> None:
    text, headers, cid = chat(gw, "primary")
    assert text == "hello there general kenobi"
    assert headers["x-llmforge-deployment"] in ("a", "b")
    assert "x-llmforge-served-by" not in headers  # the model asked for answered
    trace = gw.trace(cid)
    assert (trace.served_by, trace.deployment) == ("primary", headers["x-llmforge-deployment"])
    assert (trace.retries, trace.fallbacks) == (0, [])
    _, headers, _ = chat(gw, "solo")
    assert headers["x-llmforge-deployment"] == "solo"  # a model without replicas: its own name


async def test_replicas_share_load_by_picking_the_least_busy(gw: Live, up: Upstreams) -> None:
    up.a.always = up.b.always = Fault(delay_s=0.4)
    client = openai.AsyncOpenAI(base_url=gw.base + "/v1", api_key="x", max_retries=0)
    raws = await asyncio.gather(
        *(
            client.chat.completions.with_raw_response.create(model="primary", messages=HELLO)
            for _ in range(4)
        )
    )
    await client.close()
    assert Counter(r.headers["x-llmforge-deployment"] for r in raws) == {"a": 2, "b": 2}
    assert (up.a.calls, up.b.calls) == (2, 2)
    assert up.a.peak == up.b.peak == 2  # the four ran at the same time, two on each replica


# -- retries -----------------------------------------------------------------------------------


def test_retry_after_500_succeeds_on_the_same_deployment(gw: Live, up: Upstreams) -> None:
    up.a.fail_next(1, 500)
    text, headers, cid = chat(gw, "solo")
    assert text == "hello there general kenobi" and headers["x-llmforge-deployment"] == "solo"
    assert up.a.calls == 2 and up.c.calls == 0
    trace = gw.trace(cid)
    assert (trace.status, trace.retries, trace.fallbacks) == ("ok", 1, [])


def test_retry_after_500_moves_to_the_other_replica(gw: Live, up: Upstreams) -> None:
    up.a.fail_next(1, 502)
    up.b.fail_next(1, 502)
    text, _, cid = chat(gw, "primary")
    assert text == "hello there general kenobi"
    # the first attempt failed on one replica, the retry went to the other (not tried yet) and
    # failed too; the third attempt succeeded
    assert up.a.calls >= 1 and up.b.calls >= 1 and up.a.calls + up.b.calls == 3
    assert gw.trace(cid).retries == 2


def test_connection_dropped_before_first_token_is_retried(gw: Live, up: Upstreams) -> None:
    up.a.script(Fault(drop=True))
    text, _, cid = chat(gw, "solo")
    assert text == "hello there general kenobi" and gw.trace(cid).retries == 1
    up.a.script(Fault(drop=True))
    text, headers = stream_text(gw, "solo")
    assert text == "hello there general kenobi" and headers["x-llmforge-deployment"] == "solo"
    assert up.a.calls == 4 and up.c.calls == 0


def test_retry_after_is_honoured(gw: Live, up: Upstreams) -> None:
    up.a.fail_next(1, 429, retry_after="0.5")
    started = time.perf_counter()
    _, headers, cid = chat(gw, "solo")
    waited = time.perf_counter() - started
    assert headers["x-llmforge-deployment"] == "solo" and up.a.calls == 2
    assert 0.5 <= waited < 3  # the upstream's wait, not the 10 ms back-off
    assert gw.trace(cid).retries == 1


def test_retry_after_longer_than_max_backoff_falls_back_at_once(gw: Live, up: Upstreams) -> None:
    up.a.fail_next(1, 429, retry_after="30")
    started = time.perf_counter()
    text, headers, cid = chat(gw, "solo")
    assert time.perf_counter() - started < 5  # not the 30 s asked for
    assert text == "hello there general kenobi" and headers["x-llmforge-served-by"] == "backup"
    trace = gw.trace(cid)
    assert (trace.served_by, trace.fallbacks, trace.retries) == ("backup", ["solo"], 0)
    # the deployment asked to be left alone for 30 s: later calls go straight to the fallback
    _, headers, _ = chat(gw, "solo")
    assert headers["x-llmforge-served-by"] == "backup" and up.a.calls == 1


def test_retry_after_on_one_replica_moves_to_the_other_at_once(gw: Live, up: Upstreams) -> None:
    up.a.fail_next(1, 429, retry_after="30")
    for _ in range(30):  # until a call lands on `a` (each picks a or b at random)
        started = time.perf_counter()
        _, headers, cid = chat(gw, "primary")
        if up.a.calls:
            break
    assert up.a.calls == 1
    assert time.perf_counter() - started < 5  # no 30 s wait: the other replica was ready
    assert headers["x-llmforge-deployment"] == "b" and "x-llmforge-served-by" not in headers
    assert gw.trace(cid).retries == 1
    for _ in range(4):  # `a` rests for its 30 s
        assert chat(gw, "primary")[1]["x-llmforge-deployment"] == "b"
    assert up.a.calls == 1


def test_timeouts_are_retried_then_fall_back(gw: Live, up: Upstreams) -> None:
    up.a.always = Fault(hang=True)
    started = time.perf_counter()
    text, headers, cid = chat(gw, "sleepy")  # timeout_s 0.3, retries 1
    assert time.perf_counter() - started >= 0.6
    assert text == "hello there general kenobi" and headers["x-llmforge-served-by"] == "backup"
    assert up.a.calls == 2
    trace = gw.trace(cid)
    assert (trace.served_by, trace.retries, trace.fallbacks) == ("backup", 1, ["sleepy"])
    wait_for(lambda: up.a.abandoned == 2)  # the upstream saw both timed-out requests hang up


# -- fallbacks ---------------------------------------------------------------------------------


def test_fallback_chain_is_walked_until_a_model_answers(gw: Live, up: Upstreams) -> None:
    up.a.always = Fault(status=500)  # `chained` fails, then `second` (503 by name), then `backup`
    text, headers, cid = chat(gw, "chained")
    assert text == "hello there general kenobi"
    assert (headers["x-llmforge-served-by"], headers["x-llmforge-deployment"]) == (
        "backup",
        "backup",
    )
    assert (up.a.calls, up.b.calls, up.c.calls) == (3, 3, 1)  # each retried twice
    trace = gw.trace(cid)
    assert (trace.model, trace.served_by, trace.deployment) == ("chained", "backup", "backup")
    assert trace.fallbacks == ["chained", "second"] and trace.retries == 4


def test_last_error_of_the_chain_reaches_the_client(gw: Live, up: Upstreams) -> None:
    up.a.always = up.c.always = Fault(status=500)
    with pytest.raises(openai.APIStatusError) as err:
        chat(gw, "chained")
    assert err.value.status_code == 502 and "'backup'" in err.value.message


def test_context_window_fallback_skips_a_model_too_small_for_the_prompt(
    gw: Live, up: Upstreams
) -> None:
    long: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "word " * 40}
    ]  # ~50 tokens; tiny has 16
    text, headers, cid = chat(gw, "tiny", messages=long)
    assert text == " ".join(["word"] * 40) and headers["x-llmforge-served-by"] == "backup"
    assert up.a.calls == 0  # never sent to the small model
    assert gw.trace(cid).fallbacks == ["tiny"]
    with pytest.raises(openai.BadRequestError) as err:  # no model left that fits
        chat(gw, "tiny-alone", messages=long)
    assert err.value.code == "context_length_exceeded"


def test_context_window_fallback_when_the_upstream_says_context_length_exceeded(
    gw: Live, up: Upstreams
) -> None:
    up.a.script(Fault(status=400, code="context_length_exceeded"))
    text, headers, cid = chat(gw, "solo")
    assert text == "hello there general kenobi" and headers["x-llmforge-served-by"] == "backup"
    assert up.a.calls == 1  # not retried: the same model would refuse it again
    trace = gw.trace(cid)
    assert (trace.fallbacks, trace.retries) == (["solo"], 0)


def test_client_error_is_not_retried(gw: Live, up: Upstreams) -> None:
    with pytest.raises(openai.BadRequestError):  # refused by our own validation
        gw.client.chat.completions.create(
            model="solo",
            messages=[{"role": "wizard", "content": "x"}],  # type: ignore[list-item, misc]
        )
    assert up.a.calls == 0
    up.a.always = Fault(status=422)  # the upstream finds the request invalid
    for _ in range(4):
        with pytest.raises(openai.BadRequestError) as err:
            chat(gw, "solo")
        assert err.value.code == "upstream_rejected"
    assert up.a.calls == 4 and up.c.calls == 0  # no retry, no fallback
    assert gw.router.circuit_states().get("solo", "closed") == "closed"  # not the upstream's fault


# -- circuit breaker ---------------------------------------------------------------------------


def test_circuit_opens_after_repeated_failures_and_gets_no_traffic_while_open(
    gateway: Callable[..., Live], up: Upstreams
) -> None:
    gw = gateway(circuit_cooldown_s=30)
    up.a.always = Fault(status=500)
    for _ in range(20):
        assert chat(gw, "primary")[1]["x-llmforge-deployment"] == "b"  # retried onto b
        if gw.router.circuit_states().get("a") == "open":
            break
    assert gw.router.circuit_states() == {"a": "open"}
    assert up.a.calls == 3  # circuit_failures
    for _ in range(5):
        assert chat(gw, "primary")[1]["x-llmforge-deployment"] == "b"
    assert up.a.calls == 3  # nothing reached the broken replica while its circuit was open


def test_circuit_probes_back_and_closes_when_the_deployment_recovers(
    gw: Live, up: Upstreams
) -> None:
    up.a.always = Fault(status=500)
    assert chat(gw, "solo")[1]["x-llmforge-served-by"] == "backup"  # 3 failures: open
    assert gw.router.circuit_states() == {"solo": "open"}
    assert chat(gw, "solo")[1]["x-llmforge-served-by"] == "backup"
    assert up.a.calls == 3  # while open, straight to the fallback
    time.sleep(0.6)  # cooldown 0.5 s
    assert gw.router.circuit_states() == {"solo": "half_open"}
    assert chat(gw, "solo")[1]["x-llmforge-served-by"] == "backup"  # the probe failed:
    assert up.a.calls == 4 and gw.router.circuit_states() == {"solo": "open"}  # open again
    up.a.always = None  # recovers
    time.sleep(0.6)
    _, headers, cid = chat(gw, "solo")  # the probe succeeds
    assert headers["x-llmforge-deployment"] == "solo" and "x-llmforge-served-by" not in headers
    assert gw.router.circuit_states() == {"solo": "closed"}
    assert up.a.calls == 5 and gw.trace(cid).served_by == "solo"


# -- streams -----------------------------------------------------------------------------------


def test_stream_failing_before_first_token_falls_back(gw: Live, up: Upstreams) -> None:
    up.a.always = up.b.always = Fault(status=503)
    text, headers = stream_text(gw, "primary")
    assert text == "hello there general kenobi"
    assert (headers["x-llmforge-served-by"], headers["x-llmforge-deployment"]) == (
        "backup",
        "backup",
    )
    assert up.a.calls + up.b.calls == 3 and up.c.calls == 1
    assert all(r["stream"] for r in up.c.requests)


@pytest.mark.parametrize("fault", [Fault(error_after=2), Fault(drop_after=2)], ids=str)
def test_stream_failing_after_first_token_ends_with_an_error_event(
    gw: Live, up: Upstreams, fault: Fault
) -> None:
    up.a.always = fault
    stream = gw.client.chat.completions.create(model="solo", messages=HELLO, stream=True)
    got: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "hello there"  # what was sent stays sent; no silent end, no fallback
    body = {"model": "solo", "messages": HELLO, "stream": True}
    with httpx.stream("POST", gw.base + "/v1/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200
        cid = r.headers["x-request-id"]
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1].startswith('data: {"error":') and "data: [DONE]" not in events
    assert up.a.calls == 2 and up.c.calls == 0
    trace = gw.trace(cid)
    assert (trace.status, trace.output, trace.fallbacks) == ("error", "hello there", [])


async def test_client_disconnect_mid_stream_cancels_the_upstream_request(
    gw: Live, up: Upstreams
) -> None:
    up.a.always = Fault(drip_s=0.2)
    words = [{"role": "user", "content": " ".join(f"w{i}" for i in range(50))}]
    body = {"model": "solo", "messages": words, "stream": True}
    async with (
        httpx.AsyncClient(base_url=gw.base, timeout=10) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        cid = r.headers["x-request-id"]
        async for line in r.aiter_lines():
            if '"content":"w' in line:
                break  # one real token; now hang up
    await asyncio.to_thread(wait_for, lambda: up.a.abandoned == 1 and up.a.active == 0)
    trace = await asyncio.to_thread(gw.trace, cid)
    assert trace.status == "cancelled" and trace.output.startswith("w0")
    assert len(trace.output.split()) < 50


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
