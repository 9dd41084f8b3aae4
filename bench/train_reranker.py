"""Train a cross-encoder on a retrieval set's own pseudo queries (no labels), for `--reranker`.

The experiment behind bench/README.md's DBpedia-entity row "a cross-encoder trained on the corpus's
pseudo queries": could `kb tune` train a reranker from the corpus alone, as it fits fusion or
fine-tunes the embedder? The built-in MiniLM-L6 weights get a fresh one-logit head and learn, with
binary cross-entropy, to score (query, passage) pairs: the tune's own pseudo queries (title and
sentence-span queries from `kb/queries.py`) of `--docs` sampled documents against their passage,
and against `--negatives` BM25 hard negatives each. The folder it writes loads through
`kb.reranker` (`CrossEncoderReranker`), so measure it with

    .venv/bin/python bench/retrieval.py --dataset DIR --reranker OUT --skip-llamaindex

next to the same command without `--reranker` (the same-run anchor). Takes about 8 minutes for
1,000 documents on 2 idle cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

from llmforge.kb.queries import PseudoQueries
from llmforge.kb.types import Chunk
from llmforge.models.builtin import resolve

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "beir-dbpedia-entity-5k"


def corpus_chunks(dataset: Path) -> list[Chunk]:
    chunks = []
    with (dataset / "corpus.jsonl").open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            doc = json.loads(line)
            chunks.append(
                Chunk(
                    id=str(i),
                    text=doc["text"],
                    source=f"/corpus/{i}.txt",
                    title=doc.get("title") or "",
                    file_type="txt",
                    chunk_index=0,
                    content_hash=str(i),
                )
            )
    return chunks


def training_pairs(
    chunks: list[Chunk], docs: int, negatives: int, rng: random.Random
) -> list[tuple[str, str, float]]:
    import bm25s

    texts = [c.indexed_text() for c in chunks]
    sample = rng.sample(chunks, min(docs, len(chunks)))
    queries = asyncio.run(PseudoQueries().generate(sample, rng))
    index = bm25s.BM25()
    index.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    hits, _ = index.retrieve(
        bm25s.tokenize([q.text for q in queries], stopwords="en", show_progress=False),
        k=negatives + 9,
        show_progress=False,
    )
    pairs = []
    for query, found in zip(queries, hits, strict=True):
        pairs.append((query.text, query.positive, 1.0))
        others = [int(h) for h in found if str(int(h)) != query.chunk_id][: negatives + 5]
        pairs += [
            (query.text, texts[n], 0.0) for n in rng.sample(others, min(negatives, len(others)))
        ]
    rng.shuffle(pairs)
    print(f"{len(queries)} pseudo queries, {len(pairs)} pairs", file=sys.stderr)
    return pairs


def train(pairs: list[tuple[str, str, float]], args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    folder = resolve("builtin:all-minilm-l6-v2")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    total = len(pairs) // args.batch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 50) * max(0.0, 1 - s / max(1, total))
    )
    model.train()
    started = time.perf_counter()
    for step in range(total):
        batch = pairs[step * args.batch : (step + 1) * args.batch]
        tokens = tokenizer(
            [p[0] for p in batch],
            [p[1] for p in batch],
            truncation="only_second",
            max_length=args.max_length,
            padding=True,
            return_tensors="pt",
        )
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(**tokens).logits.squeeze(-1), torch.tensor([p[2] for p in batch])
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 50 == 0 or step + 1 == total:
            elapsed = time.perf_counter() - started
            print(
                f"  step {step + 1}/{total}, loss {loss.item():.3f}, {elapsed:.0f} s",
                file=sys.stderr,
            )
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the model to")
    parser.add_argument("--docs", type=int, default=1000, help="documents to write queries for")
    parser.add_argument("--negatives", type=int, default=3, help="BM25 hard negatives per query")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=4e-5)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.dataset / "corpus.jsonl").is_file():
        print(f"skipped: no corpus.jsonl under {args.dataset}")
        return
    pairs = training_pairs(
        corpus_chunks(args.dataset), args.docs, args.negatives, random.Random(args.seed)
    )
    train(pairs, args)
    print(f"wrote {args.out}; measure it with bench/retrieval.py --reranker {args.out}")


if __name__ == "__main__":
    main()
