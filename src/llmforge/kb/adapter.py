"""The query adapter: a linear map applied to query vectors only, fitted on synthetic queries.

The chunks' vectors stay as they are (nothing is re-embedded); a query's vector becomes
`normalise(q @ W)`. `W` starts at the identity and is fitted with the contrastive loss of
sentence-transformers' MultipleNegativesRankingLoss (cosine similarity times 20, cross-entropy
over the batch's positives and its hard negatives), pulled back towards the identity so it moves
only as far as the data asks. Fitting runs on precomputed vectors: a few seconds of CPU for a
thousand queries. This module does not generate queries or decide whether the adapter is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmforge.core.types import Embeddings
from llmforge.models.base import Embedder

SCALE = 20.0


def fit(
    queries: np.ndarray,
    positives: np.ndarray,
    negatives: np.ndarray | None,
    *,
    steps: int = 300,
    batch: int = 64,
    lr: float = 1e-3,
    pull: float = 1e-2,
    seed: int = 0,
) -> np.ndarray:
    """W (d x d) mapping query vectors so each lands nearest its positive. `queries`,
    `positives` (and `negatives`, one per query, optional) are row-aligned unit vectors."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    p = torch.from_numpy(np.ascontiguousarray(positives, dtype=np.float32))
    n = (
        torch.from_numpy(np.ascontiguousarray(negatives, dtype=np.float32))
        if negatives is not None
        else None
    )
    dim = q.shape[1]
    delta = torch.zeros(dim, dim, requires_grad=True)
    eye = torch.eye(dim)
    optimiser = torch.optim.Adam([delta], lr=lr)
    size = min(batch, q.shape[0])
    for _ in range(steps):
        rows = torch.randperm(q.shape[0], generator=generator)[:size]
        mapped = torch.nn.functional.normalize(q[rows] @ (eye + delta), dim=1)
        targets = p[rows] if n is None else torch.cat([p[rows], n[rows]])
        logits = SCALE * mapped @ targets.T
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(size))
        loss = loss + pull * (delta**2).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return (eye + delta).detach().numpy().astype(np.float32)


def apply(vectors: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    mapped = vectors @ matrix
    norms = np.linalg.norm(mapped, axis=1, keepdims=True)
    return (mapped / np.maximum(norms, 1e-12)).astype(np.float32)


def save(path: Path, matrix: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.save(f, matrix)


def load(path: Path) -> np.ndarray:
    return np.load(path).astype(np.float32)


class AdaptedEmbedder:
    """An embedder for queries: the wrapped embedder's vectors mapped by the adapter."""

    def __init__(self, inner: Embedder, matrix: np.ndarray) -> None:
        self._inner = inner
        self._matrix = matrix

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        embedded = await self._inner.embed(texts)
        if not embedded.vectors:
            return embedded
        mapped = apply(np.asarray(embedded.vectors, dtype=np.float32), self._matrix)
        return Embeddings(vectors=mapped.tolist(), prompt_tokens=embedded.prompt_tokens)

    async def aclose(self) -> None:
        """The wrapped embedder is shared; whoever made it closes it."""
