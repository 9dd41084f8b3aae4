"""Per-key requests and tokens per minute: 429 with Retry-After, tokens corrected after each call,
and limits shared through Redis by separate gateway instances."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from llmforge.core.db import open_engine
from llmforge.core.settings import Settings, load_settings
from llmforge.core.types import Message
from llmforge.gateway import create_app
from llmforge.gateway.admission import prompt_token_bound
from llmforge.traces import TraceStore
from tests.fakes.server import free_port, serve

MASTER = "master-test-key"
MODELS = [
    {"name": "fake", "provider": "fake", "responses": ["one two three"]},
    {"name": "slow", "provider": "fake", "responses": ["one two three"], "delay_s": 0.2},
]
HI = [{"role": "user", "content": "hi"}]
HI_BOUND = prompt_token_bound([Message(role="user", content="hi")])


def gateway_settings(
    tmp: Path, models: list[dict[str, Any]] = MODELS, **overrides: Any
) -> Settings:
    return load_settings(
        None,
        database=f"sqlite:///{tmp / 'gw.db'}",
        models=models,
        embeddings=[],
        master_key=MASTER,
        **overrides,
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(create_app(gateway_settings(tmp_path_factory.mktemp("limits")))) as url:
        yield url


def new_key(base: str, **body: Any) -> str:
    r = httpx.post(
        base + "/admin/keys",
        json={"name": "limited", **body},
        headers={"Authorization": f"Bearer {MASTER}"},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def client(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30)


def test_requests_per_minute_limit_is_429_with_retry_after(base: str) -> None:
    sdk = client(base, new_key(base, rpm=3))
    for _ in range(3):
        sdk.chat.completions.create(model="fake", messages=HI)
    with pytest.raises(openai.RateLimitError) as e:
        sdk.chat.completions.create(model="fake", messages=HI)
    assert e.value.status_code == 429
    assert e.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    assert "3 requests per minute" in str(e.value)
    retry_after = int(e.value.response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    other = client(base, new_key(base, rpm=3))  # limits are per key
    assert other.chat.completions.create(model="fake", messages=HI).choices


def test_tokens_are_corrected_to_what_calls_used(base: str) -> None:
    """Each call holds prompt bound + max_tokens while it runs, but only its real usage (4 tokens
    here) stays counted, so many more calls fit in the minute than the reservations would allow."""
    held = HI_BOUND + 10
    sdk = client(base, new_key(base, tpm=2 * held + 5))
    for _ in range(10):
        reply = sdk.chat.completions.create(model="fake", messages=HI, max_tokens=10)
        assert reply.usage is not None and reply.usage.total_tokens == 4


async def test_concurrent_calls_never_pass_the_token_limit(base: str) -> None:
    held = HI_BOUND + 10
    key = new_key(base, tpm=2 * held + 5)  # room for two reservations at a time, not three
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "slow", "messages": HI, "max_tokens": 10}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
        replies = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=body) for _ in range(8))
        )
        statuses = sorted(r.status_code for r in replies)
        assert statuses == [200, 200] + [429] * 6
        refused = [r for r in replies if r.status_code == 429]
        assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
        assert "tokens per minute" in refused[0].json()["error"]["message"]
        # the two calls used 4 tokens each and gave the rest back: the next one fits at once
        assert (await http.post("/v1/chat/completions", json=body)).status_code == 200


def test_a_request_larger_than_the_whole_token_limit_says_so(base: str) -> None:
    sdk = client(base, new_key(base, tpm=HI_BOUND + 10))
    with pytest.raises(openai.RateLimitError) as e:
        sdk.chat.completions.create(model="fake", messages=HI, max_tokens=11)
    assert "Lower max_tokens" in str(e.value)
    assert sdk.chat.completions.create(model="fake", messages=HI, max_tokens=10).choices


def test_token_limit_without_max_tokens_uses_the_models_output_cap(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path, models=[{**MODELS[0], "max_output_tokens": 2}])
    with serve(create_app(settings)) as url:
        sdk = client(url, new_key(url, tpm=HI_BOUND + 2))
        reply = sdk.chat.completions.create(model="fake", messages=HI)
        assert reply.choices[0].finish_reason == "length"  # max_tokens was set to the cap
        assert reply.usage is not None and reply.usage.completion_tokens == 2


def test_refused_calls_are_traced_like_any_other(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path)
    with serve(create_app(settings)) as url:
        sdk = client(url, new_key(url, rpm=1))
        sdk.chat.completions.create(model="fake", messages=HI)
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(model="fake", messages=HI)
    store = TraceStore(open_engine(settings.database))
    statuses = sorted((t.status, t.error or "") for t in store.list())
    assert [s for s, _ in statuses] == ["error", "ok"]
    assert "requests per minute" in statuses[0][1]


def test_keys_without_max_tokens_get_a_modest_cap_not_the_whole_context(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path, models=[{**MODELS[0], "context_length": 128_000}])
    with serve(create_app(settings)) as url:
        client(url, new_key(url, tpm=100_000)).chat.completions.create(model="fake", messages=HI)
    (trace,) = TraceStore(open_engine(settings.database)).list()
    assert trace.request["sampling"]["max_tokens"] == 4096


# -- Redis: limits shared by several gateway processes -------------------------------------------


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("LLMFORGE_TEST_REDIS_URL")
    if not url:
        reason = (
            "LLMFORGE_TEST_REDIS_URL is not set; start a redis-server and point it there "
            "(`make test` does both)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return url


@asynccontextmanager
async def running(*apps: FastAPI) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with AsyncExitStack() as stack:
        clients = []
        for app in apps:
            await stack.enter_async_context(app.router.lifespan_context(app))
            clients.append(
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=30
                    )
                )
            )
        yield clients


async def test_two_gateways_on_one_redis_share_request_and_token_limits(
    tmp_path: Path, redis_url: str
) -> None:
    settings = gateway_settings(tmp_path, redis_url=redis_url)
    a, b = create_app(settings), create_app(settings)
    async with running(a, b) as (left, right):
        master = {"Authorization": f"Bearer {MASTER}"}
        created = await left.post("/admin/keys", json={"name": "shared", "rpm": 3}, headers=master)
        headers = {"Authorization": f"Bearer {created.json()['key']}"}
        body = {"model": "fake", "messages": HI}
        for http in (left, right, left):
            r = await http.post("/v1/chat/completions", json=body, headers=headers)
            assert r.status_code == 200, r.text
        for http in (right, left):  # the fourth call is over the limit on either instance
            r = await http.post("/v1/chat/completions", json=body, headers=headers)
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1

        held = HI_BOUND + 10
        created = await left.post(
            "/admin/keys", json={"name": "tokens", "tpm": 2 * held + 5}, headers=master
        )
        headers = {"Authorization": f"Bearer {created.json()['key']}"}
        body = {"model": "slow", "messages": HI, "max_tokens": 10}
        replies = await asyncio.gather(
            *(
                http.post("/v1/chat/completions", json=body, headers=headers)
                for http in (left, right) * 3
            )
        )
        assert sorted(r.status_code for r in replies) == [200, 200, 429, 429, 429, 429]


async def test_rate_limits_fail_closed_when_redis_is_down(tmp_path: Path) -> None:
    app = create_app(gateway_settings(tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    async with running(app) as (http,):
        master = {"Authorization": f"Bearer {MASTER}"}
        created = await http.post("/admin/keys", json={"name": "r", "rpm": 5}, headers=master)
        headers = {"Authorization": f"Bearer {created.json()['key']}"}
        r = await http.post(
            "/v1/chat/completions", json={"model": "fake", "messages": HI}, headers=headers
        )
        assert r.status_code == 503
        assert "Redis" in r.json()["error"]["message"]
