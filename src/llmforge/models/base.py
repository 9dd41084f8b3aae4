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

import json
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

from llmforge.core.config import EmbeddingConfig, ModelConfig
from llmforge.core.registry import Registry
from llmforge.core.settings import Settings
from llmforge.core.types import (
    Choice,
    Completion,
    Delta,
    Embeddings,
    FinishReason,
    Message,
    Sampling,
    Source,
    TokenLogprob,
    ToolCall,
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
class TextModel(Protocol):
    """A chat model that also continues raw text, without its chat template (the legacy
    `/v1/completions`). Optional: a model without it refuses text completion with a 400."""

    def stream_text(self, prompt: str, sampling: Sampling) -> AsyncGenerator[Delta, None]:
        """Like `ChatModel.stream`, for a plain prompt."""
        ...


@runtime_checkable
class TokenCounter(Protocol):
    """A chat model that knows its tokenizer. Optional: admission uses it to bound a call's
    prompt exactly instead of by its bytes."""

    def count_prompt_tokens(self, messages: Sequence[Message], sampling: Sampling) -> int | None:
        """The prompt's tokens as the model will see them (chat template and tool descriptions
        included); None when that cannot be known cheaply now (e.g. weights not loaded yet).
        Safe to call from the event loop: fast, no I/O."""
        ...


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


class CompletionBuilder:
    """Folds a stream of `Delta`s into the `Completion` it amounts to: text, tool calls (their
    pieces joined by index), log probabilities and finish reason per choice; usage and sources
    from whichever delta carried them last."""

    def __init__(self) -> None:
        self._text: dict[int, list[str]] = {}
        self._finish: dict[int, FinishReason] = {}
        # choice -> call index -> [id, name, arguments so far]
        self._calls: dict[int, dict[int, list[str]]] = {}
        self._logprobs: dict[int, list[TokenLogprob]] = {}
        self.usage: Usage | None = None
        self.sources: tuple[Source, ...] = ()

    def add(self, delta: Delta) -> None:
        c = delta.choice
        self._text.setdefault(c, []).append(delta.text)
        for piece in delta.tool_calls:
            call = self._calls.setdefault(c, {}).setdefault(piece.index, ["", "", ""])
            call[0] = piece.id or call[0]
            call[1] = piece.name or call[1]
            call[2] += piece.arguments
        if delta.logprobs:
            self._logprobs.setdefault(c, []).extend(delta.logprobs)
        if delta.finish_reason:
            self._finish[c] = delta.finish_reason
        if delta.usage:
            self.usage = delta.usage
        self.sources = delta.sources or self.sources

    def text(self, choice: int = 0) -> str:
        return "".join(self._text.get(choice, ()))

    def finish_reason(self, choice: int = 0) -> FinishReason | None:
        return self._finish.get(choice)

    def tool_calls(self, choice: int = 0, whole_only: bool = False) -> tuple[ToolCall, ...]:
        """The choice's calls; `whole_only`: leave out a call cut off by max_tokens (its
        arguments are not complete JSON) instead of passing it on as if it were whole."""
        calls = self._calls.get(choice, {})
        out = tuple(
            ToolCall(id=i, name=n, arguments=a or "{}")
            for i, n, a in (calls[k] for k in sorted(calls))
        )
        if whole_only and self._finish.get(choice) == "length":
            out = tuple(c for c in out if _is_json(c.arguments))
        return out

    def result(self, logprobs: bool = False, whole_calls_only: bool = False) -> Completion:
        """The Completion so far (`logprobs`: include them, [] when none came; `whole_calls_only`:
        see `tool_calls`)."""

        def lp(c: int) -> list[TokenLogprob] | None:
            return self._logprobs.get(c, []) if logprobs or c in self._logprobs else None

        extra = tuple(
            Choice(
                index=c,
                text=self.text(c),
                finish_reason=self._finish.get(c, "stop"),
                tool_calls=self.tool_calls(c, whole_calls_only),
                logprobs=lp(c),
            )
            for c in sorted(set(self._text) | set(self._finish))
            if c > 0
        )
        return Completion(
            text=self.text(0),
            finish_reason=self._finish.get(0, "stop"),
            usage=self.usage or Usage(),
            sources=self.sources,
            tool_calls=self.tool_calls(0, whole_calls_only),
            logprobs=lp(0),
            extra_choices=extra,
        )


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


async def collect(stream: AsyncGenerator[Delta, None]) -> Completion:
    """Drain a stream into one Completion (for backends whose whole answer is their stream)."""
    builder = CompletionBuilder()
    async for delta in stream:
        builder.add(delta)
    return builder.result()
