"""Hybrid search over one knowledge base: dense and BM25 candidates, fusion, optional rerank.

Each retriever returns `candidates(k) = max(4k, 40)` results (filters applied inside each, before
its top is taken); the lists are fused (`fusion.py`: corroborated z-score fusion by default); when
a reranker is configured it rescores the top `max(reranker.candidates, k)` fused results; exactly
`min(k, matching chunks)` hits come back. Every stage's candidate count and time are recorded in
`SearchResult.stages` (what `--explain` prints), and every hit carries its per-stage scores.
With a query expander (`expansion.py`: HyDE, multi-query) every text it gives is searched by both
retrievers and each chunk keeps its best score per retriever before fusion.
With pseudo-relevance feedback (`feedback` N > 0: Rocchio on the dense side) the query's vector
moves towards the mean of the stored vectors of its first N dense results (by `feedback_weight`)
and the dense search runs again with it; BM25 and fusion are unchanged. It helps queries that
describe a set of documents (DBpedia-entity: +1.3 nDCG@10 over dense) and costs a little on
pinpoint questions with one answer (SQuAD: -0.7), so it is off by default (decisions.md §43).
The BM25 index is reloaded when another process (an ingest) has rewritten it. Blocking work runs on
worker threads. This module does not ingest.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from pathlib import Path

from llmforge.core.config import KBSearchConfig
from llmforge.core.errors import InvalidRequestError
from llmforge.kb.base import Reranker, VectorStore
from llmforge.kb.bm25 import Bm25Index
from llmforge.kb.expansion import QueryExpander
from llmforge.kb.fusion import FUSIONS
from llmforge.kb.types import Chunk, Hit, SearchFilters, SearchResult, SearchStage
from llmforge.models.base import Embedder

MAX_K = 1000
MAX_FEEDBACK = 50


def candidates(k: int) -> int:
    """How many results each retriever contributes for a top-k search."""
    return max(k * 4, 40)


class Retriever:
    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        bm25_folder: Path,
        config: KBSearchConfig,
        reranker: Reranker | None = None,
        rerank_candidates: int = 20,
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._bm25_folder = bm25_folder
        self._config = config
        self._reranker = reranker
        self._rerank_candidates = rerank_candidates
        self._bm25: Bm25Index | None = None
        self._bm25_stamp: int | None = None

    def _current_bm25(self) -> Bm25Index | None:
        marker = self._bm25_folder / "chunks.json"
        try:
            stamp = marker.stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp != self._bm25_stamp or (stamp is None and self._bm25 is not None):
            self._bm25 = Bm25Index.load(self._bm25_folder)
            self._bm25_stamp = stamp
        return self._bm25

    def _bm25_search(
        self, query: str, n: int, filters: SearchFilters | None
    ) -> list[tuple[str, float]]:
        index = self._current_bm25()
        return index.search(query, n, filters) if index is not None else []

    async def search(
        self,
        query: str,
        k: int | None = None,
        filters: SearchFilters | None = None,
        fusion: str | None = None,
        expander: QueryExpander | None = None,
        feedback: int | None = None,
    ) -> SearchResult:
        query = query.strip()
        if not query:
            raise InvalidRequestError("The search query is empty; pass some text.", param="query")
        k = self._config.k if k is None else k
        if not 1 <= k <= MAX_K:
            raise InvalidRequestError(f"k must be between 1 and {MAX_K}, got {k}", param="k")
        method = fusion or self._config.fusion
        if method not in FUSIONS:
            raise InvalidRequestError(
                f"Unknown fusion '{method}'. Known: {', '.join(sorted(FUSIONS))}", param="fusion"
            )
        feedback = self._config.feedback if feedback is None else feedback
        if not 0 <= feedback <= MAX_FEEDBACK:
            raise InvalidRequestError(
                f"feedback must be between 0 and {MAX_FEEDBACK} results, got {feedback}",
                param="feedback",
            )
        n = candidates(k)
        stages: list[SearchStage] = []
        texts = [query]
        if expander is not None:
            t = time.perf_counter()
            texts = await expander.expand(query)
            stages.append(_stage("expand", len(texts), t, f"{expander.name}: {len(texts)} texts"))

        t = time.perf_counter()
        vectors = (await self._embedder.embed(texts)).vectors
        dense = _best_of(
            [await asyncio.to_thread(self._store.search, v, n, filters) for v in vectors], n
        )
        stages.append(_stage("dense", len(dense), t, f"cosine top {n}"))
        if feedback and dense:
            t = time.perf_counter()
            top = [c.id for c, _ in dense[:feedback]]
            found = await asyncio.to_thread(self._store.vectors, top)
            moved = _moved(vectors[0], list(found.values()), self._config.feedback_weight)
            dense = _best_of(
                [
                    await asyncio.to_thread(self._store.search, v, n, filters)
                    for v in [moved, *vectors[1:]]
                ],
                n,
            )
            weight = self._config.feedback_weight
            stages.append(
                _stage("feedback", len(dense), t, f"query moved {weight} towards top {feedback}")
            )

        t = time.perf_counter()
        bm25 = _best_ids(
            [await asyncio.to_thread(self._bm25_search, text, n, filters) for text in texts], n
        )
        stages.append(_stage("bm25", len(bm25), t, f"top {n}"))

        t = time.perf_counter()
        dense_scores = {c.id: s for c, s in dense}
        fused = FUSIONS[method]([(c.id, s) for c, s in dense], bm25, self._config.dense_weight)
        detail = f"{method}" + (
            f" (dense weight {self._config.dense_weight})" if method in ("zscore", "minmax") else ""
        )
        stages.append(_stage("fusion", len(fused), t, detail))

        chunks = {c.id: c for c, _ in dense}
        rerank_scores: dict[str, float] = {}
        if self._reranker is not None and fused:
            t = time.perf_counter()
            pool = fused[: max(self._rerank_candidates, k)]
            await self._fetch(chunks, [i for i, _ in pool])
            ids = [i for i, _ in pool if i in chunks]
            scores = await self._reranker.score(query, [chunks[i].indexed_text() for i in ids])
            rerank_scores = dict(zip(ids, scores, strict=True))
            ranked = sorted(ids, key=lambda i: -rerank_scores[i])
            stages.append(_stage("rerank", len(ids), t, f"rescored top {len(ids)} fused"))
        else:
            ranked = [i for i, _ in fused]
        top = ranked[:k]
        await self._fetch(chunks, top)

        fused_scores = dict(fused)
        bm25_scores = dict(bm25)
        hits = [
            _hit(
                chunks[i],
                score=rerank_scores.get(i, fused_scores[i]),
                dense=dense_scores.get(i),
                bm25=bm25_scores.get(i),
                fused=fused_scores[i],
                rerank=rerank_scores.get(i),
            )
            for i in top
            if i in chunks
        ]
        return SearchResult(query=query, k=k, fusion=method, hits=hits, stages=stages)

    async def _fetch(self, chunks: dict[str, Chunk], ids: list[str]) -> None:
        missing = [i for i in ids if i not in chunks]
        if missing:
            found = await asyncio.to_thread(lambda: list(self._store.scan(missing)))
            chunks.update((c.id, c) for c in found)


def _moved(query: Sequence[float], top: list[list[float]], weight: float) -> list[float]:
    """Rocchio: the query's unit vector plus `weight` times the mean of the top chunks' stored
    (unit) vectors, normalised."""
    moved = list(query)
    for vector in top:
        for i, x in enumerate(vector):
            moved[i] += weight / len(top) * x
    norm = math.sqrt(sum(x * x for x in moved)) or 1.0
    return [x / norm for x in moved]


def _best_of(lists: list[list[tuple[Chunk, float]]], n: int) -> list[tuple[Chunk, float]]:
    """One list from the lists of several query texts: each chunk at its best score."""
    if len(lists) == 1:
        return lists[0]
    best: dict[str, tuple[Chunk, float]] = {}
    for found in lists:
        for chunk, score in found:
            if chunk.id not in best or score > best[chunk.id][1]:
                best[chunk.id] = (chunk, score)
    return sorted(best.values(), key=lambda cs: -cs[1])[:n]


def _best_ids(lists: list[list[tuple[str, float]]], n: int) -> list[tuple[str, float]]:
    if len(lists) == 1:
        return lists[0]
    best: dict[str, float] = {}
    for found in lists:
        for chunk_id, score in found:
            best[chunk_id] = max(score, best.get(chunk_id, score))
    return sorted(best.items(), key=lambda cs: -cs[1])[:n]


def _stage(name: str, count: int, started: float, detail: str) -> SearchStage:
    return SearchStage(
        name=name,
        candidates=count,
        ms=round((time.perf_counter() - started) * 1000, 2),
        detail=detail,
    )


def _hit(
    chunk: Chunk,
    *,
    score: float,
    dense: float | None,
    bm25: float | None,
    fused: float,
    rerank: float | None,
) -> Hit:
    return Hit(
        chunk_id=chunk.id,
        text=chunk.text,
        score=score,
        source=chunk.source,
        title=chunk.title,
        heading_path=chunk.heading_path,
        page=chunk.page,
        chunk_index=chunk.chunk_index,
        file_type=chunk.file_type,
        dense_score=dense,
        bm25_score=bm25,
        fused_score=fused,
        rerank_score=rerank,
    )
