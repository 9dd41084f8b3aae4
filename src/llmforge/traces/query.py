"""Reading the traces table for people: filtered lists, one call, time series and filter values.

`TraceQuery` is the filter every read shares (model, key, status, cache result, kind, time range).
`list_traces` pages through matching calls newest first (`before` is the last id of the previous
page) as `TraceSummary` rows: what a table shows, with a short preview of the prompt and answer
instead of the whole request. `series` buckets matching calls over time: requests, errors, latency
percentiles, tokens and spend per bucket, for charts. `facets` lists the values the filters can
take. All functions are synchronous (run them on a worker thread) and read only.

Percentiles are computed here from the rows, not in SQL (SQLite has no percentile function); a
series reads at most `MAX_SERIES_ROWS` calls, the newest, and says when it stopped short. This
module writes nothing and knows nothing of HTTP or keys: the caller narrows a key's view by
setting `key_id`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine

from llmforge.traces.store import traces

MAX_LIMIT = 500
MAX_SERIES_ROWS = 200_000
PREVIEW_CHARS = 160
# bucket widths a series may use, in seconds: the smallest that gives at most `max_buckets`
BUCKET_WIDTHS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)

Status = Literal["ok", "error", "cancelled"]
CacheResult = Literal["off", "miss", "hit", "semantic_hit"]
Kind = Literal["chat", "text", "embedding"]


class TraceQuery(BaseModel):
    """Which calls: every set field narrows the selection; times are Unix seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(None, description="the model the caller asked for")
    key_id: str | None = Field(None, description="the API key's id")
    status: Status | None = None
    cache: CacheResult | None = None
    kind: Kind | None = None
    since: float | None = Field(None, description="calls that ended at or after this time")
    until: float | None = Field(None, description="calls that ended before this time")

    def where(self) -> list[sa.ColumnElement[bool]]:
        c = traces.c
        clauses: list[sa.ColumnElement[bool]] = []
        for column, value in (
            (c.model, self.model),
            (c.key_id, self.key_id),
            (c.status, self.status),
            (c.kind, self.kind),
        ):
            if value is not None:
                clauses.append(column == value)
        if self.cache == "off":
            clauses.append(sa.or_(c.cache == "off", c.cache.is_(None)))
        elif self.cache is not None:
            clauses.append(c.cache == self.cache)
        if self.since is not None:
            clauses.append(c.created_at >= self.since)
        if self.until is not None:
            clauses.append(c.created_at < self.until)
        return clauses


class TraceSummary(BaseModel):
    """One call as a list shows it."""

    id: str
    created_at: float
    kind: str
    model: str
    served_by: str | None = None
    status: str
    error: str | None = None
    cache: str | None = None
    key_id: str | None = None
    stream: bool = False
    latency_ms: float
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    retries: int = 0
    fallbacks: list[str] = Field(default_factory=list)
    finish_reason: str | None = None
    prompt_preview: str = ""
    output_preview: str = ""


class TracePage(BaseModel):
    data: list[TraceSummary]
    has_more: bool
    next_before: str | None = Field(None, description="pass as `before` for the next page")


class Bucket(BaseModel):
    """Calls that ended in [start, start + width)."""

    start: float
    requests: int = 0
    errors: int = 0
    cancelled: int = 0
    cache_hits: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class Series(BaseModel):
    since: float
    until: float
    width_s: int
    buckets: list[Bucket]
    totals: Bucket
    truncated: bool = Field(False, description="more calls matched than were read")


class Facets(BaseModel):
    """The values each filter can take, as found in the table."""

    models: list[str]
    keys: list[str]
    statuses: list[str] = Field(default_factory=lambda: ["ok", "error", "cancelled"])
    caches: list[str] = Field(default_factory=lambda: ["off", "miss", "hit", "semantic_hit"])
    kinds: list[str] = Field(default_factory=lambda: ["chat", "text", "embedding"])


def list_traces(
    engine: Engine, query: TraceQuery, limit: int = 50, before: str | None = None
) -> TracePage:
    """Matching calls, newest first; `before` continues after that id (ids sort by time)."""
    limit = max(1, min(limit, MAX_LIMIT))
    clauses = query.where()
    if before:
        clauses.append(traces.c.id < before)
    q = sa.select(traces).where(*clauses).order_by(traces.c.id.desc()).limit(limit + 1)
    with engine.connect() as conn:
        rows = [row._asdict() for row in conn.execute(q)]
    more = len(rows) > limit
    data = [_summary(r) for r in rows[:limit]]
    return TracePage(data=data, has_more=more, next_before=data[-1].id if more and data else None)


def series(
    engine: Engine,
    query: TraceQuery,
    max_buckets: int = 60,
    now: float | None = None,
) -> Series:
    """Matching calls bucketed over [since, until) (default: the last 24 hours)."""
    until = query.until if query.until is not None else (now or time.time())
    since = query.since if query.since is not None else until - 86400
    if since >= until:
        since = until - 60
    span = until - since
    width = next((w for w in BUCKET_WIDTHS if span / w <= max_buckets), None)
    if width is None:  # longer than the widths cover: whole days
        width = math.ceil(span / max_buckets / 86400) * 86400
    first = math.floor(since / width) * width
    count = max(1, math.ceil((until - first) / width))
    bounded = query.model_copy(update={"since": since, "until": until})
    c = traces.c
    q = (
        sa.select(
            c.created_at,
            c.latency_ms,
            c.status,
            c.cache,
            c.prompt_tokens,
            c.completion_tokens,
            c.cost_usd,
        )
        .where(*bounded.where())
        .order_by(c.created_at.desc())
        .limit(MAX_SERIES_ROWS + 1)
    )
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    truncated = len(rows) > MAX_SERIES_ROWS
    rows = rows[:MAX_SERIES_ROWS]
    latencies: list[list[float]] = [[] for _ in range(count)]
    buckets = [Bucket(start=first + i * width) for i in range(count)]
    for created, latency, status, cache, prompt, completion, cost in rows:
        i = min(int((created - first) // width), count - 1)
        _add(buckets[i], status, cache, prompt, completion, cost)
        latencies[i].append(latency)
    totals = Bucket(start=first)
    for bucket, values in zip(buckets, latencies, strict=True):
        _percentiles(bucket, values)
        for name in ("requests", "errors", "cancelled", "cache_hits"):
            setattr(totals, name, getattr(totals, name) + getattr(bucket, name))
        totals.prompt_tokens += bucket.prompt_tokens
        totals.completion_tokens += bucket.completion_tokens
        totals.cost_usd += bucket.cost_usd
    _percentiles(totals, [v for values in latencies for v in values])
    return Series(
        since=since, until=until, width_s=width, buckets=buckets, totals=totals, truncated=truncated
    )


def facets(engine: Engine, key_id: str | None = None) -> Facets:
    """Models and keys found in the table (only the key's own when `key_id` is given)."""
    c = traces.c
    scope = [c.key_id == key_id] if key_id is not None else []
    with engine.connect() as conn:
        models = conn.execute(sa.select(c.model).where(*scope).distinct().order_by(c.model))
        model_names = [m for (m,) in models]
        if key_id is not None:
            keys = [key_id]
        else:
            found = conn.execute(
                sa.select(c.key_id).where(c.key_id.is_not(None)).distinct().order_by(c.key_id)
            )
            keys = [k for (k,) in found]
    return Facets(models=model_names, keys=keys)


def _add(
    bucket: Bucket,
    status: str,
    cache: str | None,
    prompt: int | None,
    completion: int | None,
    cost: float | None,
) -> None:
    bucket.requests += 1
    bucket.errors += status == "error"
    bucket.cancelled += status == "cancelled"
    bucket.cache_hits += cache in ("hit", "semantic_hit")
    bucket.prompt_tokens += prompt or 0
    bucket.completion_tokens += completion or 0
    bucket.cost_usd += cost or 0.0


def _percentiles(bucket: Bucket, values: list[float]) -> None:
    if not values:
        return
    values.sort()
    bucket.p50_ms = _rank(values, 0.50)
    bucket.p95_ms = _rank(values, 0.95)
    bucket.p99_ms = _rank(values, 0.99)


def _rank(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)


def _summary(row: dict[str, Any]) -> TraceSummary:
    return TraceSummary(
        id=row["id"],
        created_at=row["created_at"],
        kind=row["kind"],
        model=row["model"],
        served_by=row["served_by"],
        status=row["status"],
        error=row["error"],
        cache=row["cache"],
        key_id=row["key_id"],
        stream=bool(row["stream"]),
        latency_ms=row["latency_ms"],
        ttft_ms=row["ttft_ms"],
        prompt_tokens=row["prompt_tokens"] or 0,
        completion_tokens=row["completion_tokens"] or 0,
        cost_usd=row["cost_usd"] or 0.0,
        retries=row["retries"] or 0,
        fallbacks=row["fallbacks"] or [],
        finish_reason=row["finish_reason"],
        prompt_preview=_preview(prompt_text(row["kind"], row["request"])),
        output_preview=_preview(row["output"] or ""),
    )


def prompt_text(kind: str, request: dict[str, Any] | None) -> str:
    """What the caller asked, as text: the last user message, the raw prompt or the inputs."""
    request = request or {}
    if kind == "text":
        return str(request.get("prompt", ""))
    if kind == "embedding":
        inputs = request.get("input") or []
        return " | ".join(str(i) for i in inputs[:3])
    for message in reversed(request.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _preview(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW_CHARS else flat[: PREVIEW_CHARS - 1] + "…"
