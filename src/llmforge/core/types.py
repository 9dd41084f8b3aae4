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
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error", "cancelled"]


class ToolCall(BaseModel):
    """A call the model asks the client to make: a function by name, with JSON arguments."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="the call's id; the `tool` message answering it names it")
    name: str
    arguments: str = Field("{}", description="JSON text of the arguments, as the model wrote it")


class ImagePart(BaseModel):
    """An image in a user message (an http(s) or `data:` URL). Only backends that read images
    accept it; a text-only model refuses the request."""

    model_config = ConfigDict(frozen=True)

    url: str
    detail: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role
    content: str = ""
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = Field((), description="assistant: the calls it asked for")
    tool_call_id: str | None = Field(None, description="tool: the call this message answers")
    images: tuple[ImagePart, ...] = ()

    def compact(self) -> dict[str, Any]:
        """Role and content, plus only the optional fields that are set (traces, payloads)."""
        extra = self.model_dump(exclude_defaults=True, exclude={"role", "content"})
        return {"role": self.role, "content": self.content, **extra}


class Tool(BaseModel):
    """A function the model may call, described by a JSON schema of its arguments."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class ToolChoice(BaseModel):
    """Whether the model may (`auto`), must not (`none`) or must (`required`) call a tool, or
    must call the one named (`function`)."""

    model_config = ConfigDict(frozen=True)

    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str | None = Field(None, description="mode function: the tool to call")


class ResponseFormat(BaseModel):
    """Structured output: any JSON object (`json_object`) or JSON valid for `json_schema`."""

    model_config = ConfigDict(frozen=True)

    type: Literal["json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None
    name: str = "answer"
    strict: bool | None = None

    @classmethod
    def for_schema(cls, schema: dict[str, Any], name: str = "answer") -> ResponseFormat:
        return cls(type="json_schema", json_schema=schema, name=name)


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
    response_format: ResponseFormat | None = Field(
        None,
        description="constrain the answer to JSON (grammar-constrained for local models, "
        "`response_format` upstream)",
    )
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = Field(None, description="None: `auto` when tools are given")
    parallel_tool_calls: bool | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    n: int = Field(1, ge=1, le=16, description="how many independent answers (choices)")

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The schema answers must follow, if any (`json_object`: any object)."""
        fmt = self.response_format
        if fmt is None:
            return None
        return fmt.json_schema if fmt.json_schema is not None else {"type": "object"}

    @property
    def calls_tools(self) -> bool:
        """Whether the model may call one of `tools` on this request."""
        return bool(self.tools) and (self.tool_choice is None or self.tool_choice.mode != "none")


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


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    """One generated token's log probability, and the most likely alternatives at its place."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class Choice(BaseModel):
    """One of several answers to the same request (`Sampling.n` > 1), beyond the first."""

    index: int = Field(ge=1)
    text: str = ""
    finish_reason: FinishReason = "stop"
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: list[TokenLogprob] | None = None


class Completion(BaseModel):
    """A whole answer: the first choice's fields, and `extra_choices` when n > 1."""

    text: str
    finish_reason: FinishReason = "stop"
    usage: Usage = Field(default_factory=Usage)
    sources: tuple[Source, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: list[TokenLogprob] | None = Field(None, description="when `Sampling.logprobs`")
    extra_choices: tuple[Choice, ...] = ()

    def choices(self) -> list[Choice]:
        """Every choice, the first included (its index 0 built from the top-level fields)."""
        first = Choice.model_construct(
            index=0,
            text=self.text,
            finish_reason=self.finish_reason,
            tool_calls=self.tool_calls,
            logprobs=self.logprobs,
        )
        return [first, *self.extra_choices]


class ToolCallDelta(BaseModel):
    """A piece of a tool call in a stream: the first piece of call `index` carries its id and
    name, later pieces more of its arguments (concatenated, they are the arguments' JSON)."""

    index: int = Field(0, ge=0)
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class Delta(BaseModel):
    """One piece of a streamed answer. The last one carries `finish_reason` and `usage`.

    With n > 1 choices, `choice` says whose piece it is; each choice ends with its own Delta
    carrying `finish_reason`, and `usage` (of the whole request) comes on the very last."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    logprobs: list[TokenLogprob] | None = None
    choice: int = Field(0, ge=0)
    sources: tuple[Source, ...] = Field(
        (), description="grounded answers: set on the final Delta (with finish_reason)"
    )


class Embeddings(BaseModel):
    vectors: list[list[float]]
    prompt_tokens: int = 0
