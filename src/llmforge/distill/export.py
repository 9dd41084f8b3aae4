"""Export: merge the adapter, write a GGUF, quantize it, check it, register it.

    merged HF folder -> convert_hf_to_gguf.py (f16) -> llama_model_quantize (e.g. Q8_0)
                     -> loaded by the llamacpp backend, scored on the test split
                     -> registered as the next version of the distilled model, with its lineage

The converter is llama.cpp's own script from the same llama-cpp-python release that serves the
file (its sdist's `vendor/llama.cpp`, cached by `make converter`), and the quantizer is that
release's `llama_model_quantize`; both run in child processes, so a crash or their chatter stays
out of this one and a failure is reported with the tail of their output. The GGUF must score
within `max_quant_loss` of the merged model (the quantization loss is reported either way).

Registration is the last step and a single transaction: until then nothing a gateway serves has
changed, so a failed export (converter error, crash, a file that does not load or scores too low)
leaves the previous version serving. It is recorded as a `failed` version with its reason.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel, Field

from llmforge.core.config import ModelConfig
from llmforge.core.errors import ConfigError, ModelError
from llmforge.distill.student import file_sha256, load_student

CONVERTER = "convert_hf_to_gguf.py"
CACHE = "~/.cache/llmforge"
CONVERTER_DEPS = "~/.cache/llmforge/converter-deps"  # its sentencepiece (`make converter`)
FTYPES = {
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}
QUANTIZE = """
import ctypes, sys
import llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, sys.argv[3])
params.nthread = int(sys.argv[4])
src, dst = sys.argv[1].encode(), sys.argv[2].encode()
rc = llama_cpp.llama_model_quantize(src, dst, ctypes.byref(params))
sys.exit(1 if rc else 0)
"""
TAIL_CHARS = 1500


class ExportResult(BaseModel):
    model: str
    version: int
    path: str | None = None
    sha256: str | None = None
    quant: str
    bytes: int = 0
    merged_score: float | None = Field(None, description="the merged model on the test split")
    gguf_score: float | None = None
    quant_loss: float | None = Field(None, description="merged score - GGUF score")
    gguf_latency_p50_ms: float | None = None
    status: str = "active"
    error: str | None = None


def llama_cpp_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("GGUF export needs llama-cpp-python; run `make install`.") from None


def converter_dir(configured: str | None) -> Path:
    """The folder with llama.cpp's converter and gguf-py, checked: `distill.converter_dir`, else
    the llama-cpp-python sdist that `make llama-src` unpacks."""
    version = llama_cpp_version()
    folder = Path(
        configured or f"{CACHE}/sdist/llama_cpp_python-{version}/vendor/llama.cpp"
    ).expanduser()
    if not (folder / CONVERTER).is_file() or not (folder / "gguf-py").is_dir():
        raise ConfigError(
            f"llama.cpp's converter is not in '{folder}'. Run `make converter` (it unpacks the "
            f"llama-cpp-python {version} sdist, whose vendor/llama.cpp holds {CONVERTER} and "
            "gguf-py, and installs the converter's sentencepiece), or set distill.converter_dir."
        )
    return folder


def merge(base: Path, adapter: Path, out: Path) -> Path:
    """The base with the adapter merged in, saved as an HF folder."""
    model, tokenizer = load_student(base, adapter)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def convert(merged: Path, out: Path, converter: Path) -> Path:
    """An f16 GGUF of the merged folder, by llama.cpp's converter (child process)."""
    paths = [converter / "gguf-py", converter, Path(CONVERTER_DEPS).expanduser()]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(p) for p in paths if p.is_dir()),
        "NO_LOCAL_GGUF": "",
    }
    _child(
        [
            sys.executable,
            str(converter / CONVERTER),
            str(merged),
            "--outfile",
            str(out),
            "--outtype",
            "f16",
        ],
        env,
        "convert_hf_to_gguf.py",
    )
    if not out.is_file():
        raise ModelError(f"the converter wrote no file at '{out}'")
    return out


def quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> Path:
    """`src` quantized to `quant` (f16: copied), by llama_model_quantize (child process)."""
    if quant == "f16":
        shutil.copyfile(src, dst)
        return dst
    n = str(threads or os.cpu_count() or 1)
    _child([sys.executable, "-c", QUANTIZE, str(src), str(dst), FTYPES[quant], n], None, "quantize")
    if not dst.is_file():
        raise ModelError(f"llama_model_quantize wrote no file at '{dst}'")
    return dst


def gguf_config(
    name: str, path: Path, context_length: int, threads: int | None = None
) -> ModelConfig:
    return ModelConfig(
        name=name,
        provider="llamacpp",
        path=str(path),
        context_length=context_length,
        threads=threads,
    )


def install(tmp: Path, final: Path) -> tuple[str, int]:
    """Move the checked file to where it will be served from; (sha256, size)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    return file_sha256(final), final.stat().st_size


def _child(cmd: list[str], env: dict[str, str] | None, what: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ModelError(f"{what} could not run: {e}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout or "")[-TAIL_CHARS:].strip()
        raise ModelError(f"{what} failed (exit {done.returncode}): {tail}")
