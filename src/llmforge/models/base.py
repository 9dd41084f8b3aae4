"""The two model protocols and their registries.

A `ChatModel` answers a conversation whole (`complete`) or as a stream of `Delta`s (`stream`); an
`Embedder` turns texts into vectors. Backends are built by factories registered under a provider
name, in code or through the entry-point groups `llmforge.models` / `llmforge.embedders`; a factory
takes the model's config section and returns a ready (lazily loading) instance. Backends know
nothing of HTTP, traces or routing.

A factory gets the model's config section and a `ModelContext`: the catalog it is built into. Most
backends ignore it; a backend composed of other parts (the `rag` provider: a knowledge base in front
of another chat model) asks it for the model it wraps and for per-process services it shares with
the rest of the server (`context.shared(key, build)`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

from llmforge.core.config import EmbeddingConfig, ModelConfig
from llmforge.core.registry import Registry
from llmforge.core.settings import Settings
from llmforge.core.types import (
    Completion,
    Delta,
    Embeddings,
    FinishReason,
    Message,
    Sampling,
    Source,
    Usage,
)


@runtime_checkable
class ChatModel(Protocol):
    async def complete(self, messages: Sequence[Message], sampling: Sampling) -> Completion: ...

    def stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        """Yield text pieces as they are generated; the last Delta has finish_reason and usage.

        Closing the iterator early (a client went away) stops generation."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Embedder(Protocol):
    async def embed(self, texts: Sequence[str]) -> Embeddings: ...

    async def aclose(self) -> None: ...


T = TypeVar("T")


class ModelContext(Protocol):
    """What a factory may use besides its own config: the catalog it is built into."""

    @property
    def settings(self) -> Settings | None:
        """The settings the catalog was built from (None for a catalog built from lists)."""
        ...

    def chat(self, name: str) -> ChatModel:
        """Another configured chat model (its first deployment)."""
        ...

    def shared(self, key: str, build: Callable[[], T]) -> T:
        """The process-wide object under `key`, built on first use and closed (`aclose`) with the
        catalog."""
        ...


ChatModelFactory = Callable[[ModelConfig, ModelContext], ChatModel]
EmbedderFactory = Callable[[EmbeddingConfig], Embedder]

chat_models: Registry[ChatModelFactory] = Registry("model provider", "llmforge.models")
embedders: Registry[EmbedderFactory] = Registry("embedding provider", "llmforge.embedders")


async def collect(stream: AsyncGenerator[Delta, None]) -> Completion:
    """Drain a stream into one Completion (for backends whose whole answer is their stream)."""
    parts: list[str] = []
    finish: FinishReason = "stop"
    usage = Usage()
    sources: tuple[Source, ...] = ()
    async for delta in stream:
        parts.append(delta.text)
        if delta.finish_reason:
            finish = delta.finish_reason
        if delta.usage:
            usage = delta.usage
        sources = delta.sources or sources
    return Completion(text="".join(parts), finish_reason=finish, usage=usage, sources=sources)
