"""Retrieval quality, search latency and ingestion speed of the knowledge base, with LlamaIndex's
default ingestion as the speed reference.

On a BEIR-style set (default: ../shared/datasets/beir-dbpedia-entity-5k) or a SQuAD JSON folder
(../shared/datasets/squad-v2-dev-5-articles: paragraphs are the documents; skipped with a message
when absent) this script, in one run:

1. writes each corpus document as a text file (title, blank line, text) into a temporary folder;
2. ingests it with `llmforge kb` (the default settings: MiniLM on ONNX int8, LanceDB, BM25) and
   reports chunks/s;
3. searches every judged query with BM25 alone, dense alone, the default hybrid fusion and, with
   `--reranker PATH` (a local cross-encoder folder), hybrid + rerank; reports nDCG@10 and
   recall@10 (hits are mapped to their documents; a document counts once, at its best chunk) and
   the p50/p95 latency of the default search; with `--feedback 3,5` also dense and default search
   with pseudo-relevance feedback from each query's top 3 and top 5 results;
4. unless `--skip-llamaindex`: ingests the same folder with LlamaIndex's default pipeline
   (`SimpleDirectoryReader` -> `VectorStoreIndex.from_documents`: SentenceSplitter 1024/200,
   `HuggingFaceEmbedding` of the same local MiniLM folder, its default batch size) in its own
   virtual environment, `bench/.venv-llamaindex` (created on first use; it reuses this venv's
   torch and sentence-transformers through a .pth file, so nothing multi-GB is downloaded), and
   reports its nodes/s and our speed-up.

Run: `.venv/bin/python bench/retrieval.py [--dataset DIR] [--limit N] [--reranker PATH]
[--feedback N,...] [--skip-llamaindex] [--json]`. The corpus has mostly judged documents plus
distractors, so absolute scores run higher than on full BEIR; compare the methods against each
other in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from llmforge.core.settings import load_settings
from llmforge.kb import KnowledgeBases
from llmforge.models.builtin import resolve

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "beir-dbpedia-entity-5k"
LLAMA_VENV = ROOT / "bench" / ".venv-llamaindex"
LLAMA_PACKAGES = ["llama-index-core", "llama-index-embeddings-huggingface"]

LLAMA_SCRIPT = """
import sys, time
from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
Settings.embed_model = HuggingFaceEmbedding(model_name=sys.argv[2], device="cpu")
Settings.llm = None
start = time.perf_counter()
documents = SimpleDirectoryReader(sys.argv[1]).load_data()
index = VectorStoreIndex.from_documents(documents)
seconds = time.perf_counter() - start
print(len(index.docstore.docs), seconds)
"""


def load_beir(folder: Path, limit: int | None) -> tuple[dict[str, str], dict[str, str], dict]:
    corpus: dict[str, str] = {}
    with (folder / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            corpus[doc["_id"]] = f"{doc.get('title', '')}\n\n{doc['text']}".strip()
            if limit and len(corpus) >= limit:
                break
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "qrels" / "test.tsv").open(encoding="utf-8") as f:
        next(f)
        for line in f:
            query, doc_id, score = line.rstrip("\n").split("\t")
            if doc_id in corpus:
                qrels.setdefault(query, {})[doc_id] = int(score)
    queries = {}
    with (folder / "queries.jsonl").open(encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            if q["_id"] in qrels:
                queries[q["_id"]] = q["text"]
    return corpus, queries, qrels


def load_squad(path: Path, limit: int | None) -> tuple[dict[str, str], dict[str, str], dict]:
    """SQuAD (v2 JSON): each paragraph is a document, each answerable question a query whose one
    relevant document is its paragraph."""
    data = json.loads(path.read_text(encoding="utf-8"))
    corpus: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for article in data["data"]:
        for i, paragraph in enumerate(article["paragraphs"]):
            doc_id = f"{article['title']}-{i}"
            corpus[doc_id] = f"{article['title']}\n\n{paragraph['context']}"
            for qa in paragraph["qas"]:
                if not qa.get("is_impossible"):
                    queries[qa["id"]] = qa["question"]
                    qrels[qa["id"]] = {doc_id: 1}
            if limit and len(corpus) >= limit:
                return corpus, queries, qrels
    return corpus, queries, qrels


def ndcg(ranked: list[str], relevant: dict[str, int], k: int = 10) -> float:
    """nDCG@k with linear gain (the grade itself), as the reference figures were measured."""
    dcg = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall(ranked: list[str], relevant: dict[str, int], k: int = 10) -> float:
    wanted = {d for d, s in relevant.items() if s > 0}
    return len(wanted & set(ranked[:k])) / len(wanted) if wanted else 0.0


async def run_ours(
    folder: Path,
    names: dict[str, str],
    queries: dict,
    qrels: dict,
    work: Path,
    reranker: str | None,
    tune: list[str] | None = None,
    tune_options: dict[str, Any] | None = None,
    expand: list[str] | None = None,
    expand_queries: int = 100,
    labelled_share: float = 0.0,
    feedback: list[int] | None = None,
) -> dict[str, Any]:
    extra: dict[str, Any] = {"reranker": {"path": reranker}} if reranker else {}
    settings = load_settings(
        None, database=f"sqlite:///{work / 'bench.db'}", kb={"path": str(work / "kb"), **extra}
    )
    kbs = KnowledgeBases(settings)
    out: dict[str, Any] = {}
    try:
        kb = await kbs.open("bench", create=True)
        await kb.search("warm up: load the embedder (and export it to ONNX on first use)", k=1)
        start = time.perf_counter()
        report = await kb.ingest([folder])
        seconds = time.perf_counter() - start
        out["ingest"] = {
            "files": len(report.added),
            "chunks": report.chunks_embedded,
            "seconds": round(seconds, 2),
            "chunks_per_s": round(report.chunks_embedded / seconds, 1),
        }
        methods = list(dict.fromkeys(["bm25", "dense", "rrf", "zscore", settings.kb.search.fusion]))
        out["methods"] = {}
        latencies: list[float] = []
        for method in methods:
            scores_n, scores_r = [], []
            for qid, text in queries.items():
                t = time.perf_counter()
                result = await kb.search_detailed(text, k=20, fusion=method)
                if method == settings.kb.search.fusion:
                    latencies.append((time.perf_counter() - t) * 1000)
                ranked = list(dict.fromkeys(names[Path(h.source).name] for h in result.hits))
                scores_n.append(ndcg(ranked, qrels[qid]))
                scores_r.append(recall(ranked, qrels[qid]))
            label = f"hybrid ({method})" if method not in ("bm25", "dense") else method
            if method == settings.kb.search.fusion:
                label += " [default]"
            if reranker and method == settings.kb.search.fusion:
                label = f"hybrid ({method}) + rerank"
            out["methods"][label] = {
                "ndcg@10": round(statistics.mean(scores_n), 4),
                "recall@10": round(statistics.mean(scores_r), 4),
            }
        latencies.sort()
        out["latency_ms"] = {
            "p50": round(latencies[len(latencies) // 2], 1),
            "p95": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))], 1),
        }
        for n in feedback or ():
            wall = time.perf_counter()
            row: dict[str, Any] = {
                "dense": await judged(kb, names, queries, qrels, fusion="dense", feedback=n),
                "default": await judged(kb, names, queries, qrels, feedback=n),
            }
            row["ms_per_query"] = round((time.perf_counter() - wall) * 500 / len(queries), 1)
            out.setdefault("feedback", {})[str(n)] = row
        if expand:
            out["expand"] = await run_expansion(kb, names, queries, qrels, expand, expand_queries)
        if tune:
            out["tune"] = await run_tuning(
                kb,
                names,
                queries,
                qrels,
                tune,
                tune_options or {},
                labelled_share,
                folder,
            )
    finally:
        await kbs.aclose()
    return out


async def judged(
    kb: Any,
    names: dict[str, str],
    queries: dict,
    qrels: dict,
    fusion: str | None = None,
    expander: Any = None,
    feedback: int | None = None,
) -> dict[str, float]:
    """nDCG@10 and recall@10 of the KB's search (its serving version) on the judged queries."""
    scores_n, scores_r = [], []
    for qid, text in queries.items():
        result = await kb.search_detailed(
            text, k=20, fusion=fusion, expander=expander, feedback=feedback
        )
        ranked = list(dict.fromkeys(names[Path(h.source).name] for h in result.hits))
        scores_n.append(ndcg(ranked, qrels[qid]))
        scores_r.append(recall(ranked, qrels[qid]))
    return {
        "ndcg@10": round(statistics.mean(scores_n), 4),
        "recall@10": round(statistics.mean(scores_r), 4),
    }


async def run_expansion(
    kb: Any, names: dict[str, str], queries: dict, qrels: dict, methods: list[str], limit: int
) -> dict[str, Any]:
    """Query expansion written by the built-in local model (SmolLM2 on llama.cpp) against the
    plain default search, on the same first `limit` judged queries."""
    from llmforge.core.config import ModelConfig
    from llmforge.kb.expansion import expander_for
    from llmforge.models.catalog import ModelCatalog

    subset = dict(list(queries.items())[:limit])
    catalog = ModelCatalog(
        [ModelConfig(name="local", provider="llamacpp", path="builtin:smollm2")], []
    )
    out: dict[str, Any] = {"queries": len(subset), "plain": await judged(kb, names, subset, qrels)}
    try:
        for method in methods:
            expander = expander_for(method, catalog.chat("local"))
            wall = time.perf_counter()
            row = await judged(kb, names, subset, qrels, expander=expander)
            row["ms_per_query"] = round((time.perf_counter() - wall) * 1000 / len(subset))
            out[method] = row
            print(f"  expand {method}: {row}", flush=True)
    finally:
        await catalog.aclose()
    return out


async def run_tuning(
    kb: Any,
    names: dict[str, str],
    queries: dict,
    qrels: dict,
    methods: list[str],
    options: dict[str, Any],
    labelled_share: float = 0.0,
    folder: Path | None = None,
) -> dict[str, Any]:
    """`kb tune` with each method in turn, measured on the judged queries (which the tuning never
    sees: it trains and gates on synthetic queries of the corpus). A method named `NAME!` is
    forced through its gate (min_gain -1, no labelled set) to measure what it would do; plain
    names go through the real gate. Each run is rolled back before the next, so all start from
    version 0.

    With `labelled_share`, that share of the judged queries (every n-th by id) is handed to the
    gate as the user's labelled set, and every figure, the untuned methods' too, is measured on
    the other queries only."""
    from llmforge.kb.queries import PseudoQueries
    from llmforge.kb.tune import LabelledQuery, TuneOptions

    out: dict[str, Any] = {}
    if labelled_share > 0 and folder is not None:
        every = max(2, round(1 / labelled_share))
        ids = sorted(queries)
        gate_ids = set(ids[::every])
        paths = {doc: str((folder / name).resolve()) for name, doc in names.items()}
        labelled = [
            LabelledQuery(
                query=queries[q], relevant={paths[d]: g for d, g in qrels[q].items() if g > 0}
            )
            for q in sorted(gate_ids)
            if any(g > 0 for g in qrels[q].values())
        ]
        options = {**options, "labelled": labelled}
        queries = {q: t for q, t in queries.items() if q not in gate_ids}
        out["reported_on"] = {"queries": len(queries), "labelled_for_gate": len(labelled)}
        for fusion in ("bm25", "dense", None):
            out["reported_on"][fusion or "default"] = await judged(
                kb, names, queries, qrels, fusion=fusion
            )
    for spec in methods:
        forced = spec.endswith("!")
        method = spec.rstrip("!")
        forcing = {"min_gain": -1.0, "labelled": None} if forced else {}
        tune_options = TuneOptions.model_validate({**options, "method": method, **forcing})
        cpu, wall = time.process_time(), time.perf_counter()
        report = await kb.tune(tune_options, PseudoQueries())
        row: dict[str, Any] = {
            "accepted": report.accepted,
            "chosen": report.chosen,
            "gate": report.gate.model_dump(),
            "labelled": report.labelled.model_dump() if report.labelled else None,
            "candidates": [c.model_dump() for c in report.candidates],
            "cpu_s": round(time.process_time() - cpu, 1),
            "wall_s": round(time.perf_counter() - wall, 1),
            "message": report.message,
        }
        row.update(await judged(kb, names, queries, qrels))
        row["dense"] = await judged(kb, names, queries, qrels, fusion="dense")
        out[spec] = row
        print(f"  tune {spec}: {row['ndcg@10']} ({report.message})", flush=True)
        if report.accepted:
            await kb.rollback(0)
    return out


def llamaindex_venv() -> Path:
    python = LLAMA_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LLAMA_VENV)], check=True)
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        # Reuse this venv's torch / sentence-transformers instead of downloading them again.
        Path(site, "llmforge-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = subprocess.run(
        [str(python), "-c", "import llama_index.embeddings.huggingface"], capture_output=True
    )
    if probe.returncode != 0:
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *LLAMA_PACKAGES], check=True
        )
    return python


def run_llamaindex(folder: Path) -> dict[str, Any]:
    python = llamaindex_venv()
    model = resolve("builtin:all-minilm-l6-v2")
    done = subprocess.run(
        [str(python), "-c", LLAMA_SCRIPT, str(folder), str(model)],
        check=True,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    nodes, seconds = done.stdout.strip().splitlines()[-1].split()
    return {
        "nodes": int(nodes),
        "seconds": round(float(seconds), 2),
        "nodes_per_s": round(int(nodes) / float(seconds), 1),
    }


def clustered_vectors(n: int, centers: Any, seed: int, dims: int, spread: float = 0.06) -> Any:
    """Unit vectors around random centres: embeddings cluster by topic; uniform noise would be
    an unrealistically hard (and meaningless) case for any ANN index."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, len(centers), n)]
    x = x + rng.standard_normal((n, dims)).astype(np.float32) * spread
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def run_scale(rows: int, queries: int, batch: int) -> dict[str, Any]:
    """Ingest `rows` generated chunks into a LanceDB store through its real upsert path and its
    end-of-ingest `settle` (so the ANN index is built and kept up as a real ingest would), then
    time searches and compare their top 10 with exact search."""
    import numpy as np

    from llmforge.core.config import KBConfig
    from llmforge.kb import Chunk, StoreSpec
    from llmforge.kb.lancedb_store import LanceDBStore

    dims = 384
    centers = np.random.default_rng(0).standard_normal((2000, dims)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    out: dict[str, Any] = {"rows": rows, "queries": queries}
    with tempfile.TemporaryDirectory(prefix="llmforge-scale-") as tmp:
        spec = StoreSpec(Path(tmp), "scale", dims, KBConfig(path=tmp))
        store = LanceDBStore(spec)
        vectors = np.empty((rows, dims), dtype=np.float32)
        started = time.perf_counter()
        for start in range(0, rows, batch):
            n = min(batch, rows - start)
            part = clustered_vectors(n, centers, start + 1, dims)
            vectors[start : start + n] = part
            chunks = [
                Chunk(
                    id=f"c{i:08}",
                    text=f"generated chunk {i}",
                    source=f"/scale/{i // 20:06}.txt",
                    title="generated",
                    file_type="txt",
                    chunk_index=i % 20,
                    content_hash=str(i),
                )
                for i in range(start, start + n)
            ]
            store.upsert(chunks, part)
            if (start // batch) % 10 == 0:
                print(
                    f"  ingested {start + n} rows, {time.perf_counter() - started:.0f} s",
                    flush=True,
                )
        store.settle()  # as an ingest does when it finishes
        out["ingest_s"] = round(time.perf_counter() - started, 1)
        out["ingest_rows_per_s"] = round(rows / (time.perf_counter() - started))
        out["index"] = store.ann_state()
        probe = clustered_vectors(queries, centers, 10**9, dims)
        truth = np.argsort(-(probe @ vectors.T), axis=1)[:, :10]

        def measure(search: Any, count: int) -> tuple[list[float], float]:
            latencies, recalls = [], []
            for q, want in zip(probe[:count], truth[:count], strict=True):
                t = time.perf_counter()
                found = search(q)
                latencies.append((time.perf_counter() - t) * 1000)
                got = {int(c.id[1:]) for c, _ in found}
                recalls.append(len(got & set(want.tolist())) / 10)
            return sorted(latencies), float(np.mean(recalls))

        measure(lambda q: store.search(q.tolist(), 10), min(20, queries))  # warm the caches
        lat, rec = measure(lambda q: store.search(q.tolist(), 10), queries)
        out["ann"] = {
            "p50_ms": round(lat[len(lat) // 2], 2),
            "p95_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.95))], 2),
            "recall@10": round(rec, 4),
        }
        table = store._open(create=False)

        def exact(q: Any) -> list[tuple[Any, float]]:
            rows_ = (
                table.search(q.tolist())
                .distance_type("cosine")
                .bypass_vector_index()
                .limit(10)
                .select(["id"])
                .to_list()
            )
            return [(Chunk.model_construct(id=r["id"]), 0.0) for r in rows_]

        lat, rec = measure(exact, min(20, queries))
        out["exact"] = {
            "p50_ms": round(lat[len(lat) // 2], 2),
            "p95_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.95))], 2),
            "recall@10": round(rec, 4),
            "queries": min(20, queries),
        }
        store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--limit", type=int, default=None, help="first N corpus documents only")
    parser.add_argument("--reranker", default=None, help="local cross-encoder folder")
    parser.add_argument("--skip-llamaindex", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--scale", action="store_true", help="ANN vs exact search on a generated LanceDB KB"
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="--scale: chunks generated")
    parser.add_argument("--queries", type=int, default=200, help="--scale: queries timed")
    parser.add_argument("--batch", type=int, default=10_000, help="--scale: chunks per upsert")
    parser.add_argument(
        "--tune",
        default="fusion!,fusion",
        help="comma-separated `kb tune` methods to measure (auto, fusion, adapter, finetune; "
        "NAME! forces it through the gate); 'none' skips tuning",
    )
    parser.add_argument("--tune-steps", type=int, default=120, help="finetune steps")
    parser.add_argument(
        "--expand",
        default="none",
        help="comma-separated query expansions to measure with the built-in local model "
        "(hyde, multi-query); 'none' skips them",
    )
    parser.add_argument(
        "--feedback",
        default="none",
        help="comma-separated pseudo-relevance feedback depths to measure (dense and default "
        "search, each query's top N results); 'none' skips them",
    )
    parser.add_argument("--expand-queries", type=int, default=100, help="judged queries used")
    parser.add_argument("--tune-sample", type=int, default=400, help="chunks given queries")
    parser.add_argument(
        "--labelled-share",
        type=float,
        default=0.5,
        help="share of the judged queries given to the tune's gate as a labelled set (the "
        "figures are then measured on the rest)",
    )
    args = parser.parse_args()
    if args.scale:
        scaled = run_scale(args.rows, args.queries, args.batch)
        if args.json:
            print(json.dumps(scaled, indent=2))
            return
        a, e = scaled["ann"], scaled["exact"]
        print(
            f"{scaled['rows']} generated chunks (384-d), ingested in {scaled['ingest_s']} s "
            f"({scaled['ingest_rows_per_s']} rows/s), index {scaled['index']}"
        )
        print(f"  ANN   p50 {a['p50_ms']} ms  p95 {a['p95_ms']} ms  recall@10 {a['recall@10']}")
        print(f"  exact p50 {e['p50_ms']} ms  p95 {e['p95_ms']} ms  ({e['queries']} queries)")
        print(f"  speed-up at p50: {e['p50_ms'] / a['p50_ms']:.1f}x")
        return
    squad = next(iter(sorted(args.dataset.glob("*.json"))), None) if args.dataset.is_dir() else None
    if (args.dataset / "corpus.jsonl").is_file():
        corpus, queries, qrels = load_beir(args.dataset, args.limit)
    elif squad is not None:
        corpus, queries, qrels = load_squad(squad, args.limit)
    else:
        print(f"skipped: no BEIR or SQuAD dataset at {args.dataset} (pass --dataset DIR)")
        return
    with tempfile.TemporaryDirectory(prefix="llmforge-bench-") as tmp:
        work = Path(tmp)
        folder = work / "corpus"
        folder.mkdir()
        names: dict[str, str] = {}
        for i, (doc_id, text) in enumerate(corpus.items()):
            name = f"doc{i:06}.txt"
            (folder / name).write_text(text, encoding="utf-8")
            names[name] = doc_id
        result: dict[str, Any] = {
            "dataset": str(args.dataset),
            "documents": len(corpus),
            "queries": len(queries),
        }
        tune = [] if args.tune == "none" else args.tune.split(",")
        tune_options = {"steps": args.tune_steps, "sample": args.tune_sample}
        expand = [] if args.expand == "none" else args.expand.split(",")
        feedback = [] if args.feedback == "none" else [int(n) for n in args.feedback.split(",")]
        result.update(
            asyncio.run(
                run_ours(
                    folder,
                    names,
                    queries,
                    qrels,
                    work,
                    args.reranker,
                    tune,
                    tune_options,
                    expand,
                    args.expand_queries,
                    args.labelled_share,
                    feedback,
                )
            )
        )
        if not args.skip_llamaindex:
            result["llamaindex"] = run_llamaindex(folder)
            result["speedup_chunks_per_s"] = round(
                result["ingest"]["chunks_per_s"] / result["llamaindex"]["nodes_per_s"], 2
            )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['dataset']}: {result['documents']} documents, {result['queries']} queries")
    for label, m in result["methods"].items():
        print(f"  {label:32s} nDCG@10 {m['ndcg@10']:.4f}  recall@10 {m['recall@10']:.4f}")
    for n, row in result.get("feedback", {}).items():
        for side in ("dense", "default"):
            print(
                f"  {side + ' + feedback ' + n:32s} nDCG@10 {row[side]['ndcg@10']:.4f}  "
                f"recall@10 {row[side]['recall@10']:.4f}  ({row['ms_per_query']} ms/search)"
            )
    if "expand" in result:
        e = result["expand"]
        print(f"  query expansion, first {e['queries']} queries (plain: {e['plain']['ndcg@10']})")
        for name, row in e.items():
            if name not in ("queries", "plain"):
                print(f"    {name:28s} nDCG@10 {row['ndcg@10']:.4f}  {row['ms_per_query']} ms/q")
    tuned = dict(result.get("tune", {}))
    if "reported_on" in tuned:
        r = tuned.pop("reported_on")
        print(
            f"  tuning measured on {r['queries']} judged queries ({r['labelled_for_gate']} others "
            f"were the gate's labelled set); on them: BM25 {r['bm25']['ndcg@10']:.4f}, dense "
            f"{r['dense']['ndcg@10']:.4f}, default {r['default']['ndcg@10']:.4f}"
        )
    for spec, t in tuned.items():
        verdict = "accepted" if t["accepted"] else "refused"
        print(
            f"  {'tuned: ' + spec:32s} nDCG@10 {t['ndcg@10']:.4f}  recall@10 "
            f"{t['recall@10']:.4f}  ({verdict} {t['chosen']}, {t['cpu_s']} CPU s; gate "
            f"{t['gate']['current']:.3f} -> {t['gate']['candidate']:.3f})"
        )
    lat = result["latency_ms"]
    print(f"  search latency (default): p50 {lat['p50']} ms, p95 {lat['p95']} ms")
    ing = result["ingest"]
    print(
        f"  llmforge ingest: {ing['chunks']} chunks in {ing['seconds']} s = "
        f"{ing['chunks_per_s']} chunks/s"
    )
    if "llamaindex" in result:
        li = result["llamaindex"]
        print(
            f"  LlamaIndex default: {li['nodes']} nodes in {li['seconds']} s = "
            f"{li['nodes_per_s']} nodes/s; speed-up {result['speedup_chunks_per_s']}x"
        )


if __name__ == "__main__":
    main()
