"""The knowledge base's default embedder: MiniLM exported to ONNX (int8) from the local weights,
cached and reused, and close to the PyTorch vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmforge.core.config import EmbeddingConfig
from llmforge.core.errors import ConfigError
from llmforge.models.sbert import SentenceTransformerEmbedder

pytestmark = pytest.mark.slow

TEXTS = [
    "The water pump needs new seals every two thousand hours.",
    "Tomatoes need full sun and regular watering.",
    "知识库支持中文检索。",
    "short",
    "A much longer passage about warranty claims, receipts, serial numbers and the many "
    "conditions under which a manufacturer will repair or replace a defective product.",
]


def embedder(onnx_cache: Path, backend: str, quantize: str = "none") -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(
        EmbeddingConfig(
            name="minilm",
            provider="sentence-transformers",
            path="builtin:all-minilm-l6-v2",
            backend=backend,  # type: ignore[arg-type]
            quantize=quantize,  # type: ignore[arg-type]
            onnx_dir=str(onnx_cache),
        )
    )


async def vectors(e: SentenceTransformerEmbedder) -> np.ndarray:
    try:
        result = await e.embed(TEXTS)
        assert result.prompt_tokens > len(TEXTS)
        return np.array(result.vectors)
    finally:
        await e.aclose()


async def test_onnx_vectors_match_torch_and_int8_stays_close(onnx_cache: Path) -> None:
    torch_v = await vectors(embedder(onnx_cache, "torch"))
    onnx_v = await vectors(embedder(onnx_cache, "onnx"))
    int8_v = await vectors(embedder(onnx_cache, "onnx", "int8"))
    assert np.allclose(np.linalg.norm(int8_v, axis=1), 1.0, atol=1e-5)
    assert (onnx_v * torch_v).sum(axis=1).min() > 0.9999  # same model, same pooling
    assert (int8_v * torch_v).sum(axis=1).mean() > 0.98
    # results come back in input order even though batches run shortest first
    assert int(np.argmax(int8_v @ torch_v[2])) == 2


async def test_the_onnx_export_is_cached_and_reused(onnx_cache: Path) -> None:
    await vectors(embedder(onnx_cache, "onnx", "int8"))
    exports = sorted(onnx_cache.rglob("*.onnx"))
    assert [p.name for p in exports] == ["model.onnx", "model_int8.onnx"]
    stamps = [p.stat().st_mtime_ns for p in exports]
    await vectors(embedder(onnx_cache, "onnx", "int8"))
    assert [p.stat().st_mtime_ns for p in sorted(onnx_cache.rglob("*.onnx"))] == stamps
    assert not list(onnx_cache.rglob("*.tmp"))


def test_int8_needs_the_onnx_backend() -> None:
    with pytest.raises(ConfigError, match="quantize: int8 needs backend: onnx"):
        SentenceTransformerEmbedder(
            EmbeddingConfig(name="m", provider="sentence-transformers", path="x", quantize="int8")
        )
