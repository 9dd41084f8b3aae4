"""Scripted models for tests and demos: no weights, no network, deterministic.

The chat model replies with its `responses` in turn (or echoes the last user message when none are
given), streaming word by word with an optional per-token delay, and honours `max_tokens` (in words)
and `stop`. What it cannot do (images, tool calls, log probabilities, several choices) it refuses
with a 400 naming the field, as every backend does, instead of silently ignoring it. A
`response_format` is accepted: the scripted replies are the JSON (a scripted judge, say).
The embedder hashes words into a fixed-size vector, so similar texts get similar vectors; its
tokens are words, and a request over `max_request_tokens` of them is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import re
from collections.abc import AsyncGenerator, Sequence

from llmforge.core.config import EmbeddingConfig, ModelConfig
from llmforge.core.errors import InvalidRequestError
from llmforge.core.types import (
    Completion,
    Delta,
    Embeddings,
    FinishReason,
    Message,
    Sampling,
    Usage,
)
from llmforge.models.base import ModelContext, collect


class FakeChatModel:
    def __init__(self, responses: Sequence[str] = (), delay_s: float = 0.0) -> None:
        self._responses = itertools.cycle(responses) if responses else None
        self.delay_s = delay_s

    async def complete(self, messages: Sequence[Message], sampling: Sampling) -> Completion:
        return await collect(self.stream(messages, sampling))

    async def stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        _refuse_what_it_cannot_do(messages, sampling)
        reply = next(self._responses) if self._responses else _last_user(messages)
        for s in sampling.stop:
            if s and s in reply:
                reply = reply[: reply.index(s)]
        words = re.findall(r"\S+\s*", reply)
        finish: FinishReason = "stop"
        if sampling.max_tokens is not None and len(words) > sampling.max_tokens:
            words, finish = words[: sampling.max_tokens], "length"
        for w in words:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield Delta(text=w)
        prompt = sum(len(m.content.split()) for m in messages)
        yield Delta(
            finish_reason=finish, usage=Usage(prompt_tokens=prompt, completion_tokens=len(words))
        )

    async def aclose(self) -> None:
        return None


def _refuse_what_it_cannot_do(messages: Sequence[Message], sampling: Sampling) -> None:
    unsupported = (
        ("messages", any(m.images for m in messages), "image parts"),
        ("tools", sampling.calls_tools, "tool calls"),
        ("logprobs", sampling.logprobs or bool(sampling.top_logprobs), "log probabilities"),
        ("n", sampling.n > 1, "more than one choice"),
    )
    for param, asked, what in unsupported:
        if asked:
            raise InvalidRequestError(
                f"the scripted fake model does not do {what}; leave out `{param}` or use "
                "another model",
                param=param,
            )


class FakeEmbedder:
    def __init__(self, dimensions: int = 64, max_request_tokens: int | None = None) -> None:
        self.dimensions = dimensions
        self.max_request_tokens = max_request_tokens

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        tokens = sum(len(t.split()) for t in texts)
        if self.max_request_tokens is not None and tokens > self.max_request_tokens:
            raise InvalidRequestError(
                f"This request holds {tokens} tokens (words), over the {self.max_request_tokens} "
                "one request may hold; send smaller requests, or raise this embedding's "
                "`max_request_tokens` under `embeddings:` in llmforge.yaml.",
                param="input",
            )
        return Embeddings(vectors=[self._vector(t) for t in texts], prompt_tokens=tokens)

    def _vector(self, text: str) -> list[float]:
        v = [0.0] * self.dimensions
        for word in re.findall(r"\w+", text.lower()):
            v[
                int(hashlib.blake2b(word.encode(), digest_size=4).hexdigest(), 16) % self.dimensions
            ] += 1
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / norm for x in v]

    async def aclose(self) -> None:
        return None


def _last_user(messages: Sequence[Message]) -> str:
    return next((m.content for m in reversed(messages) if m.role == "user"), "")


def create(config: ModelConfig, context: ModelContext | None = None) -> FakeChatModel:
    return FakeChatModel(config.responses, config.delay_s)


def create_embedder(config: EmbeddingConfig) -> FakeEmbedder:
    return FakeEmbedder(config.dimensions or 64, config.max_request_tokens)
