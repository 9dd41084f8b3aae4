"""The Anthropic Messages wire format served at `POST /v1/messages`, and its conversion to and from
core types. The only gateway module that knows it (OpenAI's lives in `wire/openai.py`).

Requests are validated strictly, like the OpenAI routes': a wrong type is a 400 naming the field.
Translated: text, images (base64 or URL sources), client tools with `tool_choice` (auto, any, tool,
none; `disable_parallel_tool_use`), `tool_use` blocks in assistant turns and `tool_result` blocks in
user turns, so any configured model — local or remote, OpenAI-compatible or not — can serve
Anthropic clients' tool calls. Refused with a 400 that says so: server tools (web search, code
execution, ...), `document` blocks. `metadata.user_id` is kept with the call's trace. Ignored:
`top_k`, `thinking` (and thinking blocks sent back in a conversation), `service_tier`. Answers and
stream events follow the Anthropic shapes: a text block (when there is text) and one `tool_use`
block per call, streamed as `content_block_start` / `text_delta` or `input_json_delta` /
`content_block_stop`. The core does not report which stop sequence ended an answer, so a stop is
`end_turn` and `stop_sequence` null.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, Field, model_validator

from llmforge.core.db import sortable_id
from llmforge.core.types import (
    Completion,
    Delta,
    FinishReason,
    ImagePart,
    Message,
    Sampling,
    Tool,
    ToolCall,
    ToolChoice,
    Usage,
)
from llmforge.gateway.wire.openai import TOOL_NAME, WireModel

MESSAGES_PATH = "/v1/messages"

# Anthropic's error `type` by HTTP status; other 4xx are invalid requests, other 5xx api errors.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
STOP_REASONS: dict[str | None, str] = {
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
IGNORED_BLOCKS = ("thinking", "redacted_thinking")


class TextBlock(WireModel):
    type: Literal["text"]
    text: str


class ImageSource(WireModel):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> ImageSource:
        if self.type == "base64" and not (self.data and self.media_type):
            raise ValueError("a base64 image source needs `media_type` and `data`")
        if self.type == "url" and not self.url:
            raise ValueError("a url image source needs `url`")
        return self

    def to_core(self) -> ImagePart:
        if self.type == "url":
            return ImagePart(url=self.url or "")
        return ImagePart(url=f"data:{self.media_type};base64,{self.data}")


class ImageBlock(WireModel):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(WireModel):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class ToolResultBlock(WireModel):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlock | ImageBlock] | None = None
    is_error: bool = False

    def text(self) -> str:
        content = self.content
        text = content if isinstance(content, str) else _joined(content or [])
        return f"Error: {text}" if self.is_error else text


def _known_blocks(content: Any) -> Any:
    """Drop thinking blocks (we never produce them; clients send them back); refuse what cannot
    be translated."""
    if not isinstance(content, list):
        return content
    kept = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in IGNORED_BLOCKS:
            continue
        if kind not in ("text", "image", "tool_use", "tool_result", None):
            raise ValueError(
                f"content blocks of type '{kind}' are not supported; send text, image, tool_use "
                "and tool_result blocks"
            )
        kept.append(block)
    return kept


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")
]
Content = Annotated[str | list[Block], BeforeValidator(_known_blocks)]
SystemContent = str | list[TextBlock]


class MessageIn(WireModel):
    role: Literal["user", "assistant"]
    content: Content

    @model_validator(mode="after")
    def _blocks_fit_the_role(self) -> MessageIn:
        blocks = self.content if isinstance(self.content, list) else []
        if self.role == "user" and any(isinstance(b, ToolUseBlock) for b in blocks):
            raise ValueError("tool_use blocks belong in assistant turns")
        if self.role == "assistant" and any(isinstance(b, ToolResultBlock) for b in blocks):
            raise ValueError("tool_result blocks belong in user turns")
        return self

    def to_core(self) -> list[Message]:
        """One Anthropic turn as core messages: tool results become `tool` messages (before the
        turn's text, as the results answer the previous turn's calls)."""
        if isinstance(self.content, str):
            return [Message(role=self.role, content=self.content)]
        blocks = self.content
        results = [b for b in blocks if isinstance(b, ToolResultBlock)]
        out = [Message(role="tool", content=r.text(), tool_call_id=r.tool_use_id) for r in results]
        text = _joined(blocks)
        images = tuple(b.source.to_core() for b in blocks if isinstance(b, ImageBlock))
        calls = tuple(
            ToolCall(id=b.id, name=b.name, arguments=orjson.dumps(b.input).decode())
            for b in blocks
            if isinstance(b, ToolUseBlock)
        )
        if text or images or calls or not results:
            out.append(Message(role=self.role, content=text, images=images, tool_calls=calls))
        return out


class ToolIn(WireModel):
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _client_tools_only(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") not in ("custom", None):
            raise ValueError(
                f"server tools ('{value.get('type')}') are not supported; send client tools "
                "with name, description and input_schema"
            )
        return value

    def to_core(self) -> Tool:
        return Tool(name=self.name, description=self.description, parameters=self.input_schema)


class ToolChoiceIn(WireModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named(self) -> ToolChoiceIn:
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice of type 'tool' needs the tool's `name`")
        return self

    def to_core(self) -> ToolChoice:
        modes: dict[str, Literal["auto", "none", "required", "function"]] = {
            "auto": "auto",
            "any": "required",
            "tool": "function",
            "none": "none",
        }
        return ToolChoice(mode=modes[self.type], name=self.name)


class MetadataIn(WireModel):
    user_id: str | None = None


class MessagesRequest(WireModel):
    model: str = Field(min_length=1)
    messages: list[MessageIn] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    system: SystemContent | None = None
    stop_sequences: list[str] | None = Field(None, max_length=16)
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    tools: list[ToolIn] | None = Field(None, max_length=128)
    tool_choice: ToolChoiceIn | None = None
    metadata: MetadataIn | None = None

    @model_validator(mode="after")
    def _tools_consistent(self) -> MessagesRequest:
        names = [t.name for t in self.tools or ()]
        if len(set(names)) != len(names):
            raise ValueError("tool names must be unique")
        choice = self.tool_choice
        if choice is not None and choice.type != "none" and not names:
            raise ValueError(f"tool_choice '{choice.type}' needs `tools`")
        if choice is not None and choice.type == "tool" and choice.name not in names:
            raise ValueError(f"tool_choice names '{choice.name}', which is not among `tools`")
        return self

    def tags(self) -> dict[str, str]:
        """What the trace keeps of `metadata`."""
        user = self.metadata.user_id if self.metadata else None
        return {"user_id": user} if user else {}

    def core_messages(self) -> list[Message]:
        system = _joined(self.system) if self.system is not None else ""
        head = [Message(role="system", content=system)] if system else []
        return head + [m for turn in self.messages for m in turn.to_core()]

    def sampling(self) -> Sampling:
        choice = self.tool_choice
        return Sampling(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(s for s in self.stop_sequences or () if s),
            tools=tuple(t.to_core() for t in self.tools or ()),
            tool_choice=choice.to_core() if choice else None,
            parallel_tool_calls=(
                False if choice is not None and choice.disable_parallel_tool_use else None
            ),
        )


def _joined(content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.text for b in content if isinstance(b, TextBlock))


def new_message_id() -> str:
    return "msg_" + sortable_id()


def stop_reason(finish: FinishReason | None) -> str:
    return STOP_REASONS.get(finish, "end_turn")


def wire_usage(usage: Usage) -> dict[str, int]:
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}


def tool_input(arguments: str) -> Any:
    """A call's arguments as the `input` object Anthropic clients expect (arguments that are not
    a JSON object — a remote model's mistake — come as `{"arguments": <the text>}`)."""
    try:
        parsed = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"arguments": parsed}


def message_body(mid: str, model: str, completion: Completion) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if completion.text or not completion.tool_calls:
        content.append({"type": "text", "text": completion.text})
    content += [
        {"type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(c.arguments)}
        for c in completion.tool_calls
    ]
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(completion.finish_reason),
        "stop_sequence": None,
        "usage": wire_usage(completion.usage),
    }


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """One Anthropic SSE event: a named event whose data repeats the name as `type`."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


class StreamEvents:
    """Turns a call's Deltas into the Messages API's stream events, opening a content block when
    its first piece arrives (text, or a tool call's id and name) and closing the previous one."""

    def __init__(self, mid: str, model: str) -> None:
        self.mid, self.model = mid, model
        self._index = -1
        self._open: str | None = None  # "text" or the open tool call's stream index

    def head(self) -> Iterator[bytes]:
        message: dict[str, Any] = {
            "id": self.mid,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": wire_usage(Usage()),
        }
        yield sse_event("message_start", {"message": message})
        yield sse_event("ping", {})

    def delta(self, delta: Delta) -> Iterator[bytes]:
        if delta.text:
            if self._open != "text":
                yield from self._start({"type": "text", "text": ""}, "text")
            yield self._piece({"type": "text_delta", "text": delta.text})
        for piece in delta.tool_calls:
            key = f"tool:{piece.index}"
            if self._open != key:
                block = {"type": "tool_use", "id": piece.id or "", "name": piece.name or ""}
                yield from self._start({**block, "input": {}}, key)
            if piece.arguments:
                yield self._piece({"type": "input_json_delta", "partial_json": piece.arguments})

    def tail(self, finish: FinishReason | None, usage: Usage) -> Iterator[bytes]:
        if self._index < 0:  # no content at all: an empty text block, as Anthropic sends
            yield from self._start({"type": "text", "text": ""}, "text")
        yield from self._stop()
        yield sse_event(
            "message_delta",
            {
                "delta": {"stop_reason": stop_reason(finish), "stop_sequence": None},
                "usage": wire_usage(usage),
            },
        )
        yield sse_event("message_stop", {})

    def _start(self, block: dict[str, Any], key: str) -> Iterator[bytes]:
        yield from self._stop()
        self._index += 1
        self._open = key
        yield sse_event("content_block_start", {"index": self._index, "content_block": block})

    def _stop(self) -> Iterator[bytes]:
        if self._open is not None:
            self._open = None
            yield sse_event("content_block_stop", {"index": self._index})

    def _piece(self, delta: dict[str, Any]) -> bytes:
        return sse_event("content_block_delta", {"index": self._index, "delta": delta})


def speaks_anthropic(path: str) -> bool:
    """Whether errors on `path` take Anthropic's shape."""
    return path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """Every error of `/v1/messages` (the schema published in /openapi.json)."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}
