"""Traces: every chat and embedding call recorded in the database, and `llmforge traces` to read
them."""

from llmforge.traces.store import (
    MIGRATIONS,
    BatchObserver,
    RecorderStats,
    Trace,
    TraceRecorder,
    TraceStore,
)

__all__ = ["MIGRATIONS", "BatchObserver", "RecorderStats", "Trace", "TraceRecorder", "TraceStore"]
