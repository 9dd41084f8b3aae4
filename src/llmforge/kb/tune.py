"""`kb tune`: adapt a knowledge base's retrieval to its own documents, without labels, and keep the
result only if it measurably beats what serves now.

1. Sample up to `sample` chunks of the serving index and write synthetic queries for them
   (`queries.py`: pseudo queries, or a chat model's); split them by chunk into train, dev and test
   (a chunk's queries never straddle two splits).
2. Retrieve every query with the serving retriever (dense and BM25 candidate lists). On the train
   split this mines hard negatives: the best-ranked chunk of another document, from BM25 and from
   dense in turn.
3. Build candidates, each with its fusion re-fitted on dev (a grid over every fusion and z-score
   weights 0.1-0.9, replayed on the same candidate lists):
   - `fusion`: the serving vectors, a fusion chosen for this KB;
   - `adapter`: a linear map on query vectors (`adapter.py`), nothing re-embedded;
   - `finetune`: the embedder fine-tuned contrastively (`finetune.py`), every chunk re-embedded
     into a new folder.
4. The candidate best on dev is the one proposed; the gate compares it with the serving
   retriever on the test split, which nothing was fitted on (nDCG@10, each query's document
   relevant), and on the user's labelled queries when given. It must gain at least `min_gain` on
   the test split and score higher on the labelled set, else it is refused and its files deleted.

The caller (`KnowledgeBase.tune`) activates an accepted candidate: it records the version, brings
its vectors up to date with ingests that happened meanwhile, and switches searches to it; until
then the serving index is untouched, so an interrupted tune changes nothing. This module does not
activate versions, hold locks or know HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from llmforge.core.errors import InvalidRequestError
from llmforge.kb import adapter
from llmforge.kb.base import VectorStore
from llmforge.kb.bm25 import Bm25Index, terms
from llmforge.kb.finetune import FinetuneSettings, Triplet, TuneCancelled, finetune
from llmforge.kb.fusion import FUSIONS
from llmforge.kb.queries import QueryGenerator, SyntheticQuery
from llmforge.kb.search import candidates
from llmforge.kb.types import Chunk
from llmforge.kb.versions import VERSIONS, GateFigures, IndexVersion, Lineage, version_folder
from llmforge.models.base import Embedder

Method = Literal["auto", "fusion", "adapter", "finetune"]
AUTO_METHODS = ("fusion", "adapter", "finetune")
TOP = 10
FUSION_GRID: list[tuple[str, float | None]] = [
    ("corroborated", None),
    ("dense", None),
    ("bm25", None),
    ("rrf", None),
    *[("zscore", round(w / 10, 1)) for w in range(1, 10)],
]
Ranked = list[tuple[str, float]]


class LabelledQuery(BaseModel):
    """A judged query: relevant chunk ids or source files, with grades (> 0 is relevant)."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    relevant: dict[str, int] = Field(min_length=1, description="chunk id or source path: grade")


class TuneOptions(BaseModel):
    """What `kb tune` may change and how hard it tries."""

    model_config = ConfigDict(extra="forbid")

    method: Method = Field(
        "fusion",
        description="fusion (the default: the only one measured to help real queries), adapter, "
        "finetune, or auto (all three compete on the dev queries)",
    )
    queries: Literal["pseudo", "model"] = Field(
        "pseudo", description="pseudo: title and sentence queries, no model; model: `model`'s"
    )
    model: str | None = Field(None, description="queries=model: the chat model writing them")
    sample: int = Field(400, ge=8, le=20_000, description="chunks to write queries for")
    steps: int = Field(120, ge=1, le=1000, description="finetune: training steps")
    batch: int = Field(16, ge=2, le=256, description="finetune: triplets per step")
    train_layers: int = Field(2, ge=1, le=48, description="finetune: top layers trained")
    min_gain: float = Field(
        0.01, ge=-1, le=1, description="nDCG@10 the candidate must gain on held-out queries"
    )
    test_share: float = Field(0.25, gt=0, lt=0.5, description="chunks whose queries judge")
    dev_share: float = Field(0.25, gt=0, lt=0.5, description="chunks whose queries choose")
    seed: int = 0
    labelled: list[LabelledQuery] | None = Field(
        None, description="judged queries the candidate must also do better on"
    )


class TuneProgress(BaseModel):
    stage: str
    done: int = 0
    total: int = 0
    detail: str = ""


class CandidateFigures(BaseModel):
    name: str
    fusion: str
    dense_weight: float | None
    dev: float = Field(description="nDCG@10 on the dev queries")
    cpu_seconds: float


class TuneReport(BaseModel):
    """What a tune did and what the gate decided, with the figures."""

    kb: str
    accepted: bool
    version: int | None = Field(None, description="the version now serving, when accepted")
    parent: int
    chosen: str
    gate: GateFigures
    labelled: GateFigures | None = None
    current_dev: float
    candidates: list[CandidateFigures]
    queries: dict[str, int]
    message: str
    seconds: float
    cpu_seconds: float


@dataclass
class TuneTarget:
    """The serving index of one KB and how to make new parts for it (from `KnowledgeBase`)."""

    kb: str
    folder: Path
    version: IndexVersion
    store: VectorStore
    documents: Embedder  # embeds chunks (and queries, before any adapter)
    queries: Embedder  # embeds queries as the serving retriever does
    bm25_folder: Path
    fusion: str
    dense_weight: float
    model_folder: Path | None  # the serving embedder's weights, when they can be fine-tuned
    base_model: str
    open_store: Callable[[Path, str], VectorStore]  # (folder, tag) -> a new, empty store
    embedder_for: Callable[[Path, str], Embedder]  # (weights folder, label) -> embedder
    batch_chunks: int


@dataclass
class Outcome:
    """A tune's report and, when the gate passed, the version to activate."""

    report: TuneReport
    version: IndexVersion | None
    store: VectorStore | None = None
    documents: Embedder | None = None


@dataclass
class _Lists:
    dense: list[Ranked]
    bm25: list[Ranked]


@dataclass
class _Candidate:
    name: str
    fusion: str
    weight: float | None
    dev: float
    embed: Callable[[list[str]], Awaitable[np.ndarray]]
    store: VectorStore
    documents: Embedder | None = None
    model: str | None = None
    adapter: str | None = None
    store_folder: str = ""
    steps: int = 0
    cpu: float = 0.0


@dataclass
class _Split:
    train: list[SyntheticQuery] = field(default_factory=list)
    dev: list[SyntheticQuery] = field(default_factory=list)
    test: list[SyntheticQuery] = field(default_factory=list)


Progress = Callable[[TuneProgress], None]


async def tune(
    target: TuneTarget,
    options: TuneOptions,
    generator: QueryGenerator,
    number: int,
    *,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> Outcome:
    """Build candidates for version `number` and gate them; see the module docstring."""
    started, cpu_started = time.perf_counter(), time.process_time()
    stop = stop or threading.Event()
    rng = random.Random(options.seed)
    folder = version_folder(target.folder, number)
    ctx: _Context | None = None

    def report(stage: str, done: int = 0, total: int = 0, detail: str = "") -> None:
        if stop.is_set():
            raise TuneCancelled("The tune was cancelled; the serving index is unchanged.")
        if progress:
            progress(TuneProgress(stage=stage, done=done, total=total, detail=detail))

    try:
        report("sampling")
        sample, sources, fingerprint = await asyncio.to_thread(
            _sample, target.store, options.sample, rng
        )
        if len(sample) < 4 or len(set(sources.values())) < 2:
            raise InvalidRequestError(
                f"Knowledge base '{target.kb}' holds {len(sources)} chunks in "
                f"{len(set(sources.values()))} documents; tuning needs at least 4 chunks of 2 "
                "documents. Ingest more files first."
            )
        report("queries", 0, len(sample), generator.name)
        written = await generator.generate(sample, rng)
        split = _split(written, options, rng)
        if not split.test or not split.dev:
            raise InvalidRequestError(
                f"Only {len(written)} synthetic queries could be written for "
                f"{len(sample)} chunks, too few to hold any out; raise `sample` or ingest more."
            )
        bm25 = await asyncio.to_thread(Bm25Index.load, target.bm25_folder)

        async def serving(texts: list[str]) -> np.ndarray:
            return await _embed(target.queries, texts)

        report("retrieving", 0, len(written), "serving retriever")
        lists = {"train": await _retrieve(split.train, serving, target.store, bm25)}
        for name, queries in (("dev", split.dev), ("test", split.test)):
            lists[name] = await _retrieve(queries, serving, target.store, bm25, target.documents)
        current_dev = _score(split.dev, lists["dev"], sources, target.fusion, target.dense_weight)
        current_test = _score(
            split.test, lists["test"], sources, target.fusion, target.dense_weight
        )
        methods = AUTO_METHODS if options.method == "auto" else (options.method,)
        built: list[_Candidate] = []
        ctx = _Context(target, options, split, lists, sources, bm25, folder, rng, report, stop)
        for method in methods:
            cpu = time.process_time()
            report(method)
            made = await _BUILDERS[method](ctx)
            if made is not None:
                made.cpu = time.process_time() - cpu
                built.append(made)
        if not built:
            raise InvalidRequestError(
                f"No tuning method applies to knowledge base '{target.kb}' with method "
                f"'{options.method}' (finetune needs a local sentence-transformers embedder)."
            )
        best = max(built, key=lambda c: (c.dev, -AUTO_METHODS.index(c.name)))
        await _drop_unchosen(ctx, best)
        report("gate", 0, len(split.test))
        test_lists = (
            lists["test"]
            if best.name == "fusion"
            else await _retrieve(
                split.test, best.embed, best.store, bm25, best.documents or target.documents
            )
        )
        candidate_test = _score(split.test, test_lists, sources, best.fusion, best.weight)
        gate = GateFigures(
            current=round(current_test, 4),
            candidate=round(candidate_test, 4),
            queries=len(split.test),
        )
        labelled = None
        if options.labelled:
            labelled = await _labelled(target, best, options.labelled, sources, bm25, serving)
        accepted = gate.gain >= options.min_gain and (
            labelled is None or labelled.candidate > labelled.current
        )
        lineage = Lineage(
            method=best.name,
            generator=generator.name,
            base_model=target.base_model,
            sampled_chunks=len(sample),
            train_queries=len(split.train),
            dev_queries=len(split.dev),
            test_queries=len(split.test),
            steps=best.steps,
            seed=options.seed,
            corpus_chunks=len(sources),
            corpus_fingerprint=fingerprint,
            cpu_seconds=round(time.process_time() - cpu_started, 1),
            seconds=round(time.perf_counter() - started, 1),
        )
        kinds: dict[str, int] = {}
        for q in written:
            kinds[q.kind] = kinds.get(q.kind, 0) + 1
        result = TuneReport(
            kb=target.kb,
            accepted=accepted,
            version=number if accepted else None,
            parent=target.version.version,
            chosen=best.name,
            gate=gate,
            labelled=labelled,
            current_dev=round(current_dev, 4),
            candidates=[
                CandidateFigures(
                    name=c.name,
                    fusion=c.fusion,
                    dense_weight=c.weight,
                    dev=round(c.dev, 4),
                    cpu_seconds=round(c.cpu, 1),
                )
                for c in built
            ],
            queries=kinds,
            message=_message(accepted, best, gate, labelled, options.min_gain),
            seconds=lineage.seconds,
            cpu_seconds=lineage.cpu_seconds,
        )
        version = IndexVersion(
            version=number,
            status="discarded" if not accepted else "active",
            parent=target.version.version,
            model=best.model,
            adapter=best.adapter,
            store=best.store_folder,
            fusion=best.fusion,
            dense_weight=best.weight,
            lineage=lineage,
            gate=gate,
            labelled=labelled,
            note=result.message,
        )
        if not accepted:
            await _discard(ctx, folder)
            return Outcome(result, version)
        own = best.store if best.store is not target.store else None
        return Outcome(result, version, own, best.documents)
    except BaseException:
        stop.set()  # a fine-tune still running on its thread stops at its next step
        await _discard(ctx, folder)
        raise


async def _discard(ctx: _Context | None, folder: Path) -> None:
    """Remove what a tune made: its stores (a server collection too), embedders and folder."""
    if ctx is not None:
        for store in ctx.created:
            await asyncio.to_thread(store.delete, None)
            await asyncio.to_thread(store.close)
        for embedder in ctx.embedders:
            await embedder.aclose()
    await asyncio.to_thread(shutil.rmtree, folder, True)


async def _drop_unchosen(ctx: _Context, best: _Candidate) -> None:
    """Only the chosen candidate's files stay in the version's folder."""
    for store in [s for s in ctx.created if s is not best.store]:
        await asyncio.to_thread(store.delete, None)
        await asyncio.to_thread(store.close)
        ctx.created.remove(store)
    for embedder in [e for e in ctx.embedders if e is not best.documents]:
        await embedder.aclose()
        ctx.embedders.remove(embedder)
    for name in ("model", "vectors", "adapter.npy"):
        path = ctx.folder / name
        if f"{VERSIONS}/{ctx.folder.name}/{name}" in (best.model, best.store_folder, best.adapter):
            continue
        if path.is_dir():
            await asyncio.to_thread(shutil.rmtree, path, True)
        else:
            path.unlink(missing_ok=True)


def _message(
    accepted: bool,
    best: _Candidate,
    gate: GateFigures,
    labelled: GateFigures | None,
    min_gain: float,
) -> str:
    what = f"{best.name} ({best.fusion}" + (f" {best.weight})" if best.weight is not None else ")")
    figures = (
        f"nDCG@10 {gate.current:.3f} -> {gate.candidate:.3f} ({gate.gain:+.3f}) on "
        f"{gate.queries} held-out synthetic queries"
    )
    if labelled is not None:
        figures += (
            f"; labelled set {labelled.current:.3f} -> {labelled.candidate:.3f} on "
            f"{labelled.queries} queries"
        )
    if accepted:
        return f"accepted {what}: {figures}"
    need = f"needs a gain of at least {min_gain:+.3f}"
    if labelled is not None:
        need += " and a higher labelled score"
    return f"refused {what}: {figures}; {need}. The serving index is unchanged."


# -- sampling and splitting -----------------------------------------------------------------


def _sample(
    store: VectorStore, size: int, rng: random.Random
) -> tuple[list[Chunk], dict[str, str], str]:
    """A uniform sample of the chunks (reservoir), every chunk's source, and a fingerprint of the
    chunk ids."""
    sample: list[Chunk] = []
    sources: dict[str, str] = {}
    for seen, chunk in enumerate(store.scan()):
        sources[chunk.id] = chunk.source
        if len(sample) < size:
            sample.append(chunk)
        else:
            j = rng.randint(0, seen)
            if j < size:
                sample[j] = chunk
    digest = hashlib.sha256("\n".join(sorted(sources)).encode()).hexdigest()[:16]
    sample.sort(key=lambda c: c.id)
    return sample, sources, digest


def _split(queries: list[SyntheticQuery], options: TuneOptions, rng: random.Random) -> _Split:
    chunks = sorted({q.chunk_id for q in queries})
    rng.shuffle(chunks)
    n_test = max(1, round(len(chunks) * options.test_share))
    n_dev = max(1, round(len(chunks) * options.dev_share))
    test = set(chunks[:n_test])
    dev = set(chunks[n_test : n_test + n_dev])
    out = _Split()
    for q in queries:
        (out.test if q.chunk_id in test else out.dev if q.chunk_id in dev else out.train).append(q)
    return out


# -- retrieval and scoring ------------------------------------------------------------------


async def _embed(embedder: Embedder, texts: list[str]) -> np.ndarray:
    vectors = (await embedder.embed(texts)).vectors if texts else []
    return np.asarray(vectors, dtype=np.float32)


async def _retrieve(
    queries: Sequence[SyntheticQuery] | Sequence[str],
    embed: Callable[[list[str]], Awaitable[np.ndarray]],
    store: VectorStore,
    bm25: Bm25Index | None,
    documents: Embedder | None = None,
) -> _Lists:
    """Dense and BM25 candidates of each query. With `documents` (the embedder of `store`'s
    vectors), synthetic queries are judged as a cloze: their own chunk is scored by its text
    without the words the query was cut from (`SyntheticQuery.cloze`), so a query copied from
    the chunk cannot find it by those words alone (see `_cloze`)."""
    texts = [q if isinstance(q, str) else q.text for q in queries]
    vectors = await embed(texts)
    n = candidates(TOP)
    synthetic = [q for q in queries if not isinstance(q, str)]
    positives = (
        await _embed(documents, [q.cloze or q.positive for q in synthetic])
        if documents is not None and len(synthetic) == len(queries)
        else None
    )

    def run() -> _Lists:
        dense = [[(c.id, s) for c, s in store.search(v.tolist(), n)] for v in vectors]
        sparse = [bm25.search(t, n) if bm25 is not None else [] for t in texts]
        lists = _Lists(dense, sparse)
        if positives is not None:
            _cloze(lists, synthetic, vectors, positives, bm25, n)
        return lists

    return await asyncio.to_thread(run)


def _cloze(
    lists: _Lists,
    queries: Sequence[SyntheticQuery],
    vectors: np.ndarray,
    positives: np.ndarray,
    bm25: Bm25Index | None,
    n: int,
) -> None:
    """Rescore each query's own chunk as its cloze text: dense by the cosine to that text's
    vector, BM25 by the query words that text still holds. Queries written from a chunk's words
    otherwise make BM25 look perfect and would pull every fitted fusion towards it, whatever the
    users' real queries are like (measured: DBpedia-entity, docs/decisions.md)."""
    for i, q in enumerate(queries):
        own = float(vectors[i] @ positives[i])
        lists.dense[i] = _placed(lists.dense[i], q.chunk_id, own, n)
        if bm25 is None:
            continue
        kept = set(terms(q.cloze or q.positive))
        words = [w for w in q.text.split() if w and set(terms(w)) <= kept and terms(w)]
        found = dict(bm25.search(" ".join(words), n)) if words else {}
        lists.bm25[i] = _placed(lists.bm25[i], q.chunk_id, found.get(q.chunk_id), n)


def _placed(ranked: Ranked, chunk_id: str, score: float | None, n: int) -> Ranked:
    rest = [(c, s) for c, s in ranked if c != chunk_id]
    if score is not None and score > 0:
        rest.append((chunk_id, score))
    return sorted(rest, key=lambda cs: -cs[1])[:n]


def ndcg(ranked: Sequence[str], relevant: dict[str, int], k: int = TOP) -> float:
    dcg = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    best = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / best if best else 0.0


def _ranking(lists: _Lists, i: int, fusion: str, weight: float | None) -> list[str]:
    fuse = FUSIONS[fusion]
    fused = fuse(lists.dense[i], lists.bm25[i], 0.7 if weight is None else weight)
    return [chunk_id for chunk_id, _ in fused]


def _documents(ids: list[str], sources: dict[str, str]) -> list[str]:
    return list(dict.fromkeys(sources.get(i, i) for i in ids))


def _score(
    queries: Sequence[SyntheticQuery],
    lists: _Lists,
    sources: dict[str, str],
    fusion: str,
    weight: float | None,
) -> float:
    if not queries:
        return 0.0
    total = 0.0
    for i, q in enumerate(queries):
        total += ndcg(_documents(_ranking(lists, i, fusion, weight), sources), {q.source: 1})
    return total / len(queries)


def fit_fusion(
    queries: Sequence[SyntheticQuery],
    lists: _Lists,
    sources: dict[str, str],
    prefer: str,
) -> tuple[str, float | None, float]:
    """The fusion (and weight) with the best nDCG@10 on these queries; ties go to `prefer`, then
    to the grid's order."""
    best: tuple[str, float | None, float] | None = None
    grid = sorted(FUSION_GRID, key=lambda fw: fw[0] != prefer)
    for fusion, weight in grid:
        score = _score(queries, lists, sources, fusion, weight)
        if best is None or score > best[2] + 1e-9:
            best = (fusion, weight, score)
    assert best is not None
    return best


async def _labelled(
    target: TuneTarget,
    best: _Candidate,
    labelled: list[LabelledQuery],
    sources: dict[str, str],
    bm25: Bm25Index | None,
    serving: Callable[[list[str]], Awaitable[np.ndarray]],
) -> GateFigures:
    texts = [q.query for q in labelled]
    now = await _retrieve(texts, serving, target.store, bm25)
    new = await _retrieve(texts, best.embed, best.store, bm25)

    def score(lists: _Lists, fusion: str, weight: float | None) -> float:
        total = 0.0
        for i, q in enumerate(labelled):
            ids = _ranking(lists, i, fusion, weight)
            by_chunk = any(key in sources for key in q.relevant)
            total += ndcg(ids if by_chunk else _documents(ids, sources), q.relevant)
        return total / len(labelled)

    return GateFigures(
        current=round(score(now, target.fusion, target.dense_weight), 4),
        candidate=round(score(new, best.fusion, best.weight), 4),
        queries=len(labelled),
    )


# -- candidates -----------------------------------------------------------------------------


@dataclass
class _Context:
    target: TuneTarget
    options: TuneOptions
    split: _Split
    lists: dict[str, _Lists]
    sources: dict[str, str]
    bm25: Bm25Index | None
    folder: Path
    rng: random.Random
    report: Callable[..., None]
    stop: threading.Event
    created: list[VectorStore] = field(default_factory=list)
    embedders: list[Embedder] = field(default_factory=list)


async def _fusion(ctx: _Context) -> _Candidate:
    target = ctx.target
    fusion, weight, dev = fit_fusion(ctx.split.dev, ctx.lists["dev"], ctx.sources, target.fusion)

    async def embed(texts: list[str]) -> np.ndarray:
        return await _embed(target.queries, texts)

    return _Candidate(
        "fusion",
        fusion,
        weight,
        dev,
        embed,
        target.store,
        model=target.version.model,
        adapter=target.version.adapter,
        store_folder=target.version.store,
    )


def _negatives(ctx: _Context) -> list[str | None]:
    """Per train query, a hard negative chunk id: the best-ranked chunk of another document, from
    BM25 and dense in turn (skipping the very top, often an unlabelled positive)."""
    out: list[str | None] = []
    lists = ctx.lists["train"]
    for i, q in enumerate(ctx.split.train):
        pools = [lists.bm25[i], lists.dense[i]]
        if i % 2:
            pools.reverse()
        found = None
        for pool in pools:
            others = [c for c, _ in pool if ctx.sources.get(c) != q.source]
            if len(others) > 1:
                found = others[1] if ctx.rng.random() < 0.5 else others[0]
                break
        out.append(found)
    return out


async def _texts(store: VectorStore, ids: list[str]) -> dict[str, str]:
    wanted = sorted(set(ids))
    found = await asyncio.to_thread(lambda: list(store.scan(wanted)))
    return {c.id: c.indexed_text() for c in found}


async def _adapter(ctx: _Context) -> _Candidate | None:
    target, split = ctx.target, ctx.split
    if not split.train:
        return None
    negatives = _negatives(ctx)
    positives_ids = [q.chunk_id for q in split.train]
    texts = await _texts(target.store, positives_ids + [n for n in negatives if n])
    keep = [k for k, q in enumerate(split.train) if q.chunk_id in texts]
    if not keep:
        return None
    chunk_ids = sorted(texts)
    row = {c: k for k, c in enumerate(chunk_ids)}
    embedded = await _embed(target.documents, [texts[i] for i in chunk_ids])
    queries = await _embed(target.documents, [split.train[k].text for k in keep])
    positives = embedded[[row[split.train[k].chunk_id] for k in keep]]
    negative_rows = [row.get(negatives[k] or "", -1) for k in keep]
    hard = embedded[negative_rows] if all(r >= 0 for r in negative_rows) else None
    matrix = await asyncio.to_thread(adapter.fit, queries, positives, hard, seed=ctx.options.seed)
    relative = f"{VERSIONS}/{ctx.folder.name}/adapter.npy"
    await asyncio.to_thread(adapter.save, target.folder / relative, matrix)

    async def embed(batch: list[str]) -> np.ndarray:
        raw = await _embed(target.documents, batch)
        return adapter.apply(raw, matrix) if len(raw) else raw

    dev_lists = await _retrieve(split.dev, embed, target.store, ctx.bm25, target.documents)
    fusion, weight, dev = fit_fusion(split.dev, dev_lists, ctx.sources, target.fusion)
    return _Candidate(
        "adapter",
        fusion,
        weight,
        dev,
        embed,
        target.store,
        model=target.version.model,
        adapter=relative,
        store_folder=target.version.store,
    )


async def _finetune(ctx: _Context) -> _Candidate | None:
    target, split, options = ctx.target, ctx.split, ctx.options
    if target.model_folder is None or not split.train:
        return None
    negatives = _negatives(ctx)
    texts = await _texts(target.store, [n for n in negatives if n])
    triplets = [
        Triplet(q.text, q.positive, texts.get(n) if n else None)
        for q, n in zip(split.train, negatives, strict=True)
    ]
    if any(t.negative is None for t in triplets):
        triplets = [Triplet(t.query, t.positive, None) for t in triplets]
    settings = FinetuneSettings(
        steps=options.steps,
        batch=options.batch,
        train_layers=options.train_layers,
        seed=options.seed,
    )
    model_relative = f"{VERSIONS}/{ctx.folder.name}/model"
    loop = asyncio.get_running_loop()
    failure: list[BaseException] = []

    def report_step(step: int, loss: float) -> None:
        try:
            ctx.report("finetune", step, options.steps, f"loss {loss:.3f}")
        except BaseException as e:  # the caller's callback failed, or the tune was cancelled
            failure.append(e)
            ctx.stop.set()

    def on_step(step: int, loss: float) -> None:
        loop.call_soon_threadsafe(report_step, step, loss)

    try:
        await asyncio.to_thread(
            finetune,
            target.model_folder,
            target.folder / model_relative,
            triplets,
            settings,
            stop=ctx.stop,
            on_step=on_step,
        )
    except TuneCancelled:
        if failure:
            raise failure[0] from None
        raise
    if failure:
        raise failure[0]
    ctx.report("reembed", 0, len(ctx.sources))
    documents = target.embedder_for(target.folder / model_relative, ctx.folder.name)
    ctx.embedders.append(documents)
    store_relative = f"{VERSIONS}/{ctx.folder.name}/vectors"
    store = target.open_store(target.folder / store_relative, ctx.folder.name)
    ctx.created.append(store)
    ids = sorted(ctx.sources)
    step = max(1, target.batch_chunks)
    for start in range(0, len(ids), step):
        ctx.report("reembed", start, len(ids))
        part = ids[start : start + step]
        chunks = await asyncio.to_thread(_scan, target.store, part)
        if chunks:
            vectors = (await documents.embed([c.indexed_text() for c in chunks])).vectors
            await asyncio.to_thread(store.upsert, chunks, vectors)
    await asyncio.to_thread(store.settle)
    ctx.report("reembed", len(ids), len(ids))

    async def embed(batch: list[str]) -> np.ndarray:
        return await _embed(documents, batch)

    dev_lists = await _retrieve(split.dev, embed, store, ctx.bm25, documents)
    fusion, weight, dev = fit_fusion(split.dev, dev_lists, ctx.sources, target.fusion)
    return _Candidate(
        "finetune",
        fusion,
        weight,
        dev,
        embed,
        store,
        documents=documents,
        model=model_relative,
        store_folder=store_relative,
        steps=options.steps,
    )


def _scan(store: VectorStore, ids: list[str]) -> list[Chunk]:
    return list(store.scan(ids))


_BUILDERS: dict[str, Callable[[_Context], Awaitable[_Candidate | None]]] = {
    "fusion": _fusion,
    "adapter": _adapter,
    "finetune": _finetune,
}
