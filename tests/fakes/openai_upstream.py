"""A small OpenAI-compatible upstream for tests: chat (JSON and SSE), embeddings, models.

Two ways to script it, so one server covers every case:

- by the `model` a request names: `echo` answers with the last user message; `fail-<status>`
  answers that HTTP status with an OpenAI error; `slow-<ms>` waits before answering; `hang` never
  answers; `midstream-error` sends one token then an error event; `garbage` sends invalid JSON.
- per instance, with `Fault`s: `script(*faults)` applies one fault to each of the next requests,
  `always` to every request after those (see `Fault` for what a fault can do: an error status with
  `Retry-After`, latency, a hang, slowly dripped tokens, an error event or a dropped connection
  after K tokens). Run two instances as two replicas and count what each one saw.

What it records: every request body (`requests`) and its headers, requests in flight now (`active`)
and at most (`peak`), and streams or waits the client abandoned (`abandoned`: the connection closed
before the fake was done). It does not check API keys or validate requests beyond what it reads.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send


@dataclass(frozen=True)
class Fault:
    """What the fake does to one request; the defaults answer normally."""

    status: int | None = None  # answer this HTTP status with an OpenAI error body
    retry_after: str | None = None  # ... and this Retry-After header
    code: str | None = None  # ... and this error `code` (e.g. "context_length_exceeded")
    delay_s: float = 0.0  # wait before answering
    hang: bool = False  # never answer (until the client goes away)
    drop: bool = False  # drop the connection right after the status line, before any token
    drip_s: float = 0.0  # stream: pause before each token
    error_after: int | None = None  # stream: an error event after this many tokens
    drop_after: int | None = None  # stream: drop the connection after this many tokens


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.always: Fault | None = None
        self._script: deque[Fault] = deque()
        self.active = 0
        self.peak = 0
        self.abandoned = 0
        self.app = Starlette(
            routes=[
                Route("/health", self.health),
                Route("/v1/models", self.models),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            ]
        )

    # -- scripting ------------------------------------------------------------------------------

    def script(self, *faults: Fault) -> None:
        """Apply `faults` to the next requests, one each, before `always`."""
        self._script.extend(faults)

    def fail_next(self, n: int, status: int, retry_after: str | None = None) -> None:
        self.script(*[Fault(status=status, retry_after=retry_after)] * n)

    def reset(self) -> None:
        self.requests.clear()
        self.headers.clear()
        self._script.clear()
        self.always = None
        self.active = self.peak = self.abandoned = 0

    @property
    def calls(self) -> int:
        return len(self.requests)

    def _next_fault(self) -> Fault:
        return self._script.popleft() if self._script else (self.always or Fault())

    # -- routes ---------------------------------------------------------------------------------

    async def health(self, _request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def models(self, _request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "echo", "object": "model"}]})

    async def _prelude(self, request: Request) -> tuple[dict[str, Any], Fault, Response | None]:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        fault = self._next_fault()
        model = str(body.get("model", ""))
        if fault.delay_s and await self._wait(request, fault.delay_s):
            return body, fault, Response(status_code=499)
        if fault.hang and await self._wait(request, 3600):
            return body, fault, Response(status_code=499)
        if fault.drop:
            return body, fault, Dropped([])
        if fault.status is not None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            error = {"message": f"scripted {fault.status}", "type": "x", "code": fault.code}
            return body, fault, JSONResponse({"error": error}, fault.status, headers)
        if model.startswith("fail-"):
            status = int(model.removeprefix("fail-"))
            return (
                body,
                fault,
                JSONResponse({"error": {"message": f"scripted {status}", "type": "x"}}, status),
            )
        if model.startswith("slow-"):
            await asyncio.sleep(int(model.removeprefix("slow-")) / 1000)
        if model == "hang":
            await asyncio.sleep(3600)
        if model == "garbage":
            return body, fault, Response(b"{not json", media_type="application/json")
        return body, fault, None

    async def _wait(self, request: Request, seconds: float) -> bool:
        """Sleep, or stop early when the client closes the connection (then True)."""
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            gone = asyncio.ensure_future(_disconnected(request))
            done, _ = await asyncio.wait({gone}, timeout=seconds)
            if not done:
                gone.cancel()
                return False
            self.abandoned += 1
            return True
        finally:
            self.active -= 1

    async def chat(self, request: Request) -> Response:
        body, fault, early = await self._prelude(request)
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

        def event(payload: dict[str, Any]) -> str:
            base = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": body["model"],
            }
            return "data: " + json.dumps({**base, **payload}) + "\n\n"

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
            return event(
                {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
            )

        tokens = [(" " if i else "") + w for i, w in enumerate(words)]
        if fault.drop_after is not None:
            head = [chunk({"role": "assistant", "content": ""})]
            return Dropped(head + [chunk({"content": t}) for t in tokens[: fault.drop_after]])

        async def events() -> AsyncIterator[str]:
            self.active += 1
            self.peak = max(self.peak, self.active)
            completed = False
            try:
                yield chunk({"role": "assistant", "content": ""})
                for i, token in enumerate(tokens):
                    if i == fault.error_after:
                        yield 'data: {"error": {"message": "scripted failure mid-stream"}}\n\n'
                        completed = True
                        return
                    if fault.drip_s:
                        await asyncio.sleep(fault.drip_s)
                    yield chunk({"content": token})
                    if body["model"] == "midstream-error":
                        yield 'data: {"error": {"message": "scripted failure mid-stream"}}\n\n'
                        completed = True
                        return
                yield chunk({}, finish)
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield event({"choices": [], "usage": usage})
                yield "data: [DONE]\n\n"
                completed = True
            finally:
                self.active -= 1
                if not completed:
                    self.abandoned += 1

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(self, request: Request) -> Response:
        body, _fault, early = await self._prelude(request)
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


class Dropped(Response):
    """A 200 whose connection drops after `chunks`: the status line and those body chunks are sent,
    then the app returns without finishing the response and the server closes the socket."""

    def __init__(self, chunks: list[str]) -> None:
        super().__init__(media_type="text/event-stream")
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for c in self.chunks:
            await send({"type": "http.response.body", "body": c.encode(), "more_body": True})


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
