"""The response cache: what hits, what misses, what is never stored, and each backend's guarantees.

Live gateways on 127.0.0.1 in front of a fake OpenAI upstream whose request count proves that a hit
never reaches the model. Redis tests use the server named by LLMFORGE_TEST_REDIS_URL.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmforge.core.config import EmbeddingConfig
from llmforge.core.db import open_engine
from llmforge.core.errors import ConfigError
from llmforge.core.settings import Settings, load_settings
from llmforge.core.types import Completion, Message, Usage
from llmforge.gateway import create_app
from llmforge.gateway.cache import (
    CacheBackend,
    CachedAnswer,
    MemoryBackend,
    RedisBackend,
    ResponseCache,
    SqlBackend,
)
from llmforge.gateway.call import Call, Caller
from llmforge.models import ModelCatalog
from llmforge.traces import Trace, TraceStore
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.server import serve

EMBEDDINGS = [{"name": "hash", "provider": "fake", "dimensions": 64}]


def redis_url() -> str:
    url = os.environ.get("LLMFORGE_TEST_REDIS_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide a Redis server: set LLMFORGE_TEST_REDIS_URL")
        pytest.skip("no Redis server: set LLMFORGE_TEST_REDIS_URL=redis://127.0.0.1:6379/0")
    return url


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, FakeOpenAI]]:
    fake = FakeOpenAI()
    with serve(fake.app) as base:
        yield base, fake


def settings_for(tmp: Path, upstream: str, **cache: Any) -> Settings:
    models = [
        {
            "name": "echo",
            "provider": "openai",
            "base_url": upstream + "/v1",
            "retries": 0,
            "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
        },
        {
            "name": "broken",
            "provider": "openai",
            "base_url": upstream + "/v1",
            "model_id": "fail-500",
            "retries": 0,
        },
        {"name": "slow", "provider": "fake", "responses": ["a b c d e f g h"], "delay_s": 0.1},
        {"name": "tools", "provider": "openai", "base_url": upstream + "/v1", "retries": 0,
         "model_id": "tools"},
    ]  # fmt: skip
    extra = {"redis_url": cache.pop("redis_url")} if "redis_url" in cache else {}
    return load_settings(
        None,
        database=f"sqlite:///{tmp / 'gw.db'}",
        models=models,
        embeddings=EMBEDDINGS,
        server={"preload": False},
        cache={"enabled": True, **cache},
        **extra,
    )


def chat(
    base: str, messages: list[dict[str, str]], headers: dict[str, str] | None = None, **params: Any
) -> httpx.Response:
    r = httpx.post(
        base + "/v1/chat/completions",
        json={"model": "echo", "messages": messages, **params},
        headers=headers,
        timeout=30,
    )
    assert r.status_code < 500, r.text
    return r


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def traces(settings: Settings, ids: list[str]) -> list[Trace]:
    store = TraceStore(open_engine(settings.database))
    deadline = time.monotonic() + 10
    while True:
        found = {t.id: t for t in store.list(limit=200)}
        if all(i in found for i in ids) or time.monotonic() > deadline:
            return [found[i] for i in ids]
        time.sleep(0.05)


# -- exact cache through the HTTP API ---------------------------------------------------------


def test_identical_conversation_is_answered_from_cache_without_calling_upstream(
    tmp_path: Path, upstream: tuple[str, FakeOpenAI]
) -> None:
    base_up, fake = upstream
    settings = settings_for(tmp_path, base_up)
    convo = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": unique("hello there")},
    ]
    with serve(create_app(settings)) as base:
        before = len(fake.requests)
        first = chat(base, convo)
        second = chat(base, convo)
    assert len(fake.requests) == before + 1
    assert first.headers["x-llmforge-cache"] == "miss"
    assert second.headers["x-llmforge-cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["usage"] == first.json()["usage"]  # what the answer took to make
    assert second.json()["id"] != first.json()["id"]
    miss, hit = traces(settings, [first.headers["x-request-id"], second.headers["x-request-id"]])
    assert (miss.cache, hit.cache) == ("miss", "hit")
    assert miss.cost_usd is not None and miss.cost_usd > 0
    assert hit.cost_usd == 0 and hit.served_by is None and hit.prompt_tokens == 0


def test_same_last_message_after_a_different_history_misses(
    tmp_path: Path, upstream: tuple[str, FakeOpenAI]
) -> None:
    base_up, fake = upstream
    question = unique("and what does it eat")
    cats = [
        {"role": "user", "content": "Tell me about cats."},
        {"role": "assistant", "content": "Cats are small felines."},
        {"role": "user", "content": question},
    ]
    dogs = [*cats[:1], {"role": "assistant", "content": "Dogs are loyal canines."}, cats[2]]
    with serve(create_app(settings_for(tmp_path, base_up))) as base:
        before = len(fake.requests)
        assert chat(base, cats).headers["x-llmforge-cache"] == "miss"
        assert chat(base, dogs).headers["x-llmforge-cache"] == "miss"
        assert chat(base, [{"role": "system", "content": "Be brief."}, cats[2]]).headers[
            "x-llmforge-cache"
        ] == ("miss")
        assert chat(base, ask(question)).headers["x-llmforge-cache"] == "miss"
        assert chat(base, dogs).headers["x-llmforge-cache"] == "hit"
    assert len(fake.requests) == before + 4


def test_different_sampling_parameters_miss(
    tmp_path: Path, upstream: tuple[str, FakeOpenAI]
) -> None:
    base_up, _ = upstream
    convo = ask(unique("one two three four"))
    with serve(create_app(settings_for(tmp_path, base_up))) as base:
        assert chat(base, convo, temperature=0).headers["x-llmforge-cache"] == "miss"
        assert chat(base, convo, temperature=0.7).headers["x-llmforge-cache"] == "miss"
        assert chat(base, convo, temperature=0, seed=1).headers["x-llmforge-cache"] == "miss"
        capped = chat(base, convo, temperature=0, max_tokens=2)
        assert capped.headers["x-llmforge-cache"] == "miss"
        assert capped.json()["choices"][0]["finish_reason"] == "length"
        again = chat(base, convo, temperature=0, max_tokens=2)
        assert again.headers["x-llmforge-cache"] == "hit"  # a `length` answer is cached too
        assert chat(base, convo, temperature=0.7).headers["x-llmforge-cache"] == "hit"


def test_entries_expire_after_ttl(tmp_path: Path, upstream: tuple[str, FakeOpenAI]) -> None:
    base_up, fake = upstream
    convo = ask(unique("short lived"))
    with serve(create_app(settings_for(tmp_path, base_up, ttl_s=0.5))) as base:
        before = len(fake.requests)
        chat(base, convo)
        assert chat(base, convo).headers["x-llmforge-cache"] == "hit"
        time.sleep(0.6)
        assert chat(base, convo).headers["x-llmforge-cache"] == "miss"
    assert len(fake.requests) == before + 2


def test_bypass_header_neither_reads_nor_writes_the_cache(
    tmp_path: Path, upstream: tuple[str, FakeOpenAI]
) -> None:
    base_up, fake = upstream
    settings = settings_for(tmp_path, base_up)
    convo = ask(unique("fresh please"))
    no_cache = {"x-llmforge-cache": "no"}
    with serve(create_app(settings)) as base:
        before = len(fake.requests)
        bypassed = chat(base, convo, headers=no_cache)
        assert "x-llmforge-cache" not in bypassed.headers
        assert chat(base, convo).headers["x-llmforge-cache"] == "miss"  # nothing was stored
        assert chat(base, convo).headers["x-llmforge-cache"] == "hit"
        again = chat(base, convo, headers=no_cache)  # a stored answer is not read either
        assert "x-llmforge-cache" not in again.headers
    assert len(fake.requests) == before + 3
    (trace,) = traces(settings, [bypassed.headers["x-request-id"]])
    assert trace.cache == "off"


def sse(base: str, convo: list[dict[str, str]], **params: Any) -> tuple[httpx.Headers, list[str]]:
    body = {"model": "echo", "messages": convo, "stream": True, **params}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return r.headers, [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def test_stream_is_served_from_cache_as_a_stream(
    tmp_path: Path, upstream: tuple[str, FakeOpenAI]
) -> None:
    base_up, fake = upstream
    settings = settings_for(tmp_path, base_up)
    convo = ask(unique("the quick brown fox jumps"))
    with serve(create_app(settings)) as base:
        before = len(fake.requests)
        live_headers, live = sse(base, convo)
        headers, events = sse(base, convo, stream_options={"include_usage": True})
        plain = chat(base, convo)  # a stream's answer also serves plain calls
    assert len(fake.requests) == before + 1
    assert live_headers["x-llmforge-cache"] == "miss" and headers["x-llmforge-cache"] == "hit"
    assert plain.headers["x-llmforge-cache"] == "hit"
    assert events[-1] == live[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([p for p in pieces if p]) >= 5  # streamed piece by piece, not one blob
    text = "".join(p or "" for p in pieces)
    assert text == plain.json()["choices"][0]["message"]["content"] == convo[0]["content"]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    first, trace = traces(settings, [live_headers["x-request-id"], headers["x-request-id"]])
    assert first.status == "ok" and first.cache == "miss"  # a stream read to its end is complete
    assert trace.status == "ok" and trace.cache == "hit" and trace.stream and trace.output == text


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_tool_calls_are_cached_and_replayed_as_a_stream(
    tmp_path: Path, upstream: tuple[str, FakeOpenAI]
) -> None:
    base_up, fake = upstream
    settings = settings_for(tmp_path, base_up)
    convo = ask(unique("weather in Paris?"))
    params = {"model": "tools", "tools": [WEATHER_TOOL]}
    with serve(create_app(settings)) as base:
        before = len(fake.requests)
        first = chat(base, convo, **params)
        again = chat(base, convo, **params)
        headers, events = sse(base, convo, **params)
        other = chat(base, convo, model="tools", tools=[WEATHER_TOOL], tool_choice="none")
    assert len(fake.requests) == before + 2  # the tool_choice change is another question
    assert again.headers["x-llmforge-cache"] == headers["x-llmforge-cache"] == "hit"
    calls = first.json()["choices"][0]["message"]["tool_calls"]
    assert again.json()["choices"][0]["message"]["tool_calls"] == calls
    assert other.headers["x-llmforge-cache"] == "miss"
    chunks = [json.loads(e) for e in events[:-1]]
    pieces = [
        p for c in chunks if c["choices"] for p in c["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert pieces[0]["id"] == calls[0]["id"] and pieces[0]["function"]["name"] == "get_weather"
    assert "".join(p["function"]["arguments"] for p in pieces) == calls[0]["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_errors_and_abandoned_streams_are_not_cached(
    tmp_path: Path, upstream: tuple[str, FakeOpenAI]
) -> None:
    base_up, fake = upstream
    convo = ask(unique("please fail"))
    with serve(create_app(settings_for(tmp_path, base_up))) as base:
        before = len(fake.requests)
        for _ in range(2):
            r = httpx.post(
                base + "/v1/chat/completions",
                json={"model": "broken", "messages": convo},
                timeout=30,
            )
            assert r.status_code == 502
        assert len(fake.requests) == before + 2

        body = {"model": "slow", "messages": convo, "stream": True}
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=30) as r:
            assert r.headers["x-llmforge-cache"] == "miss"
            next(r.iter_lines())  # one chunk, then the client goes away
        time.sleep(0.3)
        r = httpx.post(base + "/v1/chat/completions", json={**body, "stream": False}, timeout=30)
        assert r.headers["x-llmforge-cache"] == "miss"
        assert r.json()["choices"][0]["message"]["content"] == "a b c d e f g h"


# -- backends that outlive one app --------------------------------------------------------------


def test_sqlite_cache_survives_a_restart(tmp_path: Path, upstream: tuple[str, FakeOpenAI]) -> None:
    base_up, fake = upstream
    settings = settings_for(tmp_path, base_up, backend="sqlite")
    convo = ask(unique("remember me"))
    before = len(fake.requests)
    with serve(create_app(settings)) as base:
        first = chat(base, convo)
    with serve(create_app(settings)) as base:
        second = chat(base, convo)
    assert second.headers["x-llmforge-cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]
    assert len(fake.requests) == before + 1


def test_redis_cache_is_shared_by_two_gateways(
    tmp_path: Path, upstream: tuple[str, FakeOpenAI]
) -> None:
    url = redis_url()
    base_up, fake = upstream
    one = settings_for(tmp_path / "one", base_up, backend="redis", redis_url=url)
    two = settings_for(tmp_path / "two", base_up, backend="redis", redis_url=url)
    convo = ask(unique("shared answer"))
    before = len(fake.requests)
    with serve(create_app(one)) as a, serve(create_app(two)) as b:
        assert chat(a, convo).headers["x-llmforge-cache"] == "miss"
        hit = chat(b, convo)
        assert hit.headers["x-llmforge-cache"] == "hit"
        assert hit.json()["choices"][0]["message"]["content"] == convo[0]["content"]
    assert len(fake.requests) == before + 1


def test_redis_backend_needs_a_redis_url(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, "http://127.0.0.1:9", backend="redis")
    with pytest.raises(ConfigError, match="redis_url"):
        create_app(settings)


# -- the backend protocol, for every backend --------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest, db_url: str) -> Iterator[tuple[CacheBackend, Clock]]:
    clock = Clock()
    made: CacheBackend
    if request.param == "memory":
        made = MemoryBackend(100, clock=clock)
    elif request.param == "sqlite":
        made = SqlBackend(open_engine(db_url), clock=clock)
    else:
        made = RedisBackend(redis_url(), prefix=f"test:{uuid.uuid4().hex}:", clock=clock)
    yield made, clock


def answer(key: str, clock: Clock, ttl_s: float = 10, vector: bytes | None = None) -> CachedAnswer:
    return CachedAnswer(
        key=key.ljust(64, "0"),
        namespace="ns",
        completion=Completion(text=f"answer {key}", usage=Usage(completion_tokens=2)),
        vector=vector,
        created_at=clock.now,
        expires_at=clock.now + ttl_s,
    )


async def test_backend_returns_what_was_stored_until_it_expires(
    backend: tuple[CacheBackend, Clock],
) -> None:
    store, clock = backend
    await store.put(answer("a", clock, ttl_s=10))
    await store.put(answer("b", clock, ttl_s=100))
    got = await store.get("a".ljust(64, "0"))
    assert got is not None and got.text == "answer a" and got.usage.completion_tokens == 2
    assert await store.get("c".ljust(64, "0")) is None
    clock.now += 11
    assert await store.get("a".ljust(64, "0")) is None
    assert await store.get("b".ljust(64, "0")) is not None
    await store.aclose()


async def test_backend_lists_live_vectors_of_a_namespace_newest_first(
    backend: tuple[CacheBackend, Clock],
) -> None:
    store, clock = backend
    await store.put(answer("old", clock, ttl_s=5, vector=b"\x01" * 8))
    clock.now += 1
    await store.put(answer("new", clock, ttl_s=50, vector=b"\x02" * 8))
    await store.put(answer("novec", clock, ttl_s=50))
    other = answer("other", clock, vector=b"\x03" * 8).model_copy(update={"namespace": "ns2"})
    await store.put(other)
    found = await store.neighbours("ns", 10)
    assert found == [("new".ljust(64, "0"), b"\x02" * 8), ("old".ljust(64, "0"), b"\x01" * 8)]
    assert len(await store.neighbours("ns", 1)) == 1
    clock.now += 5
    assert [k for k, _ in await store.neighbours("ns", 10)] == ["new".ljust(64, "0")]
    await store.aclose()


async def test_memory_backend_keeps_the_most_recently_used_entries() -> None:
    clock = Clock()
    store = MemoryBackend(2, clock=clock)
    for key in ("a", "b"):
        await store.put(answer(key, clock, vector=b"\x00" * 4))
    assert await store.get("a".ljust(64, "0")) is not None  # a is now the most recent
    await store.put(answer("c", clock, vector=b"\x00" * 4))
    assert len(store) == 2
    assert await store.get("b".ljust(64, "0")) is None
    assert await store.get("a".ljust(64, "0")) is not None
    assert {k[0] for k, _ in await store.neighbours("ns", 10)} == {"a", "c"}


async def test_sqlite_backend_prunes_expired_rows(db_url: str) -> None:
    clock = Clock()
    store = SqlBackend(open_engine(db_url), prune_every_s=0, clock=clock)
    await store.put(answer("a", clock, ttl_s=1))
    clock.now += 2
    await store.put(answer("b", clock, ttl_s=1))
    assert store.count() == 1


# -- semantic cache ---------------------------------------------------------------------------


def test_semantic_cache_hits_a_near_identical_conversation_and_misses_others(
    tmp_path: Path, upstream: tuple[str, FakeOpenAI]
) -> None:
    base_up, fake = upstream
    tag = uuid.uuid4().hex[:8]
    settings = settings_for(
        tmp_path, base_up, semantic={"enabled": True, "embedding": "hash", "threshold": 0.9}
    )
    history = [
        {"role": "system", "content": f"You answer geography questions {tag}"},
        {"role": "user", "content": "What is the capital city of France?"},
    ]
    near = [history[0], {"role": "user", "content": "what is the capital city of france"}]
    other_history = [
        {"role": "system", "content": f"You write limericks about cheese {tag}"},
        history[1],
    ]
    unrelated = [history[0], {"role": "user", "content": "How tall is Mount Everest in metres?"}]
    with serve(create_app(settings)) as base:
        before = len(fake.requests)
        first = chat(base, history)
        hit = chat(base, near)
        assert (first.headers["x-llmforge-cache"], hit.headers["x-llmforge-cache"]) == (
            "miss",
            "semantic_hit",
        )
        assert hit.json()["choices"] == first.json()["choices"]
        assert chat(base, other_history).headers["x-llmforge-cache"] == "miss"
        assert chat(base, unrelated).headers["x-llmforge-cache"] == "miss"
        assert chat(base, near, temperature=1).headers["x-llmforge-cache"] == "miss"
        assert chat(base, history).headers["x-llmforge-cache"] == "hit"  # exact beats semantic
    assert len(fake.requests) == before + 4
    (trace,) = traces(settings, [hit.headers["x-request-id"]])
    assert trace.cache == "semantic_hit" and trace.cost_usd == 0


@pytest.mark.slow
def test_semantic_cache_with_minilm_hits_a_paraphrase_not_another_question(
    tmp_path: Path, upstream: tuple[str, FakeOpenAI]
) -> None:
    base_up, fake = upstream
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp_path / 'gw.db'}",
        models=[{"name": "echo", "provider": "openai", "base_url": base_up + "/v1"}],
        embeddings=[
            {
                "name": "minilm",
                "provider": "sentence-transformers",
                "path": "builtin:all-minilm-l6-v2",
            }
        ],
        server={"preload": False},
        cache={"enabled": True, "semantic": {"enabled": True, "threshold": 0.85}},
    )
    with serve(create_app(settings)) as base:
        before = len(fake.requests)
        asked = chat(base, ask("How do I reset my password?"))
        paraphrase = chat(base, ask("I forgot my password, how do I change it?"))
        similar_words = chat(base, ask("How do I reset my router?"))
        unrelated = chat(base, ask("What is the boiling point of water?"))
    assert asked.headers["x-llmforge-cache"] == "miss"
    assert paraphrase.headers["x-llmforge-cache"] == "semantic_hit"
    assert paraphrase.json()["choices"][0]["message"]["content"] == "How do I reset my password?"
    assert similar_words.headers["x-llmforge-cache"] == "miss"
    assert unrelated.headers["x-llmforge-cache"] == "miss"
    assert len(fake.requests) == before + 3


async def test_semantic_hits_stay_within_one_api_key_while_exact_hits_are_shared() -> None:
    embedder = ModelCatalog([], [EmbeddingConfig(name="hash", provider="fake")]).embedder("hash")
    cache = ResponseCache(MemoryBackend(100), ttl_s=60, embedder=embedder, threshold=0.9)
    alice, bob = Caller(key_id="k-alice", name="alice"), Caller(key_id="k-bob", name="bob")

    def call(text: str, caller: Caller) -> Call:
        return Call(model="m", messages=[Message(role="user", content=text)], caller=caller)

    asked = call("What is my account balance?", alice)
    assert await cache.lookup(asked) is None and asked.cache == "miss"
    await cache.store(asked, Completion(text="Alice has 10 dollars."))

    near = call("what is my account balance", bob)
    assert await cache.lookup(near) is None and near.cache == "miss"
    exact = call("What is my account balance?", bob)
    assert await cache.lookup(exact) is not None and exact.cache == "hit"
    own = call("what is my account balance", alice)
    found = await cache.lookup(own)
    assert found is not None and found.text == "Alice has 10 dollars."
    assert own.cache == "semantic_hit"
