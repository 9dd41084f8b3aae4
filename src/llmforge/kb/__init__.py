"""Knowledge bases: folders of notes, manuals or contracts, kept in sync and searched.

Pipeline: loaders (txt, md, html, pdf, docx) -> structure-following chunking in the embedder's
tokens -> embeddings -> a vector store (LanceDB by default, Qdrant) + a BM25 index -> hybrid search
(z-score fusion when the retrievers corroborate each other, else dense) -> optional
cross-encoder rerank.

Contract for code built on this package (HTTP endpoints, the MCP server, the RAG provider):

- `shared_knowledge_bases(catalog)`: the process's `KnowledgeBases`, shared through the model
  catalog (`ModelCatalog.shared`) by routes, the MCP server and `rag` models.
- `KnowledgeBases(settings, engine=None)`: one per process (it shares embedders); everything is
  async and runs blocking work on threads. `await kbs.list() -> list[KBInfo]`,
  `await kbs.create(name) -> KnowledgeBase` (InvalidRequestError if taken or a bad name),
  `await kbs.open(name, create=False) -> KnowledgeBase` (NotFoundError listing known names),
  `await kbs.delete(name)` (vectors, BM25, manifest rows and folder), `await kbs.aclose()`.
- `KnowledgeBase`: `await kb.ingest(paths, progress=None) -> IngestReport` (files or folders,
  recursive, incremental and resumable; NotFoundError for a missing path; per-file parse failures
  and unsupported types are in the report, not raised; one ingest at a time per KB);
  `await kb.search(query, k=None, filters=None) -> list[Hit]` (exactly `min(k, matching chunks)`
  hits, best first; `k` defaults to `kb.search.k`; InvalidRequestError for an empty query or k
  outside 1..1000); `await kb.search_detailed(query, k, filters, fusion=None) -> SearchResult`
  (hits plus `stages`: dense, bm25, fusion, rerank with candidate counts and milliseconds);
  `await kb.get_chunk(id) -> Chunk` (NotFoundError); `await kb.documents() -> list[Document]`;
  `await kb.info() -> KBInfo`.
- `Hit`: chunk_id, text, score (the order), source, title, heading_path, page, chunk_index,
  file_type, and stage scores dense_score, bm25_score, fused_score, rerank_score (None when the
  stage did not score it). Hits are pydantic models: `hit.model_dump()` is the wire shape.
- `SearchFilters(path_prefix=..., file_types=[...])` restrict a search to files under a folder
  and/or of some types.

Extension points (`base.py`): `VectorStore` (entry points `llmforge.vectorstores`) and `Reranker`
(`llmforge.rerankers`). This package does no HTTP and knows no chat model.
"""

from llmforge.kb.base import Reranker, StoreSpec, VectorStore, rerankers, vector_stores
from llmforge.kb.knowledge_base import KnowledgeBase, KnowledgeBases, shared_knowledge_bases
from llmforge.kb.loaders import LoadError
from llmforge.kb.types import (
    Chunk,
    Document,
    FileError,
    Hit,
    IngestProgress,
    IngestReport,
    KBInfo,
    SearchFilters,
    SearchResult,
    SearchStage,
)

__all__ = [
    "Chunk",
    "Document",
    "FileError",
    "Hit",
    "IngestProgress",
    "IngestReport",
    "KBInfo",
    "KnowledgeBase",
    "KnowledgeBases",
    "LoadError",
    "Reranker",
    "SearchFilters",
    "SearchResult",
    "SearchStage",
    "StoreSpec",
    "VectorStore",
    "rerankers",
    "shared_knowledge_bases",
    "vector_stores",
]
