"""The default vector store: LanceDB in the knowledge base's folder (embedded, no server).

One table, `chunks`, holds each chunk's metadata, text and vector. Upserts are merge-inserts on the
chunk id, deletes are by source path, searches are exact cosine searches with the filters applied
before the top-k is taken (so a filtered search still returns k results when k match). It has no
ANN index: exact search stays fast up to a few hundred thousand chunks; past that use qdrant.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from typing import Any

from llmforge.kb.base import StoreSpec
from llmforge.kb.types import Chunk, SearchFilters

TABLE = "chunks"
_FIELDS = (
    "id",
    "text",
    "source",
    "title",
    "heading_path",
    "page",
    "file_type",
    "chunk_index",
    "content_hash",
    "tokens",
)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def where_clause(filters: SearchFilters | None) -> str | None:
    """The SQL filter of `filters` for LanceDB, or None."""
    if filters is None or filters.is_empty():
        return None
    parts = []
    if filters.path_prefix:
        prefix = filters.path_prefix.rstrip("/")
        parts.append(f"(source = {_quote(prefix)} OR starts_with(source, {_quote(prefix + '/')}))")
    if filters.file_types:
        parts.append(f"file_type IN ({', '.join(_quote(t) for t in filters.normalised_types())})")
    return " AND ".join(parts)


class LanceDBStore:
    def __init__(self, spec: StoreSpec) -> None:
        import lancedb

        self._folder = spec.folder / "lancedb"
        self._dimensions = spec.dimensions
        self._db = lancedb.connect(str(self._folder))
        self._table: Any = None

    def _schema(self) -> Any:
        import pyarrow as pa

        return pa.schema(
            [
                pa.field("id", pa.string(), nullable=False),
                pa.field("text", pa.string()),
                pa.field("source", pa.string()),
                pa.field("title", pa.string()),
                pa.field("heading_path", pa.list_(pa.string())),
                pa.field("page", pa.int32()),
                pa.field("file_type", pa.string()),
                pa.field("chunk_index", pa.int32()),
                pa.field("content_hash", pa.string()),
                pa.field("tokens", pa.int32()),
                pa.field("vector", pa.list_(pa.float32(), self._dimensions)),
            ]
        )

    def _open(self, create: bool) -> Any:
        if self._table is None:
            if TABLE in self._db.list_tables().tables:
                self._table = self._db.open_table(TABLE)
            elif create:
                self._table = self._db.create_table(TABLE, schema=self._schema(), exist_ok=True)
        return self._table

    def upsert(self, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> None:
        if not chunks:
            return
        import pyarrow as pa

        rows = [
            {**c.model_dump(include=set(_FIELDS)), "vector": [float(x) for x in v]}
            for c, v in zip(chunks, vectors, strict=True)
        ]
        data = pa.Table.from_pylist(rows, schema=self._schema())
        (
            self._open(create=True)
            .merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(data)
        )

    def delete(self, sources: Sequence[str] | None) -> None:
        if sources is None:
            self._table = None
            shutil.rmtree(self._folder, ignore_errors=True)
            return
        table = self._open(create=False)
        if table is None or not sources:
            return
        for start in range(0, len(sources), 500):
            batch = sources[start : start + 500]
            table.delete(f"source IN ({', '.join(_quote(s) for s in batch)})")

    def search(
        self, vector: Sequence[float], k: int, filters: SearchFilters | None = None
    ) -> list[tuple[Chunk, float]]:
        table = self._open(create=False)
        if table is None or k <= 0:
            return []
        query = table.search(list(vector)).distance_type("cosine").limit(k)
        where = where_clause(filters)
        if where:
            query = query.where(where, prefilter=True)
        rows = query.to_list()
        return [(_chunk(r), 1.0 - float(r["_distance"])) for r in rows]

    def scan(self, ids: Sequence[str] | None = None) -> Iterator[Chunk]:
        table = self._open(create=False)
        if table is None:
            return
        columns = list(_FIELDS)
        if ids is None:
            reader = table.search().select(columns).limit(None).to_batches(1024)
            for batch in reader:
                yield from (_chunk(r) for r in batch.to_pylist())
            return
        for start in range(0, len(ids), 500):
            wanted = ids[start : start + 500]
            if not wanted:
                continue
            rows = (
                table.search()
                .where(f"id IN ({', '.join(_quote(i) for i in wanted)})")
                .select(columns)
                .limit(len(wanted))
                .to_list()
            )
            yield from (_chunk(r) for r in rows)

    def close(self) -> None:
        self._table = None


def _chunk(row: dict[str, Any]) -> Chunk:
    return Chunk(**{k: row[k] for k in _FIELDS if k in row and row[k] is not None})


def create(spec: StoreSpec) -> LanceDBStore:
    return LanceDBStore(spec)
