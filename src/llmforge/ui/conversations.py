"""Chat history kept on the server: the `conversations` tables, their store, `/api/conversations`.

A conversation is a titled, ordered list of messages plus the model last picked for it. An
assistant message may keep the `sources` its answer cites (answers of knowledge-base models), so
the page can show them again after a reload. The last message can be deleted (the page's
"regenerate" replaces the last answer).
`ConversationStore` is synchronous and transactional (every write is one `engine.begin()` block);
the routes are plain `def`s, so FastAPI runs those blocking calls in its threadpool. Appending a
message bumps `updated_at`, and the first user message names an untitled conversation.

It deliberately does not talk to models: the page streams answers from `/v1/chat/completions` itself
and posts each finished message here. No authentication or per-user ownership: every conversation is
visible to whoever can reach the server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal

import sqlalchemy as sa
from fastapi import Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection, Engine

from llmforge.core.db import Migration, migrate
from llmforge.core.errors import NotFoundError
from llmforge.core.types import Source
from llmforge.gateway.context import AppContext, Ctx, api_router, authenticate
from llmforge.gateway.replies import json_response

TITLE_MAX_CHARS = 60
UNIQUE_POSITION = "uq_conversation_messages_position"

metadata = sa.MetaData()
conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("title", sa.String(200), nullable=False, server_default=""),
    sa.Column("model", sa.String(200)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False, index=True),
)
conversation_messages = sa.Table(
    "conversation_messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "conversation_id",
        sa.String(40),
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("sources", sa.JSON),
    sa.UniqueConstraint("conversation_id", "position", name=UNIQUE_POSITION),
)


def _create(conn: Connection) -> None:
    """The tables as first released (messages without `sources`)."""
    v1 = sa.MetaData()
    conversations.to_metadata(v1)
    sa.Table(
        "conversation_messages",
        v1,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "conversation_id",
            sa.String(40),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.UniqueConstraint("conversation_id", "position", name=UNIQUE_POSITION),
    )
    v1.create_all(conn)


def _add_sources(conn: Connection) -> None:
    ddl = conversation_messages.c.sources.type.compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE conversation_messages ADD COLUMN sources {ddl}"))


MIGRATIONS = [
    Migration("ui.0001_conversations", _create),
    Migration("ui.0002_message_sources", _add_sources),
]

Role = Literal["user", "assistant", "system"]


# -- wire and stored shapes ------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ConversationCreate(_Body):
    title: str | None = Field(None, max_length=200)
    model: str | None = Field(None, max_length=200)


class ConversationPatch(_Body):
    """Only the fields sent change; `null` clears one."""

    title: str | None = Field(None, max_length=200)
    model: str | None = Field(None, max_length=200)


class MessageCreate(_Body):
    role: Role
    content: str
    sources: list[Source] | None = Field(None, description="the passages the answer cites")


class ChatMessage(BaseModel):
    id: int
    role: Role
    content: str
    created_at: float
    position: int
    sources: list[Source] | None = None


class ConversationSummary(BaseModel):
    id: str
    title: str
    model: str | None
    created_at: float
    updated_at: float
    message_count: int


class Conversation(ConversationSummary):
    messages: list[ChatMessage]


def title_from(text: str) -> str:
    """A one-line title: whitespace collapsed, cut to TITLE_MAX_CHARS with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= TITLE_MAX_CHARS else line[: TITLE_MAX_CHARS - 1].rstrip() + "…"


# -- the store -------------------------------------------------------------------------------------


class ConversationStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        migrate(engine, MIGRATIONS)

    def list(self, limit: int = 100) -> list[ConversationSummary]:
        """Newest activity first."""
        count = (
            sa.select(sa.func.count())
            .where(conversation_messages.c.conversation_id == conversations.c.id)
            .scalar_subquery()
        )
        q = (
            sa.select(conversations, count.label("message_count"))
            .order_by(conversations.c.updated_at.desc(), conversations.c.created_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [ConversationSummary.model_validate(row._asdict()) for row in conn.execute(q)]

    def create(self, title: str | None = None, model: str | None = None) -> Conversation:
        now = time.time()
        row = {
            "id": uuid.uuid4().hex,
            "title": title or "",
            "model": model,
            "created_at": now,
            "updated_at": now,
        }
        with self.engine.begin() as conn:
            conn.execute(conversations.insert().values(**row))
        return Conversation.model_validate({**row, "message_count": 0, "messages": []})

    def get(self, conversation_id: str) -> Conversation:
        with self.engine.connect() as conn:
            row = self._row(conn, conversation_id)
            messages = [
                ChatMessage.model_validate(m._asdict())
                for m in conn.execute(
                    sa.select(
                        conversation_messages.c.id,
                        conversation_messages.c.role,
                        conversation_messages.c.content,
                        conversation_messages.c.created_at,
                        conversation_messages.c.position,
                        conversation_messages.c.sources,
                    )
                    .where(conversation_messages.c.conversation_id == conversation_id)
                    .order_by(conversation_messages.c.position)
                )
            ]
        return Conversation.model_validate(
            {**row, "message_count": len(messages), "messages": messages}
        )

    def update(self, conversation_id: str, changes: ConversationPatch) -> ConversationSummary:
        """Renames or re-models; `updated_at` stays (it orders by activity, not by edits)."""
        values = changes.model_dump(include=changes.model_fields_set)
        if "title" in values:
            values["title"] = values["title"] or ""
        if values:
            with self.engine.begin() as conn:
                self._touch(conn, conversation_id, values)
        return self.summary(conversation_id)

    def delete(self, conversation_id: str) -> None:
        """Removes the conversation; its messages go with it (ON DELETE CASCADE)."""
        with self.engine.begin() as conn:
            gone = conn.execute(conversations.delete().where(conversations.c.id == conversation_id))
            if gone.rowcount == 0:
                raise _not_found(conversation_id)

    def append(
        self,
        conversation_id: str,
        role: Role,
        content: str,
        sources: Sequence[Source] | None = None,
    ) -> ChatMessage:
        now = time.time()
        with self.engine.begin() as conn:
            # The UPDATE comes first: it takes the write lock, so reading the next position is safe.
            self._touch(conn, conversation_id, {"updated_at": now})
            if role == "user" and not self._row(conn, conversation_id)["title"]:
                self._touch(conn, conversation_id, {"title": title_from(content)})
            position = conn.scalar(
                sa.select(
                    sa.func.coalesce(sa.func.max(conversation_messages.c.position) + 1, 0)
                ).where(conversation_messages.c.conversation_id == conversation_id)
            )
            row = {
                "conversation_id": conversation_id,
                "role": role,
                "content": content,
                "created_at": now,
                "position": position,
                "sources": [s.model_dump() for s in sources] if sources else None,
            }
            insert = conversation_messages.insert().values(**row)
            message_id = conn.execute(insert.returning(conversation_messages.c.id)).scalar_one()
        return ChatMessage(
            id=message_id,
            role=role,
            content=content,
            created_at=now,
            position=position,
            sources=list(sources) if sources else None,
        )

    def delete_last(self, conversation_id: str, message_id: int) -> None:
        """Remove the conversation's last message, which must be `message_id` (a 404 otherwise,
        so a page working from a stale copy cannot delete an answer it has not seen)."""
        c = conversation_messages.c
        with self.engine.begin() as conn:
            self._touch(conn, conversation_id, {"updated_at": time.time()})
            last = conn.scalar(
                sa.select(c.id)
                .where(c.conversation_id == conversation_id)
                .order_by(c.position.desc())
                .limit(1)
            )
            if last != message_id:
                raise NotFoundError(
                    f"Message {message_id} is not the last message of conversation "
                    f"'{conversation_id}'; reload the conversation and try again.",
                    param="message_id",
                )
            conn.execute(conversation_messages.delete().where(c.id == message_id))

    def summary(self, conversation_id: str) -> ConversationSummary:
        with self.engine.connect() as conn:
            row = self._row(conn, conversation_id)
            count = conn.scalar(
                sa.select(sa.func.count())
                .select_from(conversation_messages)
                .where(conversation_messages.c.conversation_id == conversation_id)
            )
        return ConversationSummary.model_validate({**row, "message_count": count or 0})

    @staticmethod
    def _row(conn: Connection, conversation_id: str) -> dict[str, Any]:
        row = conn.execute(
            sa.select(conversations).where(conversations.c.id == conversation_id)
        ).first()
        if row is None:
            raise _not_found(conversation_id)
        return row._asdict()

    @staticmethod
    def _touch(conn: Connection, conversation_id: str, values: dict[str, Any]) -> None:
        done = conn.execute(
            conversations.update().where(conversations.c.id == conversation_id).values(**values)
        )
        if done.rowcount == 0:
            raise _not_found(conversation_id)


def _not_found(conversation_id: str) -> NotFoundError:
    return NotFoundError(
        f"No conversation '{conversation_id}'. List them with GET /api/conversations.",
        param="conversation_id",
    )


# -- the routes ------------------------------------------------------------------------------------


def _store(ctx: AppContext) -> ConversationStore:
    return ctx.shared("ui.conversations", lambda: ConversationStore(ctx.engine))


# plain `def` routes, so blocking store calls run in the threadpool; with keys on, every route
# needs a valid key
router = api_router(tags=["ui"], dependencies=[Depends(authenticate)])


@router.get("/api/conversations")
def list_conversations(ctx: Ctx, limit: int = Query(100, ge=1, le=1000)) -> Response:
    data = [c.model_dump() for c in _store(ctx).list(limit)]
    return json_response({"object": "list", "data": data})


@router.post("/api/conversations", status_code=201)
def create_conversation(ctx: Ctx, body: ConversationCreate | None = None) -> Response:
    store = _store(ctx)
    created = store.create(body.title, body.model) if body else store.create()
    return json_response(created.model_dump(), 201)


@router.get("/api/conversations/{conversation_id}")
def get_conversation(ctx: Ctx, conversation_id: str) -> Response:
    return json_response(_store(ctx).get(conversation_id).model_dump())


@router.patch("/api/conversations/{conversation_id}")
def patch_conversation(ctx: Ctx, conversation_id: str, body: ConversationPatch) -> Response:
    return json_response(_store(ctx).update(conversation_id, body).model_dump())


@router.delete("/api/conversations/{conversation_id}")
def delete_conversation(ctx: Ctx, conversation_id: str) -> Response:
    _store(ctx).delete(conversation_id)
    return json_response({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


@router.post("/api/conversations/{conversation_id}/messages", status_code=201)
def append_message(ctx: Ctx, conversation_id: str, body: MessageCreate) -> Response:
    message = _store(ctx).append(conversation_id, body.role, body.content, body.sources)
    return json_response(message.model_dump(), 201)


@router.delete("/api/conversations/{conversation_id}/messages/{message_id}")
def delete_last_message(ctx: Ctx, conversation_id: str, message_id: int) -> Response:
    """Delete the conversation's last message (regenerating an answer replaces it)."""
    _store(ctx).delete_last(conversation_id, message_id)
    return json_response({"id": message_id, "object": "message.deleted", "deleted": True})
