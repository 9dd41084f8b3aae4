"""Every model call, recorded: the `traces` table, its migrations, and the writer that feeds it.

`TraceStore` is the synchronous, transactional store (one transaction per batch: a batch lands whole
or not at all). `TraceRecorder` sits in front of it inside the server: callers hand it finished
traces without waiting, a background task writes them in batches on a worker thread (a batch
gathers for `linger_s`, 50 ms, so a busy server writes a few times a second, not once per call) and
retries a failed batch with back-off. Memory is bounded (see `record`); `stop()` drains what is
queued. A process killed between a response and its trace's write (about 50 ms) loses that trace; a
batch is never half-written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection, Engine

from llmforge.core.db import Migration, migrate, sortable_id
from llmforge.core.errors import NotFoundError

log = logging.getLogger(__name__)

metadata = sa.MetaData()
traces = sa.Table(
    "traces",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("ttft_ms", sa.Float),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("stream", sa.Boolean, nullable=False),
    sa.Column("served_by", sa.String(200)),
    sa.Column("deployment", sa.String(200)),
    sa.Column("retries", sa.Integer, server_default="0"),
    sa.Column("fallbacks", sa.JSON),
    sa.Column("cache", sa.String(16)),
    sa.Column("cost_usd", sa.Float, server_default="0"),
    sa.Column("key_id", sa.String(40)),
)


def _create(conn: Connection) -> None:
    sa.Table(
        "traces", sa.MetaData(), *(c.copy() for c in traces.columns if c.name in _V1_COLUMNS)
    ).create(conn)
    conn.execute(sa.text("CREATE INDEX ix_traces_created_at ON traces (created_at)"))
    conn.execute(sa.text("CREATE INDEX ix_traces_model ON traces (model)"))


def _add_routing_columns(conn: Connection) -> None:
    for col in ("served_by", "deployment", "retries", "fallbacks", "cache", "cost_usd", "key_id"):
        column = traces.c[col]
        ddl = column.type.compile(dialect=conn.dialect)
        default = {"retries": " DEFAULT 0", "cost_usd": " DEFAULT 0"}.get(col, "")
        conn.execute(sa.text(f"ALTER TABLE traces ADD COLUMN {col} {ddl}{default}"))
    conn.execute(sa.text("CREATE INDEX ix_traces_key_id ON traces (key_id)"))


_V1_COLUMNS = {
    "id",
    "created_at",
    "kind",
    "model",
    "request",
    "output",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "ttft_ms",
    "status",
    "error",
    "stream",
}


def _widen_ids(conn: Connection) -> None:
    """Call ids grew past 40 characters; SQLite ignores VARCHAR lengths, PostgreSQL does not."""
    if conn.dialect.name != "sqlite":
        conn.execute(sa.text("ALTER TABLE traces ALTER COLUMN id TYPE VARCHAR(64)"))


MIGRATIONS = [
    Migration("traces.0001_create", _create),
    Migration("traces.0002_routing", _add_routing_columns),
    Migration("traces.0003_wide_ids", _widen_ids),
]


class Trace(BaseModel):
    """One recorded call, as stored and as listed."""

    id: str = Field(default_factory=sortable_id)
    created_at: float = Field(default_factory=time.time)
    kind: Literal["chat", "embedding"] = "chat"
    model: str
    request: dict[str, Any]
    output: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    status: Literal["ok", "error", "cancelled"] = "ok"
    error: str | None = None
    stream: bool = False
    served_by: str | None = None
    deployment: str | None = None
    retries: int | None = 0
    fallbacks: list[str] | None = None
    cache: str | None = None
    cost_usd: float | None = 0.0
    key_id: str | None = None


class TraceStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        migrate(engine, MIGRATIONS)

    def write(self, batch: Sequence[Trace]) -> None:
        if batch:
            with self.engine.begin() as conn:
                conn.execute(traces.insert(), [vars(t) for t in batch])  # the fields, not a copy

    def list(self, limit: int = 20, model: str | None = None) -> list[Trace]:
        q = sa.select(traces).order_by(traces.c.created_at.desc()).limit(limit)
        if model:
            q = q.where(traces.c.model == model)
        with self.engine.connect() as conn:
            return [Trace.model_validate(row._asdict()) for row in conn.execute(q)]

    def get(self, trace_id: str) -> Trace:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(traces).where(traces.c.id == trace_id)).first()
        if row is None:
            raise NotFoundError(f"No trace '{trace_id}'. List them with `llmforge traces list`.")
        return Trace.model_validate(row._asdict())


class TraceRecorder:
    """Asynchronous, bounded, batching front of a TraceStore."""

    def __init__(
        self,
        store: TraceStore,
        queue_size: int = 1000,
        batch_size: int = 256,
        linger_s: float = 0.05,
    ) -> None:
        self.store = store
        self._queue: asyncio.Queue[Trace] = asyncio.Queue(queue_size)
        self._batch_size = batch_size
        self._linger_s = linger_s  # how long a batch gathers before it is written
        self._task: asyncio.Task[None] | None = None
        self._overflow = 0
        self.dropped = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="trace-writer")

    def record(self, trace: Trace) -> None:
        """Queue a trace without waiting (safe in `finally` blocks of cancelled requests).

        When the queue is full, up to `queue_size` more wait in line; past that the trace is dropped
        and
        counted in `dropped`, so memory stays bounded even when the database is down."""
        if self._task is None:
            self.start()
        try:
            self._queue.put_nowait(trace)
        except asyncio.QueueFull:
            if self._overflow >= self._queue.maxsize:
                self.dropped += 1
                log.error("trace queue full; dropped trace %s (%d dropped)", trace.id, self.dropped)
                return
            self._overflow += 1
            task = asyncio.ensure_future(self._queue.put(trace))
            task.add_done_callback(self._overflow_done)

    def _overflow_done(self, _task: asyncio.Future[None]) -> None:
        self._overflow -= 1

    async def flush(self) -> None:
        """Wait until everything recorded so far is written."""
        while self._overflow:
            await asyncio.sleep(0.01)
        await self._queue.join()

    async def stop(self) -> None:
        if self._task is not None:
            await self.flush()
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        delay = 0.05
        while True:
            batch = [await self._queue.get()]
            if self._linger_s > 0 and self._queue.qsize() < self._batch_size - 1:
                # one write per linger, not one per call: a write's fixed cost (thread hop,
                # transaction) is most of its cost, and it competes with requests for the GIL
                await asyncio.sleep(self._linger_s)
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            while True:
                try:
                    await asyncio.to_thread(self.store.write, batch)
                    delay = 0.05
                    break
                except sa.exc.SQLAlchemyError as e:  # keep the batch; retry with back-off
                    log.warning("trace write failed (%s); retrying in %.1fs", e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            for _ in batch:
                self._queue.task_done()
