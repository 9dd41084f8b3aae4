"""Serving distilled models by name: the `distilled` chat provider, and the models the gateway
adds to its catalog from the registry.

A `distilled` model (`path`: the distilled model's registered name) serves whichever version of
that name is `active` in `distill_models`, through the llamacpp backend. It re-reads the registry
at most every `distill.refresh_s`; when the active version changed (an export, a promotion, a
rollback to an older version, possibly from another process) the next call loads the new file and
later calls use it, while calls already running on the old one finish there. A name with no active
version answers with a `ModelError` (502), which the router falls back from.

`served_models(settings, engine)` lists one such model for every name in the registry that
llmforge.yaml does not already configure, so `create_app` serves a registered model by name
without a config edit (a name registered after start-up appears at the next start; new versions
of a served name apply live). `register_providers()` adds the providers this package brings
(`distilled`, `answer-key`) to the chat-model registry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from sqlalchemy.engine import Engine

from llmforge.core.config import ModelConfig
from llmforge.core.db import open_engine
from llmforge.core.errors import ConfigError, ModelError
from llmforge.core.settings import Settings
from llmforge.core.types import Completion, Delta, Message, Sampling
from llmforge.distill import answer_key
from llmforge.distill.store import DistillStore, ModelVersion
from llmforge.models import ModelCatalog
from llmforge.models.base import ChatModel, ModelContext, chat_models

PROVIDER = "distilled"
RETIRED_KEPT = 1  # an old version's backend stays open this many swaps for calls still on it


class Registry:
    """The process's one registry reader (closed with the catalog)."""

    def __init__(self, database: str) -> None:
        self.engine = open_engine(database)
        self.store = DistillStore(self.engine)

    async def aclose(self) -> None:
        self.engine.dispose()


class DistilledChatModel:
    def __init__(self, config: ModelConfig, context: ModelContext | None) -> None:
        settings = context.settings if context is not None else None
        if settings is None:
            raise ConfigError(
                f"model '{config.name}': provider distilled reads the distill registry of the "
                "server's database; build it from settings (ModelCatalog.from_settings)"
            )
        database = settings.database
        self.name = config.path or config.name
        self._registry = context.shared("distill.registry", lambda: Registry(database))  # type: ignore[union-attr]
        self._config = config
        self._context = context
        self._refresh_s = settings.distill.refresh_s
        self._checked = -float("inf")
        self._current: tuple[ModelVersion, ChatModel] | None = None
        self._retired: list[ChatModel] = []

    async def current(self) -> tuple[ModelVersion, ChatModel]:
        """The active version and its backend (re-read at most every refresh_s)."""
        now = time.monotonic()
        if self._current is not None and now - self._checked < self._refresh_s:
            return self._current
        version = await asyncio.to_thread(self._registry.store.active, self.name)
        self._checked = now
        if version is None or not version.path:
            raise ModelError(
                f"The distilled model '{self.name}' has no active version; export one with "
                "`llmforge distill export` or roll back to an earlier one."
            )
        if self._current is None or self._current[0].id != version.id:
            config = self._config.model_copy(
                update={
                    "provider": "llamacpp",
                    "path": version.path,
                    "context_length": self._config.context_length or version.context_length,
                }
            )
            backend = chat_models.get("llamacpp")(config, self._context)  # type: ignore[arg-type]
            if self._current is not None:
                self._retired.append(self._current[1])
            while len(self._retired) > RETIRED_KEPT:
                await self._retired.pop(0).aclose()
            self._current = (version, backend)
        return self._current

    async def load(self) -> None:
        _, backend = await self.current()
        load = getattr(backend, "load", None)
        if load is not None:
            await load()

    async def complete(self, messages: Sequence[Message], sampling: Sampling) -> Completion:
        _, backend = await self.current()
        return await backend.complete(messages, sampling)

    async def stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        _, backend = await self.current()
        async with aclosing(backend.stream(messages, sampling)) as deltas:
            async for delta in deltas:
                yield delta

    async def aclose(self) -> None:
        for backend in self._retired:
            await backend.aclose()
        self._retired.clear()
        if self._current is not None:
            await self._current[1].aclose()
            self._current = None


def create(config: ModelConfig, context: ModelContext | None = None) -> DistilledChatModel:
    return DistilledChatModel(config, context)


def register_providers() -> None:
    """Add `distilled` and `answer-key` to the chat-model registry (idempotent)."""
    chat_models.register(PROVIDER, create)
    chat_models.register(answer_key.PROVIDER, answer_key.create)


def served_models(settings: Settings, engine: Engine) -> list[ModelConfig]:
    """A `distilled` model for each registered name llmforge.yaml does not configure."""
    register_providers()
    configured = {m.name for m in settings.models} | {e.name for e in settings.embeddings}
    names = DistillStore(engine).names()
    return [
        ModelConfig(name=name, provider=PROVIDER, path=name)
        for name in names
        if name not in configured
    ]


def catalog_for(settings: Settings, engine: Engine) -> ModelCatalog:
    """The settings' models plus the registry's distilled ones (what the gateway serves)."""
    return ModelCatalog(
        [*settings.models, *served_models(settings, engine)], settings.embeddings, settings
    )
