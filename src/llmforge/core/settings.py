"""The one settings object: `llmforge.yaml` plus `LLMFORGE_*` environment overrides.

`load_settings(path)` is called once by the CLI callback or by whoever builds the app, and the
result is passed down; nothing reads settings from module globals. Lookup of the file: the explicit
path, else `$LLMFORGE_CONFIG`, else `./llmforge.yaml` if present, else built-in defaults (offline,
no file needed). Environment variables beat the file: `LLMFORGE_DATABASE=...`,
`LLMFORGE_SERVER__PORT=9000`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from llmforge.core.config import (
    DEFAULT_EMBEDDINGS,
    DEFAULT_MODELS,
    AgentsConfig,
    AuditConfig,
    CacheConfig,
    DistillConfig,
    EmbeddingConfig,
    GuardConfig,
    KBConfig,
    ModelConfig,
    ObservabilityConfig,
    RouterConfig,
    ServerConfig,
    TracesConfig,
)
from llmforge.core.errors import ConfigError

DEFAULT_CONFIG_NAME = "llmforge.yaml"


class Settings(BaseSettings):
    """Everything configurable. Built by `load_settings`; immutable afterwards."""

    model_config = SettingsConfigDict(
        env_prefix="LLMFORGE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    database: str = Field("sqlite:///./.llmforge/llmforge.db", description="SQLAlchemy URL")
    server: ServerConfig = Field(default_factory=ServerConfig)
    traces: TracesConfig = Field(default_factory=TracesConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    redis_url: str | None = Field(None, description="shared limits and cache across processes")
    executor: str = Field(
        "local",
        description="where batch work runs (teacher labelling): local (this process), "
        "ray://host:10001 or auto (a Ray cluster; the `cluster` extra), see core/dispatch.py",
    )
    master_key: SecretStr | None = Field(
        None, description="enables API keys; usually set as LLMFORGE_MASTER_KEY, not in the file"
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="bearer token that may read /metrics (besides the master key); with a master "
        "key or this token set, /metrics is closed to everyone else",
    )
    models: list[ModelConfig] = Field(default_factory=lambda: list(DEFAULT_MODELS))
    embeddings: list[EmbeddingConfig] = Field(default_factory=lambda: list(DEFAULT_EMBEDDINGS))
    kb: KBConfig = Field(default_factory=KBConfig)
    agents: AgentsConfig = Field(default_factory=AgentsConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    config_path: Path | None = Field(None, exclude=True, description="file loaded, if any")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)  # the environment overrides the file

    @model_validator(mode="after")
    def _names_are_consistent(self) -> Settings:
        chat = [m.name for m in self.models]
        emb = [e.name for e in self.embeddings]
        for names, key in ((chat, "models"), (emb, "embeddings")):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(
                    f"{key}: duplicate name(s) {', '.join(dupes)}; names must be unique"
                )
        shared = sorted(set(chat) & set(emb))
        if shared:
            raise ValueError(
                f"{', '.join(shared)}: used for both a chat and an embedding model; "
                "names must be unique across `models:` and `embeddings:`"
            )
        if self.cache.semantic.enabled and self.cache.semantic.embedding not in emb:
            raise ValueError(
                f"cache.semantic.embedding: '{self.cache.semantic.embedding}' is not under "
                f"`embeddings:`; known: {', '.join(emb) or '(none)'}"
            )
        if self.kb.embedding is not None and self.kb.embedding not in emb:
            raise ValueError(
                f"kb.embedding: '{self.kb.embedding}' is not under `embeddings:`; "
                f"known: {', '.join(emb) or '(none)'}"
            )
        for m in self.models:
            unknown = [f for f in m.fallbacks if f not in chat]
            if unknown:
                raise ValueError(
                    f"models: '{m.name}' falls back to unknown model(s) {', '.join(unknown)}; "
                    f"known: {', '.join(chat)}"
                )
        return self

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


def find_config(path: str | Path | None = None) -> Path | None:
    """The config file to load, or None to run on defaults. An explicit path must exist."""
    explicit = path or os.environ.get("LLMFORGE_CONFIG")
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ConfigError(f"Config file '{p}' not found. Pass an existing file or unset it.")
        return p
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.is_file() else None


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read, validate and return the settings. Every problem becomes one ConfigError naming file and
    key."""
    file = find_config(path)
    data: dict[str, Any] = {}
    where = "settings"
    if file is not None:
        where = str(file)
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(
                f"{where}:{at} is not valid YAML: {getattr(e, 'problem', e)}"
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{where}: cannot be read: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{where}: the top level must be a mapping of keys, not a list or value"
            )
        data = loaded or {}
    data.update(overrides)
    try:
        return Settings(**data, config_path=file)
    except ValidationError as e:
        raise ConfigError(format_validation_error(where, e, Settings)) from None


def format_validation_error(where: str, error: ValidationError, root: type[BaseModel]) -> str:
    """One line per problem: `file: models[0].pth: unknown key (allowed: name, provider, ...)`."""
    lines = []
    for err in error.errors():
        loc = err["loc"]
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(root, loc[:-1])
            msg = "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        lines.append(f"{_source(where, loc)}: {key or '(top level)'}: {msg}")
    return "\n".join(lines)


def _source(where: str, loc: tuple[Any, ...]) -> str:
    """The file, or the LLMFORGE_* variable when the environment set the offending key."""
    parts = [str(p).upper() for p in loc if not isinstance(p, int)]
    for n in range(len(parts), 0, -1):
        var = "LLMFORGE_" + "__".join(parts[:n])
        if var in os.environ:
            return f"environment variable {var}"
    return where


def _allowed_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        model = next(
            (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        if model is None:
            return []
    fields = model.model_fields if model else {}
    return [k for k, f in fields.items() if not f.exclude]


__all__ = ["Settings", "find_config", "format_validation_error", "load_settings"]
