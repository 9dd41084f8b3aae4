"""A minimal OpenAI-compatible upstream with a fixed latency, for the gateway overhead bench.

`POST .../chat/completions` answers a fixed, non-streaming chat completion after exactly
`--latency-ms` (a timer per request: no coroutine, no JSON parsing of the request), `GET
.../models` lists the one model at once, anything else is a 404. HTTP/1.1 keep-alive and
pipelining (answers in request order) over a raw asyncio protocol with httptools' parser and
uvloop, so one process serves thousands of requests a second on one core and the mock is not what
a bench measures.

Run: `.venv/bin/python bench/mock_upstream.py --port 9100 [--latency-ms 20]`; it prints
`ready <port>` once it listens. It binds 127.0.0.1 only and does not stream, validate requests or
count tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections import deque
from typing import cast

import httptools
import orjson

MODEL = "mock"
ANSWER = "Hello! This is the mock upstream."


def _response(status: bytes, body: bytes, keep_alive: bool) -> bytes:
    head = (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: " + (b"keep-alive" if keep_alive else b"close") + b"\r\n\r\n"
    )
    return head + body


def _bodies() -> tuple[bytes, bytes, bytes]:
    chat = orjson.dumps(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
        }
    )
    models = orjson.dumps(
        {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
    )
    missing = orjson.dumps({"error": {"message": "not found", "type": "invalid_request_error"}})
    return chat, models, missing


class MockUpstream(asyncio.Protocol):
    """One connection. Answers are queued in request order; a delayed answer holds back the ones
    pipelined after it, as HTTP/1.1 requires."""

    def __init__(self, latency_s: float, bodies: tuple[bytes, bytes, bytes]) -> None:
        self.latency_s = latency_s
        self.chat, self.models, self.missing = bodies
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.transport: asyncio.Transport | None = None
        self.queue: deque[list[bytes | None]] = deque()  # [answer or None while it waits]
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(_response(b"400 Bad Request", self.missing, False))
                self.transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        url, self.url = self.url.split(b"?", 1)[0], b""
        keep = self.parser.should_keep_alive()
        slot: list[bytes | None] = [None]
        self.queue.append(slot)
        if url.endswith(b"/chat/completions") and self.parser.get_method() == b"POST":
            answer = _response(b"200 OK", self.chat, keep)
            self.loop.call_later(self.latency_s, self._ready, slot, answer, keep)
        elif url.endswith(b"/models"):
            self._ready(slot, _response(b"200 OK", self.models, keep), keep)
        else:
            self._ready(slot, _response(b"404 Not Found", self.missing, keep), keep)

    def _ready(self, slot: list[bytes | None], answer: bytes, keep: bool) -> None:
        slot[0] = answer
        transport = self.transport
        while self.queue and self.queue[0][0] is not None:
            done = self.queue.popleft()[0]
            if transport is not None and not transport.is_closing():
                transport.write(done)  # type: ignore[arg-type]
        if not keep and transport is not None and not self.queue:
            transport.close()


async def serve(port: int, latency_s: float) -> None:
    loop = asyncio.get_running_loop()
    bodies = _bodies()
    server = await loop.create_server(
        lambda: MockUpstream(latency_s, bodies), "127.0.0.1", port, backlog=4096
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=9100, help="0: any free port")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="fixed answer delay")
    args = parser.parse_args(argv)
    try:
        import uvloop  # uvicorn[standard] brings it

        uvloop.run(serve(args.port, args.latency_ms / 1000))
    except ImportError:
        asyncio.run(serve(args.port, args.latency_ms / 1000))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
