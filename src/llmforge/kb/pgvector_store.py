"""The pgvector store: a knowledge base's chunks in a PostgreSQL table by URL (`kb.pgvector_url`),
for deployments that already run PostgreSQL and want one engine for rows and vectors.

One table per knowledge base (named after its collection, `llmforge_kb_<name>`): the chunk's
fields, its source's folder prefixes (`dirs`, a text array with a GIN index, so a path-prefix
filter is an indexed match) and a `vector(n)` column with an HNSW index for cosine distance.
Upserts are `INSERT ... ON CONFLICT (id) DO UPDATE`, so re-running one replaces. Searches order by
cosine distance with the filters in the same query; with pgvector 0.8 or later a filtered search
scans the index iteratively (so it still fills k), on older servers it searches exactly.

It needs the `vector` extension in the database: created on first use when the user may
(`CREATE EXTENSION vector`), else a ConfigError says who must run it. It does not create the
database, and it keeps nothing outside its table (the ingest manifest is in the main database).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.engine import Connection, Engine

from llmforge.core.db import open_engine
from llmforge.core.errors import ConfigError
from llmforge.kb.base import StoreSpec
from llmforge.kb.types import Chunk, SearchFilters

MAX_INDEXED_DIMENSIONS = 2000  # pgvector's HNSW limit for `vector`; past it, searches are exact
_BATCH = 500
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def table_name(collection: str) -> str:
    """A PostgreSQL identifier for the collection: itself when it is one (lower case, at most 63
    bytes), else a readable prefix and a hash, so two collections never share a table."""
    name = collection.lower()
    if _IDENTIFIER.match(name) and name == collection:
        return name
    safe = re.sub(r"[^a-z0-9_]", "_", name)[:50]
    return f"{safe}_{hashlib.sha256(collection.encode()).hexdigest()[:12]}"


def _dirs(source: str) -> list[str]:
    path = PurePosixPath(source)
    return [str(p) for p in path.parents if str(p) not in (".", "")] + [source]


class PgVectorStore:
    def __init__(self, spec: StoreSpec) -> None:
        from pgvector.sqlalchemy import Vector

        url = spec.config.pgvector_url
        if not url:
            raise ConfigError(
                "kb.store is pgvector but kb.pgvector_url is not set. Set it to the database "
                "that holds the vectors, e.g. postgresql+psycopg://user:pass@host/llmforge"
            )
        if sa.make_url(url).get_backend_name() != "postgresql":
            raise ConfigError(
                f"kb.pgvector_url: '{sa.make_url(url).render_as_string()}' is not a PostgreSQL "
                "URL. Use postgresql+psycopg://user:pass@host/db"
            )
        self._engine: Engine = open_engine(url)
        self._dimensions = spec.dimensions
        self._table = sa.Table(
            table_name(spec.collection),
            sa.MetaData(),
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("text", sa.Text, nullable=False),
            sa.Column("source", sa.Text, nullable=False),
            sa.Column("title", sa.Text, nullable=False),
            sa.Column("heading_path", JSONB, nullable=False),
            sa.Column("page", sa.Integer),
            sa.Column("file_type", sa.Text, nullable=False),
            sa.Column("chunk_index", sa.Integer, nullable=False),
            sa.Column("content_hash", sa.Text, nullable=False),
            sa.Column("tokens", sa.Integer, nullable=False),
            sa.Column("dirs", ARRAY(sa.Text), nullable=False),
            sa.Column("embedding", Vector(spec.dimensions), nullable=False),
        )
        self._ready = False
        self._iterative_scan: bool | None = None  # pgvector >= 0.8, known once connected

    # -- schema ----------------------------------------------------------------------------------

    def _ensure(self, create: bool) -> bool:
        """Whether the table exists; with `create`, make it (and the extension) when missing."""
        if self._ready:
            return True
        try:
            with self._engine.connect() as conn:
                exists = sa.inspect(conn).has_table(self._table.name)
        except sa.exc.OperationalError as e:
            raise ConfigError(f"kb.pgvector_url: cannot connect ({e.orig})") from None
        if not exists and create:
            self._create()
            exists = True
        self._ready = exists
        return exists

    def _create(self) -> None:
        self._create_extension()
        name = self._table.name
        try:
            with self._engine.begin() as conn:
                # one creator at a time (several gateways ingesting into a new knowledge base)
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key(name))))
                if sa.inspect(conn).has_table(name):
                    return
                self._table.create(conn)
                conn.exec_driver_sql(f'CREATE INDEX "{name}_source" ON "{name}" (source)')
                conn.exec_driver_sql(f'CREATE INDEX "{name}_dirs" ON "{name}" USING gin (dirs)')
                if self._dimensions <= MAX_INDEXED_DIMENSIONS:
                    conn.exec_driver_sql(
                        f'CREATE INDEX "{name}_hnsw" ON "{name}" '
                        "USING hnsw (embedding vector_cosine_ops)"
                    )
        except sa.exc.ProgrammingError as e:
            raise ConfigError(
                f"kb.pgvector_url: cannot create the table {name} ({e.orig}). Give the user "
                "CREATE on the database's schema."
            ) from None

    def _create_extension(self) -> None:
        with self._engine.connect() as conn:
            if conn.scalar(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")):
                return
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key("vector"))))
                conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
        except (sa.exc.ProgrammingError, sa.exc.OperationalError) as e:
            raise ConfigError(
                f"kb.pgvector_url: the database has no pgvector extension and this user cannot "
                f"add it ({e.orig}). Install pgvector on the server and run "
                "`CREATE EXTENSION vector;` in this database as its owner or a superuser."
            ) from None

    def _knows_iterative_scan(self, conn: Connection) -> bool:
        if self._iterative_scan is None:
            version = conn.scalar(
                sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            )
            parts = tuple(int(p) for p in re.findall(r"\d+", str(version or "0"))[:2])
            self._iterative_scan = parts >= (0, 8)
        return self._iterative_scan

    # -- the protocol ------------------------------------------------------------------------------

    def upsert(self, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> None:
        if not chunks:
            return
        self._ensure(create=True)
        rows = [
            {
                **c.model_dump(),
                "dirs": _dirs(c.source),
                "embedding": [float(x) for x in v],
            }
            for c, v in zip(chunks, vectors, strict=True)
        ]
        statement = insert(self._table)
        statement = statement.on_conflict_do_update(
            index_elements=[self._table.c.id],
            set_={c.name: statement.excluded[c.name] for c in self._table.c if c.name != "id"},
        )
        with self._engine.begin() as conn:
            for start in range(0, len(rows), _BATCH):
                conn.execute(statement, rows[start : start + _BATCH])

    def delete(self, sources: Sequence[str] | None) -> None:
        if sources is None:
            with self._engine.begin() as conn:
                self._table.drop(conn, checkfirst=True)
            self._ready = False
            return
        if not sources or not self._ensure(create=False):
            return
        with self._engine.begin() as conn:
            for start in range(0, len(sources), _BATCH):
                part = list(sources[start : start + _BATCH])
                conn.execute(self._table.delete().where(self._table.c.source.in_(part)))

    def search(
        self, vector: Sequence[float], k: int, filters: SearchFilters | None = None
    ) -> list[tuple[Chunk, float]]:
        if k <= 0 or not self._ensure(create=False):
            return []
        t = self._table
        distance = t.c.embedding.cosine_distance([float(x) for x in vector])
        query = sa.select(*_chunk_columns(t), distance.label("distance"))
        filtered = filters is not None and not filters.is_empty()
        if filters is not None and filters.path_prefix:
            query = query.where(t.c.dirs.contains([filters.path_prefix.rstrip("/")]))
        if filters is not None and filters.file_types:
            query = query.where(t.c.file_type.in_(filters.normalised_types()))
        query = query.order_by(distance).limit(k)
        with self._engine.begin() as conn:
            # the index's candidate list holds at least k (pgvector's limit is 1000)
            conn.exec_driver_sql(f"SET LOCAL hnsw.ef_search = {min(max(k, 40), 1000)}")
            if filtered:
                if self._knows_iterative_scan(conn):
                    conn.exec_driver_sql("SET LOCAL hnsw.iterative_scan = strict_order")
                else:  # an index scan would filter its few candidates and return fewer than k
                    conn.exec_driver_sql("SET LOCAL enable_indexscan = off")
            rows = conn.execute(query).all()
        return [(_chunk(r._mapping), 1.0 - float(r.distance)) for r in rows]

    def scan(self, ids: Sequence[str] | None = None) -> Iterator[Chunk]:
        if not self._ensure(create=False):
            return
        t = self._table
        columns = _chunk_columns(t)
        if ids is not None:
            for start in range(0, len(ids), _BATCH):
                part = list(ids[start : start + _BATCH])
                with self._engine.connect() as conn:
                    rows = conn.execute(sa.select(*columns).where(t.c.id.in_(part))).all()
                yield from (_chunk(r._mapping) for r in rows)
            return
        after: str | None = None
        while True:  # pages by id, so no connection is held while the caller works
            query = sa.select(*columns).order_by(t.c.id).limit(_BATCH)
            if after is not None:
                query = query.where(t.c.id > after)
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
            yield from (_chunk(r._mapping) for r in rows)
            if len(rows) < _BATCH:
                return
            after = rows[-1].id

    def vectors(self, ids: Sequence[str]) -> dict[str, list[float]]:
        if not ids or not self._ensure(create=False):
            return {}
        t = self._table
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.id, t.c.embedding).where(t.c.id.in_(list(ids))))
            return {r.id: [float(x) for x in r.embedding] for r in rows}

    def settle(self) -> None:
        """The server keeps its own index up; nothing to do."""

    def close(self) -> None:
        self._engine.dispose()


def _chunk_columns(t: sa.Table) -> list[sa.Column[Any]]:
    return [c for c in t.c if c.name not in ("dirs", "embedding")]


def _chunk(row: Any) -> Chunk:
    return Chunk(**{k: v for k, v in row.items() if k != "distance"})


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def create(spec: StoreSpec) -> PgVectorStore:
    return PgVectorStore(spec)
