"""A small OpenAI-compatible upstream for tests: chat (JSON and SSE), embeddings, models.

Behaviour is scripted by the `model` a request names, so one server covers every case: `echo`
answers with the last user message; `fail-<status>` answers that HTTP status with an OpenAI error;
`slow-<ms>` waits before answering; `hang` never answers; `midstream-error` sends one token then an
error event; `garbage` sends invalid JSON. Every request body is kept in `requests` for assertions.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.app = Starlette(
            routes=[
                Route("/health", self.health),
                Route("/v1/models", self.models),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            ]
        )

    async def health(self, _request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def models(self, _request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "echo", "object": "model"}]})

    async def _prelude(self, request: Request) -> tuple[dict[str, Any], Response | None]:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        model = str(body.get("model", ""))
        if model.startswith("fail-"):
            status = int(model.removeprefix("fail-"))
            return body, JSONResponse(
                {"error": {"message": f"scripted {status}", "type": "x"}}, status
            )
        if model.startswith("slow-"):
            await asyncio.sleep(int(model.removeprefix("slow-")) / 1000)
        if model == "hang":
            await asyncio.sleep(3600)
        if model == "garbage":
            return body, Response(b"{not json", media_type="application/json")
        return body, None

    async def chat(self, request: Request) -> Response:
        body, early = await self._prelude(request)
        if early is not None:
            return early
        text = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        words = text.split()
        if body.get("max_tokens") and len(words) > body["max_tokens"]:
            words, finish = words[: body["max_tokens"]], "length"
        else:
            finish = "stop"
        reply = " ".join(words)
        usage = {
            "prompt_tokens": 7,
            "completion_tokens": len(words),
            "total_tokens": 7 + len(words),
        }
        created = int(time.time())
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": created,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                }
            )

        async def events() -> Any:
            def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
                return (
                    "data: "
                    + json.dumps(
                        {
                            "id": "chatcmpl-fake",
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": body["model"],
                            "choices": [
                                {"index": 0, "delta": delta, "finish_reason": finish_reason}
                            ],
                        }
                    )
                    + "\n\n"
                )

            yield chunk({"role": "assistant", "content": ""})
            for i, w in enumerate(words):
                yield chunk({"content": (" " if i else "") + w})
                if body["model"] == "midstream-error":
                    yield 'data: {"error": {"message": "scripted failure mid-stream"}}\n\n'
                    return
            yield chunk({}, finish)
            if (body.get("stream_options") or {}).get("include_usage"):
                yield (
                    "data: "
                    + json.dumps(
                        {
                            "id": "chatcmpl-fake",
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": body["model"],
                            "choices": [],
                            "usage": usage,
                        }
                    )
                    + "\n\n"
                )
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(self, request: Request) -> Response:
        body, early = await self._prelude(request)
        if early is not None:
            return early
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0, 0.0]}
            for i, t in enumerate(inputs)
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
            }
        )
