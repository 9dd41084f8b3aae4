"""The trace recorder loses nothing it can store and never stalls: a row the database refuses is
repaired or dropped alone (counted, logged by id), a database that is down keeps the rows until it
is back, and shutdown ends within its deadline whatever the database does."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from llmforge.core.db import open_engine
from llmforge.traces import Trace, TraceRecorder, TraceStore

SECRET = "my-password-is-hunter2"


def engine_at(path: Path, busy_timeout_ms: int | None = None) -> Engine:
    """The server's own engine for `path`; optionally waiting less than its 30 s on a lock."""
    engine = open_engine(f"sqlite:///{path}")
    if busy_timeout_ms is not None:

        def shorter_wait(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")

        sa.event.listen(engine, "connect", shorter_wait)  # runs after open_engine's pragmas
    return engine


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another process's write transaction holds the SQLite file: no one else can write."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def trace(n: int, **fields: Any) -> Trace:
    content = {
        "model": "m",
        "request": {"messages": [{"role": "user", "content": f"question {n}"}]},
        "output": f"answer {n}",
    }
    return Trace(**{**content, **fields})


def stored_ids(store: TraceStore) -> set[str]:
    return {t.id for t in store.list(limit=10_000)}


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llmforge.traces.store"]


async def test_rows_the_database_refuses_are_dropped_alone_and_the_rest_are_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = TraceStore(engine_at(tmp_path / "t.db"))
    first = trace(0)
    store.write([first])
    recorder = TraceRecorder(store, linger_s=0.2)  # everything below lands in one batch
    good = [trace(n, output=f"{SECRET} {n}") for n in range(1, 40)]
    duplicate = trace(99, id=first.id)  # breaks the primary key
    too_big = trace(98, prompt_tokens=2**70)  # no SQL integer holds it
    batch = [*good[:10], duplicate, *good[10:30], too_big, *good[30:]]
    for t in batch:
        recorder.record(t)
    await asyncio.wait_for(recorder.flush(), 10)
    later = [trace(n) for n in range(200, 205)]  # the writer goes on after the bad rows
    for t in later:
        recorder.record(t)
    await asyncio.wait_for(recorder.stop(), 10)

    ids = stored_ids(store)
    assert {t.id for t in good + later} <= ids
    assert too_big.id not in ids
    assert store.get(first.id).output == "answer 0"  # the duplicate did not replace it
    assert (recorder.stats.unwritable, recorder.dropped) == (2, 2)
    logged = messages(caplog)
    for bad in (duplicate, too_big):
        assert len([m for m in logged if bad.id in m and "dropped" in m]) == 1
    assert any("UNIQUE constraint" in m for m in logged)
    assert not any(SECRET in m for m in logged)


async def test_text_with_lone_surrogates_is_stored_with_replacement_characters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = TraceStore(engine_at(tmp_path / "t.db"))
    recorder = TraceRecorder(store, linger_s=0.2)
    in_request = Trace(model="m", request={"messages": [{"role": "user", "content": "a\ud800b"}]})
    in_output = Trace(model="m", request={"tools": {"k\udfff": 1}}, output="x\udc00y")
    good = [trace(n) for n in range(5)]
    for t in [good[0], in_request, *good[1:3], in_output, *good[3:]]:
        recorder.record(t)
    await asyncio.wait_for(recorder.stop(), 10)

    assert {t.id for t in good} <= stored_ids(store)
    assert store.get(in_request.id).request["messages"][0]["content"] == "a\ufffdb"
    assert store.get(in_output.id).request == {"tools": {"k\ufffd": 1}}
    assert store.get(in_output.id).output == "x\ufffdy"
    assert (recorder.stats.repaired, recorder.dropped) == (2, 0)
    assert len([m for m in messages(caplog) if in_request.id in m]) == 1


async def test_rows_recorded_while_the_database_is_locked_are_written_once_it_is_free(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.db"
    store = TraceStore(engine_at(path, busy_timeout_ms=100))
    recorder = TraceRecorder(store)
    rows = [trace(n, output=f"{SECRET} {n}") for n in range(20)]
    with locked(path):
        for t in rows:
            recorder.record(t)
        deadline = time.monotonic() + 10
        while not any("trace write failed" in m for m in messages(caplog)):
            assert time.monotonic() < deadline, "the write never failed"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # a few retries
        assert stored_ids(store) == set()
    await asyncio.wait_for(recorder.flush(), 10)

    assert stored_ids(store) == {t.id for t in rows}
    assert not any(SECRET in m for m in messages(caplog))  # failures are logged without rows
    assert recorder.dropped == 0
    assert recorder.stats.written == len(rows)
    await recorder.stop()


async def test_shutdown_returns_within_its_deadline_when_the_database_stays_locked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.db"
    store = TraceStore(engine_at(path))  # SQLite waits up to 30 s for the lock on each write
    recorder = TraceRecorder(store, queue_size=4)
    with locked(path):
        for n in range(20):  # 4 queued, 4 waiting for room, 12 dropped at once
            recorder.record(trace(n))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await asyncio.wait_for(recorder.stop(deadline_s=1.0), 10)
        took = time.monotonic() - started
    assert took < 2.0
    stats = recorder.stats
    assert (stats.written, stats.overflow, stats.abandoned, recorder.dropped) == (0, 12, 8, 20)
    assert any("8 trace(s) not written" in m for m in messages(caplog))


async def test_shutdown_writes_what_is_queued_when_the_database_is_up(tmp_path: Path) -> None:
    store = TraceStore(engine_at(tmp_path / "t.db"))
    recorder = TraceRecorder(store, queue_size=4)
    rows = [trace(n) for n in range(8)]  # 4 queued, 4 waiting for room in the queue
    for t in rows:
        recorder.record(t)
    await asyncio.wait_for(recorder.stop(deadline_s=5.0), 10)
    assert stored_ids(store) == {t.id for t in rows}
    assert recorder.dropped == 0
