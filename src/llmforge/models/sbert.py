"""Sentence-transformers embedders (any local sentence-transformers folder;
`builtin:all-minilm-l6-v2`), run through PyTorch or ONNX Runtime.

Weights load from the local folder only (`local_files_only`), on first use, on a worker thread;
encoding runs on that thread too so the event loop stays free. Vectors are L2-normalised, as cosine
search expects. Texts are encoded shortest first in batches (less padding) and returned in input
order.

`backend: onnx` exports the local weights once to ONNX (PyTorch's exporter) into a cache folder
under `onnx_dir`, keyed by the weights file, and reuses that export afterwards; `quantize: int8`
adds a dynamically quantized copy (per-channel int8 weights of the MatMuls, ONNX Runtime's
quantizer). The ONNX path tokenizes with the folder's `tokenizer.json` and applies the folder's
pooling (mean, CLS or max) itself. sentence-transformers' own `backend="onnx"` is not used: it needs
optimum-onnx, whose releases require transformers < 4.58 (we run 5.x). Nothing is ever downloaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from llmforge.core.config import EmbeddingConfig
from llmforge.core.errors import ConfigError
from llmforge.core.types import Embeddings
from llmforge.models.builtin import resolve

ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Encoder(Protocol):
    def encode(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """L2-normalised vectors in input order, and the number of tokens read."""
        ...

    def close(self) -> None: ...


class SentenceTransformerEmbedder:
    def __init__(self, config: EmbeddingConfig) -> None:
        if not config.path:
            raise ConfigError(
                f"embedding '{config.name}': provider sentence-transformers needs `path`"
            )
        if config.quantize != "none" and config.backend != "onnx":
            raise ConfigError(
                f"embedding '{config.name}': quantize: {config.quantize} needs backend: onnx"
            )
        self.name = config.name
        self._config = config
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"embed-{config.name}")
        self._encoder: _Encoder | None = None

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._ensure_loaded)

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._embed, list(texts)
        )

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._encoder is not None:
            self._encoder.close()

    def _ensure_loaded(self) -> _Encoder:
        if self._encoder is None:
            path = resolve(self._config.path or "", what="embedding model")
            try:
                self._encoder = _ENCODERS[self._config.backend](path, self._config)
            except (OSError, ValueError, RuntimeError) as e:
                raise ConfigError(f"embedding '{self.name}': cannot load '{path}': {e}") from None
        return self._encoder

    def _embed(self, texts: list[str]) -> Embeddings:
        if not texts:
            return Embeddings(vectors=[], prompt_tokens=0)
        vectors, tokens = self._ensure_loaded().encode(texts)
        return Embeddings(vectors=vectors.tolist(), prompt_tokens=tokens)


class _TorchEncoder:
    """sentence-transformers on PyTorch (its `encode` already batches shortest first)."""

    def __init__(self, path: Path, config: EmbeddingConfig) -> None:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bars in the server's log
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self._batch_size = config.batch_size

    def encode(self, texts: list[str]) -> tuple[np.ndarray, int]:
        vectors = self._model.encode(
            texts,
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        tokens = sum(len(ids) for ids in self._model.tokenizer(texts)["input_ids"])
        return np.asarray(vectors, dtype=np.float32), tokens

    def close(self) -> None:
        return None


class _OnnxEncoder:
    """The folder's transformer exported to ONNX, run by ONNX Runtime; pooling done here."""

    def __init__(self, path: Path, config: EmbeddingConfig) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ValueError("backend onnx needs the folder's tokenizer.json; use backend torch")
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.enable_truncation(_max_seq_length(path))
        self._tokenizer.no_padding()
        self._pooling = _pooling_mode(path)
        self._batch_size = config.batch_size
        model_file = export_onnx(path, Path(config.onnx_dir), quantize=config.quantize)
        options = ort.SessionOptions()
        # Batches run side by side, one core each, rather than one batch over every core: a
        # MiniLM-sized batch splits poorly across threads (on 2 cores, 2 concurrent calls of a
        # single-threaded session embed ~1.3x more passages/s than 1 call using both cores).
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        workers = _threads()
        self._pool = ThreadPoolExecutor(workers, "llmforge-onnx") if workers > 1 else None
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(model_file), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs()]

    def encode(self, texts: list[str]) -> tuple[np.ndarray, int]:
        encodings = self._tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        batches = [order[i : i + self._batch_size] for i in range(0, len(order), self._batch_size)]

        def run(batch: list[int]) -> np.ndarray:
            width = max(len(encodings[i].ids) for i in batch)
            ids = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            types = np.zeros_like(ids)
            for row, i in enumerate(batch):
                e = encodings[i]
                ids[row, : len(e.ids)] = e.ids
                mask[row, : len(e.ids)] = 1
                types[row, : len(e.ids)] = e.type_ids
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            hidden = self._session.run(None, {k: feeds[k] for k in self._inputs})[0]
            return _pool(hidden, mask, self._pooling)

        if self._pool is not None and len(batches) > 1:
            pooled = list(self._pool.map(run, batches))
        else:
            pooled = [run(b) for b in batches]
        out = np.zeros((len(texts), pooled[0].shape[1] if pooled else 0), dtype=np.float32)
        for batch, vectors in zip(batches, pooled, strict=True):
            out[batch] = vectors
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.clip(norms, 1e-12, None), sum(len(e.ids) for e in encodings)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


_ENCODERS: dict[str, type[_TorchEncoder] | type[_OnnxEncoder]] = {
    "torch": _TorchEncoder,
    "onnx": _OnnxEncoder,
}


def export_onnx(path: Path, cache_dir: Path, *, quantize: str = "none") -> Path:
    """The ONNX file for the weights in `path` (int8-quantized when asked), exported on first use.

    Exports land in `cache_dir/<folder>-<key>/` where the key hashes the weights file's path, size
    and modification time, so changed weights get a fresh export. Files are written under a
    temporary name and renamed, so a killed export never leaves a broken file behind."""
    weights = next(
        (path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()),
        None,
    )
    if weights is None:
        raise ValueError("no model.safetensors or pytorch_model.bin to export to ONNX")
    stat = weights.stat()
    key = hashlib.sha256(
        f"{weights.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    ).hexdigest()[:12]
    folder = cache_dir.expanduser() / f"{path.name}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "model.onnx"
    if not fp32.is_file():
        _atomic(fp32, lambda tmp: _export_fp32(path, tmp))
    if quantize == "none":
        return fp32
    int8 = folder / "model_int8.onnx"
    if not int8.is_file():
        _atomic(int8, lambda tmp: _quantize_int8(fp32, tmp))
    return int8


def _atomic(target: Path, write: Any) -> None:
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=target.stem, suffix=".onnx.tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _export_fp32(path: Path, target: Path) -> None:
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(
        str(path), local_files_only=True, attn_implementation="eager"
    ).eval()
    accepted = inspect.signature(model.forward).parameters
    names = [n for n in ONNX_INPUTS if n in accepted]

    class _LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, tensors, strict=True))).last_hidden_state

    dummy = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LastHidden(),
            dummy,
            str(target),
            dynamo=False,
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
        )


def _quantize_int8(fp32: Path, target: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    def quiet(record: logging.LogRecord) -> bool:  # the quantizer's "run pre-processing" hint
        return "pre-processing" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        # Per-channel weights keep cosine similarity to fp32 above 0.99 on MiniLM; per-tensor
        # drops it to about 0.94.
        quantize_dynamic(
            str(fp32),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
        )
    finally:
        root.removeFilter(quiet)


def _max_seq_length(path: Path) -> int:
    for name, key in (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
    ):
        file = path / name
        if file.is_file():
            value = json.loads(file.read_text(encoding="utf-8")).get(key)
            if isinstance(value, int) and 0 < value < 100_000:
                return value
    return 512


def _pooling_mode(path: Path) -> str:
    modules = path / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            if module.get("type", "").endswith("Pooling"):
                config = path / module.get("path", "") / "config.json"
                if config.is_file():
                    cfg = json.loads(config.read_text(encoding="utf-8"))
                    if cfg.get("pooling_mode_cls_token") or cfg.get("pooling_mode") == "cls":
                        return "cls"
                    if cfg.get("pooling_mode_max_tokens") or cfg.get("pooling_mode") == "max":
                        return "max"
    return "mean"


def _pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    if mode == "cls":
        return np.asarray(hidden[:, 0], dtype=np.float32)
    m = mask[..., None].astype(np.float32)
    if mode == "max":
        return np.asarray(np.where(m > 0, hidden, -1e9).max(axis=1), dtype=np.float32)
    return np.asarray((hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None), np.float32)


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def create(config: EmbeddingConfig) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(config)
