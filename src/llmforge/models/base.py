"""The two model protocols and their registries.

A `ChatModel` answers a conversation whole (`complete`) or as a stream of `Delta`s (`stream`); an
`Embedder` turns texts into vectors. Backends are built by factories registered under a provider
name, in code or through the entry-point groups `llmforge.models` / `llmforge.embedders`; a factory
takes the model's config section and returns a ready (lazily loading) instance. Backends know
nothing of HTTP, traces or routing.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Protocol, runtime_checkable

from llmforge.core.config import EmbeddingConfig, ModelConfig
from llmforge.core.registry import Registry
from llmforge.core.types import (
    Completion,
    Delta,
    Embeddings,
    FinishReason,
    Message,
    Sampling,
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


ChatModelFactory = Callable[[ModelConfig], ChatModel]
EmbedderFactory = Callable[[EmbeddingConfig], Embedder]

chat_models: Registry[ChatModelFactory] = Registry("model provider", "llmforge.models")
embedders: Registry[EmbedderFactory] = Registry("embedding provider", "llmforge.embedders")


async def collect(stream: AsyncGenerator[Delta, None]) -> Completion:
    """Drain a stream into one Completion (for backends whose whole answer is their stream)."""
    parts: list[str] = []
    finish: FinishReason = "stop"
    usage = Usage()
    async for delta in stream:
        parts.append(delta.text)
        if delta.finish_reason:
            finish = delta.finish_reason
        if delta.usage:
            usage = delta.usage
    return Completion(text="".join(parts), finish_reason=finish, usage=usage)
