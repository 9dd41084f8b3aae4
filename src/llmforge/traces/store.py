"""Every model call, recorded: the `traces` table, its migrations, and the writer that feeds it.

`TraceStore` is the synchronous, transactional store (one transaction per batch: a batch lands whole
or not at all). `TraceRecorder` sits in front of it inside the server: callers hand it finished
traces without waiting, a background task writes them in batches (a batch gathers for `linger_s`,
50 ms, so a busy server writes a few times a second, not once per call). Memory is bounded (see
`record`).

A failed write is judged by its cause. A database that is unavailable (locked, unreachable: an
`OperationalError` or a lost connection) keeps the batch, retried with back-off. Any other failure
is the rows' own (text that cannot be encoded, a value out of range, a broken constraint) and will
never go away, so it is never retried as is: rows whose only fault is a lone UTF-16 surrogate in
their text ("\ud800", which JSON escapes can carry) are stored with U+FFFD in its place; then the
batch is bisected until every good row is written, and each row that still cannot be stored is
dropped, counted (`RecorderStats`) and logged once with its id and the database's reason, never
its content.

`stop(deadline_s)` writes what it can within its deadline and counts the rest as lost; it returns
in bounded time even when the database never comes back (writes run on daemon threads, so one
stuck waiting on SQLite's lock does not hold up the process's exit either). A process killed
between a response and its trace's write (about 50 ms) loses that trace; a batch is never
half-written.

`observe(fn)` adds a batch observer: after each batch is written, `fn(rows)` is called with its
rows on the writer's task (never on a request's path). Observers (OpenTelemetry export, drift)
must return at once, handing heavier work to their own task or thread; one that raises is logged
and does not stop the writer or the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection, Engine

from llmforge.core.db import Migration, migrate, sortable_id
from llmforge.core.errors import NotFoundError

log = logging.getLogger(__name__)
T = TypeVar("T")

FIRST_RETRY_S = 0.05  # back-off while the database is unavailable: doubles per failure ...
MAX_RETRY_S = 5.0  # ... up to this
STOP_DEADLINE_S = 5.0  # what `stop()` gives the writer by default

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
    sa.Column("tool_calls", sa.JSON),
    sa.Column("finish_reason", sa.String(16)),
    sa.Column("metadata", sa.JSON),
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


def _add_answer_columns(conn: Connection) -> None:
    """The answer's tool calls and finish reason, and the caller's metadata (tags to filter
    by, e.g. when collecting a distillation dataset)."""
    for col in ("tool_calls", "finish_reason", "metadata"):
        ddl = traces.c[col].type.compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE traces ADD COLUMN {col} {ddl}"))


MIGRATIONS = [
    Migration("traces.0001_create", _create),
    Migration("traces.0002_routing", _add_routing_columns),
    Migration("traces.0003_wide_ids", _widen_ids),
    Migration("traces.0004_answers", _add_answer_columns),
]


class Trace(BaseModel):
    """One recorded call, as stored and as listed."""

    id: str = Field(default_factory=sortable_id)
    created_at: float = Field(default_factory=time.time)
    kind: Literal["chat", "text", "embedding"] = "chat"
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
    tool_calls: list[dict[str, Any]] | None = Field(
        None, description="the answer's tool calls: [{id, name, arguments}]"
    )
    finish_reason: str | None = None
    metadata: dict[str, str] | None = Field(None, description="the caller's tags")


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


def storable(trace: Trace) -> Trace:
    """The trace with each lone surrogate in its text (strings anywhere in it, `request`'s keys
    included) replaced by U+FFFD; the trace itself when it has none. No database accepts a lone
    surrogate: it is not a character, and UTF-8 cannot encode it."""
    fields = vars(trace)
    fixed = {name: _without_surrogates(value) for name, value in fields.items()}
    if all(fixed[name] is value for name, value in fields.items()):
        return trace
    return Trace.model_construct(**fixed)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_surrogates(value: Any) -> Any:
    """`value` with surrogates replaced; the same object when it has none."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if isinstance(value, dict):
        items = [(_without_surrogates(k), _without_surrogates(v)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items(), strict=True)):
            return value
        return dict(items)
    if isinstance(value, list | tuple):
        fixed = [_without_surrogates(v) for v in value]
        if all(f is v for f, v in zip(fixed, value, strict=True)):
            return value
        return fixed
    return value


def unavailable(e: BaseException) -> bool:
    """Whether a failed write says the database is unavailable for now (locked, unreachable, a
    lost connection), so the same rows may succeed later; any other failure is the rows' own."""
    if isinstance(e, sa.exc.DBAPIError) and e.connection_invalidated:
        return True
    return isinstance(
        e, sa.exc.OperationalError | sa.exc.DisconnectionError | sa.exc.TimeoutError | OSError
    )


def _reason(e: BaseException) -> str:
    """Why a write failed, without the statement's parameters (the row's content)."""
    cause = e.orig if isinstance(e, sa.exc.StatementError) and e.orig is not None else e
    if isinstance(cause, UnicodeError):
        text = getattr(cause, "reason", "") or str(cause)
    else:
        text = str(cause).split("\n", 1)[0]
    return f"{type(cause).__name__}: {text[:200]}"


@dataclass
class RecorderStats:
    """What became of the traces handed to a `TraceRecorder`, since it was made."""

    written: int = 0
    repaired: int = 0  # stored with lone surrogates replaced by U+FFFD (also in `written`)
    overflow: int = 0  # dropped: the queue and its overflow were full
    unwritable: int = 0  # dropped: the database refuses the row itself
    abandoned: int = 0  # lost: still unwritten when `stop()`'s deadline passed

    @property
    def dropped(self) -> int:
        """Traces lost, for whatever reason."""
        return self.overflow + self.unwritable + self.abandoned


BatchObserver = Callable[[Sequence[Trace]], None]
"""Called with each batch of traces once it is written (see `TraceRecorder.observe`)."""


class TraceRecorder:
    """Asynchronous, bounded, batching front of a TraceStore (see the module docstring)."""

    def __init__(
        self,
        store: TraceStore,
        queue_size: int = 1000,
        batch_size: int = 256,
        linger_s: float = 0.05,
    ) -> None:
        self.store = store
        self.stats = RecorderStats()
        self._queue: asyncio.Queue[Trace] = asyncio.Queue(queue_size)
        self._batch_size = batch_size
        self._linger_s = linger_s  # how long a batch gathers before it is written
        self._task: asyncio.Task[None] | None = None
        self._waiting: set[asyncio.Task[None]] = set()  # overflow: traces waiting for room
        self._unwritten: deque[tuple[list[Trace], bool]] = deque()  # the batch being written
        self._deadline: float | None = None  # loop time by which `stop()` gives up
        self._observers: list[BatchObserver] = []

    @property
    def dropped(self) -> int:
        """Traces lost so far (see `stats` for why)."""
        return self.stats.dropped

    def observe(self, observer: BatchObserver) -> None:
        """Call `observer(rows)` after each batch is written (see the module docstring)."""
        self._observers.append(observer)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="trace-writer")

    def record(self, trace: Trace) -> None:
        """Queue a trace without waiting (safe in `finally` blocks of cancelled requests).

        When the queue is full, up to `queue_size` more wait in line; past that the trace is dropped
        and counted (`stats.overflow`), so memory stays bounded even when the database is down."""
        if self._task is None:
            self.start()
        try:
            self._queue.put_nowait(trace)
        except asyncio.QueueFull:
            if len(self._waiting) >= self._queue.maxsize:
                self.stats.overflow += 1
                log.error("trace queue full; dropped trace %s (%d dropped)", trace.id, self.dropped)
                return
            task = asyncio.ensure_future(self._queue.put(trace))
            self._waiting.add(task)
            task.add_done_callback(self._waiting.discard)

    async def flush(self) -> None:
        """Wait until everything recorded so far is written (or dropped)."""
        while self._waiting:
            await asyncio.sleep(0.01)
        await self._queue.join()

    async def stop(self, deadline_s: float = STOP_DEADLINE_S) -> None:
        """Write what is queued, for at most `deadline_s`; whatever is still unwritten then is
        counted in `stats.abandoned` and logged. Returns in bounded time whatever the database
        does."""
        if self._task is None:
            return
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + deadline_s
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), deadline_s)
        finally:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._deadline = None
            self._abandon()

    def _abandon(self) -> None:
        """Count and log what the stopped writer left: its batch in hand, the queue, the line."""
        left = [t for rows, _ in self._unwritten for t in rows]
        self._unwritten.clear()
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
            self._queue.task_done()
        lost = len(left)
        for task in self._waiting:  # a trace waiting for room in the queue
            if not task.done():
                task.cancel()
                lost += 1
        self._waiting.clear()
        if lost:
            self.stats.abandoned += lost
            ids = sorted(t.id for t in left)
            log.error(
                "%d trace(s) not written before the recorder stopped: the database did not take "
                "them in time%s",
                lost,
                f" (ids {ids[0]} .. {ids[-1]})" if ids else "",
            )

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            self._unwritten.append((batch, False))  # from here on `stop()` accounts for it
            if self._linger_s > 0 and self._queue.qsize() < self._batch_size - 1:
                # one write per linger, not one per call: a write's fixed cost (thread hop,
                # transaction) is most of its cost, and it competes with requests for the GIL
                await asyncio.sleep(self._linger_s)
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write()
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(self) -> None:
        """Write the rows in hand: retried while the database is unavailable; rows it refuses
        are repaired if they can be, else split off and dropped one by one (see the module
        docstring). Returns early only when `stop()`'s deadline has passed."""
        parts = self._unwritten  # (rows, repair tried), in order
        delay = FIRST_RETRY_S
        loop = asyncio.get_running_loop()
        while parts:
            rows, repaired = parts[0]
            try:
                await _on_daemon_thread(self.store.write, rows)
            except Exception as e:
                if unavailable(e):
                    left = (self._deadline or math.inf) - loop.time()
                    if left <= 0:
                        return  # stopping: `stop()` counts what is left as abandoned
                    log.warning(
                        "trace write failed (%s); retrying in %.2fs", _reason(e), min(delay, left)
                    )
                    await asyncio.sleep(min(delay, left))
                    delay = min(delay * 2, MAX_RETRY_S)
                    continue
                parts.popleft()
                self._split(rows, repaired, e)
            else:
                parts.popleft()
                self.stats.written += len(rows)
                delay = FIRST_RETRY_S
                self._notify(rows)

    def _notify(self, rows: list[Trace]) -> None:
        for observer in self._observers:
            try:
                observer(rows)
            except Exception:
                log.exception("trace batch observer %r failed", observer)

    def _split(self, rows: list[Trace], repaired: bool, e: Exception) -> None:
        """Rows the database refused: the repaired batch first, then halves, then a single row
        is dropped."""
        parts = self._unwritten
        if not repaired:
            fixed = [storable(t) for t in rows]
            changed = [t.id for t, f in zip(rows, fixed, strict=True) if f is not t]
            if changed:
                self.stats.repaired += len(changed)
                for trace_id in changed:
                    log.warning("trace %s: lone surrogates in its text stored as U+FFFD", trace_id)
                parts.appendleft((fixed, True))
                return
        if len(rows) > 1:
            middle = len(rows) // 2
            parts.appendleft((rows[middle:], True))
            parts.appendleft((rows[:middle], True))
            return
        self.stats.unwritable += 1
        log.error("trace %s cannot be stored and was dropped (%s)", rows[0].id, _reason(e))


async def _on_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on a new daemon thread. Not the loop's executor: a write that waits on a
    locked SQLite file (up to its busy timeout) must not hold up the process's exit after
    `stop()` gave up on it. Writes are a few a second, so a thread each costs nothing."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():
            return  # the awaiting writer was cancelled
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as e:  # handed to the awaiting task
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="trace-write", daemon=True).start()
    return await done
