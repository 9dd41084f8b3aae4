"""Sentence-transformers embedders (any local sentence-transformers folder;
`builtin:all-minilm-l6-v2`), run through PyTorch or ONNX Runtime.

Weights load from the local folder only (`local_files_only`), on first use, on a worker thread;
encoding runs on worker threads too so the event loop stays free. Vectors are L2-normalised, as
cosine search expects. Texts are encoded shortest first in batches of `batch_size` (less padding)
and returned in input order.

One request may hold at most `max_request_tokens` tokens, each input counted after truncation to
the model's input limit; a larger one is refused (`InvalidRequestError`) before anything is
encoded. Counting is the request's one tokenization (the folder's fast tokenizer; the ONNX encoder
reuses it), on a thread apart from the encoding workers, so it never waits behind another
request's encoding. Each batch is its own job on the embedder's
FIFO workers (one for PyTorch, which spreads a batch over every core; one per core for ONNX, whose
single-threaded sessions run batches side by side). A request keeps at most one batch per worker
in flight: a finished job submits the request's next batch from the worker, at the back of the
queue. So a small request's batch runs between a big one's batches instead of after all of them,
and a request whose caller is cancelled (a client that hung up) starts no further batch: the
batches already running finish, the rest never start.

`backend: onnx` exports the local weights once to ONNX (PyTorch's exporter) into a cache folder
under `onnx_dir`, keyed by the weights file, and reuses that export afterwards; `quantize: int8`
adds a dynamically quantized copy (per-channel int8 weights of the MatMuls, ONNX Runtime's
quantizer). The ONNX path tokenizes with the folder's `tokenizer.json` and applies the folder's
pooling (mean, CLS or max) itself. sentence-transformers' own `backend="onnx"` is not used: it needs
optimum-onnx, whose releases require transformers < 4.58 (we run 5.x). Nothing is ever downloaded.
An encoding already running is not interrupted, and no request is split or queued by priority.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from llmforge.core.config import EmbeddingConfig
from llmforge.core.errors import ConfigError, InvalidRequestError
from llmforge.core.types import Embeddings
from llmforge.models.builtin import resolve

if TYPE_CHECKING:
    from tokenizers import Encoding

ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

_Batch = tuple[list[str], list["Encoding"]]  # texts and their encodings


class _Encoder(Protocol):
    def encode(self, texts: list[str], encodings: list[Encoding]) -> np.ndarray:
        """L2-normalised vectors of one batch, in input order: its texts and their encodings (the
        embedder's tokenizer, truncated to the model's limit); each encoder reads what it needs."""
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
        self._lanes = _ENCODERS[config.backend].lanes()
        self._executor = ThreadPoolExecutor(self._lanes, thread_name_prefix=f"embed-{config.name}")
        self._encoder: _Encoder | None = None
        self._tokenizer: _Tokenizer | None = None
        self._loading = threading.Lock()

    async def load(self) -> None:
        await asyncio.to_thread(self._ensure_tokenizer)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._ensure_loaded)

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        texts = list(texts)
        if not texts:
            return Embeddings(vectors=[], prompt_tokens=0)
        encodings = await asyncio.to_thread(self._tokenize, texts)  # not behind others' batches
        lengths = [len(e.ids) for e in encodings]
        tokens = sum(lengths)
        limit = self._config.max_request_tokens
        if tokens > limit:
            raise InvalidRequestError(
                f"This request holds {tokens} tokens in {len(texts)} inputs (each counted up to "
                f"the model's limit of {self._ensure_tokenizer().max_length}), over the "
                f"{limit} one request to embedding '{self.name}' may hold. Send the inputs in "
                f"smaller requests, or raise `max_request_tokens` of '{self.name}' under "
                "`embeddings:` in llmforge.yaml.",
                param="input",
            )
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        size = self._config.batch_size
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        encoded = await self._encode_batches(
            [([texts[i] for i in b], [encodings[i] for i in b]) for b in batches]
        )
        out = np.zeros((len(texts), encoded[0].shape[1]), dtype=np.float32)
        for batch, vectors in zip(batches, encoded, strict=True):
            out[batch] = vectors
        return Embeddings(vectors=out.tolist(), prompt_tokens=tokens)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._encoder is not None:
            self._encoder.close()

    async def _encode_batches(self, batches: list[_Batch]) -> list[np.ndarray]:
        chain = _Chain(self._executor, self._encode, batches, self._lanes)
        try:
            return await chain.done
        finally:
            chain.stop()  # cancelled (or failed): no further batch of this request starts

    def _encode(self, batch: _Batch) -> np.ndarray:
        return self._ensure_loaded().encode(*batch)

    def _tokenize(self, texts: list[str]) -> list[Encoding]:
        return self._ensure_tokenizer().tokenize(texts)

    def _path(self) -> Path:
        return resolve(self._config.path or "", what="embedding model")

    def _ensure_tokenizer(self) -> _Tokenizer:
        if self._tokenizer is None:
            path = self._path()
            try:
                self._tokenizer = _Tokenizer(path)
            except (OSError, ValueError, RuntimeError) as e:
                raise ConfigError(
                    f"embedding '{self.name}': cannot load the tokenizer of '{path}': {e}"
                ) from None
        return self._tokenizer

    def _ensure_loaded(self) -> _Encoder:
        with self._loading:  # two workers may ask at once on first use
            if self._encoder is None:
                path = self._path()
                try:
                    self._encoder = _ENCODERS[self._config.backend](path, self._config)
                except (OSError, ValueError, RuntimeError) as e:
                    raise ConfigError(
                        f"embedding '{self.name}': cannot load '{path}': {e}"
                    ) from None
            return self._encoder


class _Chain:
    """One request's batches as a chain of jobs on the embedder's FIFO workers: one job per
    worker at first, and each job, once its batch is encoded, submits the next one from the worker
    itself, at the back of the queue, so jobs other requests queued meanwhile run first (and no
    worker idles waiting for the event loop). After `stop()` no further batch starts."""

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        encode: Callable[[_Batch], np.ndarray],
        batches: list[_Batch],
        lanes: int,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._executor = executor
        self._encode = encode
        self._batches = batches
        self._results: list[np.ndarray | None] = [None] * len(batches)
        self._lock = threading.Lock()
        self._next = 0
        self._left = len(batches)
        self._stopped = False
        self.done: asyncio.Future[list[np.ndarray]] = self._loop.create_future()
        for _ in range(min(lanes, len(batches))):
            self._submit()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True

    def _submit(self) -> None:
        try:
            job = self._executor.submit(self._job)
        except RuntimeError as e:  # the embedder was closed
            self._end(e)
        else:
            job.add_done_callback(self._withdrawn)

    def _withdrawn(self, job: Future[None]) -> None:
        if job.cancelled():  # the embedder was closed with this job still queued
            self._end(None)

    def _job(self) -> None:
        with self._lock:
            if self._stopped or self._next == len(self._batches):
                return
            index = self._next
            self._next += 1
        try:
            vectors = self._encode(self._batches[index])
        except BaseException as e:
            self._end(e)
            return
        with self._lock:
            if self._stopped:
                return
            self._results[index] = vectors
            self._left -= 1
            finished = self._left == 0
            more = self._next < len(self._batches)
        if finished:
            self._end(None, [v for v in self._results if v is not None])
        elif more:
            self._submit()

    def _end(self, error: BaseException | None, results: list[np.ndarray] | None = None) -> None:
        """Settle `done` from any thread: with the results, the error, or cancelled."""
        with self._lock:
            self._stopped = True

        def settle() -> None:
            if self.done.done():
                return
            if results is not None:
                self.done.set_result(results)
            elif error is not None:
                self.done.set_exception(error)
            else:
                self.done.cancel()

        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody waits any more
            self._loop.call_soon_threadsafe(settle)


class _Tokenizer:
    """The tokens each text gives the model, special tokens included, truncated to its input
    limit: the folder's fast tokenizer (`tokenizer.json`, else the one transformers builds). Safe
    to call from any thread beside the encoders (its settings never change after loading)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        file = path / "tokenizer.json"
        if file.is_file():
            tokenizer = Tokenizer.from_file(str(file))
        else:
            from transformers import AutoTokenizer

            built = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            if not getattr(built, "is_fast", False):
                raise ValueError("counting tokens needs a fast tokenizer (tokenizer.json)")
            tokenizer = Tokenizer.from_str(built.backend_tokenizer.to_str())
        self.max_length = _max_seq_length(path)
        tokenizer.enable_truncation(self.max_length)
        tokenizer.no_padding()
        self._tokenizer = tokenizer

    def tokenize(self, texts: list[str]) -> list[Encoding]:
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets: ~1.4x faster
        encode = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)
        encodings: list[Encoding] = encode(texts)
        return encodings


class _TorchEncoder:
    """sentence-transformers on PyTorch; one batch at a time (a batch already uses every core)."""

    def __init__(self, path: Path, config: EmbeddingConfig) -> None:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bars in the server's log
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)

    @staticmethod
    def lanes() -> int:
        return 1

    def encode(self, texts: list[str], encodings: list[Encoding]) -> np.ndarray:
        vectors = self._model.encode(
            texts,
            batch_size=len(texts),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def close(self) -> None:
        return None


class _OnnxEncoder:
    """The folder's transformer exported to ONNX, run by ONNX Runtime on the embedder's
    encodings; pooling done here."""

    def __init__(self, path: Path, config: EmbeddingConfig) -> None:
        import onnxruntime as ort

        if not (path / "tokenizer.json").is_file():
            raise ValueError("backend onnx needs the folder's tokenizer.json; use backend torch")
        self._pooling = _pooling_mode(path)
        model_file = export_onnx(path, Path(config.onnx_dir), quantize=config.quantize)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # see `lanes`
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(model_file), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs()]

    @staticmethod
    def lanes() -> int:
        """Batches run side by side, one core each, rather than one batch over every core: a
        MiniLM-sized batch splits poorly across threads (on 2 cores, 2 concurrent calls of a
        single-threaded session embed ~1.3x more passages/s than 1 call using both cores)."""
        return _threads()

    def encode(self, texts: list[str], encodings: list[Encoding]) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
            types[row, : len(e.ids)] = e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        hidden = self._session.run(None, {k: feeds[k] for k in self._inputs})[0]
        pooled = _pool(hidden, mask, self._pooling)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.clip(norms, 1e-12, None), dtype=np.float32)

    def close(self) -> None:
        return None


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
