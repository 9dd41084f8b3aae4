"""Several clients at once: all served, a bounded queue that refuses the excess, disconnects stop
work."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from llmforge.core.db import open_engine
from llmforge.core.settings import Settings
from llmforge.models.llamacpp import default_parallel
from llmforge.traces import TraceStore

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "Count from one to twenty."}]


async def test_concurrent_streams_on_the_local_model_are_all_served(
    live: tuple[str, Settings],
) -> None:
    client = openai.AsyncOpenAI(base_url=live[0] + "/v1", api_key="x", max_retries=0, timeout=120)

    async def one(i: int) -> str:
        stream = await client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": f"Say the number {i}."}],
            temperature=0,
            max_tokens=8,
            stream=True,
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    # max_queue is 2: one running + two waiting fit; run them in waves of three
    for wave in range(2):
        texts = await asyncio.gather(*(one(wave * 3 + i) for i in range(3)))
        assert all(texts)
    fakes = await asyncio.gather(
        *(client.chat.completions.create(model="slow", messages=ASK) for _ in range(20))
    )
    assert {f.choices[0].message.content for f in fakes} == {"one two three four five six"}
    await client.close()


async def test_excess_requests_get_503_with_retry_after(live: tuple[str, Settings]) -> None:
    local = next(m for m in live[1].models if m.name == "local")
    slots = local.parallel or default_parallel()  # decoded at once (1: in-process)
    capacity = slots + local.max_queue  # served now or waiting in line
    async with httpx.AsyncClient(base_url=live[0], timeout=120) as http:
        body = {"model": "local", "messages": ASK, "max_tokens": 30, "temperature": 0}
        results = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=body) for _ in range(capacity + 2))
        )
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) >= capacity and 503 in statuses
    refused = next(r for r in results if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "model_overloaded"


async def test_client_disconnect_stops_generation(live: tuple[str, Settings]) -> None:
    base, settings = live
    body = {"model": "local", "messages": ASK, "max_tokens": 1500, "temperature": 0, "stream": True}
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            request_id = r.headers["x-request-id"]
            async for line in r.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break  # got a real token; now hang up
        started = time.perf_counter()
        quick = await http.post(
            "/v1/chat/completions",
            json={"model": "local", "messages": ASK, "max_tokens": 2, "temperature": 0},
        )
        waited = time.perf_counter() - started
    assert quick.status_code == 200
    assert waited < 5, f"the abandoned generation kept the model busy for {waited:.1f}s"
    store = TraceStore(open_engine(settings.database))
    deadline = time.time() + 5
    while time.time() < deadline:
        found = [t for t in store.list(limit=100) if t.id == request_id]
        if found:
            break
        await asyncio.sleep(0.05)
    assert found and found[0].status == "cancelled"
    assert found[0].completion_tokens < 1500
