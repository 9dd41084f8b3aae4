"""Stored responses of the Responses API: the `responses` table, its migration, and the store.

A response is kept (unless the request said `store: false`) with its wire body, the input items of
its turn and the whole conversation it ended, so `previous_response_id` continues a conversation
with one lookup. Every response belongs to the API key that made it: another key gets a 404 for it,
as if it did not exist (the master key, and everyone when keys are off, see all). Synchronous and
transactional; the routes call it on worker threads. It does not expire responses (delete them
with `DELETE /v1/responses/{id}`).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from llmforge.core.db import Migration, migrate
from llmforge.core.errors import NotFoundError
from llmforge.gateway.call import Caller
from llmforge.gateway.wire.responses import StoredResponse

metadata = sa.MetaData()
responses = sa.Table(
    "responses",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("key_id", sa.String(40)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("conversation", sa.JSON, nullable=False),
    sa.Column("input_items", sa.JSON, nullable=False),
)


def _create(conn: Connection) -> None:
    responses.create(conn)
    conn.execute(sa.text("CREATE INDEX ix_responses_key_id ON responses (key_id)"))


MIGRATIONS = [Migration("responses.0001_create", _create)]


class ResponseStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        migrate(engine, MIGRATIONS)

    def put(self, stored: StoredResponse) -> None:
        row = stored.model_dump(mode="json")
        with self.engine.begin() as conn:
            conn.execute(responses.insert().values(**row))

    def get(self, response_id: str, caller: Caller | None) -> StoredResponse:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(responses).where(*_mine(response_id, caller))).first()
        if row is None:
            raise _not_found(response_id)
        return StoredResponse.model_validate(row._asdict())

    def delete(self, response_id: str, caller: Caller | None) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(sa.delete(responses).where(*_mine(response_id, caller)))
        if done.rowcount != 1:
            raise _not_found(response_id)


def _mine(response_id: str, caller: Caller | None) -> list[sa.ColumnElement[bool]]:
    """The response, if the caller may see it (its own key's, or any for the master key and
    when keys are off)."""
    where = [responses.c.id == response_id]
    if caller is not None and not caller.master:
        where.append(responses.c.key_id == caller.key_id)
    return where


def _not_found(response_id: str) -> NotFoundError:
    return NotFoundError(
        f"No response '{response_id}' (it was not stored, was deleted, or belongs to another "
        "API key).",
        param="response_id",
    )
