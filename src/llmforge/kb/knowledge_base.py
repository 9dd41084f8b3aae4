"""`KnowledgeBases` (the named collection, from settings) and `KnowledgeBase` (one of them).

They wire the parts together: the manifest in the main database, the vector store and BM25 index
in `kb.path/<name>/`, the embedder (the `kb.embedding` model, run on `kb.embedding_backend`), the
token counter of that embedder's tokenizer, the optional reranker. Every method is async; blocking
work runs on worker threads. One `KnowledgeBases` per process: it shares embedders between
knowledge bases and hands out one `KnowledgeBase` per name.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from llmforge.core.config import EmbeddingConfig
from llmforge.core.db import open_engine
from llmforge.core.errors import ConfigError, InvalidRequestError, NotFoundError
from llmforge.core.settings import Settings
from llmforge.kb.base import Reranker, StoreSpec, VectorStore, rerankers, vector_stores
from llmforge.kb.chunking import TokenCounter, token_counter_for
from llmforge.kb.ingest import IngestTarget, ProgressCallback, ingest
from llmforge.kb.manifest import BaseRow, Manifest
from llmforge.kb.search import Retriever
from llmforge.kb.types import (
    Chunk,
    Document,
    Hit,
    IngestReport,
    KBInfo,
    SearchFilters,
    SearchResult,
)
from llmforge.models.base import Embedder, ModelContext, embedders
from llmforge.models.builtin import resolve

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ONNX_BATCH = 16
_BACKENDS: dict[str, dict[str, str]] = {
    "onnx-int8": {"backend": "onnx", "quantize": "int8"},
    "onnx": {"backend": "onnx", "quantize": "none"},
    "torch": {"backend": "torch", "quantize": "none"},
    "as-configured": {},
}


class KnowledgeBase:
    """One knowledge base. Get it from `KnowledgeBases.open/create`."""

    def __init__(
        self,
        row: BaseRow,
        *,
        folder: Path,
        store: VectorStore,
        embedder: Embedder,
        counter: TokenCounter,
        manifest: Manifest,
        settings: Settings,
        reranker: Reranker | None,
        chunk_tokens: int,
    ) -> None:
        self.name = row.name
        self._row = row
        self._folder = folder
        self._store = store
        self._manifest = manifest
        self._lock = asyncio.Lock()
        config = settings.kb
        self._target = IngestTarget(
            kb=row.name,
            store=store,
            embedder=embedder,
            manifest=manifest,
            counter=counter,
            dimensions=row.dimensions,
            chunk_tokens=chunk_tokens,
            chunk_overlap=min(config.chunk_overlap, chunk_tokens // 2),
            batch_chunks=config.batch_chunks,
            bm25_folder=folder / "bm25",
        )
        self._retriever = Retriever(
            store,
            embedder,
            folder / "bm25",
            config.search,
            reranker=reranker,
            rerank_candidates=config.reranker.candidates if config.reranker else 20,
        )
        self.reranker_configured = reranker is not None
        self.default_k = config.search.k

    async def info(self) -> KBInfo:
        documents, chunks = await asyncio.to_thread(self._manifest.counts, self.name)
        return _info(self._row, documents, chunks)

    async def ingest(
        self, paths: Sequence[str | Path], progress: ProgressCallback | None = None
    ) -> IngestReport:
        """Add, update and remove files so the KB matches `paths` (files or folders, recursive)."""
        async with self._lock:
            return await ingest(self._target, [Path(p) for p in paths], progress)

    async def search(
        self, query: str, k: int | None = None, filters: SearchFilters | None = None
    ) -> list[Hit]:
        """The best `k` chunks (exactly k, or all there are when fewer match)."""
        return (await self.search_detailed(query, k, filters)).hits

    async def search_detailed(
        self,
        query: str,
        k: int | None = None,
        filters: SearchFilters | None = None,
        fusion: str | None = None,
    ) -> SearchResult:
        """`search` plus what each stage did (`stages`), for explaining and debugging."""
        return await self._retriever.search(query, k, filters, fusion)

    async def get_chunk(self, chunk_id: str) -> Chunk:
        found = await asyncio.to_thread(lambda: list(self._store.scan([chunk_id])))
        if not found:
            raise NotFoundError(f"No chunk '{chunk_id}' in knowledge base '{self.name}'.")
        return found[0]

    async def documents(self) -> list[Document]:
        rows = await asyncio.to_thread(self._manifest.files, self.name)
        return [
            Document(
                source=r.path,
                title=r.title,
                file_type=r.file_type,
                content_hash=r.content_hash,
                chunks=r.chunks,
                updated_at=r.updated_at,
            )
            for r in rows.values()
            if r.status == "done"
        ]

    async def _drop(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._store.delete, None)
            await asyncio.to_thread(self._store.close)
            await asyncio.to_thread(self._manifest.remove_base, self.name)
            await asyncio.to_thread(shutil.rmtree, self._folder, True)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._store.close)


class KnowledgeBases:
    """The knowledge bases of one LLMForge installation (settings `kb:` and `database`)."""

    def __init__(self, settings: Settings, *, engine: Engine | None = None) -> None:
        self._settings = settings
        self._engine = engine
        self._manifest: Manifest | None = None
        self._open: dict[str, KnowledgeBase] = {}
        self._embedders: dict[str, Embedder] = {}
        self._reranker: Reranker | None = None
        self._lock = asyncio.Lock()
        vector_stores.get(settings.kb.store)  # an unknown store name fails now, listing names
        if settings.kb.reranker is not None:
            rerankers.get(settings.kb.reranker.provider)
        self._embedding_config()

    @property
    def root(self) -> Path:
        return Path(self._settings.kb.path).expanduser()

    async def _ensure_manifest(self) -> Manifest:
        if self._manifest is None:
            engine = self._engine or open_engine(self._settings.database)
            self._engine = engine
            self._manifest = await asyncio.to_thread(Manifest, engine)
        return self._manifest

    async def list(self) -> list[KBInfo]:
        manifest = await self._ensure_manifest()
        rows = await asyncio.to_thread(manifest.bases)
        out = []
        for row in rows:
            documents, chunks = await asyncio.to_thread(manifest.counts, row.name)
            out.append(_info(row, documents, chunks))
        return out

    async def create(self, name: str) -> KnowledgeBase:
        """A new, empty knowledge base. Raises InvalidRequestError if the name is taken."""
        _check_name(name)
        manifest = await self._ensure_manifest()
        async with self._lock:
            if await asyncio.to_thread(manifest.base, name) is not None:
                raise InvalidRequestError(
                    f"Knowledge base '{name}' already exists; ingest into it or delete it first."
                )
            config = self._embedding_config()
            embedder = self._embedder(config)
            probe = await embedder.embed(["dimension probe"])
            row = BaseRow(
                name=name,
                embedding=config.name,
                dimensions=len(probe.vectors[0]),
                store=self._settings.kb.store,
                created_at=time.time(),
            )
            await asyncio.to_thread(manifest.add_base, row)
        return await self.open(name)

    async def open(self, name: str, *, create: bool = False) -> KnowledgeBase:
        """The knowledge base `name` (created first when `create` and it does not exist)."""
        if name in self._open:
            return self._open[name]
        manifest = await self._ensure_manifest()
        row = await asyncio.to_thread(manifest.base, name)
        if row is None:
            if create:
                return await self.create(name)
            known = [b.name for b in await asyncio.to_thread(manifest.bases)]
            raise NotFoundError(
                f"Unknown knowledge base '{name}'. Known: {', '.join(known) or '(none)'}. "
                f"Create it with `llmforge kb ingest PATH --kb {name}`."
            )
        async with self._lock:
            if name not in self._open:
                self._open[name] = await asyncio.to_thread(self._build, row, manifest)
        return self._open[name]

    async def delete(self, name: str) -> None:
        kb = await self.open(name)
        await kb._drop()
        self._open.pop(name, None)

    async def aclose(self) -> None:
        for kb in self._open.values():
            await kb.aclose()
        self._open.clear()
        for embedder in self._embedders.values():
            await embedder.aclose()
        self._embedders.clear()
        if self._reranker is not None:
            await self._reranker.aclose()
            self._reranker = None

    def _build(self, row: BaseRow, manifest: Manifest) -> KnowledgeBase:
        settings = self._settings
        config = next((e for e in settings.embeddings if e.name == row.embedding), None)
        if config is None:
            raise ConfigError(
                f"Knowledge base '{row.name}' was built with the embedding model "
                f"'{row.embedding}', which is no longer under `embeddings:`; add it back."
            )
        config = self._with_backend(config)
        if row.store != settings.kb.store:
            raise ConfigError(
                f"Knowledge base '{row.name}' lives in the '{row.store}' store but kb.store is "
                f"'{settings.kb.store}'; set kb.store back or re-ingest into a new knowledge base."
            )
        folder = self.root / row.name
        folder.mkdir(parents=True, exist_ok=True)
        store = vector_stores.get(row.store)(
            StoreSpec(folder, f"llmforge_kb_{row.name}", row.dimensions, settings.kb)
        )
        model_folder = resolve(config.path, what="embedding model") if config.path else None
        counter = token_counter_for(model_folder)
        chunk_tokens = min(settings.kb.chunk_tokens, _model_max_tokens(model_folder))
        if settings.kb.reranker is not None and self._reranker is None:
            self._reranker = rerankers.get(settings.kb.reranker.provider)(settings.kb.reranker)
        return KnowledgeBase(
            row,
            folder=folder,
            store=store,
            embedder=self._embedder(config),
            counter=counter,
            manifest=manifest,
            settings=settings,
            reranker=self._reranker,
            chunk_tokens=chunk_tokens,
        )

    def _embedding_config(self) -> EmbeddingConfig:
        settings = self._settings
        if not settings.embeddings:
            raise ConfigError(
                "Knowledge bases need an embedding model; add one under `embeddings:`."
            )
        name = settings.kb.embedding or settings.embeddings[0].name
        config = next(e for e in settings.embeddings if e.name == name)
        embedders.get(config.provider)
        return self._with_backend(config)

    def _with_backend(self, config: EmbeddingConfig) -> EmbeddingConfig:
        update: dict[str, Any] = dict(_BACKENDS[self._settings.kb.embedding_backend])
        if update.get("backend") == "onnx" and "batch_size" not in config.model_fields_set:
            # Small batches pad less: MiniLM int8 embeds ~95 passages/s at 16 vs ~85 at 32 and
            # ~62 at 128 on two cores (ingest streams batches of `kb.batch_chunks` regardless).
            update["batch_size"] = ONNX_BATCH
        return config.model_copy(update=update) if update else config

    def _embedder(self, config: EmbeddingConfig) -> Embedder:
        key = f"{config.name}|{config.backend}|{config.quantize}|{config.batch_size}"
        if key not in self._embedders:
            self._embedders[key] = embedders.get(config.provider)(config)
        return self._embedders[key]


def _info(row: BaseRow, documents: int, chunks: int) -> KBInfo:
    return KBInfo(
        name=row.name,
        embedding=row.embedding,
        dimensions=row.dimensions,
        store=row.store,
        documents=documents,
        chunks=chunks,
        created_at=row.created_at,
    )


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidRequestError(
            f"'{name}' is not a valid knowledge base name: use 1-64 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit."
        )


def _model_max_tokens(folder: Path | None) -> int:
    """The embedder's input limit minus its two special tokens (no limit when unknown)."""
    if folder is not None:
        config = folder / "sentence_bert_config.json"
        if config.is_file():
            value = json.loads(config.read_text(encoding="utf-8")).get("max_seq_length")
            if isinstance(value, int) and value > 16:
                return value - 2
    return 1 << 30


def shared_knowledge_bases(context: ModelContext) -> KnowledgeBases:
    """The process's one `KnowledgeBases`, shared through the model catalog by the HTTP routes, the
    MCP server and `rag` models."""
    settings = context.settings
    if settings is None:
        raise ConfigError(
            "Knowledge bases need the server's settings; build the catalog with them."
        )
    return context.shared("kb.knowledge_bases", lambda: KnowledgeBases(settings))
