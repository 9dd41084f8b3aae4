"""The Qdrant vector store: a Qdrant server by URL (`kb.qdrant_url`), or qdrant-client's embedded
local mode in a folder (tests, single-process use).

One collection per knowledge base (`llmforge_kb_<name>`), cosine distance. Point ids are UUIDs
derived from the chunk ids, so upserts replace; the chunk's fields are the payload, with the
source's folder prefixes in `dirs` so a path-prefix filter is an indexed keyword match. Local mode
locks its folder: one process at a time.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any

from llmforge.core.errors import ConfigError
from llmforge.kb.base import StoreSpec
from llmforge.kb.types import Chunk, SearchFilters

_NAMESPACE = uuid.UUID("6f1d2a4e-8c1b-4f5e-9a77-1c2d3e4f5a6b")


def point_id(chunk_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, chunk_id))


def _dirs(source: str) -> list[str]:
    path = PurePosixPath(source)
    return [str(p) for p in path.parents if str(p) not in (".", "")] + [source]


class QdrantStore:
    def __init__(self, spec: StoreSpec) -> None:
        from qdrant_client import QdrantClient

        config = spec.config
        if config.qdrant_url:
            key = os.environ.get(config.qdrant_api_key_env) if config.qdrant_api_key_env else None
            if config.qdrant_api_key_env and not key:
                raise ConfigError(
                    f"kb.qdrant_api_key_env: environment variable {config.qdrant_api_key_env} "
                    "is not set"
                )
            self._client = QdrantClient(url=config.qdrant_url, api_key=key)
        else:
            folder = config.qdrant_path or str(spec.folder / "qdrant")
            self._client = QdrantClient(path=folder)
        self._collection = spec.collection
        self._dimensions = spec.dimensions
        self._ready = False

    def _ensure(self, create: bool) -> bool:
        from qdrant_client import models

        if self._ready:
            return True
        if self._client.collection_exists(self._collection):
            self._ready = True
        elif create:
            self._client.create_collection(
                self._collection,
                vectors_config=models.VectorParams(
                    size=self._dimensions, distance=models.Distance.COSINE
                ),
            )
            with warnings.catch_warnings():  # local mode: "payload indexes have no effect"
                warnings.simplefilter("ignore", UserWarning)
                for field in ("source", "file_type", "dirs"):
                    self._client.create_payload_index(
                        self._collection, field, models.PayloadSchemaType.KEYWORD
                    )
            self._ready = True
        return self._ready

    def upsert(self, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> None:
        from qdrant_client import models

        if not chunks:
            return
        self._ensure(create=True)
        points = [
            models.PointStruct(
                id=point_id(c.id),
                vector=[float(x) for x in v],
                payload={**c.model_dump(), "dirs": _dirs(c.source)},
            )
            for c, v in zip(chunks, vectors, strict=True)
        ]
        self._client.upsert(self._collection, points=points, wait=True)

    def delete(self, sources: Sequence[str] | None) -> None:
        from qdrant_client import models

        if sources is None:
            if self._client.collection_exists(self._collection):
                self._client.delete_collection(self._collection)
            self._ready = False
            return
        if not sources or not self._ensure(create=False):
            return
        for start in range(0, len(sources), 500):
            selector = models.Filter(
                must=[
                    models.FieldCondition(
                        key="source", match=models.MatchAny(any=list(sources[start : start + 500]))
                    )
                ]
            )
            self._client.delete(self._collection, points_selector=selector, wait=True)

    def search(
        self, vector: Sequence[float], k: int, filters: SearchFilters | None = None
    ) -> list[tuple[Chunk, float]]:
        if k <= 0 or not self._ensure(create=False):
            return []
        response = self._client.query_points(
            self._collection,
            query=[float(x) for x in vector],
            query_filter=_filter(filters),
            limit=k,
            with_payload=True,
        )
        return [(_chunk(p.payload), float(p.score)) for p in response.points]

    def scan(self, ids: Sequence[str] | None = None) -> Iterator[Chunk]:
        if not self._ensure(create=False):
            return
        if ids is not None:
            for start in range(0, len(ids), 500):
                wanted = [point_id(i) for i in ids[start : start + 500]]
                for p in self._client.retrieve(self._collection, ids=wanted, with_payload=True):
                    yield _chunk(p.payload)
            return
        offset: Any = None
        while True:
            points, offset = self._client.scroll(
                self._collection, limit=512, offset=offset, with_payload=True
            )
            yield from (_chunk(p.payload) for p in points)
            if offset is None:
                return

    def vectors(self, ids: Sequence[str]) -> dict[str, list[float]]:
        if not ids or not self._ensure(create=False):
            return {}
        points = self._client.retrieve(
            self._collection,
            ids=[point_id(i) for i in ids],
            with_payload=["id"],
            with_vectors=True,
        )
        return {p.payload["id"]: list(p.vector) for p in points if p.payload}  # type: ignore[arg-type]

    def settle(self) -> None:
        """The server keeps its own index up; nothing to do."""

    def close(self) -> None:
        self._client.close()


def _filter(filters: SearchFilters | None) -> Any:
    from qdrant_client import models

    if filters is None or filters.is_empty():
        return None
    must: list[Any] = []
    if filters.path_prefix:
        must.append(
            models.FieldCondition(
                key="dirs", match=models.MatchValue(value=filters.path_prefix.rstrip("/"))
            )
        )
    if filters.file_types:
        must.append(
            models.FieldCondition(
                key="file_type", match=models.MatchAny(any=filters.normalised_types())
            )
        )
    return models.Filter(must=must)


def _chunk(payload: dict[str, Any] | None) -> Chunk:
    data = dict(payload or {})
    data.pop("dirs", None)
    return Chunk(**data)


def create(spec: StoreSpec) -> QdrantStore:
    return QdrantStore(spec)
