"""llmforge.yaml loading: defaults, the lookup order, environment overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmforge.core.errors import ConfigError
from llmforge.core.settings import load_settings


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_run_offline_with_the_builtin_models() -> None:
    s = load_settings()
    assert [(m.name, m.provider, m.path) for m in s.models] == [
        ("local", "llamacpp", "builtin:smollm2")
    ]
    assert s.embeddings[0].path == "builtin:all-minilm-l6-v2"
    assert s.database.startswith("sqlite:///")
    assert s.config_path is None


def test_file_in_current_folder_is_found(tmp_path: Path) -> None:
    write(tmp_path / "llmforge.yaml", "database: sqlite:///x.db\n")
    assert load_settings().database == "sqlite:///x.db"


def test_env_var_names_the_file_and_env_overrides_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write(tmp_path / "other.yaml", "server: {port: 9100, host: 0.0.0.0}\n")
    monkeypatch.setenv("LLMFORGE_CONFIG", str(cfg))
    monkeypatch.setenv("LLMFORGE_SERVER__PORT", "9200")
    s = load_settings()
    assert (s.server.host, s.server.port) == ("0.0.0.0", 9200)
    assert s.config_path == cfg


def test_the_example_from_the_architecture_validates(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "c.yaml",
        """
database: sqlite:///./.llmforge/llmforge.db
models:
  - name: local
    provider: llamacpp
    path: builtin:smollm2
  - name: gpt-4o
    provider: openai
    base_url: https://api.openai.com/v1
    api_key_env: OPENAI_API_KEY
    timeout_s: 30
    fallbacks: [local]
    price: {input_per_mtok: 2.5, output_per_mtok: 10.0}
embeddings:
  - name: minilm
    provider: sentence-transformers
    path: builtin:all-minilm-l6-v2
""",
    )
    s = load_settings(cfg)
    assert s.model("gpt-4o") is not None
    assert s.model("gpt-4o").price.output_per_mtok == 10.0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "models:\n  - name: a\n    provider: fake\n    pth: x\n",
            "models[0].pth: unknown key (allowed: name, provider, path,",
        ),
        ("models:\n  - name: a\n", "models[0].provider: required key is missing"),
        ("server: {port: high}\n", "server.port:"),
        ("models: [{name: a, provider: fake}, {name: a, provider: fake}]\n", "duplicate name(s) a"),
        ("models: [{name: a, provider: fake, fallbacks: [nope]}]\n", "unknown model(s) nope"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("models: [\n", "is not valid YAML"),
        ("colour: blue\n", "colour: unknown key (allowed: database, server,"),
        (
            "models: [{name: x, provider: fake}]\nembeddings: [{name: x, provider: fake}]\n",
            "x: used for both a chat and an embedding model",
        ),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    cfg = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert str(cfg) in err.value.message
    assert expected in err.value.message


def test_an_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path / "e.yaml", "")).models[0].name == "local"


def test_a_bad_environment_variable_is_blamed_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write(tmp_path / "ok.yaml", "server: {port: 8001}\n")
    monkeypatch.setenv("LLMFORGE_SERVER__PORT", "abc")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert err.value.message.startswith("environment variable LLMFORGE_SERVER__PORT: server.port:")
