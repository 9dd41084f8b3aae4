"""The `cross-encoder` reranker: a sentence-transformers `CrossEncoder` loaded from a local folder.

Weights load on first use, on the reranker's own worker thread, where scoring runs too (the event
loop stays free). Nothing is downloaded: the path must be a local folder (or `builtin:NAME`).
Scores are the model's raw relevance logits: only their order matters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llmforge.core.config import RerankerConfig
from llmforge.core.errors import ConfigError
from llmforge.models.builtin import resolve


class CrossEncoderReranker:
    def __init__(self, config: RerankerConfig) -> None:
        self._config = config
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rerank")
        self._model: Any = None

    async def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._score, query, list(texts)
        )

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _score(self, query: str, texts: list[str]) -> list[float]:
        if self._model is None:
            from sentence_transformers import CrossEncoder
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            path = resolve(self._config.path, what="reranker")
            try:
                self._model = CrossEncoder(str(path), device="cpu", local_files_only=True)
            except (OSError, ValueError) as e:
                raise ConfigError(f"kb.reranker: cannot load '{path}': {e}") from None
        scores = self._model.predict(
            [(query, t) for t in texts],
            batch_size=self._config.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return [float(s) for s in scores]


def create(config: RerankerConfig) -> CrossEncoderReranker:
    return CrossEncoderReranker(config)
