"""A `ChatModel` that speaks the Anthropic Messages API (`POST /v1/messages`) to an upstream.

Translates, both ways, between the core's OpenAI-shaped types and Anthropic's: system (and
developer) messages become the top-level `system`; consecutive messages of one role are merged into
one turn of text blocks (tool messages are sent as user text); `max_tokens`, which Anthropic
requires, defaults to the model's `max_output_tokens`, else 4096; `stop` becomes `stop_sequences`;
temperature is capped at Anthropic's maximum of 1. Answers: text blocks joined, `stop_reason` mapped
to a finish reason, usage counted with cached input included in the prompt tokens. Streams:
`message_start` / `content_block_delta` / `message_delta` / `message_stop` events, `ping` ignored,
`error` events raised. Errors: Anthropic's `{"type": "error", "error": {...}}` bodies and statuses
(529 overloaded included) become `UpstreamError`s carrying the status and Retry-After, timeouts
`UpstreamTimeoutError`.

The HTTP plumbing is `HttpUpstream`, shared with the OpenAI-compatible client. Seed and the
presence/frequency penalties have no Anthropic equivalent and are not sent. Tool use, images and
extended thinking are not translated.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any, ClassVar

from llmforge.core.config import ModelConfig
from llmforge.core.errors import ConfigError, InvalidRequestError, LLMForgeError, UpstreamError
from llmforge.core.types import Completion, Delta, FinishReason, Message, Sampling, Usage
from llmforge.models.base import ModelContext
from llmforge.models.openai_compat import HttpUpstream, error_message
from llmforge.models.profiles import fill

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
MAX_TEMPERATURE = 1.0

FINISH: dict[str | None, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
}
INPUT_COUNTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
# Anthropic's error types by the HTTP status each stands for (for errors sent inside a stream).
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


class AnthropicClient(HttpUpstream):
    """The Messages API: `x-api-key` and `anthropic-version` headers, Anthropic error bodies."""

    headers: ClassVar[dict[str, str]] = {"anthropic-version": API_VERSION}
    context_exceeded: ClassVar[str] = "prompt is too long"

    def _auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def _event_error(self, event: dict[str, Any]) -> LLMForgeError | None:
        if event.get("type") != "error":
            return None
        error = event.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        return UpstreamError(
            f"model '{self.name}': upstream stream failed: {error_message(event)}",
            status_code=ERROR_STATUS.get(str(kind)),
        )


class AnthropicChatModel:
    def __init__(self, config: ModelConfig) -> None:
        if not config.base_url:
            raise ConfigError(
                f"model '{config.name}': provider {config.provider} needs `base_url` "
                "(e.g. https://api.anthropic.com)"
            )
        self._client = AnthropicClient(
            config.name, config.base_url, config.api_key_env, config.timeout_s
        )
        self.model_id = config.model_id or config.name
        self.max_tokens = config.max_output_tokens or DEFAULT_MAX_TOKENS

    def _payload(
        self, messages: Sequence[Message], sampling: Sampling, stream: bool
    ) -> dict[str, Any]:
        system, turns = _to_anthropic(messages)
        if not turns:
            raise InvalidRequestError(
                f"model '{self._client.name}' needs at least one user or assistant message",
                param="messages",
            )
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": turns,
            "max_tokens": sampling.max_tokens or self.max_tokens,
        }
        if system:
            body["system"] = system
        if sampling.temperature is not None:
            body["temperature"] = min(sampling.temperature, MAX_TEMPERATURE)
        if sampling.top_p is not None:
            body["top_p"] = sampling.top_p
        if sampling.stop:
            body["stop_sequences"] = list(sampling.stop)
        if stream:
            body["stream"] = True
        return body

    async def complete(self, messages: Sequence[Message], sampling: Sampling) -> Completion:
        data = await self._client.post("v1/messages", self._payload(messages, sampling, False))
        try:
            return Completion(
                text="".join(b["text"] for b in data["content"] if b.get("type") == "text"),
                finish_reason=FINISH.get(data.get("stop_reason"), "stop"),
                usage=_usage(data.get("usage") or {}),
            )
        except (KeyError, TypeError, AttributeError):
            raise UpstreamError(f"model '{self._client.name}': unexpected answer shape") from None

    async def stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        usage: dict[str, Any] = {}  # counts so far; message_delta's are cumulative
        stop_reason, stopped = None, False
        async for event in self._client.sse("v1/messages", self._payload(messages, sampling, True)):
            kind = event.get("type")
            if kind == "message_start":
                usage.update(_given((event.get("message") or {}).get("usage")))
            elif kind == "content_block_delta":
                delta = event.get("delta") or {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    yield Delta(text=delta["text"])
            elif kind == "message_delta":
                stop_reason = (event.get("delta") or {}).get("stop_reason") or stop_reason
                usage.update(_given(event.get("usage")))
            elif kind == "message_stop":
                stopped = True
        if not stopped:
            raise UpstreamError(
                f"model '{self._client.name}': upstream ended the stream before message_stop"
            )
        yield Delta(finish_reason=FINISH.get(stop_reason, "stop"), usage=_usage(usage))

    async def aclose(self) -> None:
        await self._client.aclose()


def _to_anthropic(messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """(system text, turns): system/developer text joined; runs of one role merged into one turn
    of text blocks; empty texts dropped (Anthropic refuses empty blocks)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for m in messages:
        if m.role in ("system", "developer"):
            system.append(m.content)
            continue
        if not m.content:
            continue
        role = "assistant" if m.role == "assistant" else "user"
        block = {"type": "text", "text": m.content}
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].append(block)
        else:
            turns.append({"role": role, "content": [block]})
    return "\n\n".join(s for s in system if s), turns


def _usage(raw: dict[str, Any]) -> Usage:
    """Usage from an Anthropic `usage` object; cached input counts as prompt tokens too."""
    prompt = sum(raw.get(k) or 0 for k in INPUT_COUNTS)
    return Usage(prompt_tokens=prompt, completion_tokens=raw.get("output_tokens") or 0)


def _given(raw: Any) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if v is not None} if isinstance(raw, dict) else {}


def create(config: ModelConfig, context: ModelContext | None = None) -> AnthropicChatModel:
    return AnthropicChatModel(fill(config))
