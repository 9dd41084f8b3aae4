"""Sentence-transformers embedders (any local sentence-transformers folder;
`builtin:all-minilm-l6-v2`).

Weights load from the local folder only (`local_files_only`), on first use, on a worker thread;
encoding runs on that thread too so the event loop stays free. Vectors are L2-normalised, as cosine
search expects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llmforge.core.config import EmbeddingConfig
from llmforge.core.errors import ConfigError
from llmforge.core.types import Embeddings
from llmforge.models.builtin import resolve


class SentenceTransformerEmbedder:
    def __init__(self, config: EmbeddingConfig) -> None:
        if not config.path:
            raise ConfigError(
                f"embedding '{config.name}': provider sentence-transformers needs `path`"
            )
        self.name = config.name
        self._spec = config.path
        self._batch_size = config.batch_size
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"embed-{config.name}")
        self._model: Any = None

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._ensure_loaded)

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._embed, list(texts)
        )

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _ensure_loaded(self) -> Any:
        if self._model is None:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # no "Loading weights" bars in the server's log

            path = resolve(self._spec, what="embedding model")
            try:
                self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
            except (OSError, ValueError) as e:
                raise ConfigError(f"embedding '{self.name}': cannot load '{path}': {e}") from None
        return self._model

    def _embed(self, texts: list[str]) -> Embeddings:
        model = self._ensure_loaded()
        vectors = model.encode(
            texts,
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        tokens = sum(len(ids) for ids in model.tokenizer(texts)["input_ids"]) if texts else 0
        return Embeddings(vectors=vectors.tolist(), prompt_tokens=tokens)


def create(config: EmbeddingConfig) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(config)
