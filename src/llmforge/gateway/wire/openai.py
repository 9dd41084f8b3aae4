"""The OpenAI wire format — chat completions, legacy text completions, embeddings, models, errors —
and its conversion to and from core types. The only module that knows it.

Requests are validated strictly (a string where a number belongs is a 400 naming the field, not a
silent coercion). Optional OpenAI parameters this gateway does not act on are ignored, as most
OpenAI-compatible servers do (`user`, `metadata`, `store`, `service_tier`, `reasoning_effort`, ...),
except those whose silent loss would change the answer's meaning: those are refused with a 400 that
says so (`logit_bias`, audio output, custom tools, the deprecated `functions`, `suffix`, several
prompts in one legacy completion). docs/protocol.md has the whole table.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmforge.core.types import (
    Choice,
    Completion,
    Delta,
    FinishReason,
    ImagePart,
    Message,
    ResponseFormat,
    Role,
    Sampling,
    Source,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
)

MAX_CHOICES = 16
MAX_STOPS = 16
TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


# -- messages -----------------------------------------------------------------------------------


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ImageUrl(WireModel):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePartIn(WireModel):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePartIn, Field(discriminator="type")]


def _known_parts(content: Any) -> Any:
    """A clear refusal for content parts this gateway cannot pass on (audio, files)."""
    if isinstance(content, list):
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", "image_url", None):
                raise ValueError(
                    f"content parts of type '{kind}' are not supported; send text and image_url "
                    "parts"
                )
    return content


class FunctionCallIn(WireModel):
    name: str = Field(min_length=1)
    arguments: str = "{}"


class ToolCallIn(WireModel):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(WireModel):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    _parts = field_validator("content", mode="before")(_known_parts)

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> ChatMessageIn:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    def to_core(self) -> Message:
        content = self.content
        if isinstance(content, list):
            text = "".join(p.text for p in content if isinstance(p, TextPart))
            images = tuple(
                ImagePart(url=p.image_url.url, detail=p.image_url.detail)
                for p in content
                if isinstance(p, ImagePartIn)
            )
        else:
            text, images = content or "", ()
        calls = tuple(
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
            for c in self.tool_calls or ()
        )
        return Message(
            role=self.role,
            content=text,
            name=self.name,
            tool_calls=calls,
            tool_call_id=self.tool_call_id,
            images=images,
        )


# -- tools and formats --------------------------------------------------------------------------


class FunctionDef(WireModel):
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(WireModel):
    type: Literal["function"]
    function: FunctionDef

    @model_validator(mode="before")
    @classmethod
    def _functions_only(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") not in ("function", None):
            raise ValueError(
                f"tools of type '{value.get('type')}' are not supported; send function tools"
            )
        return value

    def to_core(self) -> Tool:
        f = self.function
        parameters = f.parameters if f.parameters is not None else {"type": "object"}
        return Tool(name=f.name, description=f.description, parameters=parameters, strict=f.strict)


class NamedFunction(WireModel):
    name: str = Field(min_length=1)


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(WireModel):
    name: str = Field("answer", pattern=TOOL_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)


class ResponseFormatIn(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormatIn:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format json_schema needs `json_schema: {name, schema}`")
        return self

    def to_core(self) -> ResponseFormat | None:
        if self.type == "text":
            return None
        if self.type == "json_object" or self.json_schema is None:
            return ResponseFormat(type="json_object")
        js = self.json_schema
        return ResponseFormat(
            type="json_schema",
            json_schema=js.schema_ if js.schema_ is not None else {"type": "object"},
            name=js.name,
            strict=js.strict,
        )


def tool_choice_to_core(
    choice: Literal["none", "auto", "required"] | NamedToolChoice | None,
    tools: Sequence[Tool],
) -> ToolChoice | None:
    """The core ToolChoice; a named tool that is not among `tools` is a ValueError."""
    if choice is None:
        return None
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in {t.name for t in tools}:
            raise ValueError(f"tool_choice names '{name}', which is not among `tools`")
        return ToolChoice(mode="function", name=name)
    if choice != "none" and not tools:
        raise ValueError(f"tool_choice '{choice}' needs `tools`")
    return ToolChoice(mode=choice)


class StreamOptions(WireModel):
    include_usage: bool = False


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    items = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return tuple(s for s in items if s)


def _refuse(value: Any, what: str) -> None:
    if value not in (None, False, [], {}):
        raise ValueError(what)


class SamplingIn(WireModel):
    """Parameters chat and legacy completions share."""

    model: str = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Any] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = Field(
        None, max_length=16, description="tags kept with the call's trace (filter traces by them)"
    )

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        _refuse(value, "logit_bias is not supported")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingIn):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[ToolIn] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormatIn | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    functions: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    modalities: list[str] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        _refuse(self.functions, "`functions` is deprecated and not supported; send `tools`")
        _refuse(self.function_call, "`function_call` is deprecated; send `tool_choice`")
        _refuse(self.audio, "audio output is not supported")
        if self.modalities and set(self.modalities) - {"text"}:
            raise ValueError("only the text modality is supported")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        names = [t.function.name for t in self.tools or ()]
        if len(set(names)) != len(names):
            raise ValueError("tool names must be unique")
        self.core_tool_choice()  # a named choice must name a tool
        return self

    def core_messages(self) -> list[Message]:
        return [m.to_core() for m in self.messages]

    def core_tools(self) -> tuple[Tool, ...]:
        return tuple(t.to_core() for t in self.tools or ())

    def core_tool_choice(self) -> ToolChoice | None:
        return tool_choice_to_core(self.tool_choice, self.core_tools())

    def sampling(self) -> Sampling:
        return Sampling(
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=_stops(self.stop),
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            response_format=self.response_format.to_core() if self.response_format else None,
            tools=self.core_tools(),
            tool_choice=self.core_tool_choice(),
            parallel_tool_calls=self.parallel_tool_calls,
            logprobs=bool(self.logprobs),
            top_logprobs=self.top_logprobs,
            n=self.n,
        )


class CompletionRequest(SamplingIn):
    """The legacy `POST /v1/completions`: one prompt, continued as raw text."""

    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("send one prompt per request (a list of exactly one string)")
        _refuse(self.suffix, "suffix (insertion) is not supported")
        if self.best_of not in (None, self.n):
            raise ValueError("best_of is not supported; use n")
        if self.echo and self.logprobs is not None:
            raise ValueError("echo with logprobs is not supported")
        return self

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def sampling(self) -> Sampling:
        return Sampling(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=_stops(self.stop),
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logprobs=self.logprobs is not None,
            top_logprobs=self.logprobs,
            n=self.n,
        )


# -- answers ------------------------------------------------------------------------------------


def usage_body(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def wire_finish(reason: FinishReason | None) -> str | None:
    """OpenAI's finish reasons; ours beyond them (error, cancelled) read as `stop`."""
    if reason is None:
        return None
    return reason if reason in ("length", "tool_calls", "content_filter") else "stop"


def tool_calls_body(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def logprobs_body(logprobs: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    return {"content": [lp.model_dump() for lp in logprobs], "refusal": None}


def _choice_body(choice: Choice) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": choice.text if choice.text or not choice.tool_calls else None,
        "refusal": None,
    }
    if choice.tool_calls:
        message["tool_calls"] = tool_calls_body(choice.tool_calls)
    return {
        "index": choice.index,
        "message": message,
        "finish_reason": wire_finish(choice.finish_reason),
        "logprobs": logprobs_body(choice.logprobs),
    }


def completion_body(cid: str, model: str, created: int, completion: Completion) -> dict[str, Any]:
    body = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [_choice_body(c) for c in completion.choices()],
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
    choice: int = 0,
    role: bool = False,
    text: str | None = None,
    tool_calls: Sequence[ToolCallDelta] = (),
    logprobs: Sequence[TokenLogprob] | None = None,
    finish: FinishReason | None = None,
    sources: Sequence[Source] = (),
) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if text is not None:
        delta["content"] = text
    if tool_calls:
        delta["tool_calls"] = [_tool_call_piece(p) for p in tool_calls]
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": choice,
                "delta": delta,
                "finish_reason": wire_finish(finish),
                "logprobs": logprobs_body(logprobs),
            }
        ],
    }
    if sources:
        body["sources"] = sources_body(sources)
    return body


def _tool_call_piece(piece: ToolCallDelta) -> dict[str, Any]:
    """One streamed piece of a tool call, as OpenAI sends it: id, type and name with the first
    piece, then only more of the arguments."""
    function: dict[str, Any] = {"arguments": piece.arguments}
    out: dict[str, Any] = {"index": piece.index}
    if piece.id is not None:
        out["id"], out["type"] = piece.id, "function"
    if piece.name is not None:
        function["name"] = piece.name
    out["function"] = function
    return out


def delta_chunks(cid: str, model: str, created: int, delta: Delta) -> list[dict[str, Any]]:
    """The chunks one Delta becomes: its content, then its finish (as OpenAI sends them)."""
    chunks = []
    if delta.text or delta.tool_calls or delta.logprobs:
        chunks.append(
            chunk_body(
                cid,
                model,
                created,
                choice=delta.choice,
                text=delta.text if delta.text or not delta.tool_calls else None,
                tool_calls=delta.tool_calls,
                logprobs=delta.logprobs,
            )
        )
    if delta.finish_reason:
        chunks.append(
            chunk_body(
                cid,
                model,
                created,
                choice=delta.choice,
                finish=delta.finish_reason,
                sources=delta.sources,
            )
        )
    return chunks


def usage_chunk_body(cid: str, model: str, created: int, usage: Usage) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_body(usage),
    }


# -- legacy text completions --------------------------------------------------------------------


def legacy_logprobs(logprobs: Sequence[TokenLogprob] | None, offset: int = 0) -> Any:
    """Log probabilities in the legacy completions shape (parallel lists)."""
    if logprobs is None:
        return None
    offsets, at = [], offset
    for lp in logprobs:
        offsets.append(at)
        at += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{t.token: t.logprob for t in lp.top_logprobs} for lp in logprobs],
        "text_offset": offsets,
    }


def text_completion_body(
    cid: str, model: str, created: int, completion: Completion, echo: str = ""
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": c.index,
                "text": echo + c.text,
                "logprobs": legacy_logprobs(c.logprobs, len(echo)),
                "finish_reason": wire_finish(c.finish_reason),
            }
            for c in completion.choices()
        ],
        "usage": usage_body(completion.usage),
    }


def text_chunk_body(
    cid: str, model: str, created: int, delta: Delta, *, text: str | None = None
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": delta.choice,
                "text": delta.text if text is None else text,
                "logprobs": legacy_logprobs(delta.logprobs),
                "finish_reason": wire_finish(delta.finish_reason),
            }
        ],
    }


def text_usage_chunk_body(cid: str, model: str, created: int, usage: Usage) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_body(usage),
    }


# -- embeddings, models, errors -----------------------------------------------------------------


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


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error of the OpenAI-shaped routes (the schema published in /openapi.json)."""

    error: ErrorDetail


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
