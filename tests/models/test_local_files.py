"""`llmforge models add PATH`: local GGUF files become `models:` entries in the config file, with
the context length and chat template from the file, comments and other keys left as they were."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmforge.core.errors import ConfigError
from llmforge.core.settings import load_settings
from llmforge.models import local_files
from llmforge.models.builtin import resolve

SMOL = resolve("builtin:smollm2")


def add(file: Path, path: Path, **options: object) -> None:
    replace = bool(options.pop("replace", False))
    name = options.pop("name", None)
    entries = [
        local_files.entry(local_files.inspect(f), str(name or local_files.model_name(f)), **options)  # type: ignore[arg-type]
        for f in local_files.gguf_files(path)
    ]
    local_files.add_models(file, entries, replace=replace)


def test_a_gguf_becomes_a_model_with_its_own_context_and_the_defaults_stay(
    tmp_path: Path,
) -> None:
    config = tmp_path / "llmforge.yaml"
    config.write_text("# my settings\nserver:\n  port: 9000  # not the default\n")
    add(config, SMOL, name="small")
    text = config.read_text()
    assert text.startswith("# my settings\nserver:\n  port: 9000  # not the default\n")
    settings = load_settings(config)
    assert [m.name for m in settings.models] == ["local", "small"]  # the built-in stays
    small = settings.models[1]
    assert small.provider == "llamacpp" and Path(small.path or "") == SMOL.resolve()
    assert small.context_length == 8192  # SmolLM2 was trained for 8192
    assert small.threads is None and small.parallel is None  # from the machine, at run time


def test_new_models_join_the_existing_block_and_keep_its_comments(tmp_path: Path) -> None:
    config = tmp_path / "llmforge.yaml"
    config.write_text(
        "models:\n"
        "  # the fake one\n"
        "  - name: fake\n"
        "    provider: fake\n"
        "\n"
        "# embeddings below\n"
        "embeddings: []\n"
    )
    add(config, SMOL, name="small", context_length=1024, parallel=2)
    text = config.read_text()
    assert "  # the fake one\n" in text and "# embeddings below\nembeddings: []\n" in text
    settings = load_settings(config)
    assert [m.name for m in settings.models] == ["fake", "small"]
    assert (settings.models[1].context_length, settings.models[1].parallel) == (1024, 2)


def test_a_taken_name_is_refused_unless_replaced(tmp_path: Path) -> None:
    config = tmp_path / "llmforge.yaml"
    add(config, SMOL, name="small")
    with pytest.raises(ConfigError, match=r"small is already configured.*--replace"):
        add(config, SMOL, name="small")
    add(config, SMOL, name="small", context_length=512, replace=True)
    models = load_settings(config).models
    assert [m.name for m in models] == ["local", "small"] and models[1].context_length == 512


def test_a_folder_adds_each_model_file_named_after_it(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("Tiny-Chat.Q4.gguf", "Other Model.gguf", "big-00001-of-00002.gguf"):
        (folder / name).symlink_to(SMOL)
    (folder / "big-00002-of-00002.gguf").write_bytes(b"second shard")
    (folder / "mmproj-vision.gguf").write_bytes(b"projector")
    config = tmp_path / "llmforge.yaml"
    add(config, folder)
    names = [m.name for m in load_settings(config).models]
    assert sorted(names) == ["big", "local", "other-model", "tiny-chat.q4"]


def test_files_llama_cpp_cannot_read_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf")
    config = tmp_path / "llmforge.yaml"
    with pytest.raises(ConfigError, match="cannot read GGUF"):
        add(config, junk)
    with pytest.raises(ConfigError, match=r"neither a \.gguf file nor a folder"):
        local_files.gguf_files(tmp_path / "missing")
    assert not config.exists()


def test_the_command_writes_the_named_config_and_reports_errors_in_one_line(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMFORGE_")}

    def llmforge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "llmforge", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = llmforge("models", "add", str(SMOL), "--name", "small", "--config", "mine.yaml")
    assert done.returncode == 0, done.stderr
    assert "added small" in done.stdout and "context 8192" in done.stdout
    assert [m.name for m in load_settings(tmp_path / "mine.yaml").models] == ["local", "small"]
    again = llmforge("models", "add", str(SMOL), "--name", "small", "--config", "mine.yaml")
    assert again.returncode != 0 and "already configured" in again.stderr
    assert "Traceback" not in again.stderr
