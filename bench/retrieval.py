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
   the p50/p95 latency of the default search;
4. unless `--skip-llamaindex`: ingests the same folder with LlamaIndex's default pipeline
   (`SimpleDirectoryReader` -> `VectorStoreIndex.from_documents`: SentenceSplitter 1024/200,
   `HuggingFaceEmbedding` of the same local MiniLM folder, its default batch size) in its own
   virtual environment, `bench/.venv-llamaindex` (created on first use; it reuses this venv's
   torch and sentence-transformers through a .pth file, so nothing multi-GB is downloaded), and
   reports its nodes/s and our speed-up.

Run: `.venv/bin/python bench/retrieval.py [--dataset DIR] [--limit N] [--reranker PATH]
[--skip-llamaindex] [--json]`. The corpus has mostly judged documents plus distractors, so absolute
scores run higher than on full BEIR; compare the methods against each other in the same run.
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
    finally:
        await kbs.aclose()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--limit", type=int, default=None, help="first N corpus documents only")
    parser.add_argument("--reranker", default=None, help="local cross-encoder folder")
    parser.add_argument("--skip-llamaindex", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
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
        result.update(asyncio.run(run_ours(folder, names, queries, qrels, work, args.reranker)))
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
