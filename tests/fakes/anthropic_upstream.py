"""A small Anthropic Messages API upstream for tests: `POST /v1/messages`, JSON and SSE.

It checks requests the way the real API does where our adapter could get it wrong (the
`anthropic-version` header, `max_tokens` required, only user/assistant roles in `messages`, no
OpenAI-only keys, temperature at most 1) and answers a bad one with a 400 in Anthropic's error
shape. Behaviour is scripted by the `model` a request names: `echo` (or anything else) answers with
the last user turn's text, word by word, honouring `max_tokens` (in words) and `stop_sequences`;
`fail-<status>` answers that status with an Anthropic error body (`fail-429` with `retry-after: 2`);
`slow-<ms>` waits first; `hang` never answers; `midstream-error` streams one word and then an
`overloaded_error` event; `no-stop` streams an answer but ends without `message_stop`; `garbage`
sends invalid JSON. Usage counts words: input is every word of `system` and `messages`. Every
request body and its headers are kept in `requests` / `headers` for assertions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = ERROR_TYPES.get(status, "api_error")
    return JSONResponse(
        {"type": "error", "error": {"type": kind, "message": message}}, status, headers=headers
    )


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if b.get("type") == "text")


class FakeAnthropic:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.app = Starlette(
            routes=[
                Route("/health", self.health),
                Route("/v1/messages", self.messages, methods=["POST"]),
            ]
        )

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

        users = [m for m in body["messages"] if m["role"] == "user"]
        reply = text_of(users[-1]["content"]) if users else ""
        stop_reason, stop_sequence = "end_turn", None
        for s in body.get("stop_sequences") or ():
            if s in reply:
                reply, stop_reason, stop_sequence = reply[: reply.index(s)], "stop_sequence", s
        out = reply.split()
        if len(out) > body["max_tokens"]:
            out, stop_reason, stop_sequence = out[: body["max_tokens"]], "max_tokens", None
        system = body.get("system") or ""
        prompt = len(text_of(system).split()) + sum(
            len(text_of(m["content"]).split()) for m in body["messages"]
        )
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": " ".join(out)}],
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {"input_tokens": prompt, "output_tokens": len(out)},
        }
        if not body.get("stream"):
            return JSONResponse(message)
        return StreamingResponse(self._events(message, out, model), media_type="text/event-stream")

    async def _events(
        self, message: dict[str, Any], words: list[str], model: str
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
        yield event(
            "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
        )
        yield event("ping", {})
        for i, w in enumerate(words):
            text = (" " if i else "") + w
            yield event(
                "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}}
            )
            if model == "midstream-error":
                yield event(
                    "error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}
                )
                return
        yield event("content_block_stop", {"index": 0})
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
        if request.headers.get("anthropic-version") != "2023-06-01":
            return "anthropic-version: header is required"
        if not isinstance(body, dict):
            return "body must be an object"
        if not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
        for key in ("stop", "stream_options", "seed", "n"):
            if key in body:
                return f"{key}: Extra inputs are not permitted"
        if body.get("temperature", 0) > 1:
            return "temperature: Input should be less than or equal to 1"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages: at least one message is required"
        for i, m in enumerate(messages):
            if m.get("role") not in ("user", "assistant"):
                return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        return None
