"""Budgets: the worst case is reserved before a call and settled to the actual cost after it, so a
key's spend never passes its budget, under 200 concurrent requests, failures and disconnects."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmforge.core.db import open_engine
from llmforge.core.errors import AuthenticationError, BudgetExceededError
from llmforge.core.settings import Settings, load_settings
from llmforge.core.types import Message
from llmforge.gateway import create_app
from llmforge.gateway.admission import prompt_token_bound
from llmforge.gateway.keys import ApiKey, KeyStore, to_nusd
from llmforge.traces import Trace, TraceStore
from tests.fakes.server import free_port, serve

MASTER = "master-test-key"
PRICE = {"input_per_mtok": 1000.0, "output_per_mtok": 2000.0}  # $0.001 and $0.002 a token
HI = [{"role": "user", "content": "hi"}]
MAX_TOKENS = 8
# the most one call with HI and MAX_TOKENS may cost: every prompt token is at least one byte
WORST = (
    prompt_token_bound([Message(role="user", content="hi")]) * PRICE["input_per_mtok"]
    + MAX_TOKENS * PRICE["output_per_mtok"]
) / 1e6
MODELS: list[dict[str, Any]] = [
    # a call takes 2 x 1.5 s, so all 200 concurrent requests are admitted or refused before any
    # of them finishes and gives back its reservation
    {
        "name": "priced",
        "provider": "fake",
        "responses": ["one two"],
        "delay_s": 1.5,
        "price": PRICE,
    },
    {"name": "quick", "provider": "fake", "responses": ["one two"], "price": PRICE},
    {
        "name": "stream",
        "provider": "fake",
        "responses": [" ".join(f"w{i}" for i in range(100))],
        "delay_s": 0.05,
        "price": PRICE,
    },
    {
        "name": "capped",
        "provider": "fake",
        "responses": ["one two three four five six"],
        "max_output_tokens": 3,
        "price": PRICE,
    },
    {
        "name": "cheap",
        "provider": "fake",
        "responses": ["one two"],
        "fallbacks": ["dear"],
        "price": {"input_per_mtok": 1.0, "output_per_mtok": 1.0},
    },
    {"name": "dear", "provider": "fake", "responses": ["one two"], "price": PRICE},
]


def gateway_settings(tmp: Path, models: list[dict[str, Any]] = MODELS) -> Settings:
    return load_settings(
        None,
        database=f"sqlite:///{tmp / 'gw.db'}",
        models=models,
        embeddings=[],
        master_key=MASTER,
        router={"retries": 0},
    )


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    settings = gateway_settings(tmp_path)
    with serve(create_app(settings)) as base:
        yield base, settings


def new_key(base: str, budget_usd: float) -> tuple[str, str]:
    r = httpx.post(
        base + "/admin/keys",
        json={"name": "budgeted", "budget_usd": budget_usd},
        headers={"Authorization": f"Bearer {MASTER}"},
    )
    assert r.status_code == 201, r.text
    return r.json()["key"], r.json()["id"]


def shown(base: str, key_id: str) -> dict[str, Any]:
    r = httpx.get(base + f"/admin/keys/{key_id}", headers={"Authorization": f"Bearer {MASTER}"})
    return dict(r.json())


def stored(settings: Settings, key_id: str) -> tuple[ApiKey, list[Trace]]:
    """The key and its traces, read from the database after the server stopped (all flushed)."""
    engine = open_engine(settings.database)
    traces = [t for t in TraceStore(engine).list(limit=10_000) if t.key_id == key_id]
    return KeyStore(engine).get(key_id), traces


async def test_200_concurrent_requests_never_pass_the_budget(tmp_path: Path) -> None:
    budget = 2.0
    allowed = math.floor(budget / WORST)  # reservations that fit side by side
    assert allowed == 12
    settings = gateway_settings(tmp_path)
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=60
        ) as http,
    ):
        master = {"Authorization": f"Bearer {MASTER}"}
        created = await http.post(
            "/admin/keys", json={"name": "b", "budget_usd": budget}, headers=master
        )
        key, key_id = created.json()["key"], created.json()["id"]
        body = {"model": "priced", "messages": HI, "max_tokens": MAX_TOKENS}

        async def one() -> tuple[httpx.Response, float]:
            r = await http.post(
                "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            return r, time.monotonic()

        results = await asyncio.gather(*(one() for _ in range(200)))
        during = (await http.get(f"/admin/keys/{key_id}", headers=master)).json()
    key_row, traces = stored(settings, key_id)

    ok = [(r, t) for r, t in results if r.status_code == 200]
    refused = [(r, t) for r, t in results if r.status_code != 200]
    assert {r.status_code for r, _ in refused} == {429}
    assert {r.json()["error"]["code"] for r, _ in refused} == {"budget_exceeded"}
    assert max(t for _, t in refused) < min(t for _, t in ok), "a call finished too early"
    assert len(ok) == allowed

    actual = [
        (r.json()["usage"]["prompt_tokens"] * 1000 + r.json()["usage"]["completion_tokens"] * 2000)
        / 1e6
        for r, _ in ok
    ]
    assert all(0 < a < WORST for a in actual)
    assert during["spent_usd"] == pytest.approx(sum(actual), abs=1e-9)
    assert during["reserved_usd"] == 0
    assert key_row.spent_usd <= budget
    assert key_row.spent_usd == pytest.approx(sum(actual), abs=1e-9)
    assert key_row.spent_usd == pytest.approx(sum(t.cost_usd or 0 for t in traces), abs=1e-9)
    assert len([t for t in traces if t.status == "ok"]) == allowed


def test_what_is_left_of_a_budget_stays_usable(gateway: tuple[str, Settings]) -> None:
    base, _ = gateway
    key, key_id = new_key(base, budget_usd=WORST * 3.5)
    sdk = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    calls = 0
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(100):
            sdk.chat.completions.create(model="quick", messages=HI, max_tokens=MAX_TOKENS)
            calls += 1
    assert e.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    assert "Lower max_tokens" in str(e.value)
    spent = shown(base, key_id)["spent_usd"]
    # every call settled at its small actual cost, so calls went on until the worst case no
    # longer fitted in what was left
    assert spent + WORST > WORST * 3.5 >= spent
    assert calls > 3


def test_failed_calls_release_their_reservation(tmp_path: Path) -> None:
    broken = {
        "name": "broken",
        "provider": "openai",
        "base_url": f"http://127.0.0.1:{free_port()}/v1",
        "timeout_s": 5,
        "price": PRICE,
    }
    with serve(create_app(gateway_settings(tmp_path, [broken]))) as base:
        key, key_id = new_key(base, budget_usd=WORST * 2.5)  # two reservations at most
        sdk = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        for _ in range(5):
            with pytest.raises(openai.APIStatusError) as e:
                sdk.chat.completions.create(model="broken", messages=HI, max_tokens=MAX_TOKENS)
            assert e.value.status_code == 502  # never 429: each failure gave its reservation back
        after = shown(base, key_id)
    assert (after["spent_usd"], after["reserved_usd"]) == (0, 0)


def test_a_stream_the_client_leaves_releases_its_reservation_and_is_charged(
    tmp_path: Path,
) -> None:
    settings = gateway_settings(tmp_path)
    with serve(create_app(settings)) as base:
        key, key_id = new_key(base, budget_usd=1.0)
        body = {"model": "stream", "messages": HI, "max_tokens": 100, "stream": True}
        with (
            httpx.Client(timeout=30) as http,
            http.stream(
                "POST",
                base + "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
            ) as r,
        ):
            assert r.status_code == 200
            assert shown(base, key_id)["reserved_usd"] > 0  # held while it streams
            assert any('"content":"w1 "' in line for line in r.iter_lines())
        deadline = time.monotonic() + 10
        while (now := shown(base, key_id))["reserved_usd"] and time.monotonic() < deadline:
            time.sleep(0.05)
    assert now["reserved_usd"] == 0
    worst = (prompt_token_bound([Message(role="user", content="hi")]) * 1000 + 100 * 2000) / 1e6
    assert 0 < now["spent_usd"] < worst / 2  # what was streamed is paid for, not the worst case
    key_row, traces = stored(settings, key_id)
    assert [t.status for t in traces] == ["cancelled"]
    assert traces[0].cost_usd == pytest.approx(key_row.spent_usd, abs=1e-9)  # estimate, traced


def test_without_max_tokens_the_models_output_cap_bounds_the_call(
    gateway: tuple[str, Settings],
) -> None:
    base, _ = gateway
    key, _ = new_key(base, budget_usd=1.0)
    sdk = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    reply = sdk.chat.completions.create(model="capped", messages=HI)
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == "one two three "
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_the_worst_case_is_priced_on_the_dearest_fallback(gateway: tuple[str, Settings]) -> None:
    base, _ = gateway
    key, _ = new_key(base, budget_usd=WORST / 2)  # plenty for 'cheap', too little for 'dear'
    sdk = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        sdk.chat.completions.create(model="cheap", messages=HI, max_tokens=MAX_TOKENS)
    assert e.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    key, key_id = new_key(base, budget_usd=WORST)
    sdk = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    reply = sdk.chat.completions.create(model="cheap", messages=HI, max_tokens=MAX_TOKENS)
    assert reply.usage is not None
    cost = (reply.usage.prompt_tokens + reply.usage.completion_tokens) / 1e6  # $1 per Mtok
    assert shown(base, key_id)["spent_usd"] == pytest.approx(cost, abs=1e-9)


def test_reservations_left_by_a_dead_process_are_released_once(tmp_path: Path) -> None:
    store = KeyStore(open_engine(f"sqlite:///{tmp_path / 'ledger.db'}"))
    key = store.create("k", budget_usd=1.0).record
    held = store.reserve(key.id, to_nusd(0.6))
    with pytest.raises(BudgetExceededError):
        store.reserve(key.id, to_nusd(0.6))
    assert store.release_stale(older_than_s=0) == 1
    store.settle(held, key.id, to_nusd(0.1))  # the call's own settlement, arriving late
    after = store.get(key.id)
    assert (after.reserved_usd, after.spent_usd) == (0.0, 0.1)  # released once, charged once
    store.revoke(key.id)
    with pytest.raises(AuthenticationError):
        store.reserve(key.id, 1)
