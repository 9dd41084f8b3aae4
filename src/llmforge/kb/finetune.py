"""Contrastive fine-tuning of a sentence-transformers embedder on (query, positive, negative)
triplets, on the CPU, in a few hundred steps at most.

The loss is sentence-transformers' MultipleNegativesRankingLoss: each query against every positive
and hard negative of its batch. To fit a 2-core budget, the token embeddings and the lower layers
stay frozen (`train_layers`: only the top ones learn; the backward pass then stops early), and
texts are cut to `max_seq_length` tokens during training (the saved model keeps its own limit).
A `threading.Event` stops the loop between steps (a tune cancelled or interrupted); nothing is
saved then. Weights are read from a local folder and written to another; nothing is downloaded.
This module does not pick the triplets or judge the result.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge.core.errors import LLMForgeError


class TuneCancelled(LLMForgeError):
    """The tune was stopped before it finished; nothing it made is in use."""


@dataclass(frozen=True)
class Triplet:
    query: str
    positive: str
    negative: str | None


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int = 120
    batch: int = 16
    lr: float = 3e-5
    warmup: float = 0.1
    max_seq_length: int = 128
    train_layers: int = 2
    seed: int = 0


@dataclass(frozen=True)
class FinetuneResult:
    steps: int
    first_loss: float
    last_loss: float
    seconds: float


def finetune(
    source: Path,
    out: Path,
    triplets: Sequence[Triplet],
    settings: FinetuneSettings,
    *,
    stop: threading.Event | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Train a copy of the model in `source` on `triplets` and save it to `out`."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    model = SentenceTransformer(str(source), device="cpu", local_files_only=True)
    saved_limit = model.max_seq_length
    model.max_seq_length = min(saved_limit or settings.max_seq_length, settings.max_seq_length)
    trainable = _freeze_below(model, settings.train_layers)
    loss_fn = MultipleNegativesRankingLoss(model)
    optimiser = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.01)
    warmup = max(1, int(settings.steps * settings.warmup))
    decay = max(1, settings.steps - warmup)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / warmup, max(0.0, (settings.steps - s) / decay))
    )
    with_negatives = all(t.negative is not None for t in triplets)
    order: list[int] = []
    first = last = 0.0
    model.train()
    for step in range(settings.steps):
        if stop is not None and stop.is_set():
            raise TuneCancelled("The tune was cancelled while fine-tuning the embedder.")
        if len(order) < settings.batch:
            order += rng.sample(range(len(triplets)), len(triplets))
        batch = _distinct_positives([triplets[i] for i in order[: settings.batch * 2]])
        batch = batch[: settings.batch]
        del order[: settings.batch]
        columns = [[t.query for t in batch], [t.positive for t in batch]]
        if with_negatives:
            columns.append([t.negative or "" for t in batch])
        features = [model.preprocess(c) for c in columns]
        loss = loss_fn(features, None)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        value = float(loss.detach())
        first = value if step == 0 else first
        last = value
        if on_step:
            on_step(step + 1, value)
    model.eval()
    model.max_seq_length = saved_limit
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    return FinetuneResult(settings.steps, first, last, time.perf_counter() - started)


def _distinct_positives(batch: list[Triplet]) -> list[Triplet]:
    """In-batch negatives must not be another copy of a query's own positive."""
    seen: set[str] = set()
    out = []
    for t in batch:
        if t.positive not in seen:
            seen.add(t.positive)
            out.append(t)
    return out


def _freeze_below(model: Any, train_layers: int) -> list[Any]:
    """Freeze everything but the top `train_layers` transformer layers (and the pooler); return
    the parameters left to train. A model whose layers cannot be found trains whole."""
    params = list(model.parameters())
    layers = _encoder_layers(model)
    if layers is None or train_layers >= len(layers):
        return params
    for p in params:
        p.requires_grad_(False)
    keep = [p for layer in layers[len(layers) - train_layers :] for p in layer.parameters()]
    for p in keep:
        p.requires_grad_(True)
    return keep


def _encoder_layers(model: Any) -> list[Any] | None:
    transformer = model[0]
    auto = getattr(transformer, "auto_model", None)
    encoder = getattr(auto, "encoder", None)
    layers = getattr(encoder, "layer", None)
    return list(layers) if layers is not None else None
