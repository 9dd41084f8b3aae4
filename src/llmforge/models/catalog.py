"""The configured models by name: what clients can ask for, built on first use and shared after.

Construction checks every provider name against its registry (a typo fails at start-up, listing the
valid names) but loads no weights; `preload()` loads the local ones eagerly when the server wants
that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from llmforge.core.config import EmbeddingConfig, ModelConfig
from llmforge.core.errors import InvalidRequestError, ModelNotFoundError
from llmforge.core.settings import Settings
from llmforge.models.base import ChatModel, Embedder, chat_models, embedders
from llmforge.models.profiles import fill_facts

T = TypeVar("T")


@dataclass(frozen=True)
class Deployment:
    """One replica of a model: its merged config and its backend."""

    model: str
    id: str
    config: ModelConfig
    backend: ChatModel


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: Literal["chat", "embedding"]
    provider: str


class ModelCatalog:
    def __init__(
        self,
        models: Sequence[ModelConfig],
        embeddings: Sequence[EmbeddingConfig],
        settings: Settings | None = None,
    ) -> None:
        self._settings = settings
        self._shared: dict[str, Any] = {}
        self._chat_cfg = {m.name: fill_facts(m) for m in models}
        self._emb_cfg = {e.name: e for e in embeddings}
        for m in models:
            chat_models.get(m.provider)
        for e in embeddings:
            embedders.get(e.provider)
        self._deployments: dict[str, list[Deployment]] = {}
        self._emb: dict[str, Embedder] = {}
        for name in self._chat_cfg:  # builds backends (cheap, no weights): bad paths fail now
            self.deployments(name)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelCatalog:
        return cls(settings.models, settings.embeddings, settings)

    @property
    def settings(self) -> Settings | None:
        return self._settings

    def shared(self, key: str, build: Callable[[], T]) -> T:
        """One object per catalog under `key` (e.g. the knowledge bases), shared by the backends
        and routes that need it and closed with the catalog."""
        if key not in self._shared:
            self._shared[key] = build()
        return cast(T, self._shared[key])

    def infos(self) -> list[ModelInfo]:
        return [ModelInfo(m.name, "chat", m.provider) for m in self._chat_cfg.values()] + [
            ModelInfo(e.name, "embedding", e.provider) for e in self._emb_cfg.values()
        ]

    def config(self, name: str) -> ModelConfig:
        try:
            return self._chat_cfg[name]
        except KeyError:
            if name in self._emb_cfg:
                raise InvalidRequestError(
                    f"'{name}' is an embedding model; use /v1/embeddings or pick a chat model",
                    param="model",
                ) from None
            raise self._not_found(name) from None

    def deployments(self, name: str) -> list[Deployment]:
        """The replicas serving `name` (one unless `deployments:` lists several)."""
        found = self._deployments.get(name)
        if found is None:
            cfg = self.config(name)
            factory = chat_models.get(cfg.provider)
            merged = [
                (
                    d.id or f"{name}#{i}",
                    cfg.model_copy(
                        update={
                            **d.model_dump(exclude_none=True, exclude={"id"}),
                            "deployments": [],
                        }
                    ),
                )
                for i, d in enumerate(cfg.deployments)
            ] or [(name, cfg)]
            found = [Deployment(name, dep_id, c, factory(c, self)) for dep_id, c in merged]
            self._deployments[name] = found
        return found

    def chat(self, name: str) -> ChatModel:
        """The first deployment's backend (direct use without routing)."""
        return self.deployments(name)[0].backend

    def embedder(self, name: str) -> Embedder:
        if name not in self._emb:
            cfg = self._emb_cfg.get(name)
            if cfg is None:
                if name in self._chat_cfg:
                    raise InvalidRequestError(
                        f"'{name}' is a chat model; pick an embedding model: "
                        f"{', '.join(self._emb_cfg) or '(none configured)'}",
                        param="model",
                    )
                raise self._not_found(name)
            self._emb[name] = embedders.get(cfg.provider)(cfg)
        return self._emb[name]

    async def preload(self) -> None:
        """Load every model whose backend can load ahead of use (local weights)."""
        for name in self._chat_cfg:
            for deployment in self.deployments(name):
                if hasattr(deployment.backend, "load"):
                    await deployment.backend.load()

    async def aclose(self) -> None:
        for deployments in self._deployments.values():
            for deployment in deployments:
                await deployment.backend.aclose()
        for embedder in self._emb.values():
            await embedder.aclose()
        self._deployments.clear()
        self._emb.clear()
        for service in self._shared.values():
            if hasattr(service, "aclose"):
                await service.aclose()
        self._shared.clear()

    def _not_found(self, name: str) -> ModelNotFoundError:
        return ModelNotFoundError(name, [*self._chat_cfg, *self._emb_cfg])
