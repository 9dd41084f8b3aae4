"""The distillation flywheel on the deepset prompt-injection task, against the classic answers.

Runs the whole flywheel (`llmforge.distill`) with `train.jsonl` as the traffic and `dev.jsonl` as
the fixed test split: a perfect teacher (the `answer-key` provider answering the dataset's
labels, billed at a hosted model's list price), LoRA training of SmolLM2-135M-Instruct on its
labels, the eval gate, GGUF export and quantization, the GGUF checked on dev through llama.cpp.
In the same run, on the same split, the classic baselines: TF-IDF + logistic regression and
MiniLM sentence embeddings + logistic regression (scikit-learn).

Prints: accuracy on dev of teacher, merged student, quantized GGUF and both baselines; GGUF vs
merged; cost per 1,000 requests of the student (CPU time of the GGUF's p50 latency at
`--cpu-hour-usd` a core-hour) vs the teacher (its tokens at the list price); latency p50; wall
time of each stage. Offline: reads ../shared/datasets, loads only built-in weights.

    .venv/bin/python bench/distill.py [--steps 110] [--batch-size 8] [--max-seq-len 128]
        [--quant q8_0] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from llmforge.guard.injection import STUDENT_PROMPT

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "prompt-injection-deepset"
SYSTEM = STUDENT_PROMPT  # the prompt the injection guard's second stage asks a student with


def read(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def baselines(train: list[dict[str, str]], dev: list[dict[str, str]]) -> dict[str, Any]:
    """TF-IDF + LR and MiniLM + LR: trained on train, accuracy on dev, with their wall time."""
    from sentence_transformers import SentenceTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.pipeline import make_pipeline

    from llmforge.models.builtin import resolve

    x_train, y_train = [r["text"] for r in train], [r["label"] for r in train]
    x_dev, y_dev = [r["text"] for r in dev], [r["label"] for r in dev]
    out: dict[str, Any] = {}
    started = time.perf_counter()
    tfidf = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        LogisticRegression(max_iter=2000, C=10.0),
    )
    tfidf.fit(x_train, y_train)
    out["tfidf_lr"] = {
        "accuracy": accuracy_score(y_dev, tfidf.predict(x_dev)),
        "wall_s": time.perf_counter() - started,
    }
    started = time.perf_counter()
    encoder = SentenceTransformer(str(resolve("builtin:all-minilm-l6-v2")), device="cpu")
    e_train = encoder.encode(x_train, batch_size=64, normalize_embeddings=True)
    e_dev = encoder.encode(x_dev, batch_size=64, normalize_embeddings=True)
    head = LogisticRegression(max_iter=2000, C=10.0).fit(e_train, y_train)
    out["minilm_lr"] = {
        "accuracy": accuracy_score(y_dev, head.predict(e_dev)),
        "wall_s": time.perf_counter() - started,
    }
    return out


async def flywheel(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from llmforge.core.db import open_engine
    from llmforge.core.settings import load_settings
    from llmforge.distill import Flywheel, FlywheelSpec, catalog_for
    from llmforge.distill.cli import RichReporter

    key = work / "answer-key.jsonl"
    key.write_text(
        "".join(
            json.dumps({"text": r["text"], "label": r["label"]}) + "\n"
            for name in ("train.jsonl", "dev.jsonl")
            for r in read(DATA / name)
        ),
        encoding="utf-8",
    )
    settings = load_settings(
        None,
        database=f"sqlite:///{work / 'bench.db'}",
        models=[
            {
                "name": "teacher",
                "provider": "answer-key",
                "path": str(key),
                "price": {"input_per_mtok": args.input_price, "output_per_mtok": args.output_price},
            }
        ],
        embeddings=[{"name": "hash", "provider": "fake", "dimensions": 8}],
        distill={"path": str(work / "distill")},
    )
    spec = FlywheelSpec.model_validate(
        {
            "name": "deepset",
            "teacher": "teacher",
            "collect": {
                "source": "jsonl",
                "path": str(DATA / "train.jsonl"),
                "test_path": str(DATA / "dev.jsonl"),
                "system": SYSTEM,
                "val_share": 0.0,
            },
            "train": {
                "steps": args.steps,
                "batch_size": args.batch_size,
                "max_seq_len": args.max_seq_len,
                "learning_rate": args.lr,
                "checkpoint_every": max(args.steps // 4, 1),
                "threads": args.threads,
            },
            "eval": {"gate_share": 0.9, "max_tokens": 4},
            "export": {"quant": args.quant, "max_quant_loss": 1.0, "threads": args.serve_threads},
            "route": {"share": 0.1},
        }
    )
    engine = open_engine(settings.database)
    catalog = catalog_for(settings, engine)
    try:
        fw = Flywheel(spec, settings, engine, catalog, RichReporter(sys.stderr.isatty()))
        report = await fw.run(force=True)  # export even if the gate fails: its figures matter
    finally:
        await catalog.aclose()
        engine.dispose()
    return {stage: run.model_dump(mode="json") for stage, run in report.runs.items()}


def confusion(database: str, run_id: str) -> dict[str, int]:
    """gold label -> student answer counts over the dev run (`other`: neither label)."""
    from llmforge.core.db import open_engine
    from llmforge.evals import EvalStore
    from llmforge.evals.metrics import tokens

    counts: dict[str, int] = {}
    for r in EvalStore(open_engine(database)).results(run_id):
        said = " ".join(tokens(r.output.text))
        said = said if said in ("injection", "benign") else "other"
        key = f"{r.case.get('expected')}->{said}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=110, help="LoRA steps (110 = ~2 epochs)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quant", default="q8_0")
    parser.add_argument(
        "--serve-threads", type=int, default=1, help="llama.cpp threads of the GGUF check"
    )
    parser.add_argument("--input-price", type=float, default=2.5, help="teacher $/Mtok in")
    parser.add_argument("--output-price", type=float, default=10.0, help="teacher $/Mtok out")
    parser.add_argument("--cpu-hour-usd", type=float, default=0.05, help="$ per core-hour")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} is absent (the shared datasets folder)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="llmforge-distill-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    train, dev = read(DATA / "train.jsonl"), read(DATA / "dev.jsonl")
    started = time.perf_counter()
    classic = baselines(train, dev)  # first: seconds, and a broken setup shows at once
    runs = asyncio.run(flywheel(args, work))
    ev, ex, lab, tr = (
        runs["eval"]["result"],
        runs["export"]["result"],
        runs["label"]["result"],
        (runs["train"]["result"]),
    )
    threads = args.serve_threads  # the cores one GGUF request occupies
    p50_s = (ex["gguf_latency_p50_ms"] or 0.0) / 1000
    student_per_1k = p50_s * threads * args.cpu_hour_usd / 3600 * 1000
    teacher_per_1k = lab["cost_per_1k_usd"]
    figures = {
        "dev_cases": ev["cases"],
        "teacher_accuracy": ev["teacher_score"],
        "student_accuracy_merged": ev["student_score"],
        "student_accuracy_gguf": ex["gguf_score"],
        "student_over_teacher": ev["ratio"],
        "gate_passed": ev["passed"],
        "quant": ex["quant"],
        "quant_loss": ex["quant_loss"],
        "gguf_mb": ex["bytes"] / 1e6,
        "tfidf_lr_accuracy": classic["tfidf_lr"]["accuracy"],
        "minilm_lr_accuracy": classic["minilm_lr"]["accuracy"],
        "teacher_cost_per_1k_usd": teacher_per_1k,
        "student_cost_per_1k_usd": student_per_1k,
        "student_cost_share": student_per_1k / teacher_per_1k if teacher_per_1k else None,
        "student_gguf_latency_p50_ms": ex["gguf_latency_p50_ms"],
        "student_merged_latency_p50_ms": ev["student_latency_p50_ms"],
        "train_steps": tr["steps"],
        "train_epochs": tr["epochs"],
        "train_loss_first_last": [tr["losses"][0], tr["final_loss"]],
        "train_s_per_step": tr["train_s"] / max(len(tr["losses"]) - (tr["resumed_from"] or 0), 1),
        "wall_s": {stage: run["wall_s"] for stage, run in runs.items()}
        | {
            "baseline_tfidf": classic["tfidf_lr"]["wall_s"],
            "baseline_minilm": classic["minilm_lr"]["wall_s"],
            "total": time.perf_counter() - started,
        },
        "student_confusion": confusion(
            f"sqlite:///{work / 'bench.db'}", runs["eval"]["result"]["student_run"]
        ),
        "gguf_confusion": confusion(
            f"sqlite:///{work / 'bench.db'}", runs["export"]["id"] + "-gguf"
        ),
        "threads": threads,
        "workdir": str(work),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    width = max(len(k) for k in figures)
    for k, v in figures.items():
        shown = f"{v:.4f}" if isinstance(v, float) else v
        print(f"{k:<{width}}  {shown}")


if __name__ == "__main__":
    main()
