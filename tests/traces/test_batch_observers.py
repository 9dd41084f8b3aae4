"""Batch observers of the trace recorder (how OpenTelemetry export and drift are fed): each sees
every written trace once, after it is stored; a failing observer stops neither the writer nor the
others."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from llmforge.core.db import open_engine
from llmforge.traces import Trace, TraceRecorder, TraceStore


def make(n: int) -> list[Trace]:
    return [Trace(model="m", request={"prompt": str(i)}, kind="text") for i in range(n)]


async def test_observers_see_each_written_trace_once_after_it_is_stored(tmp_path: Path) -> None:
    store = TraceStore(open_engine(f"sqlite:///{tmp_path / 't.db'}"))
    recorder = TraceRecorder(store, batch_size=16)
    seen: list[str] = []
    stored_when_seen: list[bool] = []

    def observer(batch: Sequence[Trace]) -> None:
        seen.extend(t.id for t in batch)
        stored_when_seen.append(len(store.list(limit=1000)) >= len(seen))

    recorder.observe(observer)
    traces = make(50)
    for trace in traces:
        recorder.record(trace)
    await recorder.stop()
    assert sorted(seen) == sorted(t.id for t in traces)
    assert all(stored_when_seen)


async def test_a_failing_observer_stops_neither_writes_nor_other_observers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = TraceStore(open_engine(f"sqlite:///{tmp_path / 't.db'}"))
    recorder = TraceRecorder(store)
    seen: list[Trace] = []

    def broken(batch: Sequence[Trace]) -> None:
        raise RuntimeError("observer bug")

    recorder.observe(broken)
    recorder.observe(seen.extend)
    for trace in make(10):
        recorder.record(trace)
    await recorder.flush()
    for trace in make(5):
        recorder.record(trace)
    await recorder.stop()
    assert len(seen) == 15
    assert recorder.stats.written == 15
    assert "observer" in caplog.text
