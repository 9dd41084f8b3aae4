"""Prompt-injection detection: the guard against classic baselines, on the same split, in one run.

Data (../shared/datasets; skipped with a message when absent): the guard and every trained
baseline learn from the deepset train split plus guard-extra without its held-out sources
(`HOLDOUT_SOURCES` in guard/train.py); figures are reported on deepset `dev.jsonl` only, plus the
false-positive rate on guard-extra's held-out benign prompts (sources nothing trained on) and the
true-positive rate on its held-out indirect (tool-output) injections. Methods:

- **keywords**: `KeywordGuard`'s stock list of injection words (no training);
- **rules**: the injection guard's rules stage alone;
- **tfidf+lr**: scikit-learn TF-IDF (word unigrams, defaults) + logistic regression, and a tuned
  variant (word 1-2-grams, C = 10);
- **minilm+lr**: MiniLM embeddings (the same ONNX int8 encoder the guard uses) + logistic
  regression;
- the two trained baselines again on deepset train alone (`... deepset-only`), the setting where
  they score best on dev, to show what that costs on other benign traffic;
- **guard**: the shipped injection guard as configured by default: rules, then MiniLM embedding +
  character n-gram head with the head's own threshold. Its head is the committed one, whose recipe
  must name these very files (their SHA-256 are checked), or with `--retrain` a head fitted in
  this run by the same recipe (`llmforge guard train`).

Latency is per check, one text at a time on this process (the first stage as the gateway runs
it: rules, tokenize, embed, score), p50/p95 over dev's texts after a warm-up; the baselines' include
their own featurizing (and embedding for minilm+lr).

Run: `.venv/bin/python bench/guard.py [--datasets DIR] [--retrain] [--json]`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmforge.core.config import GuardSpec, ModelConfig
from llmforge.guard import GuardContext
from llmforge.guard.head import InjectionHead
from llmforge.guard.injection import InjectionGuard, builtin_embedder, rule_hit
from llmforge.guard.moderation import KeywordGuard
from llmforge.guard.train import (
    HOLDOUT_SOURCES,
    embed_texts,
    fit_head,
    load_training,
    read_labelled,
)
from llmforge.models import ModelCatalog
from llmforge.models.base import ChatModel, Embedder

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS = ROOT.parent / "shared" / "datasets"


@dataclass
class Split:
    texts: list[str]
    labels: np.ndarray
    emb: np.ndarray


@dataclass
class Result:
    name: str
    accuracy: float
    tpr: float
    fpr: float
    heldout_benign_fpr: float
    heldout_injection_tpr: float
    p50_ms: float
    p95_ms: float


def rates(flags: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    return (
        float((flags == labels).mean()),
        float(flags[labels].mean()),
        float(flags[~labels].mean()),
    )


def timed(check: Callable[[str], object], texts: Sequence[str]) -> tuple[float, float]:
    for text in texts[:10]:
        check(text)
    times = []
    for text in texts:
        start = time.perf_counter()
        check(text)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


def evaluate(
    name: str,
    flag: Callable[[Sequence[str], np.ndarray], np.ndarray],
    dev: Split,
    held: Split,
    check_one: Callable[[str], object],
) -> Result:
    accuracy, tpr, fpr = rates(flag(dev.texts, dev.emb), dev.labels)
    held_flags = flag(held.texts, held.emb)
    p50, p95 = timed(check_one, dev.texts)
    return Result(
        name,
        accuracy,
        tpr,
        fpr,
        float(held_flags[~held.labels].mean()),
        float(held_flags[held.labels].mean()) if held.labels.any() else float("nan"),
        p50,
        p95,
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    deepset = args.datasets / "prompt-injection-deepset"
    extra = args.datasets / "guard-extra" / "train.jsonl"
    files = [deepset / "train.jsonl", extra]
    training = load_training(files)
    dev_rows = read_labelled(deepset / "dev.jsonl")
    held_rows = [r for r in read_labelled(extra) if r.source in HOLDOUT_SOURCES]
    deepset_rows = read_labelled(deepset / "train.jsonl")

    embedder = builtin_embedder(args.onnx_dir)
    print("embedding ...", file=sys.stderr)
    train_emb = await embed_texts(embedder, training.texts)
    dev = Split(
        [r.text for r in dev_rows],
        np.array([r.label == "injection" for r in dev_rows]),
        await embed_texts(embedder, [r.text for r in dev_rows]),
    )
    held = Split(
        [r.text for r in held_rows],
        np.array([r.label == "injection" for r in held_rows]),
        await embed_texts(embedder, [r.text for r in held_rows]),
    )
    y = np.asarray(training.labels)
    loop = asyncio.get_running_loop()

    def embed_one(text: str) -> np.ndarray:
        future = asyncio.run_coroutine_threadsafe(embedder.embed([text]), loop)
        return np.asarray(future.result().vectors[0], dtype=np.float32)

    results: list[Result] = []

    # keyword and rules baselines
    keywords = KeywordGuard(GuardSpec(name="keywords", type="keywords"))
    results.append(
        evaluate(
            "keywords",
            lambda texts, _: np.array([bool(keywords.pattern.search(t)) for t in texts]),
            dev, held, lambda t: keywords.pattern.search(t),
        )
    )  # fmt: skip
    results.append(
        evaluate(
            "rules",
            lambda texts, _: np.array([rule_hit(t) is not None for t in texts]),
            dev, held, rule_hit,
        )
    )  # fmt: skip

    def trained(name: str, texts: list[str], labels: np.ndarray, emb: np.ndarray) -> None:
        tfidf = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=5000))
        tfidf.fit(texts, labels)
        results.append(
            evaluate(
                f"tfidf+lr{name}",
                lambda t, _: tfidf.predict(list(t)).astype(bool),
                dev, held, lambda t: tfidf.predict_proba([t]),
            )
        )  # fmt: skip
        tuned = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2)), LogisticRegression(C=10, max_iter=5000)
        )
        tuned.fit(texts, labels)
        results.append(
            evaluate(
                f"tfidf(1-2)+lr C=10{name}",
                lambda t, _: tuned.predict(list(t)).astype(bool),
                dev, held, lambda t: tuned.predict_proba([t]),
            )
        )  # fmt: skip
        lr = LogisticRegression(max_iter=5000).fit(emb, labels)
        results.append(
            evaluate(
                f"minilm+lr{name}",
                lambda _, e: lr.predict(e).astype(bool),
                dev, held, lambda t: lr.predict_proba(embed_one(t)[None, :]),
            )
        )  # fmt: skip

    await asyncio.to_thread(trained, "", training.texts, y, train_emb)
    deepset_texts = [r.text for r in deepset_rows]
    deepset_emb = train_emb[: len(deepset_rows)]  # the deepset rows come first
    await asyncio.to_thread(
        trained,
        " deepset-only",
        deepset_texts,
        np.array([r.label == "injection" for r in deepset_rows]),
        deepset_emb,
    )

    # the guard: rules, then embedding + n-gram head
    if args.retrain:
        print("fitting the head (5-fold CV for the threshold) ...", file=sys.stderr)
        head_file = await asyncio.to_thread(fit_head, training, train_emb)
        raw = head_file.model_dump_json().encode()
        head = InjectionHead(head_file, hashlib.sha256(raw).hexdigest())
        origin = "fitted in this run"
    else:
        head = InjectionHead.load()
        wanted = {f"{p.parent.name}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in files}  # fmt: skip
        if head.file.recipe.data != wanted:
            raise SystemExit("the shipped head was trained on other files; run with --retrain")
        origin = f"shipped head, sha256 {head.digest[:12]}"
    guard = InjectionGuard(
        GuardSpec(name="injection", type="injection"), GuardContext(embedder=lambda n: embedder)
    )
    guard.head, guard.threshold, guard.embedder = head, head.threshold, embedder

    def guard_flags(texts: Sequence[str], emb: np.ndarray) -> np.ndarray:
        return np.array(
            [
                rule_hit(t) is not None or head.score(t, e) >= head.threshold
                for t, e in zip(texts, emb, strict=True)
            ]
        )

    def guard_check(text: str) -> object:
        return asyncio.run_coroutine_threadsafe(guard.check(text, "input"), loop).result()

    results.append(
        await asyncio.to_thread(evaluate, "guard (rules + head)", guard_flags, dev, held,
                                guard_check)
    )  # fmt: skip
    escalated: dict[str, float] = {}
    if args.second_stage is not None:
        cascade, student = second_stage(args, head, embedder)
        decided: dict[str, str] = {}

        def cascade_flags(texts: Sequence[str], _: np.ndarray) -> np.ndarray:
            flags = []
            for text in texts:
                verdict = asyncio.run_coroutine_threadsafe(cascade.check(text, "input"), loop)
                v = verdict.result()
                decided[text] = v.stage
                flags.append(v.action != "allow")
            return np.array(flags)

        def cascade_check(text: str) -> object:
            return asyncio.run_coroutine_threadsafe(cascade.check(text, "input"), loop).result()

        name = f"guard + second stage ({args.second_stage.name})"
        results.append(
            await asyncio.to_thread(evaluate, name, cascade_flags, dev, held, cascade_check)
        )
        for label, texts in (("dev", dev.texts), ("held benign", held.texts)):
            asked = [decided.get(t) == "second_stage" for t in texts]
            escalated[label] = sum(asked) / len(asked)
        await student.aclose()
    await embedder.aclose()
    return {
        "dev": {"rows": len(dev.texts), "injections": int(dev.labels.sum())},
        "heldout": {
            "sources": list(HOLDOUT_SOURCES),
            "benign": int((~held.labels).sum()),
            "injections": int(held.labels.sum()),
        },
        "training_rows": len(training.texts),
        "head": origin,
        "threshold": head.threshold,
        "band": head.band,
        "escalated": escalated,
        "results": [r.__dict__ for r in results],
    }


def second_stage(
    args: argparse.Namespace, head: InjectionHead, embedder: Embedder
) -> tuple[InjectionGuard, ChatModel]:
    """The guard with a GGUF student as its second stage, over the same head and encoder."""
    config = ModelConfig(
        name="student", provider="llamacpp", path=str(args.second_stage), threads=args.threads
    )
    student = ModelCatalog([config], []).chat("student")
    spec = GuardSpec(name="injection", type="injection", embedding="e", second_stage="student")
    context = GuardContext(embedder=lambda _: embedder, chat=lambda _: student)
    cascade = InjectionGuard(spec, context)
    cascade.head, cascade.threshold = head, head.threshold
    if head.band is not None:
        cascade.band = head.band
    return cascade, student


def show(report: dict[str, Any]) -> None:
    print(
        f"deepset dev: {report['dev']['rows']} rows ({report['dev']['injections']} injections); "
        f"held-out guard-extra: {report['heldout']['benign']} benign, "
        f"{report['heldout']['injections']} injections; trained on {report['training_rows']} rows"
    )
    print(f"guard: {report['head']}, threshold {report['threshold']}")
    head = f"{'method':34} {'acc':>6} {'TPR':>6} {'FPR':>6} {'held FPR':>9} {'held TPR':>9} "
    print(head + f"{'p50 ms':>7} {'p95 ms':>7}")
    if report["escalated"]:
        shares = ", ".join(f"{k} {v:.1%}" for k, v in report["escalated"].items())
        print(f"second stage band {report['band']}: asked about {shares}")
    for r in report["results"]:
        print(
            f"{r['name']:34} {r['accuracy']:6.3f} {r['tpr']:6.3f} {r['fpr']:6.3f} "
            f"{r['heldout_benign_fpr']:9.3f} {r['heldout_injection_tpr']:9.3f} "
            f"{r['p50_ms']:7.2f} {r['p95_ms']:7.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--onnx-dir", type=Path, default=Path(".llmforge/onnx"))
    parser.add_argument("--retrain", action="store_true", help="fit the guard's head in this run")
    parser.add_argument(
        "--second-stage",
        type=Path,
        default=None,
        help="a GGUF student (made with `llmforge distill` on labelled prompts, prompted with "
        "the guard's STUDENT_PROMPT) that decides the texts inside the head's band",
    )
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads of the student")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (args.datasets / "prompt-injection-deepset").is_dir():
        print(f"skipped: {args.datasets}/prompt-injection-deepset is absent", file=sys.stderr)
        sys.exit(0)
    report = asyncio.run(main(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show(report)
