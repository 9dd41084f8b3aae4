"""A small Anthropic Messages API upstream for tests: `POST /v1/messages`, JSON and SSE.

It answers in Anthropic's wire format as the `anthropic` SDK reads it (text and `tool_use` content
blocks, `stop_reason` `tool_use`; streamed as `message_start`, `content_block_start` /
`content_block_delta` (`text_delta`, `input_json_delta`) / `content_block_stop` per block,
`message_delta`, `message_stop`, with a `ping`). It checks requests the way the real API does where
our adapter could get them wrong (an `anthropic-version` header, `max_tokens` required, only
user/assistant roles in `messages`, no OpenAI-only keys, temperature at most 1, non-empty text
blocks, image sources, tools and `tool_choice`, `tool_use` input an object, every `tool_use`
answered by a `tool_result` at the start of the next user turn) and answers a bad request with a
400 in Anthropic's error shape.

Scripted two ways:

- by the `model` a request names: `echo` (or anything else) answers with the last user turn's
  text, word by word, honouring `max_tokens` (in words) and `stop_sequences`; `tools` calls a tool
  when the request has tools (the first; input valid for its schema) and, once the last user turn
  carries tool results, answers "The tool said: <results>"; `parallel-tools` calls every tool
  (one with `disable_parallel_tool_use`); `fail-<status>` answers that status with an Anthropic
  error body (`fail-429` with `retry-after: 2`); `slow-<ms>` waits first; `hang` never answers;
  `midstream-error` streams one word and then an `overloaded_error` event; `no-stop` streams an
  answer but ends without `message_stop`; `garbage` sends invalid JSON. Whatever the model,
  `tool_choice` `any` or `tool` makes it call a tool, as Anthropic does (a forced call's input is
  the last user text when that is a JSON object, else an example valid for the schema).
- per instance: `respond(*replies)` answers the next requests with the `Reply`s given
  (`tests/fakes/reply.py`: text and tool calls), whole or streamed; `respond_raw(*answers)` with
  exact bodies (odd or malformed answers).

Usage counts words: input is every word of `system` and of the messages' text blocks; output the
answer's words and the pieces of its tool inputs. Every request body and its headers are kept in
`requests` / `headers` for assertions.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.reply import Call, Reply, call_to, pieces

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
OPENAI_ONLY = (
    "stop",
    "stream_options",
    "seed",
    "n",
    "response_format",
    "logprobs",
    "top_logprobs",
    "parallel_tool_calls",
)
TOOL_MODELS = ("tools", "parallel-tools")
MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = ERROR_TYPES.get(status, "api_error")
    return JSONResponse(
        {"type": "error", "error": {"type": kind, "message": message}}, status, headers=headers
    )


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if b.get("type") == "text")


def _results(content: Any) -> list[str]:
    """The texts of a user turn's tool_result blocks."""
    if isinstance(content, str):
        return []
    return [text_of(b.get("content") or "") for b in content if b.get("type") == "tool_result"]


class FakeAnthropic:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._replies: deque[Reply] = deque()
        self._raw: deque[Any] = deque()
        self.app = Starlette(
            routes=[
                Route("/health", self.health),
                Route("/v1/messages", self.messages, methods=["POST"]),
            ]
        )

    def respond(self, *replies: Reply) -> None:
        """Answer the next requests with `replies`, one each, before deciding by model again."""
        self._replies.extend(replies)

    def respond_raw(self, *answers: Any) -> None:
        """Answer the next requests with these exact bodies: a dict as JSON, a list as SSE (each
        item an event: its `type` names it). For odd or malformed answers."""
        self._raw.extend(answers)

    def reset(self) -> None:
        self.requests.clear()
        self.headers.clear()
        self._replies.clear()
        self._raw.clear()

    async def health(self, _request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def messages(self, request: Request) -> Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return error(400, "request body is not valid JSON")
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        problem = self._check(body, request)
        if problem:
            return error(400, problem)
        model = str(body["model"])
        if model.startswith("fail-"):
            status = int(model.removeprefix("fail-"))
            retry = {"retry-after": "2"} if status == 429 else None
            return error(status, f"scripted {status}", retry)
        if model.startswith("slow-"):
            await asyncio.sleep(int(model.removeprefix("slow-")) / 1000)
        if model == "hang":
            await asyncio.sleep(3600)
        if model == "garbage":
            return Response(b"{not json", media_type="application/json")

        if self._raw:
            return _raw_response(self._raw.popleft())
        reply = self._replies.popleft() if self._replies else _decide(body)
        text = reply.text
        stop_reason, stop_sequence = "tool_use" if reply.calls else "end_turn", None
        for s in body.get("stop_sequences") or ():
            if s in text:
                text, stop_reason, stop_sequence = text[: text.index(s)], "stop_sequence", s
        out = text.split()
        if len(out) > body["max_tokens"]:
            out, stop_reason, stop_sequence = out[: body["max_tokens"]], "max_tokens", None
        system = body.get("system") or ""
        prompt = len(text_of(system).split()) + sum(
            len(text_of(m["content"]).split()) for m in body["messages"]
        )
        content: list[dict[str, Any]] = []
        if out or not reply.calls:
            content.append({"type": "text", "text": " ".join(out)})
        n = len(self.requests)
        for k, call in enumerate(reply.calls):
            block_id = f"toolu_{n:04d}{k:02d}"
            content.append(
                {
                    "type": "tool_use",
                    "id": block_id,
                    "name": call.name,
                    "input": json.loads(call.arguments),
                }
            )
        output = len(out) + sum(len(pieces(c.arguments, reply.piece)) for c in reply.calls)
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": reply.finish_reason or stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {"input_tokens": prompt, "output_tokens": output},
        }
        if not body.get("stream"):
            return JSONResponse(message)
        events = self._events(message, out, reply, model)
        return StreamingResponse(events, media_type="text/event-stream")

    async def _events(
        self, message: dict[str, Any], words: list[str], reply: Reply, model: str
    ) -> AsyncIterator[str]:
        def event(name: str, data: dict[str, Any]) -> str:
            return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": message["usage"]["input_tokens"], "output_tokens": 1},
        }
        yield event("message_start", {"message": start})
        for i, block in enumerate(message["content"]):
            opening: dict[str, Any]
            if block["type"] == "text":
                opening = {"type": "text", "text": ""}
            else:
                opening = {**block, "input": {}}
            yield event("content_block_start", {"index": i, "content_block": opening})
            if i == 0:
                yield event("ping", {})
            if block["type"] == "text":
                for k, w in enumerate(words):
                    delta = {"type": "text_delta", "text": (" " if k else "") + w}
                    yield event("content_block_delta", {"index": i, "delta": delta})
                    if model == "midstream-error":
                        overloaded = {"type": "overloaded_error", "message": "Overloaded"}
                        yield event("error", {"error": overloaded})
                        return
            else:
                arguments = json.dumps(block["input"])
                for piece in ["", *pieces(arguments, reply.piece)]:  # the API starts with ""
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    yield event("content_block_delta", {"index": i, "delta": delta})
            yield event("content_block_stop", {"index": i})
        yield event(
            "message_delta",
            {
                "delta": {
                    "stop_reason": message["stop_reason"],
                    "stop_sequence": message["stop_sequence"],
                },
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        )
        if model != "no-stop":
            yield event("message_stop", {})

    @staticmethod
    def _check(body: Any, request: Request) -> str | None:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", request.headers.get("anthropic-version", "")):
            return "anthropic-version: header is required"
        if not isinstance(body, dict):
            return "body must be an object"
        if not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
        for key in OPENAI_ONLY:
            if key in body:
                return f"{key}: Extra inputs are not permitted"
        if body.get("temperature", 0) > 1:
            return "temperature: Input should be less than or equal to 1"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages: at least one message is required"
        return _check_tools(body) or _check_turns(messages)


def _raw_response(answer: Any) -> Response:
    if not isinstance(answer, list):
        return JSONResponse(answer)
    events = "".join(f"event: {e.get('type')}\ndata: {json.dumps(e)}\n\n" for e in answer)
    return Response(events, media_type="text/event-stream")


def _decide(body: dict[str, Any]) -> Reply:
    """The answer to a request, by the model it names (see the module's docstring)."""
    model = str(body["model"])
    tools = {t["name"]: t.get("input_schema") for t in body.get("tools") or ()}
    choice = body.get("tool_choice") or {"type": "auto"}
    last = body["messages"][-1]
    results = _results(last["content"]) if last["role"] == "user" else []
    user_text = text_of(last["content"]) if last["role"] == "user" else ""
    if tools and choice["type"] == "tool":
        return Reply(calls=(_forced(choice["name"], tools[choice["name"]], user_text),))
    if tools and choice["type"] == "any" and model not in TOOL_MODELS:
        name = next(iter(tools))
        return Reply(calls=(_forced(name, tools[name], user_text),))
    if model in TOOL_MODELS and results and choice["type"] != "any":
        return Reply(text="The tool said: " + "; ".join(results))
    if tools and model in TOOL_MODELS and choice["type"] != "none":
        one = model != "parallel-tools" or choice.get("disable_parallel_tool_use")
        chosen = list(tools.items())[:1] if one else list(tools.items())
        return Reply(calls=tuple(call_to(name, schema) for name, schema in chosen))
    users = [m for m in body["messages"] if m["role"] == "user"]
    return Reply(text=text_of(users[-1]["content"]) if users else "")


def _forced(name: str, schema: dict[str, Any] | None, user_text: str) -> Call:
    """A forced call: the user's text as its input when that is a JSON object (echo), else an
    example valid for the schema."""
    try:
        given = json.loads(user_text)
    except ValueError:
        given = None
    return Call(name, json.dumps(given)) if isinstance(given, dict) else call_to(name, schema)


def _check_tools(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    names = []
    for i, t in enumerate(tools or ()):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or "type" in t:
            return f"tools.{i}: expected {{name, description?, input_schema}}"
        schema = t.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return f"tools.{i}.input_schema.type: Input should be 'object'"
        names.append(t["name"])
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        return "tool_choice: Input should be an object of type auto, any, tool or none"
    if choice["type"] == "tool" and choice.get("name") not in names:
        return f"tool_choice.name: no tool named {choice.get('name')!r} in tools"
    if choice["type"] == "none" and "disable_parallel_tool_use" in choice:
        return "tool_choice.none.disable_parallel_tool_use: Extra inputs are not permitted"
    return None


def _check_turns(messages: list[Any]) -> str | None:
    asked: set[str] = set()  # tool_use ids of the previous assistant turn, not yet answered
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list) or not blocks:
            return f"messages.{i}.content: a string or a non-empty list of blocks"
        leading = True
        for k, b in enumerate(blocks):
            where = f"messages.{i}.content.{k}"
            problem = _check_block(b, m["role"], where)
            if problem:
                return problem
            if b["type"] == "tool_result":
                if not leading:
                    return f"{where}: tool_result blocks must come first in a user turn"
                if b["tool_use_id"] not in asked:
                    return f"{where}: unexpected tool_use_id {b['tool_use_id']!r}"
                asked.discard(b["tool_use_id"])
            else:
                leading = False
        if asked:
            return f"messages.{i}: tool_use ids were found without tool_result blocks: {asked}"
        if m["role"] == "assistant":
            asked = {b["id"] for b in blocks if b["type"] == "tool_use"}
    return None


def _check_block(b: Any, role: str, where: str) -> str | None:
    kind = b.get("type") if isinstance(b, dict) else None
    if kind == "text":
        return None if b.get("text") else f"{where}.text: text content blocks must be non-empty"
    if kind == "image" and role == "user":
        source = b.get("source") or {}
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            return None
        if source.get("type") == "base64" and source.get("media_type") in MEDIA_TYPES:
            return None if isinstance(source.get("data"), str) else f"{where}.source.data"
        return f"{where}.source: a base64 source (with a media_type) or a url source"
    if kind == "tool_use" and role == "assistant":
        if not isinstance(b.get("input"), dict):
            return f"{where}.input: Input should be a valid dictionary"
        ok = isinstance(b.get("id"), str) and isinstance(b.get("name"), str)
        return None if ok else f"{where}: tool_use needs id and name"
    if kind == "tool_result" and role == "user":
        return None if isinstance(b.get("tool_use_id"), str) else f"{where}.tool_use_id"
    return f"{where}.type: {kind!r} is not allowed in a {role} turn"
