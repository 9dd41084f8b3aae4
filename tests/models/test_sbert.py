"""The sentence-transformers embedder under load: a request over `max_request_tokens` is refused
before any encoding, a cancelled request starts no further batch, and a small request is not
starved by a big one. The real built-in MiniLM, on PyTorch and on ONNX Runtime."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmforge.core.config import EmbeddingConfig, KBConfig
from llmforge.core.errors import InvalidRequestError
from llmforge.models.sbert import SentenceTransformerEmbedder

pytestmark = pytest.mark.slow

BACKENDS = ["torch", "onnx"]
MODEL_LIMIT = 256  # all-MiniLM-L6-v2's max_seq_length
BATCH = 8
BIG_BATCHES = 40


def long_text(i: int) -> str:
    """Well over MiniLM's 256 tokens, so it is truncated to exactly 256."""
    return f"passage {i}: " + " ".join(f"pump{j} seal valve" for j in range(150))


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


def make(onnx_cache: Path, backend: str, **config: int) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(
        EmbeddingConfig.model_validate(
            {
                "name": "minilm",
                "provider": "sentence-transformers",
                "path": "builtin:all-minilm-l6-v2",
                "backend": backend,
                "onnx_dir": str(onnx_cache),
                **config,
            }
        )
    )


@pytest.fixture(params=BACKENDS)
async def loaded(
    request: pytest.FixtureRequest, onnx_cache: Path
) -> AsyncIterator[tuple[SentenceTransformerEmbedder, float]]:
    """A loaded embedder with batches of 8, and how long one batch of 8 long texts takes."""
    embedder = make(
        onnx_cache,
        request.param,
        batch_size=BATCH,
        max_request_tokens=BATCH * BIG_BATCHES * MODEL_LIMIT,  # the big requests below, just
    )
    try:
        await embedder.load()
        batch = [long_text(i) for i in range(BATCH)]
        await embedder.embed(batch)  # warm up
        start = time.perf_counter()
        await embedder.embed(batch)
        yield embedder, time.perf_counter() - start
    finally:
        await embedder.aclose()


async def test_a_request_over_max_request_tokens_is_refused_naming_count_limit_and_key(
    onnx_cache: Path,
) -> None:
    embedder = make(onnx_cache, "torch", max_request_tokens=2000)
    try:
        texts = [long_text(i) for i in range(8)]  # 8 x 256 after truncation
        with pytest.raises(InvalidRequestError) as caught:
            await embedder.embed(texts)
        error = caught.value
        assert error.http_status == 400
        assert error.param == "input"
        assert "2048 tokens" in error.message
        assert "2000" in error.message
        assert "`max_request_tokens`" in error.message
        assert "'minilm'" in error.message
    finally:
        await embedder.aclose()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_inputs_count_after_truncation_so_a_request_at_the_cap_is_embedded(
    onnx_cache: Path, backend: str
) -> None:
    embedder = make(onnx_cache, backend, max_request_tokens=8 * MODEL_LIMIT)
    try:
        texts = [long_text(i) for i in range(8)]
        result = await embedder.embed(texts)
        assert len(result.vectors) == 8
        assert result.prompt_tokens == 8 * MODEL_LIMIT  # the tokens the model read
        with pytest.raises(InvalidRequestError, match=f"{8 * MODEL_LIMIT + 3} tokens"):
            await embedder.embed([*texts, "x"])  # [CLS] x [SEP]: one input over
    finally:
        await embedder.aclose()


async def test_the_default_cap_refuses_2048_inputs_of_1kb_but_admits_an_ingest_batch(
    onnx_cache: Path,
) -> None:
    embedder = make(onnx_cache, "torch")
    try:
        kilobyte = ("The water pump needs new seals every two thousand hours. " * 18)[:1024]
        with pytest.raises(InvalidRequestError, match="max_request_tokens"):
            await embedder.embed([f"{i} {kilobyte}" for i in range(2048)])
        # Ingest sends `kb.batch_chunks` chunks at a time, none longer than the model's limit.
        ingest = asyncio.create_task(
            embedder.embed([long_text(i) for i in range(KBConfig().batch_chunks)])
        )
        done, _ = await asyncio.wait([ingest], timeout=3)
        assert not done, "an ingest-sized request was refused (or ended) instead of encoding"
        ingest.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ingest
    finally:
        await embedder.aclose()


async def test_an_over_cap_request_is_refused_without_waiting_behind_encoding(
    loaded: tuple[SentenceTransformerEmbedder, float],
) -> None:
    embedder, one_batch = loaded
    big = asyncio.create_task(embedder.embed([long_text(i) for i in range(BATCH * BIG_BATCHES)]))
    try:
        await asyncio.sleep(one_batch)
        start = time.perf_counter()
        with pytest.raises(InvalidRequestError):
            await embedder.embed([long_text(i) for i in range(BATCH * BIG_BATCHES + 1)])
        waited = time.perf_counter() - start
        # Counting the tokens is all it waits for, not the ~40 batches of the big request.
        assert waited < 3 * one_batch + 1.0, f"waited {waited:.2f}s; one batch: {one_batch:.2f}s"
        assert not big.done()
    finally:
        big.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await big


async def test_a_small_request_is_answered_between_a_big_requests_batches(
    loaded: tuple[SentenceTransformerEmbedder, float],
) -> None:
    embedder, one_batch = loaded
    big = asyncio.create_task(embedder.embed([long_text(i) for i in range(BATCH * BIG_BATCHES)]))
    try:
        await asyncio.sleep(2 * one_batch)  # the big request is mid-way
        start = time.perf_counter()
        small = await embedder.embed(["where is the pump?"])
        waited = time.perf_counter() - start
        assert len(small.vectors) == 1
        # It waits for the batch(es) running now, not for the ~40 batches still to come.
        assert waited < 4 * one_batch, f"waited {waited:.2f}s; one batch takes {one_batch:.2f}s"
        assert not big.done()
    finally:
        big.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await big


async def test_a_cancelled_request_starts_no_further_batch(
    loaded: tuple[SentenceTransformerEmbedder, float],
) -> None:
    embedder, one_batch = loaded
    big = asyncio.create_task(embedder.embed([long_text(i) for i in range(BATCH * BIG_BATCHES)]))
    await asyncio.sleep(2 * one_batch)
    big.cancel()  # what the gateway does when the client hangs up
    with pytest.raises(asyncio.CancelledError):
        await big
    # The next call waits at most for the batches that were already running.
    start = time.perf_counter()
    await embedder.embed(["is anyone there?"])
    waited = time.perf_counter() - start
    assert waited < 4 * one_batch, f"waited {waited:.2f}s; one batch takes {one_batch:.2f}s"
    # And the process goes idle: nothing of the cancelled request runs in the background.
    await asyncio.sleep(one_batch)
    cpu = time.process_time()
    await asyncio.sleep(4 * one_batch)
    busy = time.process_time() - cpu
    assert busy < one_batch, f"{busy:.2f}s of CPU in {4 * one_batch:.2f}s after cancelling"
