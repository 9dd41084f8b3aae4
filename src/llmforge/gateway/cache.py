"""The response cache: answers to conversations already asked, served without calling a model.

Exact cache: the key is the sha256 of canonical JSON of (model, every message, sampling), so a
different earlier turn, system prompt, temperature, tool list, tool result or response format is a
different entry; asking the same thing in another conversation never hits. Legacy text completions
are cached exactly too (under keys of their own), never semantically. Semantic cache (optional,
`cache.semantic`): a canonical rendering of the whole conversation (newest message first, so an
embedder's truncation drops the oldest context, not the question) is embedded and compared by cosine
similarity with entries of the same model, sampling, conversation shape (the roles in order) and API
key; the best one at or above `threshold` is a hit. Exact hits are shared between keys (the same
input asked by anyone); semantic hits are not, since a near match may differ in one caller's private
details.

What is cached: every finished answer (`stop`, `length` or `tool_calls`) of a call that did not
bypass the cache (`x-llmforge-cache: no`), whatever its temperature. The sampling parameters
(temperature, seed, ...) are part of the key, and clients that want a fresh sample at temperature >
0 send the bypass header (LiteLLM and most gateways behave the same). Errors and cancelled or cut-
off streams are never stored. Entries live `ttl_s` seconds.

Backends (`CacheBackend`): in-process LRU (`memory`, bounded by `max_entries`), a table in the
gateway's database (`sqlite`, or whatever `database` points at: survives restarts, shared by
processes on one machine; expired rows are ignored and pruned), or Redis (`redis`, shared by every
gateway instance; Redis expires the entries). A failing backend or embedder is logged and the call
is answered as a miss: the cache never fails a request.

Deliberately not here: request coalescing (two identical calls in flight both reach the model),
caching embeddings calls, and an approximate nearest-neighbour index (the semantic scan is a brute-
force matrix product over at most `max_entries` newest entries of one namespace). Answers served
from the cache cost nothing and count no tokens: the gateway does not account them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import orjson
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from llmforge.core.config import CacheConfig
from llmforge.core.db import Migration, migrate
from llmforge.core.errors import ConfigError
from llmforge.core.types import Completion, Message, Sampling
from llmforge.gateway.call import Call
from llmforge.models import Embedder, ModelCatalog

if TYPE_CHECKING:
    from llmforge.core.settings import Settings

log = logging.getLogger(__name__)

KEY_VERSION = 1  # bump when the key's canonical form changes: old entries then simply miss
CACHEABLE_FINISHES = ("stop", "length", "tool_calls")


class CachedAnswer(BaseModel):
    """One stored answer. `vector` (float32 bytes) is set when the semantic cache is on."""

    key: str
    namespace: str
    completion: Completion
    vector: bytes | None = None
    created_at: float
    expires_at: float


class CacheBackend(Protocol):
    """Where answers are kept. Expired entries must never be returned."""

    async def get(self, key: str) -> Completion | None: ...

    async def put(self, entry: CachedAnswer) -> None: ...

    async def neighbours(self, namespace: str, limit: int) -> list[tuple[str, bytes]]:
        """(key, vector) of live entries of `namespace` that have a vector, newest first."""
        ...

    async def aclose(self) -> None: ...


# -- keys -------------------------------------------------------------------------------------


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _sampling(sampling: Sampling) -> dict[str, Any]:
    return sampling.model_dump(mode="json")


def exact_key(
    model: str, messages: Sequence[Message], sampling: Sampling, kind: str = "chat"
) -> str:
    """sha256 of canonical JSON of the model, every message (role, content, name, tool calls and
    results, images) and sampling (tools and response format included); a legacy text completion
    (`kind` text) never shares a key with a chat."""
    body: dict[str, Any] = {
        "v": KEY_VERSION,
        "model": model,
        "messages": [m.model_dump(mode="json") for m in messages],
        "sampling": _sampling(sampling),
    }
    if kind != "chat":
        body["kind"] = kind
    return hashlib.sha256(_canonical(body)).hexdigest()


def semantic_namespace(
    model: str, messages: Sequence[Message], sampling: Sampling, key_id: str | None = None
) -> str:
    """Entries compared by similarity: same model, sampling, roles in the same order, and API key
    (a near match may differ in one caller's private details; an exact match cannot)."""
    body = {
        "v": KEY_VERSION,
        "model": model,
        "roles": [m.role for m in messages],
        "sampling": _sampling(sampling),
        "key": key_id,
    }
    return hashlib.sha256(_canonical(body)).hexdigest()


def render(messages: Sequence[Message]) -> str:
    """The conversation as the embedder sees it: newest message first, one `role: content` each."""
    return "\n".join(f"{m.role}: {m.content}" for m in reversed(messages))


# -- the cache the gateway uses ---------------------------------------------------------------


class ResponseCache:
    """Looks calls up and stores their answers; sets `call.cache` to hit, semantic_hit or miss."""

    def __init__(
        self,
        backend: CacheBackend,
        *,
        ttl_s: float,
        embedder: Embedder | None = None,
        threshold: float = 0.95,
        max_candidates: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.ttl_s = ttl_s
        self.embedder = embedder
        self.threshold = threshold
        self.max_candidates = max_candidates
        self._clock = clock
        # vectors computed at lookup, kept for the store after a miss (bounded: oldest dropped,
        # a dropped one is recomputed at store time)
        self._vectors: OrderedDict[str, bytes] = OrderedDict()
        self._max_vectors = 1024

    async def lookup(self, call: Call) -> Completion | None:
        if call.kind == "embedding":
            return None
        call.cache = "miss"
        key = exact_key(call.model, call.messages, call.sampling, call.kind)
        try:
            found = await self.backend.get(key)
        except Exception as e:
            log.warning("response cache lookup failed (%r); answering without the cache", e)
            return None
        if found is not None:
            call.cache = "hit"
            return found
        if self.embedder is None or call.kind != "chat":
            return None
        try:
            found = await self._similar(call)
        except Exception as e:
            log.warning("semantic cache lookup failed (%r); answering without the cache", e)
            return None
        if found is not None:
            call.cache = "semantic_hit"
        return found

    async def store(self, call: Call, completion: Completion) -> None:
        vector = self._vectors.pop(call.id, None)
        if (
            call.kind == "embedding"
            or call.status != "ok"
            or call.cache in ("hit", "semantic_hit")
            or completion.finish_reason not in CACHEABLE_FINISHES
        ):
            return
        now = self._clock()
        try:
            if self.embedder is not None and vector is None and call.kind == "chat":
                vector = await self._embed(call.messages)
            await self.backend.put(
                CachedAnswer(
                    key=exact_key(call.model, call.messages, call.sampling, call.kind),
                    namespace=_namespace(call),
                    completion=completion,
                    vector=vector,
                    created_at=now,
                    expires_at=now + self.ttl_s,
                )
            )
        except Exception as e:
            log.warning("response cache store failed (%r); the answer is not cached", e)

    async def aclose(self) -> None:
        await self.backend.aclose()

    async def _similar(self, call: Call) -> Completion | None:
        vector = await self._embed(call.messages)
        candidates = await self.backend.neighbours(_namespace(call), self.max_candidates)
        usable = [(k, v) for k, v in candidates if len(v) == len(vector)]
        if usable:
            matrix = np.stack([np.frombuffer(v, dtype=np.float32) for _, v in usable])
            scores = matrix @ np.frombuffer(vector, dtype=np.float32)
            best = int(np.argmax(scores))
            if float(scores[best]) >= self.threshold:
                found = await self.backend.get(usable[best][0])
                if found is not None:
                    return found
        self._vectors[call.id] = vector  # for the store that follows this miss
        while len(self._vectors) > self._max_vectors:
            self._vectors.popitem(last=False)
        return None

    async def _embed(self, messages: Sequence[Message]) -> bytes:
        assert self.embedder is not None
        result = await self.embedder.embed([render(messages)])
        v = np.asarray(result.vectors[0], dtype=np.float32)
        norm = float(np.linalg.norm(v)) or 1.0
        return (v / norm).astype(np.float32).tobytes()


def _namespace(call: Call) -> str:
    key_id = call.caller.key_id if call.caller else None
    return semantic_namespace(call.model, call.messages, call.sampling, key_id)


def build_cache(settings: Settings, engine: Engine, catalog: ModelCatalog) -> ResponseCache | None:
    """The cache `settings.cache` asks for, or None when it is off."""
    config: CacheConfig = settings.cache
    if not config.enabled:
        return None
    backend: CacheBackend
    if config.backend == "memory":
        backend = MemoryBackend(config.max_entries)
    elif config.backend == "sqlite":
        backend = SqlBackend(engine)
    else:
        if not settings.redis_url:
            raise ConfigError(
                "cache.backend is 'redis' but redis_url is not set. Set `redis_url: "
                "redis://host:6379/0` in llmforge.yaml (or LLMFORGE_REDIS_URL), or use "
                "cache.backend: memory or sqlite"
            )
        backend = RedisBackend(settings.redis_url, max_entries=config.max_entries)
    semantic = config.semantic
    return ResponseCache(
        backend,
        ttl_s=config.ttl_s,
        embedder=catalog.embedder(semantic.embedding) if semantic.enabled else None,
        threshold=semantic.threshold,
        max_candidates=config.max_entries,
    )


# -- backends ---------------------------------------------------------------------------------


class MemoryBackend:
    """In-process LRU of at most `max_entries` answers (vectors included)."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, CachedAnswer] = OrderedDict()
        self._namespaces: dict[str, OrderedDict[str, bytes]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> Completion | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry.completion

    async def put(self, entry: CachedAnswer) -> None:
        self._drop(entry.key)
        self._entries[entry.key] = entry
        if entry.vector is not None:
            self._namespaces.setdefault(entry.namespace, OrderedDict())[entry.key] = entry.vector
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))

    async def neighbours(self, namespace: str, limit: int) -> list[tuple[str, bytes]]:
        index = self._namespaces.get(namespace)
        if not index:
            return []
        now = self._clock()
        found: list[tuple[str, bytes]] = []
        for key in reversed(list(index)):
            entry = self._entries[key]
            if entry.expires_at <= now:
                self._drop(key)
            elif len(found) < limit:
                found.append((key, index[key]))
        return found

    async def aclose(self) -> None:
        self._entries.clear()
        self._namespaces.clear()

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        index = self._namespaces.get(entry.namespace)
        if index is not None:
            index.pop(key, None)
            if not index:
                del self._namespaces[entry.namespace]


metadata = sa.MetaData()
cache_table = sa.Table(
    "response_cache",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("completion", sa.JSON, nullable=False),
    sa.Column("vector", sa.LargeBinary),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)


def _create_table(conn: Connection) -> None:
    cache_table.create(conn)
    conn.execute(sa.text("CREATE INDEX ix_response_cache_expires ON response_cache (expires_at)"))
    conn.execute(sa.text("CREATE INDEX ix_response_cache_ns ON response_cache (namespace)"))


MIGRATIONS = [Migration("cache.0001_create", _create_table)]


class SqlBackend:
    """The `response_cache` table of the gateway's database. Queries run on a worker thread; rows
    past `expires_at` are ignored, and deleted at most once per `prune_every_s` on writes."""

    def __init__(
        self, engine: Engine, prune_every_s: float = 60.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.engine = engine
        self.prune_every_s = prune_every_s
        self._clock = clock
        self._pruned_at = 0.0
        migrate(engine, MIGRATIONS)

    async def get(self, key: str) -> Completion | None:
        return await asyncio.to_thread(self._get, key, self._clock())

    async def put(self, entry: CachedAnswer) -> None:
        now = self._clock()
        prune = now - self._pruned_at >= self.prune_every_s
        if prune:
            self._pruned_at = now
        await asyncio.to_thread(self._put, entry, now if prune else None)

    async def neighbours(self, namespace: str, limit: int) -> list[tuple[str, bytes]]:
        return await asyncio.to_thread(self._neighbours, namespace, limit, self._clock())

    async def aclose(self) -> None:
        return None  # the engine belongs to the app

    def count(self) -> int:
        """Rows stored, expired ones included (tests, diagnostics)."""
        with self.engine.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(cache_table)) or 0)

    def _get(self, key: str, now: float) -> Completion | None:
        q = sa.select(cache_table.c.completion).where(
            cache_table.c.key == key, cache_table.c.expires_at > now
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None else Completion.model_validate(row[0])

    def _put(self, entry: CachedAnswer, prune_before: float | None) -> None:
        row = entry.model_dump(mode="json", exclude={"vector"})
        row["vector"] = entry.vector
        try:
            with self.engine.begin() as conn:
                conn.execute(cache_table.delete().where(cache_table.c.key == entry.key))
                conn.execute(cache_table.insert().values(**row))
                if prune_before is not None:
                    expired = cache_table.c.expires_at <= prune_before
                    conn.execute(cache_table.delete().where(expired))
        except IntegrityError:
            pass  # another process stored the same answer meanwhile

    def _neighbours(self, namespace: str, limit: int, now: float) -> list[tuple[str, bytes]]:
        q = (
            sa.select(cache_table.c.key, cache_table.c.vector)
            .where(
                cache_table.c.namespace == namespace,
                cache_table.c.expires_at > now,
                cache_table.c.vector.is_not(None),
            )
            .order_by(cache_table.c.created_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [(str(k), bytes(v)) for k, v in conn.execute(q)]


class _RedisValue(BaseModel):
    completion: Completion
    expires_at: float  # Redis expires the key too; this keeps the gateway's clock authoritative


class RedisBackend:
    """Redis, shared by every gateway instance. An answer is a string key with Redis's own expiry;
    a semantic namespace is a sorted set of `key + vector` members scored by expiry time, trimmed of
    expired members on read and to the newest `max_entries` on write."""

    def __init__(
        self,
        url: str,
        *,
        max_entries: int = 10_000,
        prefix: str = "llmforge:cache:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(url)
        self.max_entries = max_entries
        self.prefix = prefix
        self._clock = clock

    async def get(self, key: str) -> Completion | None:
        raw = await self._redis.get(self.prefix + "a:" + key)
        if raw is None:
            return None
        stored = _RedisValue.model_validate_json(raw)
        return stored.completion if stored.expires_at > self._clock() else None

    async def put(self, entry: CachedAnswer) -> None:
        ttl_ms = max(1, round((entry.expires_at - self._clock()) * 1000))
        pipe = self._redis.pipeline(transaction=True)
        value = _RedisValue(completion=entry.completion, expires_at=entry.expires_at)
        pipe.set(self.prefix + "a:" + entry.key, value.model_dump_json(), px=ttl_ms)
        if entry.vector is not None:
            ns = self.prefix + "ns:" + entry.namespace
            pipe.zadd(ns, {entry.key.encode() + entry.vector: entry.expires_at})
            pipe.zremrangebyrank(ns, 0, -(self.max_entries + 1))
            pipe.pexpire(ns, ttl_ms)
        await pipe.execute()

    async def neighbours(self, namespace: str, limit: int) -> list[tuple[str, bytes]]:
        ns = self.prefix + "ns:" + namespace
        now = self._clock()
        await self._redis.zremrangebyscore(ns, "-inf", now)
        members = cast(
            list[bytes],
            await self._redis.zrevrangebyscore(ns, "+inf", f"({now}", start=0, num=limit),
        )
        return [(m[:64].decode(), m[64:]) for m in members]

    async def aclose(self) -> None:
        await self._redis.aclose()


__all__ = [
    "CacheBackend",
    "CachedAnswer",
    "MemoryBackend",
    "RedisBackend",
    "ResponseCache",
    "SqlBackend",
    "build_cache",
    "exact_key",
    "render",
    "semantic_namespace",
]
