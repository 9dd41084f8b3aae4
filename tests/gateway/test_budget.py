"""Budgets: the worst case is reserved before a call and settled to the actual cost after it, so a
key's spend never passes its budget, under 200 concurrent requests, failures and disconnects; a call
that fits the budget once the calls in flight settle waits for them instead of being refused."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmforge.core.config import ModelConfig
from llmforge.core.db import open_engine
from llmforge.core.errors import AuthenticationError, BudgetExceededError
from llmforge.core.settings import Settings, load_settings
from llmforge.core.types import ImagePart, Message, Sampling, Tool
from llmforge.gateway import create_app
from llmforge.gateway.admission import prompt_token_bound
from llmforge.gateway.keys import ApiKey, KeyStore, to_nusd
from llmforge.models import chat_models
from llmforge.models.base import ModelContext, TokenCounter
from llmforge.models.fake import FakeChatModel
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
    # a model that knows its tokenizer (see CountedChatModel), and one whose weights are not
    # loaded yet, so it cannot count
    {
        "name": "counted",
        "provider": "budget-test-counted",
        "responses": ["one two"],
        "price": PRICE,
    },
    {
        "name": "uncounted",
        "provider": "budget-test-counted",
        "model_id": "not-loaded",
        "responses": ["one two"],
        "price": PRICE,
    },
]
# what a "hi" call to the fake models really costs: 1 prompt word, 2 answer words
ACTUAL = (1 * PRICE["input_per_mtok"] + 2 * PRICE["output_per_mtok"]) / 1e6


class CountedChatModel(FakeChatModel):
    """A scripted chat model that counts its prompt as a tokenizer would: a word a token, plus 3
    per message for its template (None while "not loaded")."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config.responses, config.delay_s)
        self.loaded = config.model_id != "not-loaded"

    def count_prompt_tokens(self, messages: Sequence[Message], sampling: Sampling) -> int | None:
        if not self.loaded:
            return None
        return sum(len(m.content.split()) + 3 for m in messages)


def counted(config: ModelConfig, context: ModelContext | None = None) -> CountedChatModel:
    return CountedChatModel(config)


chat_models.register("budget-test-counted", counted)


def gateway_settings(
    tmp: Path, models: list[dict[str, Any]] = MODELS, budget_wait_s: float = 5.0
) -> Settings:
    return load_settings(
        None,
        database=f"sqlite:///{tmp / 'gw.db'}",
        models=models,
        embeddings=[],
        master_key=MASTER,
        router={"retries": 0},
        server={"budget_wait_s": budget_wait_s},
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


async def burst(
    settings: Settings, budget: float, body: dict[str, Any], calls: int = 200
) -> tuple[list[tuple[httpx.Response, float]], dict[str, Any], str]:
    """`calls` concurrent requests of one new key with `budget`: the responses (with the time
    each came), the key as the admin API shows it right after, and its id."""
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

        async def one() -> tuple[httpx.Response, float]:
            r = await http.post(
                "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            return r, time.monotonic()

        results = await asyncio.gather(*(one() for _ in range(calls)))
        during = (await http.get(f"/admin/keys/{key_id}", headers=master)).json()
    return results, during, key_id


async def test_200_concurrent_requests_never_pass_the_budget(tmp_path: Path) -> None:
    budget = 2.0
    allowed = math.floor(budget / WORST)  # reservations that fit side by side
    assert allowed == 12
    # no waiting: every request is admitted or refused before any call finishes
    settings = gateway_settings(tmp_path, budget_wait_s=0)
    body = {"model": "priced", "messages": HI, "max_tokens": MAX_TOKENS}
    results, during, key_id = await burst(settings, budget, body)
    key_row, traces = stored(settings, key_id)

    ok = [(r, t) for r, t in results if r.status_code == 200]
    refused = [(r, t) for r, t in results if r.status_code != 200]
    assert {r.status_code for r, _ in refused} == {429}
    # the budget itself has room: calls in flight hold it, so the client may come back
    assert {r.json()["error"]["code"] for r, _ in refused} == {"rate_limit_exceeded"}
    assert all(r.headers["retry-after"] == "1" for r, _ in refused)
    assert "in flight" in refused[0][0].json()["error"]["message"]
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


async def test_a_burst_is_answered_while_the_budget_has_room(tmp_path: Path) -> None:
    """200 concurrent calls on a $1 budget that holds 6 worst cases side by side but pays for
    ~170 real calls: calls wait for the reservations in flight to settle, so every call is
    answered until what is spent leaves no room for one more worst case."""
    budget = 1.0
    settings = gateway_settings(tmp_path)
    body = {"model": "quick", "messages": HI, "max_tokens": MAX_TOKENS}
    results, during, key_id = await burst(settings, budget, body)
    key_row, traces = stored(settings, key_id)

    ok = [r for r, _ in results if r.status_code == 200]
    refused = [r for r, _ in results if r.status_code != 200]
    assert {(r.status_code, r.json()["error"]["code"]) for r in refused} <= {
        (429, "budget_exceeded")
    }
    assert len(ok) == math.floor((budget - WORST) / ACTUAL) + 1  # 168
    assert key_row.spent_usd == pytest.approx(len(ok) * ACTUAL, abs=1e-9)
    assert key_row.spent_usd <= budget < key_row.spent_usd + WORST  # refused: no room left
    assert (during["reserved_usd"], key_row.reserved_usd) == (0, 0)
    assert len([t for t in traces if t.status == "ok"]) == len(ok)


async def test_a_call_waits_for_the_call_in_flight_unless_the_spent_budget_cannot_pay_for_it(
    tmp_path: Path,
) -> None:
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
            "/admin/keys", json={"name": "b", "budget_usd": WORST * 1.5}, headers=master
        )
        auth = {"Authorization": f"Bearer {created.json()['key']}"}

        def call(model: str, max_tokens: int = MAX_TOKENS) -> Any:
            body = {"model": model, "messages": HI, "max_tokens": max_tokens}
            return http.post("/v1/chat/completions", json=body, headers=auth)

        slow = asyncio.ensure_future(call("priced"))  # holds WORST for 3 s
        await asyncio.sleep(0.5)
        started = time.monotonic()
        too_dear = await call("quick", max_tokens=200)  # worst case > the whole budget
        refused_in = time.monotonic() - started
        fits_later = await call("quick")  # fits once the slow call settles
        waited = time.monotonic() - started
        assert (await slow).status_code == 200

    assert too_dear.status_code == 429
    assert too_dear.json()["error"]["code"] == "budget_exceeded"
    assert "retry-after" not in too_dear.headers  # waiting would not help
    assert refused_in < 0.5
    assert fits_later.status_code == 200, fits_later.text
    assert 1.5 < waited < 5.0


async def test_a_call_that_waits_past_the_bound_gets_429_with_retry_after(
    tmp_path: Path,
) -> None:
    settings = gateway_settings(tmp_path, budget_wait_s=0.5)
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=60
        ) as http,
    ):
        master = {"Authorization": f"Bearer {MASTER}"}
        created = await http.post(
            "/admin/keys", json={"name": "b", "budget_usd": WORST * 1.5}, headers=master
        )
        key_id = created.json()["id"]
        auth = {"Authorization": f"Bearer {created.json()['key']}"}
        body = {"model": "priced", "messages": HI, "max_tokens": MAX_TOKENS}
        slow = asyncio.ensure_future(http.post("/v1/chat/completions", json=body, headers=auth))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        second = await http.post("/v1/chat/completions", json=body, headers=auth)
        waited = time.monotonic() - started
        assert (await slow).status_code == 200
        after = (await http.get(f"/admin/keys/{key_id}", headers=master)).json()

    assert second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert second.headers["retry-after"] == "1"
    assert "Calls in flight" in second.json()["error"]["message"]
    assert 0.5 <= waited < 2.0
    assert after["reserved_usd"] == 0
    assert after["spent_usd"] == pytest.approx(ACTUAL, abs=1e-9)  # the waiting call cost nothing


async def test_a_client_that_leaves_while_waiting_for_budget_holds_nothing(tmp_path: Path) -> None:
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
            "/admin/keys", json={"name": "b", "budget_usd": WORST * 1.5}, headers=master
        )
        key_id = created.json()["id"]
        auth = {"Authorization": f"Bearer {created.json()['key']}"}
        body = {"model": "priced", "messages": HI, "max_tokens": MAX_TOKENS}
        slow = asyncio.ensure_future(http.post("/v1/chat/completions", json=body, headers=auth))
        await asyncio.sleep(0.5)
        waiting = asyncio.ensure_future(http.post("/v1/chat/completions", json=body, headers=auth))
        await asyncio.sleep(0.5)
        waiting.cancel()  # the client gives up while its call waits for budget
        assert (await slow).status_code == 200
        await asyncio.sleep(0.5)
        after = (await http.get(f"/admin/keys/{key_id}", headers=master)).json()
    key_row, traces = stored(settings, key_id)
    assert (after["reserved_usd"], key_row.reserved_usd) == (0, 0)
    assert key_row.spent_usd == pytest.approx(ACTUAL, abs=1e-9)
    assert [t.status for t in traces].count("ok") == 1


def test_a_model_that_counts_its_prompt_tokens_reserves_only_those(
    gateway: tuple[str, Settings],
) -> None:
    base, _ = gateway
    # 1000 words: a byte bound of ~5000 tokens ($5), 1003 tokens counted ($1.003)
    long = [{"role": "user", "content": "word " * 1000}]
    budget = 1.2
    key, _ = new_key(base, budget_usd=budget)
    sdk = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    reply = sdk.chat.completions.create(model="counted", messages=long, max_tokens=MAX_TOKENS)
    assert reply.choices[0].message.content == "one two"
    with pytest.raises(openai.RateLimitError) as e:  # the same call where it cannot count
        sdk.chat.completions.create(model="uncounted", messages=long, max_tokens=MAX_TOKENS)
    assert e.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    assert "could cost ($5." in str(e.value)
    assert isinstance(CountedChatModel(ModelConfig(name="x", provider="x")), TokenCounter)


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
    assert held is not None
    assert store.reserve(key.id, to_nusd(0.6)) is None  # fits the budget, not beside the first
    with pytest.raises(BudgetExceededError):
        store.reserve(key.id, to_nusd(1.1))  # fits nowhere
    assert store.release_stale(older_than_s=0) == 1
    store.settle(held, key.id, to_nusd(0.1))  # the call's own settlement, arriving late
    after = store.get(key.id)
    assert (after.reserved_usd, after.spent_usd) == (0.0, 0.1)  # released once, charged once
    store.revoke(key.id)
    with pytest.raises(AuthenticationError):
        store.reserve(key.id, 1)


def test_tool_descriptions_and_images_count_towards_the_prompt_bound() -> None:
    ask = [Message(role="user", content="hi")]
    plain = prompt_token_bound(ask, sampling=Sampling())
    tool = Tool(name="lookup", description="x" * 2000)
    with_tool = prompt_token_bound(ask, sampling=Sampling(tools=(tool,)))
    assert with_tool - plain > 2000  # every byte of the description may be a token
    image = ImagePart(url="https://example.com/a.png")
    with_image = prompt_token_bound([Message(role="user", content="hi", images=(image,))])
    assert with_image - plain >= 1000  # an image is hundreds to thousands of tokens upstream


def test_each_of_n_answers_is_reserved_at_max_tokens(gateway: tuple[str, Settings]) -> None:
    base, _ = gateway
    n_worst = WORST + 2 * MAX_TOKENS * PRICE["output_per_mtok"] / 1e6  # three answers
    key, _ = new_key(base, budget_usd=(WORST + n_worst) / 2)  # room for one answer, not three
    sdk = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        sdk.chat.completions.create(model="quick", messages=HI, max_tokens=MAX_TOKENS, n=3)
    assert e.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    reply = sdk.chat.completions.create(model="quick", messages=HI, max_tokens=MAX_TOKENS)
    assert reply.choices[0].message.content == "one two"
