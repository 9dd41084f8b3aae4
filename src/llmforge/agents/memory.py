"""Long-term memory per user: short notes an agent writes and later finds again by meaning.

`MemoryStore` keeps notes in the `agent_memories` table with their embedding (the configured
embedder, `agents.memory_embedding` or the first of `embeddings:`), and `search(user, query, k)`
ranks a user's notes by cosine similarity (brute force over that user's notes: memories are few
per user, thousands at most). Agents use it through two tools, `remember` and `recall`, and a run
may start with the notes most related to its input recalled into the prompt (`recall` in the
agent's config). A user's notes are never shown to another user. Per-thread conversation memory is
not here: it is the thread's checkpointed state.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Annotated

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection, Engine

from llmforge.agents.tools import FunctionTool, ToolContext, ToolEnv, ToolResult
from llmforge.core.db import Migration, migrate, sortable_id
from llmforge.core.errors import ConfigError
from llmforge.models.base import Embedder

MAX_NOTE_CHARS = 2000

metadata = sa.MetaData()
memories = sa.Table(
    "agent_memories",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("user_id", sa.String(200), nullable=False, index=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("vector", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("run_id", sa.String(64)),
)


def _create(conn: Connection) -> None:
    metadata.create_all(conn, tables=[memories])


MIGRATIONS = [Migration("agents.memory.0001_create", _create)]


class Memory(BaseModel):
    id: str
    user_id: str
    text: str
    created_at: float
    score: float | None = Field(None, description="similarity to the query (search only)")


class MemoryStore:
    def __init__(self, engine: Engine, embedder: Embedder) -> None:
        self.engine = engine
        self.embedder = embedder
        migrate(engine, MIGRATIONS)

    async def add(self, user_id: str, text: str, run_id: str | None = None) -> Memory:
        text = text.strip()[:MAX_NOTE_CHARS]
        vector = (await self.embedder.embed([text])).vectors[0]
        memory = Memory(id=sortable_id(), user_id=user_id, text=text, created_at=time.time())

        def write() -> None:
            with self.engine.begin() as conn:
                conn.execute(
                    memories.insert().values(
                        **memory.model_dump(exclude={"score"}), vector=vector, run_id=run_id
                    )
                )

        await asyncio.to_thread(write)
        return memory

    async def search(self, user_id: str, query: str, k: int = 5) -> list[Memory]:
        rows = await asyncio.to_thread(self._rows, user_id)
        if not rows or k <= 0:
            return []
        q = (await self.embedder.embed([query])).vectors[0]
        scored = [
            Memory(
                id=r.id,
                user_id=r.user_id,
                text=r.text,
                created_at=r.created_at,
                score=_cosine(q, r.vector),
            )
            for r in rows
        ]
        scored.sort(key=lambda m: (-(m.score or 0.0), -m.created_at))
        return scored[:k]

    async def notes(self, user_id: str) -> list[Memory]:
        rows = await asyncio.to_thread(self._rows, user_id)
        return [
            Memory(id=r.id, user_id=r.user_id, text=r.text, created_at=r.created_at) for r in rows
        ]

    def _rows(self, user_id: str) -> Sequence[sa.Row[tuple[object, ...]]]:
        q = sa.select(memories).where(memories.c.user_id == user_id)
        with self.engine.connect() as conn:
            return list(conn.execute(q.order_by(memories.c.created_at)))

    async def aclose(self) -> None:
        return None  # the embedder belongs to whoever built it


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def _need(env: ToolEnv, tool: str) -> MemoryStore:
    if env.memory is None:
        raise ConfigError(f"Tool {tool} needs long-term memory: configure an embedding model.")
    return env.memory


def create_remember(env: ToolEnv) -> FunctionTool:
    store = _need(env, "remember")

    async def remember(
        note: Annotated[str, Field(description="one fact worth keeping, self-contained")],
        context: ToolContext,
    ) -> ToolResult:
        """Save a fact about the user or their work to long-term memory, to recall in later
        conversations."""
        await store.add(context.user_id, note, context.run_id)
        return ToolResult(text=f"Remembered: {note.strip()[:MAX_NOTE_CHARS]}")

    return FunctionTool(remember, idempotent=False)


def create_recall(env: ToolEnv) -> FunctionTool:
    store = _need(env, "recall")

    async def recall(
        query: Annotated[str, Field(description="what to look for")],
        context: ToolContext,
        k: Annotated[int, Field(ge=1, le=20)] = 5,
    ) -> ToolResult:
        """Search long-term memory for facts saved in earlier conversations with this user."""
        found = await store.search(context.user_id, query, k)
        if not found:
            return ToolResult(text="Nothing remembered yet.")
        return ToolResult(text="\n".join(f"- {m.text}" for m in found))

    return FunctionTool(recall)
