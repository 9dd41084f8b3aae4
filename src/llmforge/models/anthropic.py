"""A `ChatModel` that speaks the Anthropic Messages API (`POST /v1/messages`) to an upstream.

Translates, both ways, between the core's OpenAI-shaped types and Anthropic's:

- Messages: system (and developer) messages become the top-level `system`; consecutive messages of
  one role are merged into one turn. An assistant's tool calls become `tool_use` blocks (their
  JSON arguments parsed into `input`, which must be an object), `tool` messages `tool_result`
  blocks in a user turn (consecutive results merged into one turn, ahead of any text, as Anthropic
  requires), images `image` blocks (a base64 `data:` URL as a base64 source with its media type,
  an http(s) URL as a url source; `detail` has no equivalent and is dropped). Empty texts are
  dropped (Anthropic refuses empty blocks).
- Sampling: `max_tokens`, which Anthropic requires, defaults to the model's `max_output_tokens`,
  else 4096; `stop` becomes `stop_sequences`; temperature is capped at Anthropic's maximum of 1.
  Tools become `tools` (name, description, `input_schema`; `strict` is not sent), `tool_choice`
  auto / required / a named function / none becomes `auto` / `any` / `tool` / `none`, and
  `parallel_tool_calls: false` becomes `disable_parallel_tool_use`.
- Structured output: the 2023-06-01 API has no JSON mode, so `response_format` is sent as one more
  tool, `json_answer`, whose `input_schema` is the schema (`{"type": "object"}` for json_object; a
  schema whose top level is not an object is wrapped as the `value` property), and the model is
  made to call it (`tool_choice` `tool`, or `any` next to the caller's own tools; a call forced to
  one of the caller's tools stays forced). That call's input comes back as the answer's text, with
  finish `stop`, as LiteLLM does it. Streamed, its `input_json_delta` pieces are the text pieces
  (a wrapped schema's value comes whole when its block ends), so a streamed answer is the same JSON
  value as a whole one but may differ from it in whitespace.
- Answers: text blocks joined, `tool_use` blocks become tool calls (arguments: the JSON text of
  `input`), `stop_reason` mapped to a finish reason (`tool_use` -> `tool_calls`, `refusal` ->
  `content_filter`), usage counted with cached input included in the prompt tokens. Streams:
  `message_start` / `content_block_start` / `content_block_delta` (`text_delta`,
  `input_json_delta`) / `content_block_stop` / `message_delta` / `message_stop` events; a tool_use
  block's start is a tool-call piece with its id and name, its `input_json_delta`s the pieces of its
  arguments (`{}` when it sent none); `ping` and unknown events are ignored, `error` events raised.
- Errors: Anthropic's `{"type": "error", "error": {...}}` bodies and statuses (529 overloaded
  included) become `UpstreamError`s carrying the status and Retry-After, timeouts
  `UpstreamTimeoutError`, answers of the wrong shape an `UpstreamError` naming the model.

Not supported, refused before sending with an `InvalidRequestError` (400) that says so: `logprobs`
/ `top_logprobs` (Anthropic returns none) and `n` > 1 (one answer per request). Seed and the
presence/frequency penalties have no Anthropic equivalent and are not sent. There is no legacy text
completion (the model is not a `TextModel`), and extended thinking, server tools and prompt caching
are not translated. The HTTP plumbing is `HttpUpstream`, shared with the OpenAI-compatible client.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import Any, ClassVar

import orjson

from llmforge.core.config import ModelConfig
from llmforge.core.errors import ConfigError, InvalidRequestError, LLMForgeError, UpstreamError
from llmforge.core.types import (
    Completion,
    Delta,
    FinishReason,
    ImagePart,
    Message,
    ResponseFormat,
    Sampling,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)
from llmforge.models.anthropic_answers import MessageAnswer, StreamEvent, usage_of
from llmforge.models.base import ModelContext
from llmforge.models.openai_compat import HttpUpstream, error_message
from llmforge.models.profiles import fill

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
MAX_TEMPERATURE = 1.0
ANSWER_TOOL = "json_answer"

FINISH: dict[str | None, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}
TOOL_CHOICE = {"auto": "auto", "required": "any", "function": "tool", "none": "none"}
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
DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL)


class AnthropicClient(HttpUpstream):
    """The Messages API: `x-api-key` and `anthropic-version` headers, Anthropic error bodies."""

    headers: ClassVar[dict[str, str]] = {"anthropic-version": API_VERSION}
    context_exceeded: ClassVar[str] = "prompt is too long"
    api: ClassVar[str] = "the Anthropic Messages API"

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


class AnswerTool:
    """`response_format` as a tool the model is made to call: its input is the answer."""

    name = ANSWER_TOOL

    def __init__(self, fmt: ResponseFormat) -> None:
        schema = dict(fmt.json_schema or {"type": "object"})
        self.wrapped = schema.get("type") != "object"  # Anthropic's input_schema is an object
        if self.wrapped:
            defs: dict[str, Any] = {
                k: schema.pop(k) for k in ("$defs", "definitions") if k in schema
            }
            schema = {"type": "object", "properties": {"value": schema}, "required": ["value"]}
            schema.update(defs)  # references into them resolve from the root as before
        self.spec = {
            "name": self.name,
            "description": f"Give your answer ({fmt.name}) as this tool's input.",
            "input_schema": schema,
        }

    def text(self, given: dict[str, Any]) -> str:
        """The answer's text: the JSON of the call's input (of its `value`, when wrapped)."""
        return orjson.dumps(given.get("value") if self.wrapped else given).decode()


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
        self,
        messages: Sequence[Message],
        sampling: Sampling,
        stream: bool,
        answer: AnswerTool | None,
    ) -> dict[str, Any]:
        name = self._client.name
        if sampling.logprobs or sampling.top_logprobs:
            raise InvalidRequestError(
                f"model '{name}' (Anthropic) returns no log probabilities; "
                "leave out `logprobs` and `top_logprobs`",
                param="logprobs",
            )
        if sampling.n > 1:
            raise InvalidRequestError(
                f"model '{name}' (Anthropic) gives one answer per request; send n=1 "
                "(or several requests)",
                param="n",
            )
        system, turns = _to_anthropic(messages)
        if not turns:
            raise InvalidRequestError(
                f"model '{name}' needs at least one user or assistant message",
                param="messages",
            )
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": turns,
            "max_tokens": sampling.max_tokens or self.max_tokens,
            **_tool_fields(sampling, answer),
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
        answer = _answer_tool(sampling)
        payload = self._payload(messages, sampling, False, answer)
        reply = self._client.parse(MessageAnswer, await self._client.post("v1/messages", payload))
        text: list[str] = []
        calls: list[ToolCall] = []
        for block in reply.content:
            if block.type == "text":
                text.append(block.text)
            elif block.type == "tool_use" and answer is not None and block.name == answer.name:
                text.append(answer.text(block.input))
            elif block.type == "tool_use":
                arguments = orjson.dumps(block.input).decode()
                calls.append(ToolCall(id=block.id, name=block.name, arguments=arguments))
        return Completion(
            text="".join(text),
            finish_reason=_finish(reply.stop_reason, bool(calls)),
            usage=usage_of(reply.usage.given()),
            tool_calls=tuple(calls),
        )

    async def stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        answer = _answer_tool(sampling)
        reader = _StreamReader(self._client.name, answer)
        payload = self._payload(messages, sampling, True, answer)
        async for event in self._client.sse("v1/messages", payload):
            for delta in reader.read(self._client.parse(StreamEvent, event)):
                yield delta
        yield reader.end()

    async def aclose(self) -> None:
        await self._client.aclose()


class _StreamReader:
    """Turns the events of one streamed answer into `Delta`s; `end` gives the final one."""

    def __init__(self, model: str, answer: AnswerTool | None) -> None:
        self._model = model
        self._answer = answer
        self._calls: dict[int, int] = {}  # tool_use block index -> tool call index
        self._argued: set[int] = set()  # tool_use blocks that sent some input
        self._answer_block: int | None = None
        self._answer_json: list[str] = []
        self._usage: dict[str, int] = {}  # counts so far; message_delta's are cumulative
        self._stop_reason: str | None = None
        self._stopped = False

    def read(self, event: StreamEvent) -> Iterator[Delta]:
        kind, i = event.type, event.index
        if kind == "message_start" and event.message is not None:
            self._usage.update(event.message.usage.given())
        elif kind == "content_block_start" and event.content_block is not None:
            yield from self._start(i, event)
        elif kind == "content_block_delta" and event.delta is not None:
            delta = event.delta
            if delta.type == "text_delta" and delta.text:
                yield Delta(text=delta.text)
            elif delta.type == "input_json_delta" and delta.partial_json:
                yield from self._input(i, delta.partial_json)
        elif kind == "content_block_stop":
            yield from self._stop(i)
        elif kind == "message_delta":
            if event.delta is not None:
                self._stop_reason = event.delta.stop_reason or self._stop_reason
            if event.usage is not None:
                self._usage.update(event.usage.given())
        elif kind == "message_stop":
            self._stopped = True

    def _start(self, i: int, event: StreamEvent) -> Iterator[Delta]:
        block = event.content_block
        if block is None or block.type != "tool_use":
            return
        if self._answer is not None and block.name == self._answer.name:
            self._answer_block = i
        else:
            self._calls[i] = len(self._calls)
            yield Delta(
                tool_calls=(ToolCallDelta(index=self._calls[i], id=block.id, name=block.name),)
            )
        if block.input:  # the whole input up front (the API itself sends it in pieces)
            yield from self._input(i, orjson.dumps(block.input).decode())

    def _input(self, i: int, piece: str) -> Iterator[Delta]:
        self._argued.add(i)
        if i == self._answer_block and self._answer is not None:
            if self._answer.wrapped:
                self._answer_json.append(piece)
            else:
                yield Delta(text=piece)
        elif i in self._calls:
            yield Delta(tool_calls=(ToolCallDelta(index=self._calls[i], arguments=piece),))

    def _stop(self, i: int) -> Iterator[Delta]:
        if i == self._answer_block and self._answer is not None:
            if self._answer.wrapped:
                yield Delta(text=self._answer.text(self._whole_answer()))
            elif i not in self._argued:
                yield Delta(text="{}")
        elif i in self._calls and i not in self._argued:
            yield Delta(tool_calls=(ToolCallDelta(index=self._calls[i], arguments="{}"),))

    def _whole_answer(self) -> dict[str, Any]:
        try:
            given = orjson.loads("".join(self._answer_json) or "{}")
        except orjson.JSONDecodeError:
            given = None
        if not isinstance(given, dict):
            raise UpstreamError(f"model '{self._model}': upstream streamed a malformed tool input")
        return given

    def end(self) -> Delta:
        if not self._stopped:
            raise UpstreamError(
                f"model '{self._model}': upstream ended the stream before message_stop"
            )
        return Delta(
            finish_reason=_finish(self._stop_reason, bool(self._calls)),
            usage=usage_of(self._usage),
        )


def _finish(stop_reason: str | None, called: bool) -> FinishReason:
    """The finish reason; a `tool_use` stop that only called the answer tool is a plain stop."""
    reason = FINISH.get(stop_reason, "stop")
    return "stop" if reason == "tool_calls" and not called else reason


def _answer_tool(sampling: Sampling) -> AnswerTool | None:
    if sampling.response_format is None:
        return None
    if any(t.name == ANSWER_TOOL for t in sampling.tools):
        raise InvalidRequestError(
            f"a tool named '{ANSWER_TOOL}' cannot be used with `response_format` on an Anthropic "
            "model (that name carries the structured answer); rename the tool",
            param="tools",
        )
    return AnswerTool(sampling.response_format)


def _tool_fields(sampling: Sampling, answer: AnswerTool | None) -> dict[str, Any]:
    """`tools` and `tool_choice`, with the answer tool of `response_format` when there is one."""
    tools: list[dict[str, Any]] = []
    for t in sampling.tools:
        tool: dict[str, Any] = {"name": t.name, "input_schema": t.parameters}
        if t.description is not None:
            tool["description"] = t.description
        tools.append(tool)
    choice = sampling.tool_choice or ToolChoice()
    if answer is not None and choice.mode != "function":  # a call forced to a tool stays forced
        if choice.mode == "none" or not tools:
            tools, choice = [], ToolChoice(mode="function", name=answer.name)
        else:
            choice = ToolChoice(mode="required")
        tools.append(answer.spec)
    if not tools:
        return {}
    spec: dict[str, Any] = {"type": TOOL_CHOICE[choice.mode]}
    if choice.mode == "function":
        spec["name"] = choice.name
    if sampling.parallel_tool_calls is False and choice.mode != "none":
        spec["disable_parallel_tool_use"] = True
    return {"tools": tools, "tool_choice": spec}


def _to_anthropic(messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """(system text, turns): system/developer text joined; runs of one role (tool results count
    as the user's) merged into one turn."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for m in messages:
        if m.role in ("system", "developer"):
            system.append(m.content)
            continue
        blocks = _blocks(m)
        if not blocks:
            continue
        role = "assistant" if m.role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            _merge(turns[-1]["content"], blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(s for s in system if s), turns


def _blocks(m: Message) -> list[dict[str, Any]]:
    """One message's content blocks."""
    if m.role == "tool":
        if not m.tool_call_id:
            raise InvalidRequestError(
                "a tool message needs the `tool_call_id` of the call it answers", param="messages"
            )
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id}
        if m.content:
            result["content"] = m.content
        return [result]
    blocks = [_image(image) for image in m.images] if m.role == "user" else []
    if m.content:
        blocks.append({"type": "text", "text": m.content})
    if m.role == "assistant":
        blocks.extend(_tool_use(call) for call in m.tool_calls)
    return blocks


def _merge(turn: list[dict[str, Any]], blocks: list[dict[str, Any]]) -> None:
    """Add `blocks` to a turn; tool results go after the turn's leading results, before its text."""
    if blocks[0]["type"] != "tool_result":
        turn.extend(blocks)
        return
    at = next((k for k, b in enumerate(turn) if b["type"] != "tool_result"), len(turn))
    turn[at:at] = blocks


def _tool_use(call: ToolCall) -> dict[str, Any]:
    try:
        given = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError:
        given = None
    if not isinstance(given, dict):
        raise InvalidRequestError(
            f"tool call '{call.id}' ({call.name}) has arguments that are not a JSON object; "
            "Anthropic takes a tool call's input as an object",
            param="messages",
        )
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": given}


def _image(image: ImagePart) -> dict[str, Any]:
    if not image.url.startswith("data:"):
        return {"type": "image", "source": {"type": "url", "url": image.url}}
    match = DATA_URL.fullmatch(image.url)
    if match is None:
        raise InvalidRequestError(
            "an image `data:` URL must be base64 (data:image/png;base64,...)", param="messages"
        )
    source = {"type": "base64", "media_type": match[1], "data": match[2]}
    return {"type": "image", "source": source}


def create(config: ModelConfig, context: ModelContext | None = None) -> AnthropicChatModel:
    return AnthropicChatModel(fill(config))
