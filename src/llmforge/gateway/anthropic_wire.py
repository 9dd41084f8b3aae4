"""The Anthropic Messages wire format served at `POST /v1/messages`, and its conversion to and from
core types. The only gateway module that knows it (the OpenAI one lives in `wire.py`).

Requests are validated strictly, like the OpenAI routes': a wrong type is a 400 naming the field.
Text is all this endpoint translates: `tools` and non-text content blocks (images, documents, tool
results) are refused with a 400 that says so, rather than dropped. `metadata`, `top_k`,
`tool_choice`, `thinking` and other optional keys are ignored. Answers and stream events follow the
Anthropic shapes; the core does not report which stop sequence ended an answer, so a stop is always
`end_turn` and `stop_sequence` is null.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BeforeValidator, Field, field_validator

from llmforge.core.db import sortable_id
from llmforge.core.types import Completion, Message, Sampling, Usage
from llmforge.gateway.wire import WireModel

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


class TextBlock(WireModel):
    type: Literal["text"]
    text: str


def _text_blocks_only(content: Any) -> Any:
    if isinstance(content, list):
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind not in ("text", None):
                raise ValueError(
                    f"content blocks of type '{kind}' are not supported by this endpoint; "
                    "send text blocks"
                )
    return content


Content = Annotated[str | list[TextBlock], BeforeValidator(_text_blocks_only)]


class MessageIn(WireModel):
    role: Literal["user", "assistant"]
    content: Content

    def text(self) -> str:
        return _joined(self.content)


class MessagesRequest(WireModel):
    model: str = Field(min_length=1)
    messages: list[MessageIn] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    system: Content | None = None
    stop_sequences: list[str] | None = Field(None, max_length=16)
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    tools: list[Any] | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, tools: list[Any] | None) -> list[Any] | None:
        if tools:
            raise ValueError("tool use is not supported by this endpoint yet")
        return tools

    def core_messages(self) -> list[Message]:
        system = _joined(self.system) if self.system is not None else ""
        head = [Message(role="system", content=system)] if system else []
        return head + [Message(role=m.role, content=m.text()) for m in self.messages]

    def sampling(self) -> Sampling:
        return Sampling(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(s for s in self.stop_sequences or () if s),
        )


def _joined(content: str | list[TextBlock]) -> str:
    return content if isinstance(content, str) else "".join(b.text for b in content)


def new_message_id() -> str:
    return "msg_" + sortable_id()


def stop_reason(finish: str | None) -> str:
    return "max_tokens" if finish == "length" else "end_turn"


def wire_usage(usage: Usage) -> dict[str, int]:
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}


def message_body(mid: str, model: str, completion: Completion) -> dict[str, Any]:
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": completion.text}],
        "stop_reason": stop_reason(completion.finish_reason),
        "stop_sequence": None,
        "usage": wire_usage(completion.usage),
    }


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """One Anthropic SSE event: a named event whose data repeats the name as `type`."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


def stream_head(mid: str, model: str) -> list[bytes]:
    """The events before the first text: the empty message, its one text block, a ping."""
    message: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": wire_usage(Usage()),
    }
    return [
        sse_event("message_start", {"message": message}),
        sse_event(
            "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
        ),
        sse_event("ping", {}),
    ]


def text_event(text: str) -> bytes:
    return sse_event(
        "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}}
    )


def stream_tail(finish: str | None, usage: Usage) -> list[bytes]:
    """The events after the last text: block stop, the stop reason with the final usage, stop."""
    return [
        sse_event("content_block_stop", {"index": 0}),
        sse_event(
            "message_delta",
            {
                "delta": {"stop_reason": stop_reason(finish), "stop_sequence": None},
                "usage": wire_usage(usage),
            },
        ),
        sse_event("message_stop", {}),
    ]


def speaks_anthropic(path: str) -> bool:
    """Whether errors on `path` take Anthropic's shape."""
    return path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}
