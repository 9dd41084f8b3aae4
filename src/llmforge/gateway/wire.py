"""The OpenAI wire format, and its conversion to and from core types. The only module that knows it.

Requests are validated strictly (a string where a number belongs is a 400 naming the field, not a
silent coercion). Unknown optional OpenAI parameters are ignored, as most OpenAI-compatible servers
do, except those whose silent loss would change the answer's meaning (`tools`, `n > 1`, non-text
content): those are refused.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmforge.core.types import Completion, Message, Role, Sampling, Source, Usage


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(WireModel):
    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None

    def to_core(self) -> Message:
        content = self.content
        text = content if isinstance(content, str) else "".join(p.text for p in content or ())
        return Message(role=self.role, content=text, name=self.name)


class StreamOptions(WireModel):
    include_usage: bool = False


class ChatCompletionRequest(WireModel):
    model: str = Field(min_length=1)
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    user: str | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported; send several requests for several answers")
        return n

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, tools: list[Any] | None) -> list[Any] | None:
        if tools:
            raise ValueError("tool calling is not supported by this endpoint yet")
        return tools

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, fmt: dict[str, Any] | None) -> dict[str, Any] | None:
        if fmt and fmt.get("type") != "text":
            raise ValueError("only response_format {'type': 'text'} is supported yet")
        return fmt

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, logprobs: bool | None) -> bool | None:
        if logprobs:
            raise ValueError("logprobs are not supported yet")
        return logprobs

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 16:
            raise ValueError("at most 16 stop sequences")
        return stop

    def core_messages(self) -> list[Message]:
        return [m.to_core() for m in self.messages]

    def sampling(self) -> Sampling:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return Sampling(
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(s for s in stop if s),
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def usage_body(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def completion_body(cid: str, model: str, created: int, completion: Completion) -> dict[str, Any]:
    body = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": _wire_finish(completion.finish_reason),
                "logprobs": None,
            }
        ],
        "usage": usage_body(completion.usage),
    }
    if completion.sources:
        body["sources"] = sources_body(completion.sources)
    return body


def sources_body(sources: Sequence[Source]) -> list[dict[str, Any]]:
    """Grounded answers (`rag` models): the passages cited as [n], a top-level `sources` list on
    the completion and on the final stream chunk (read it as `completion.sources` in the SDKs)."""
    return [s.model_dump() for s in sources]


def chunk_body(
    cid: str,
    model: str,
    created: int,
    *,
    role: bool = False,
    text: str | None = None,
    finish: str | None = None,
    sources: Sequence[Source] = (),
) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if text is not None:
        delta["content"] = text
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "delta": delta, "finish_reason": _wire_finish(finish), "logprobs": None}
        ],
    }
    if sources:
        body["sources"] = sources_body(sources)
    return body


def usage_chunk_body(cid: str, model: str, created: int, usage: Usage) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_body(usage),
    }


def _wire_finish(reason: str | None) -> str | None:
    return None if reason is None else ("length" if reason == "length" else "stop")


class EmbeddingRequest(WireModel):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _texts_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("input must not be empty")
            if not all(isinstance(v, str) for v in value):
                raise ValueError("token-array input is not supported; send strings")
            if len(value) > 2048:
                raise ValueError("at most 2048 inputs per request")
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)  # type: ignore[arg-type]


def embeddings_body(
    model: str, vectors: list[list[float]], prompt_tokens: int, encoding: str
) -> dict[str, Any]:
    def encode(v: list[float]) -> list[float] | str:
        if encoding == "base64":
            return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
        return v

    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def models_body(infos: list[tuple[str, str, str]], created: int | None = None) -> dict[str, Any]:
    created = created or int(time.time())
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "llmforge",
                "llmforge": {"kind": kind, "provider": provider},
            }
            for name, kind, provider in infos
        ],
    }


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
