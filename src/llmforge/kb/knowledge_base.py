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
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from llmforge.core.config import EmbeddingConfig, KBSearchConfig
from llmforge.core.db import open_engine
from llmforge.core.errors import ConfigError, InvalidRequestError, NotFoundError
from llmforge.core.settings import Settings
from llmforge.kb import adapter, versions
from llmforge.kb.adapter import AdaptedEmbedder
from llmforge.kb.base import Reranker, StoreSpec, VectorStore, rerankers, vector_stores
from llmforge.kb.chunking import token_counter_for
from llmforge.kb.expansion import QueryExpander
from llmforge.kb.ingest import IngestTarget, ProgressCallback, ingest
from llmforge.kb.manifest import BaseRow, Manifest
from llmforge.kb.queries import QueryGenerator
from llmforge.kb.search import Retriever
from llmforge.kb.tune import Outcome, TuneOptions, TuneProgress, TuneReport, TuneTarget
from llmforge.kb.tune import tune as tune_kb
from llmforge.kb.types import (
    Chunk,
    Document,
    Hit,
    IngestReport,
    KBInfo,
    SearchFilters,
    SearchResult,
)
from llmforge.kb.versions import IndexVersion
from llmforge.models.base import Embedder, ModelContext, embedders
from llmforge.models.builtin import resolve

TuneProgressCallback = Callable[[TuneProgress], None]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ONNX_BATCH = 16
_BACKENDS: dict[str, dict[str, str]] = {
    "onnx-int8": {"backend": "onnx", "quantize": "int8"},
    "onnx": {"backend": "onnx", "quantize": "none"},
    "torch": {"backend": "torch", "quantize": "none"},
    "as-configured": {},
}


@dataclass
class _Serving:
    """The parts that serve one index version: its store, embedders, ingest target, retriever."""

    version: IndexVersion
    store: VectorStore
    documents: Embedder
    queries: Embedder
    model_folder: Path | None
    search: KBSearchConfig
    target: IngestTarget
    retriever: Retriever


class KnowledgeBase:
    """One knowledge base. Get it from `KnowledgeBases.open/create`."""

    def __init__(
        self,
        row: BaseRow,
        *,
        folder: Path,
        manifest: Manifest,
        settings: Settings,
        opener: Callable[[IndexVersion], _Serving],
        embedder_for: Callable[[Path, str], Embedder],
        store_for: Callable[[Path, str], VectorStore],
        base_model: str,
        reranker: Reranker | None,
    ) -> None:
        self.name = row.name
        self._row = row
        self._folder = folder
        self._manifest = manifest
        self._lock = asyncio.Lock()
        self._opener = opener
        self._embedder_for = embedder_for
        self._store_for = store_for
        self._base_model = base_model
        self._batch_chunks = settings.kb.batch_chunks
        self._stamp = versions.stamp(folder)
        self._serving = opener(versions.load(folder).active)
        self._superseded: list[VectorStore] = []
        self.reranker_configured = reranker is not None
        self.default_k = settings.kb.search.k

    async def info(self) -> KBInfo:
        documents, chunks = await asyncio.to_thread(self._manifest.counts, self.name)
        return _info(self._row, documents, chunks)

    async def ingest(
        self, paths: Sequence[str | Path], progress: ProgressCallback | None = None
    ) -> IngestReport:
        """Add, update and remove files so the KB matches `paths` (files or folders, recursive)."""
        async with self._lock, versions.write_lock(self._folder):
            await self._refresh()
            return await ingest(self._serving.target, [Path(p) for p in paths], progress)

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
        expander: QueryExpander | None = None,
        feedback: int | None = None,
    ) -> SearchResult:
        """`search` plus what each stage did (`stages`), for explaining and debugging;
        `expander` (`expansion.py`) searches the texts it writes for the query too; `feedback`
        overrides the configured pseudo-relevance feedback (search.py)."""
        await self._refresh()
        return await self._serving.retriever.search(query, k, filters, fusion, expander, feedback)

    async def get_chunk(self, chunk_id: str) -> Chunk:
        store = self._serving.store
        found = await asyncio.to_thread(lambda: list(store.scan([chunk_id])))
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

    # -- index versions: tune, list, roll back ------------------------------------------------

    async def versions(self) -> list[IndexVersion]:
        """Every index version, oldest first (exactly one `active`)."""
        return (await asyncio.to_thread(versions.load, self._folder)).versions

    async def active_version(self) -> IndexVersion:
        await self._refresh()
        return self._serving.version

    async def tune(
        self,
        options: TuneOptions,
        generator: QueryGenerator,
        *,
        progress: TuneProgressCallback | None = None,
        stop: threading.Event | None = None,
    ) -> TuneReport:
        """Adapt retrieval to this KB's documents (`tune.py`); the result serves only if its gate
        passes. Searches and ingests go on meanwhile; one tune at a time per KB."""
        busy = (
            f"A tune of knowledge base '{self.name}' is already running; wait for it to finish "
            "(`llmforge kb versions` shows the result)."
        )
        lock = self._folder / ".tune.lock"
        with versions.exclusive(lock, busy):
            await self._refresh()
            serving = self._serving
            registry = await asyncio.to_thread(versions.load, self._folder)
            await asyncio.to_thread(versions.remove_orphans, self._folder, registry)
            number = registry.next_number()
            outcome = await tune_kb(
                self._tune_target(serving),
                options,
                generator,
                number,
                progress=progress,
                stop=stop,
            )
            if outcome.version is None:
                return outcome.report
            if not outcome.report.accepted:
                async with self._lock, versions.write_lock(self._folder):
                    registry = await asyncio.to_thread(versions.load, self._folder)
                    registry.versions.append(outcome.version)
                    await asyncio.to_thread(versions.save, self._folder, registry)
                return outcome.report
            try:
                await self._activate_new(serving, outcome, progress)
            except BaseException:
                if outcome.store is not None:
                    await asyncio.to_thread(outcome.store.delete, None)
                path = versions.version_folder(self._folder, number)
                await asyncio.to_thread(shutil.rmtree, path, True)
                raise
            finally:
                if outcome.documents is not None:
                    await outcome.documents.aclose()
            return outcome.report

    async def _activate_new(
        self, parent: _Serving, outcome: Outcome, progress: TuneProgressCallback | None
    ) -> None:
        """Record the accepted version and switch to it, after bringing its vectors up to date
        with whatever was ingested while it was being built."""
        version = outcome.version
        assert version is not None
        async with self._lock, versions.write_lock(self._folder):
            await self._refresh()
            if self._serving.version.version != parent.version.version:
                raise InvalidRequestError(
                    f"Knowledge base '{self.name}' switched to version "
                    f"{self._serving.version.version} while the tune ran; run the tune again."
                )
            if outcome.store is not None and outcome.documents is not None:
                if progress:
                    progress(TuneProgress(stage="catch-up"))
                await versions.catch_up(
                    parent.store, outcome.store, outcome.documents, self._batch_chunks
                )
                await asyncio.to_thread(outcome.store.close)  # the version reopens it
            registry = await asyncio.to_thread(versions.load, self._folder)
            registry.versions.append(version.model_copy(update={"status": "retired"}))
            registry = versions.activate(self._folder, registry, version.version)
            await asyncio.to_thread(versions.save, self._folder, registry)
            await self._refresh()

    async def rollback(self, to: int | None = None) -> IndexVersion:
        """Serve version `to` (default: the parent of the one serving now); its vectors are
        first brought up to date with the serving ones. Returns the version now serving."""
        async with self._lock, versions.write_lock(self._folder):
            await self._refresh()
            current = self._serving
            registry = await asyncio.to_thread(versions.load, self._folder)
            if to is None:
                if current.version.parent is None:
                    raise InvalidRequestError(
                        f"Knowledge base '{self.name}' serves version "
                        f"{current.version.version}, which has no earlier version to roll back "
                        "to."
                    )
                to = current.version.parent
            target = registry.get(to)
            if target.version == current.version.version:
                return current.version
            registry = versions.activate(self._folder, registry, to)  # refuses discarded ones
            serving = await asyncio.to_thread(self._opener, registry.active)
            if registry.active.store != current.version.store:
                await versions.catch_up(
                    current.store, serving.store, serving.documents, self._batch_chunks
                )
            await asyncio.to_thread(versions.save, self._folder, registry)
            self._install(serving, versions.stamp(self._folder))
            return serving.version

    def _tune_target(self, serving: _Serving) -> TuneTarget:
        return TuneTarget(
            kb=self.name,
            folder=self._folder,
            version=serving.version,
            store=serving.store,
            documents=serving.documents,
            queries=serving.queries,
            bm25_folder=self._folder / "bm25",
            fusion=serving.search.fusion,
            dense_weight=serving.search.dense_weight,
            model_folder=serving.model_folder,
            base_model=self._base_model,
            open_store=self._store_for,
            embedder_for=self._embedder_for,
            batch_chunks=self._batch_chunks,
        )

    async def _refresh(self) -> None:
        """Serve the registry's active version if it changed (here or in another process)."""
        stamp = versions.stamp(self._folder)
        if stamp == self._stamp:
            return
        registry = await asyncio.to_thread(versions.load, self._folder)
        if registry.active != self._serving.version:
            self._install(await asyncio.to_thread(self._opener, registry.active), stamp)
        self._stamp = stamp

    def _install(self, serving: _Serving, stamp: int | None) -> None:
        self._superseded.append(self._serving.store)  # searches may still be using it
        self._serving = serving
        self._stamp = stamp

    async def _drop(self) -> None:
        async with self._lock:
            registry = await asyncio.to_thread(versions.load, self._folder)
            stores = [self._serving.store]
            for version in registry.versions:
                if version.status != "discarded" and version.store != self._serving.version.store:
                    stores.append(self._opener(version).store)
            for store in stores:
                await asyncio.to_thread(store.delete, None)
                await asyncio.to_thread(store.close)
            await asyncio.to_thread(self._manifest.remove_base, self.name)
            await asyncio.to_thread(shutil.rmtree, self._folder, True)

    async def aclose(self) -> None:
        for store in [self._serving.store, *self._superseded]:
            await asyncio.to_thread(store.close)
        self._superseded.clear()


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
        base_folder = resolve(config.path, what="embedding model") if config.path else None
        counter = token_counter_for(base_folder)
        chunk_tokens = min(settings.kb.chunk_tokens, _model_max_tokens(base_folder))
        if settings.kb.reranker is not None and self._reranker is None:
            self._reranker = rerankers.get(settings.kb.reranker.provider)(settings.kb.reranker)
        reranker = self._reranker
        base = config

        def store_for(where: Path, tag: str) -> VectorStore:
            collection = f"llmforge_kb_{row.name}" + (f"_{tag}" if tag else "")
            return vector_stores.get(row.store)(
                StoreSpec(where, collection, row.dimensions, settings.kb)
            )

        def tuned(weights: Path, label: str) -> EmbeddingConfig:
            return base.model_copy(
                update={"name": f"{base.name}@{row.name}.{label}", "path": str(weights)}
            )

        def embedder_for(weights: Path, label: str) -> Embedder:
            """A new embedder of tuned weights (not shared: the tune closes it)."""
            config = tuned(weights, label)
            return embedders.get(config.provider)(config)

        def opener(version: IndexVersion) -> _Serving:
            weights = folder / version.model if version.model else base_folder
            config = tuned(folder / version.model, f"v{version.version}") if version.model else base
            documents = self._embedder(config)
            queries: Embedder = documents
            if version.adapter:
                queries = AdaptedEmbedder(documents, adapter.load(folder / version.adapter))
            tag = Path(version.store).parent.name if version.store else ""
            store = store_for(folder / version.store if version.store else folder, tag)
            search = settings.kb.search.model_copy(
                update={
                    key: value
                    for key, value in (
                        ("fusion", version.fusion),
                        ("dense_weight", version.dense_weight),
                    )
                    if value is not None
                }
            )
            target = IngestTarget(
                kb=row.name,
                store=store,
                embedder=documents,
                manifest=manifest,
                counter=counter,
                dimensions=row.dimensions,
                chunk_tokens=chunk_tokens,
                chunk_overlap=min(settings.kb.chunk_overlap, chunk_tokens // 2),
                batch_chunks=settings.kb.batch_chunks,
                bm25_folder=folder / "bm25",
            )
            retriever = Retriever(
                store,
                queries,
                folder / "bm25",
                search,
                reranker=reranker,
                rerank_candidates=settings.kb.reranker.candidates if settings.kb.reranker else 20,
            )
            tunable = (
                weights if weights is not None and (weights / "modules.json").is_file() else None
            )
            return _Serving(version, store, documents, queries, tunable, search, target, retriever)

        return KnowledgeBase(
            row,
            folder=folder,
            manifest=manifest,
            settings=settings,
            opener=opener,
            embedder_for=embedder_for,
            store_for=store_for,
            base_model=config.path or config.name,
            reranker=reranker,
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
