"""The knowledge base's two extension points, `VectorStore` and `Reranker`, and their registries.

Built-ins register through the entry-point groups `llmforge.vectorstores` (lancedb, qdrant) and
`llmforge.rerankers` (cross-encoder), exactly as a plugin would. A vector store is synchronous (the
knowledge base calls it on worker threads) and holds the chunks of one knowledge base with their
vectors; it knows nothing of embedding, BM25 or fusion. A reranker rescores (query, text) pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from llmforge.core.config import KBConfig, RerankerConfig
from llmforge.core.registry import Registry
from llmforge.kb.types import Chunk, SearchFilters


@dataclass(frozen=True)
class StoreSpec:
    """What a vector store factory gets: the KB's folder, a collection name, the vector size."""

    folder: Path
    collection: str
    dimensions: int
    config: KBConfig


@runtime_checkable
class VectorStore(Protocol):
    def upsert(self, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> None:
        """Insert or replace chunks by id (re-running an upsert never duplicates)."""
        ...

    def delete(self, sources: Sequence[str] | None) -> None:
        """Remove the chunks of these source files; None removes everything, collection too."""
        ...

    def search(
        self, vector: Sequence[float], k: int, filters: SearchFilters | None = None
    ) -> list[tuple[Chunk, float]]:
        """The k nearest chunks with their cosine similarity, best first."""
        ...

    def scan(self, ids: Sequence[str] | None = None) -> Iterator[Chunk]:
        """The chunks with these ids (missing ones left out), or every chunk when None."""
        ...

    def vectors(self, ids: Sequence[str]) -> dict[str, list[float]]:
        """The stored vectors of these chunk ids (missing ones left out)."""
        ...

    def settle(self) -> None:
        """The end of a batch of writes (an ingest, a re-embed): a store that keeps an index up
        incrementally may tidy it here; others do nothing."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Reranker(Protocol):
    async def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """Relevance of each text to the query (higher is better)."""
        ...

    async def aclose(self) -> None: ...


VectorStoreFactory = Callable[[StoreSpec], VectorStore]
RerankerFactory = Callable[[RerankerConfig], Reranker]

vector_stores: Registry[VectorStoreFactory] = Registry("vector store", "llmforge.vectorstores")
rerankers: Registry[RerankerFactory] = Registry("reranker", "llmforge.rerankers")
