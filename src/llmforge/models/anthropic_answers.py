"""What the Anthropic Messages API answers, as small pydantic models: a whole message, and the
events of a streamed one.

The models read only the fields the adapter uses and ignore the rest (`extra="ignore"`), so new
block and event types (thinking, server tools, ...) pass unread instead of failing; a shape they
cannot read raises pydantic's `ValidationError`, which the client turns into an `UpstreamError`
naming the model. Translating them into core types is `anthropic.py`'s job; this module does no
I/O.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmforge.core.types import Usage

INPUT_COUNTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


class Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")


class AnthropicUsage(Answer):
    input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    output_tokens: int | None = None

    def given(self) -> dict[str, int]:
        """The counts this object carries (a stream's `message_delta` repeats only some)."""
        return self.model_dump(exclude_none=True)


def usage_of(counts: dict[str, int]) -> Usage:
    """Usage from Anthropic's counts; cached input counts as prompt tokens too."""
    prompt = sum(counts.get(k) or 0 for k in INPUT_COUNTS)
    return Usage(prompt_tokens=prompt, completion_tokens=counts.get("output_tokens") or 0)


class Block(Answer):
    """A content block. `text` blocks carry `text`; `tool_use` blocks `id`, `name` and `input`;
    other types are carried but not read."""

    type: str
    text: str = ""
    id: str = ""
    name: str = ""
    input: dict[str, Any] = Field(default_factory=dict)


class MessageAnswer(Answer):
    """A whole answer (`POST /v1/messages` without `stream`)."""

    content: list[Block]
    stop_reason: str | None = None
    usage: AnthropicUsage = Field(default_factory=AnthropicUsage)


class MessageHead(Answer):
    """`message_start`'s message: the answer before any content (its usage counts the input)."""

    usage: AnthropicUsage = Field(default_factory=AnthropicUsage)


class EventDelta(Answer):
    """`content_block_delta`'s delta (`text_delta`: text; `input_json_delta`: a piece of a tool
    call's input JSON) or `message_delta`'s (the stop reason)."""

    type: str | None = None
    text: str = ""
    partial_json: str = ""
    stop_reason: str | None = None


class StreamEvent(Answer):
    """One event of a streamed answer; which fields are set depends on `type`."""

    type: str
    message: MessageHead | None = None
    index: int = 0
    content_block: Block | None = None
    delta: EventDelta | None = None
    usage: AnthropicUsage | None = None
