"""The default vector store: LanceDB in the knowledge base's folder (embedded, no server).

One table, `chunks`, holds each chunk's metadata, text and vector. Upserts are merge-inserts on the
chunk id, deletes are by source path. Searches are cosine searches with the filters applied before
the top-k is taken (so a filtered search still returns k results when k match).

Below `Ann.min_rows` chunks every search is exact. Once an upsert takes the table past it, the
store builds an ANN index (IVF partitions of int8-quantised vectors, `IVF_SQ`, one partition per
`Ann.partition_rows` chunks but no more than the square root of the row count, which keeps the
k-means training linear in the rows) and B-tree indexes on `id` and `source` (merge-inserts and
deletes stop scanning the table). It is kept up incrementally: rows added since the index was
built are searched exactly alongside it until they exceed `Ann.fold_share` of the indexed ones or
`Ann.fold_rows` (exact search over them costs latency), then folded into it (`optimize`, no
retraining, but each fold adds a delta segment that every search visits, 1.5-2 ms each at 1M
rows, and LanceDB's Python API cannot merge segments). So the partitions are trained again
(k-means on `Ann.kmeans_sample` rows per partition, `Ann.kmeans_iterations` rounds: about a
minute at 1M rows on 2 cores) when the table has grown `Ann.retrain_growth`-fold since they
were, or folds during a long run of writes pile up more than `Ann.max_write_segments`, and once
at the end of a batch of writes (`settle`, which an ingest calls when it finishes) that wrote at
least `Ann.settle_share` of the table or left more than `Ann.max_segments` segments: a large
ingest ends with one whole index, a small one only folds.
Unfiltered searches go through the index (the `nprobes` nearest partitions, then the best
`refine_factor * k` candidates re-ranked on the full vectors); filtered searches stay exact over
the matching rows, so they still return k results.
`bench/retrieval.py --scale` measures latency and recall@10 against exact search (why IVF_SQ
and these settings: docs/decisions.md §41).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from llmforge.kb.base import StoreSpec
from llmforge.kb.types import Chunk, SearchFilters

TABLE = "chunks"
ANN_STATE = "ann.json"
VECTOR_INDEX = "vector_idx"


@dataclass(frozen=True)
class Ann:
    """When the ANN index is built and refreshed, and how it is searched."""

    min_rows: int = 100_000
    partition_rows: int = 1_000
    fold_share: float = 0.1
    fold_rows: int = 5_000
    max_segments: int = 4
    max_write_segments: int = 16
    settle_share: float = 0.1
    retrain_growth: float = 2.0
    kmeans_iterations: int = 10
    kmeans_sample: int = 64
    nprobes: int = 16
    refine_factor: int = 3


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
    def __init__(self, spec: StoreSpec, ann: Ann | None = None) -> None:
        import lancedb

        self._folder = spec.folder / "lancedb"
        self._dimensions = spec.dimensions
        # Every read checks for a newer table version (a file stat, no measurable cost): another
        # process (a second worker, `llmforge kb ingest` next to the server) may have written.
        # LanceDB's default never checks, so a long-lived handle kept serving what it first saw.
        self._db = lancedb.connect(str(self._folder), read_consistency_interval=timedelta(0))
        self._table: Any = None
        self.ann = ann or Ann()
        self._written = 0  # rows upserted since the last settle()

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
        import numpy as np
        import pyarrow as pa

        matrix = np.asarray(vectors, dtype=np.float32).reshape(len(chunks), self._dimensions)
        columns: dict[str, Any] = {f: [getattr(c, f) for c in chunks] for f in _FIELDS}
        columns["vector"] = pa.FixedSizeListArray.from_arrays(
            pa.array(matrix.ravel()), self._dimensions
        )
        data = pa.Table.from_pydict(columns, schema=self._schema())
        table = self._open(create=True)
        table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(
            data
        )
        self._written += len(chunks)
        self._maintain_index(table)

    # -- the ANN index --------------------------------------------------------------------------

    def ann_state(self) -> dict[str, int] | None:
        """{"trained_rows", "partitions"} of the ANN index, or None while there is none."""
        try:
            state: dict[str, int] = json.loads((self._folder / ANN_STATE).read_text())
        except (OSError, ValueError):
            return None
        return state

    def _maintain_index(self, table: Any) -> None:
        rows = table.count_rows()
        if rows < self.ann.min_rows:
            return
        state = self.ann_state()
        if state is None or rows >= state["trained_rows"] * self.ann.retrain_growth:
            self.build_index(table, rows)
            return
        stats = table.index_stats(VECTOR_INDEX)
        if stats is None:
            self.build_index(table, rows)
        elif stats.num_unindexed_rows > min(
            self.ann.fold_share * max(1, stats.num_indexed_rows), self.ann.fold_rows
        ):
            table.optimize()  # folds the new rows into every index as a delta segment
            stats = table.index_stats(VECTOR_INDEX)
            if stats is not None and stats.num_indices > self.ann.max_write_segments:
                self.build_index(table, rows)

    def settle(self) -> None:
        """End of a batch of writes: retrain the index into one segment if this batch wrote at
        least `Ann.settle_share` of the table, or if more than `Ann.max_segments` piled up."""
        written, self._written = self._written, 0
        table = self._open(create=False)
        if table is None or self.ann_state() is None:
            return
        stats = table.index_stats(VECTOR_INDEX)
        if stats is None or stats.num_indices <= 1:
            return
        rows = table.count_rows()
        if written >= self.ann.settle_share * rows or stats.num_indices > self.ann.max_segments:
            self.build_index(table, rows)

    def build_index(self, table: Any = None, rows: int | None = None) -> None:
        """(Re)train the ANN index over every row (upserts do this on their own)."""
        from lancedb.index import IvfSq

        table = table if table is not None else self._open(create=False)
        if table is None:
            return
        rows = rows if rows is not None else table.count_rows()
        # Compact first: compacting after the index exists remaps (rebuilds) it, which made the
        # first fold after a build take minutes at 300k rows instead of seconds.
        table.optimize()
        partitions = max(1, min(rows // self.ann.partition_rows, math.isqrt(rows)))
        config = IvfSq(
            distance_type="cosine",
            num_partitions=partitions,
            max_iterations=self.ann.kmeans_iterations,
            sample_rate=self.ann.kmeans_sample,
        )
        table.create_index("vector", config=config, name=VECTOR_INDEX, replace=True)
        for column in ("id", "source"):
            table.create_scalar_index(column, replace=True)
        state = {"trained_rows": rows, "partitions": partitions}
        (self._folder / ANN_STATE).write_text(json.dumps(state))

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
            query = query.where(where, prefilter=True).bypass_vector_index()
        else:
            state = self.ann_state()
            if state is not None:
                nprobes = min(state["partitions"], self.ann.nprobes)
                query = query.nprobes(nprobes).refine_factor(self.ann.refine_factor)
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

    def vectors(self, ids: Sequence[str]) -> dict[str, list[float]]:
        table = self._open(create=False)
        if table is None or not ids:
            return {}
        rows = (
            table.search()
            .where(f"id IN ({', '.join(_quote(i) for i in ids)})")
            .select(["id", "vector"])
            .limit(len(ids))
            .to_list()
        )
        return {r["id"]: list(r["vector"]) for r in rows}

    def close(self) -> None:
        self._table = None


def _chunk(row: dict[str, Any]) -> Chunk:
    return Chunk(**{k: row[k] for k in _FIELDS if k in row and row[k] is not None})


def create(spec: StoreSpec) -> LanceDBStore:
    return LanceDBStore(spec)
