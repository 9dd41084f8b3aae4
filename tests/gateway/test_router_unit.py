"""The router's circuit bookkeeping, driven directly (no HTTP in front): a real `ModelCatalog` whose
`openai` model points at a fake upstream, and calls cancelled or streamed the way the gateway does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from llmforge.core.config import ModelConfig, RouterConfig
from llmforge.core.errors import OverloadedError, UpstreamError
from llmforge.core.types import Message
from llmforge.gateway.call import Call
from llmforge.gateway.router import Router
from llmforge.models import ModelCatalog, collect
from tests.fakes.openai_upstream import FakeOpenAI, Fault
from tests.fakes.server import serve

HELLO = [Message(role="user", content="hello there")]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    with serve(fake.app) as base:
        yield fake, base + "/v1"


@pytest.fixture
def upstream(served: tuple[FakeOpenAI, str]) -> tuple[FakeOpenAI, str]:
    served[0].reset()
    return served


def router(base: str, **config: float) -> Router:
    model = ModelConfig(name="m", provider="openai", base_url=base, model_id="echo", retries=0)
    return Router(ModelCatalog([model], []), RouterConfig(backoff_s=0.01, **config))


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_cancelled_probe_lets_the_next_call_probe(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    fake, base = upstream
    r = router(base, circuit_failures=1, circuit_cooldown_s=0.2)
    fake.fail_next(1, 500)
    with pytest.raises(UpstreamError):
        await r.complete(Call(model="m", messages=HELLO))
    assert r.circuit_states() == {"m": "open"}
    await asyncio.sleep(0.25)
    fake.always = Fault(hang=True)
    probe = asyncio.create_task(r.complete(Call(model="m", messages=HELLO)))
    await wait_until(lambda: fake.calls == 2)
    with pytest.raises(OverloadedError):  # one probe at a time
        await r.complete(Call(model="m", messages=HELLO))
    probe.cancel()  # the client went away: the probe proved nothing either way
    with pytest.raises(asyncio.CancelledError):
        await probe
    fake.always = None
    completion = await r.complete(Call(model="m", messages=HELLO))  # a new probe gets through
    assert completion.text == "hello there"
    assert r.circuit_states() == {"m": "closed"}
    await r.catalog.aclose()


async def test_a_stream_failing_midway_counts_against_the_circuit(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    fake, base = upstream
    r = router(base, circuit_failures=2, circuit_cooldown_s=30)
    fake.always = Fault(error_after=1)
    for _ in range(2):
        deltas = r.stream(Call(model="m", messages=HELLO, stream=True))
        assert (await anext(deltas)).text == "hello"
        with pytest.raises(UpstreamError, match="mid-stream"):
            await anext(deltas)
        await deltas.aclose()
    assert r.circuit_states() == {"m": "open"}
    with pytest.raises(OverloadedError, match="circuit open") as err:
        await collect(r.stream(Call(model="m", messages=HELLO, stream=True)))
    assert 29 < err.value.retry_after_s <= 30  # the client learns when to come back
    assert fake.calls == 2
    await r.catalog.aclose()


async def test_a_stream_closed_after_its_last_delta_closes_the_circuit(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    fake, base = upstream
    r = router(base, circuit_failures=1, circuit_cooldown_s=0.1)
    fake.fail_next(1, 503)
    with pytest.raises(UpstreamError):
        await r.complete(Call(model="m", messages=HELLO))
    await asyncio.sleep(0.15)
    deltas = r.stream(Call(model="m", messages=HELLO, stream=True))
    async for delta in deltas:
        if delta.finish_reason:
            break  # the way the gateway stops: after the finish, without draining the generator
    await deltas.aclose()
    assert r.circuit_states() == {"m": "closed"}
    # ... while one closed early (the client went away) proves nothing: still half-open
    fake.fail_next(1, 503)
    with pytest.raises(UpstreamError):
        await r.complete(Call(model="m", messages=HELLO))
    await asyncio.sleep(0.15)
    deltas = r.stream(Call(model="m", messages=HELLO, stream=True))
    assert (await anext(deltas)).text == "hello"
    await deltas.aclose()
    assert r.circuit_states() == {"m": "half_open"}
    assert (await r.complete(Call(model="m", messages=HELLO))).text == "hello there"
    await r.catalog.aclose()
