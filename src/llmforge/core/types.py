"""Shared value types that cross package boundaries: chat messages, sampling, completions,
embeddings.

These are the core's own shapes. The OpenAI wire format lives in `gateway/wire.py` and is converted
to these at the edge, so a backend never sees an HTTP request and the gateway never sees a backend's
native types.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool", "developer"]
FinishReason = Literal["stop", "length", "error", "cancelled"]


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role
    content: str
    name: str | None = None


class Sampling(BaseModel):
    """Generation parameters; None means the backend's default."""

    model_config = ConfigDict(frozen=True)

    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Completion(BaseModel):
    """A whole answer."""

    text: str
    finish_reason: FinishReason = "stop"
    usage: Usage = Field(default_factory=Usage)


class Delta(BaseModel):
    """One piece of a streamed answer. The last one carries `finish_reason` and `usage`."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


class Embeddings(BaseModel):
    vectors: list[list[float]]
    prompt_tokens: int = 0
