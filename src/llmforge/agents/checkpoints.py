"""LangGraph checkpoints in the configured database, and their retention.

`open_checkpointer(url)` gives LangGraph's own saver for the URL (`agents.checkpoints.database`,
default `database`): `AsyncSqliteSaver` on the SQLite file (WAL, the same file as the rest of
LLMForge's tables), `AsyncPostgresSaver` for `postgresql...` URLs. Its serializer is limited to
the types graphs keep in their state (core messages and sources), so a tampered checkpoint cannot
make the server build arbitrary objects.

Retention (`prune`), the complaint that checkpoints grow forever: every thread keeps only its
newest `keep_per_thread` checkpoints (a run writes one per step), and the threads whose runs all
finished more than `max_age_days` ago are deleted whole. The runtime prunes a thread when its run
stops and sweeps old threads hourly. LangGraph's `DeltaChannel` is not used by LLMForge's graphs,
so dropping old checkpoints never loses state a newer one needs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from llmforge.core.errors import ConfigError

# types the graphs' state holds (see graphs.py, research.py)
STATE_TYPES: Sequence[tuple[str, str]] = (
    ("llmforge.core.types", "Message"),
    ("llmforge.core.types", "ToolCall"),
    ("llmforge.core.types", "Source"),
    ("llmforge.core.types", "ImagePart"),
    ("llmforge.agents.events", "PendingCall"),
)


def serializer() -> JsonPlusSerializer:
    return JsonPlusSerializer(allowed_msgpack_modules=list(STATE_TYPES))


@asynccontextmanager
async def open_checkpointer(url: str) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """The saver for `url`, set up (tables created), closed on exit."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigError(
            f"agents.checkpoints.database: '{url}' is not a database URL; use sqlite:///file.db "
            "or postgresql://user:pass@host/db"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        path = parsed.database or ":memory:"
        async with aiosqlite.connect(path, timeout=30) as conn:
            await conn.execute("PRAGMA busy_timeout=30000")
            sqlite = AsyncSqliteSaver(conn, serde=serializer())
            await sqlite.setup()
            yield sqlite
    elif backend == "postgresql":
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        plain = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        async with AsyncPostgresSaver.from_conn_string(plain, serde=serializer()) as postgres:
            await postgres.setup()
            yield postgres
    else:
        raise ConfigError(
            f"agents.checkpoints.database: {backend} is not supported for checkpoints; use "
            "SQLite or PostgreSQL"
        )


async def prune_thread(saver: BaseCheckpointSaver[Any], thread_id: str, keep: int) -> int:
    """Drop all but the newest `keep` checkpoints of the thread; returns how many were dropped."""
    conn = getattr(saver, "conn", None)
    if type(saver).__name__ == "AsyncSqliteSaver" and conn is not None:
        async with saver.lock:  # type: ignore[attr-defined]
            cursor = await conn.execute(
                "DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_id NOT IN ("
                " SELECT checkpoint_id FROM checkpoints c WHERE c.thread_id = ?"
                " AND c.checkpoint_ns = checkpoints.checkpoint_ns"
                " ORDER BY checkpoint_id DESC LIMIT ?)",
                (thread_id, thread_id, keep),
            )
            dropped = cursor.rowcount
            await conn.execute(
                "DELETE FROM writes WHERE thread_id = ? AND NOT EXISTS (SELECT 1 FROM checkpoints"
                " c WHERE c.thread_id = writes.thread_id AND c.checkpoint_ns = writes.checkpoint_ns"
                " AND c.checkpoint_id = writes.checkpoint_id)",
                (thread_id,),
            )
            await conn.commit()
        return int(dropped or 0)
    # PostgreSQL: LangGraph's own pruning keeps the newest checkpoint once there are too many
    count = 0
    async for _ in saver.alist({"configurable": {"thread_id": thread_id}}, limit=keep + 1):
        count += 1
    if count > keep:
        await saver.aprune([thread_id], strategy="keep_latest")
        return count - 1
    return 0


async def checkpoint_count(saver: BaseCheckpointSaver[Any], thread_id: str) -> int:
    count = 0
    async for _ in saver.alist({"configurable": {"thread_id": thread_id}}):
        count += 1
    return count
