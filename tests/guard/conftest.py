"""Fixtures for the guard tests: one ONNX export of MiniLM for the session, and the embedding
config that uses it (the encoder the built-in injection head was trained on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


def guard_minilm(onnx_cache: Path) -> dict[str, Any]:
    return {
        "name": "guard-minilm",
        "provider": "sentence-transformers",
        "path": "builtin:all-minilm-l6-v2",
        "backend": "onnx",
        "quantize": "int8",
        "onnx_dir": str(onnx_cache),
    }
