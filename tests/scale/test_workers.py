"""`llmforge serve --workers 2` on PostgreSQL and Redis, as a real process under concurrent load:
both workers serve, and a key's rate limit is exact, its budget is never passed, the cache and the
keys themselves are shared, and every call made is one trace row.

Needs LLMFORGE_TEST_POSTGRES_URL and LLMFORGE_TEST_REDIS_URL (`make test` starts both)."""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llmforge.core.db import open_engine
from llmforge.core.types import Message
from llmforge.gateway.admission import prompt_token_bound
from llmforge.traces import TraceStore
from tests.conftest import server_url
from tests.scale.gateway_process import GatewayProcess

MASTER = "master-scale-key"
PRICE = {"input_per_mtok": 1000.0, "output_per_mtok": 2000.0}
HI = [{"role": "user", "content": "hi"}]
MAX_TOKENS = 8
WORST = (  # the most one "hi" call may cost, as admission reserves it
    prompt_token_bound([Message(role="user", content="hi")]) * PRICE["input_per_mtok"]
    + MAX_TOKENS * PRICE["output_per_mtok"]
) / 1e6
ACTUAL = (1 * PRICE["input_per_mtok"] + 2 * PRICE["output_per_mtok"]) / 1e6  # 1 word in, 2 out


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, str]]:
    from tests.conftest import POSTGRES_ENV, postgres_schema

    redis = server_url("LLMFORGE_TEST_REDIS_URL", "a redis-server")
    with postgres_schema(server_url(POSTGRES_ENV, "a PostgreSQL")) as database:
        config = {
            "database": database,
            "redis_url": redis,
            "master_key": MASTER,
            "cache": {"enabled": True, "backend": "redis"},
            "router": {"retries": 0},
            "server": {"budget_wait_s": 0, "preload": False},
            "embeddings": [],
            "models": [
                {"name": "quick", "provider": "fake", "responses": ["one two"], "price": PRICE},
                # 2 words x 1 s: every request of a burst is admitted or refused before any
                # call settles and gives back the unused part of its reservation
                {
                    "name": "slow",
                    "provider": "fake",
                    "responses": ["one two"],
                    "delay_s": 1.0,
                    "price": PRICE,
                },
            ],
        }
        server = GatewayProcess(config, tmp_path_factory.mktemp("workers"), workers=2)
        server.start()
        try:
            yield server, database
        finally:
            server.stop()


def admin(server: GatewayProcess, method: str, path: str, **body: Any) -> dict[str, Any]:
    r = httpx.request(
        method,
        server.base + path,
        json=body or None,
        headers={"Authorization": f"Bearer {MASTER}"},
        timeout=30,
    )
    assert r.status_code < 300, r.text
    return dict(r.json())


async def burst(
    server: GatewayProcess, key: str, n: int, body: dict[str, Any], cache: bool = False
) -> list[httpx.Response]:
    """n concurrent requests, each on a connection of its own (the kernel hands connections to
    the workers); they bypass the cache unless `cache`."""
    headers = {"Authorization": f"Bearer {key}", "x-llmforge-cache": "yes" if cache else "no"}

    async def one() -> httpx.Response:
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as http:
            return await http.post("/v1/chat/completions", json=body, headers=headers)

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_two_workers_share_limits_budgets_cache_and_keys(
    gateway: tuple[GatewayProcess, str],
) -> None:
    server, database = gateway
    assert len(server.worker_pids()) == 2
    cpu_before = server.cpu_seconds()
    served = 0

    # requests per minute: exact across the two workers
    limited = admin(server, "POST", "/admin/keys", name="rpm", rpm=10)
    replies = await burst(server, limited["key"], 30, {"model": "quick", "messages": HI})
    assert sorted(r.status_code for r in replies) == [200] * 10 + [429] * 20
    served += 10

    # budget: exactly the reservations that fit side by side are admitted; spend never passes it
    fits = 5
    budget = fits * WORST + WORST / 2
    budgeted = admin(server, "POST", "/admin/keys", name="budget", budget_usd=budget)
    body = {"model": "slow", "messages": HI, "max_tokens": MAX_TOKENS}
    replies = await burst(server, budgeted["key"], 30, body)
    codes = [r.status_code for r in replies]
    assert codes.count(200) == fits and codes.count(429) == 30 - fits, codes
    served += fits
    after = admin(server, "GET", f"/admin/keys/{budgeted['id']}")
    assert after["spent_usd"] == pytest.approx(fits * ACTUAL)
    assert after["spent_usd"] <= budget and after["reserved_usd"] == 0

    # cache: one answer stored by one worker is a hit on both
    open_key = admin(server, "POST", "/admin/keys", name="cache")
    # a prompt of this run only: the test Redis outlives it
    prompt = f"cache me {secrets.token_hex(8)}"
    body = {"model": "slow", "messages": [{"role": "user", "content": prompt}]}
    (first,) = await burst(server, open_key["key"], 1, body, cache=True)
    assert first.status_code == 200 and first.headers["x-llmforge-cache"] == "miss"
    replies = await burst(server, open_key["key"], 16, body, cache=True)
    assert [r.headers["x-llmforge-cache"] for r in replies] == ["hit"] * 16
    served += 17

    # keys: revoked through one worker, refused by both at once
    admin(server, "DELETE", f"/admin/keys/{open_key['id']}")
    replies = await burst(server, open_key["key"], 16, {"model": "quick", "messages": HI})
    assert {r.status_code for r in replies} == {401}

    # both workers took part in every phase above (CPU time each spent serving)
    cpu_after = server.cpu_seconds()
    assert all(cpu_after[p] - cpu_before[p] > 0.05 for p in cpu_before), (cpu_before, cpu_after)

    # every call made is one trace row, once the workers have stopped (and flushed): those
    # answered and those refused by a limit or the budget (an unknown key is no call)
    server.stop()
    traces = TraceStore(open_engine(database)).list(limit=10_000)
    assert sum(t.status == "ok" for t in traces) == served
    assert sum(t.status == "error" for t in traces) == 20 + (30 - fits)
    assert len(traces) == served + 20 + (30 - fits)
    assert sum(t.cache == "hit" for t in traces) == 16
    assert math.isclose(
        sum(t.cost_usd or 0 for t in traces if t.key_id == budgeted["id"]), fits * ACTUAL
    )
