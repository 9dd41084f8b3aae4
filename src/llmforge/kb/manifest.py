"""What each knowledge base holds, in the main database: the `kb_bases` and `kb_files` tables and
their migrations.

`kb_bases` records each knowledge base's embedding model, vector size and store, so a later
ingest or search cannot mix vectors of two models. `kb_files` is the ingest manifest: one row per
(kb, file) with the file's content hash and a status. A file is `pending` from the moment its
chunks start to change until they are all in the vector store, then `done`; on the next ingest a
`pending` file's chunks are removed and it is ingested again. This module does no file or vector
I/O.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from llmforge.core.db import Migration, migrate

metadata = sa.MetaData()
kb_bases = sa.Table(
    "kb_bases",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("embedding", sa.String(200), nullable=False),
    sa.Column("dimensions", sa.Integer, nullable=False),
    sa.Column("store", sa.String(100), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
kb_files = sa.Table(
    "kb_files",
    metadata,
    sa.Column(
        "kb", sa.String(200), sa.ForeignKey("kb_bases.name", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("path", sa.String(4096), primary_key=True),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("title", sa.Text, nullable=False, server_default=""),
    sa.Column("file_type", sa.String(32), nullable=False, server_default=""),
    sa.Column("chunks", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.Float, nullable=False),
)


def _create(conn: Connection) -> None:
    kb_bases.create(conn)
    kb_files.create(conn)


MIGRATIONS = [Migration("kb.0001_create", _create)]

Status = Literal["pending", "done"]


@dataclass(frozen=True)
class BaseRow:
    name: str
    embedding: str
    dimensions: int
    store: str
    created_at: float


@dataclass(frozen=True)
class FileRow:
    path: str
    content_hash: str
    status: Status
    title: str
    file_type: str
    chunks: int
    updated_at: float


class Manifest:
    """Synchronous, transactional access to the two tables (call it from worker threads)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        migrate(engine, MIGRATIONS)

    def bases(self) -> list[BaseRow]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(kb_bases).order_by(kb_bases.c.name)).all()
        return [BaseRow(**r._mapping) for r in rows]

    def base(self, name: str) -> BaseRow | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(kb_bases).where(kb_bases.c.name == name)).first()
        return BaseRow(**row._mapping) if row else None

    def add_base(self, row: BaseRow) -> None:
        with self._engine.begin() as conn:
            conn.execute(kb_bases.insert().values(**row.__dict__))

    def remove_base(self, name: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(kb_files.delete().where(kb_files.c.kb == name))
            conn.execute(kb_bases.delete().where(kb_bases.c.name == name))

    def files(self, kb: str) -> dict[str, FileRow]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(kb_files).where(kb_files.c.kb == kb).order_by(kb_files.c.path)
            ).all()
        return {r.path: FileRow(**{k: v for k, v in r._mapping.items() if k != "kb"}) for r in rows}

    def counts(self, kb: str) -> tuple[int, int]:
        """(documents, chunks) of the files done."""
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(kb_files.c.chunks), 0))
                .where(kb_files.c.kb == kb)
                .where(kb_files.c.status == "done")
            ).one()
        return int(row[0]), int(row[1])

    def mark(self, kb: str, rows: Sequence[FileRow]) -> None:
        """Insert or replace the rows of these files, in one transaction."""
        if not rows:
            return
        with self._engine.begin() as conn:
            conn.execute(
                kb_files.delete()
                .where(kb_files.c.kb == kb)
                .where(kb_files.c.path.in_([r.path for r in rows]))
            )
            conn.execute(kb_files.insert(), [{"kb": kb, **r.__dict__} for r in rows])

    def forget(self, kb: str, paths: Sequence[str]) -> None:
        with self._engine.begin() as conn:
            for start in range(0, len(paths), 500):
                conn.execute(
                    kb_files.delete()
                    .where(kb_files.c.kb == kb)
                    .where(kb_files.c.path.in_(list(paths[start : start + 500])))
                )


def now() -> float:
    return time.time()
