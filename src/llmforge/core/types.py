"""Shared value types that cross package boundaries: chat messages, sampling, completions,
embeddings.

These are the core's own shapes. The OpenAI wire format lives in `gateway/wire.py` and is converted
to these at the edge, so a backend never sees an HTTP request and the gateway never sees a backend's
native types.
"""

from __future__ import annotations

from typing import Any, Literal

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
    json_schema: dict[str, Any] | None = Field(
        None,
        description="constrain the answer to JSON matching this schema (grammar-constrained for "
        "local models, `response_format` upstream); backends without support ignore it",
    )


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Source(BaseModel):
    """A passage an answer is grounded in; the answer cites it as `[number]`."""

    model_config = ConfigDict(frozen=True)

    number: int = Field(ge=1)
    id: str = Field(description="the chunk's id in its knowledge base")
    kb: str
    source: str = Field(description="the document: file path or upload name")
    title: str | None = None
    heading: str | None = Field(None, description="heading path inside the document")
    page: int | None = None
    text: str = Field(description="the passage as given to the model")
    score: float | None = None
    cited: bool = Field(False, description="the answer's text carries this source's marker")


class Completion(BaseModel):
    """A whole answer."""

    text: str
    finish_reason: FinishReason = "stop"
    usage: Usage = Field(default_factory=Usage)
    sources: tuple[Source, ...] = ()


class Delta(BaseModel):
    """One piece of a streamed answer. The last one carries `finish_reason` and `usage`."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    sources: tuple[Source, ...] = Field(
        (), description="grounded answers: set on the final Delta (with finish_reason)"
    )


class Embeddings(BaseModel):
    vectors: list[list[float]]
    prompt_tokens: int = 0
