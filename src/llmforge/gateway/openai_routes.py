"""`POST /v1/chat/completions` and `POST /v1/embeddings`: the OpenAI routes, served as plain ASGI
ahead of FastAPI.

Nearly every request a deployed gateway sees comes through these two routes, so they skip what
FastAPI does per request (its middleware layers, route matching, dependency solving, the standard
library's JSON parser before validation): the body is read once (under `server.max_body_bytes`, by
the same middleware as the other routes) and validated by pydantic straight from the JSON bytes
into the wire models of `wire.py`: about 45% less framework time per call, measured in-process. The
rest of the API (models, keys, knowledge bases, evals, `/v1/messages`, the web UI) stays ordinary
FastAPI routes, and both answer alike: OpenAI-style error bodies from `responses.py`, 405 for
another method, 413 for a body over the limit, the same call headers, the in-flight gauge.

A client that hangs up stops its call: a stream as soon as a chunk cannot be sent, and a call not
yet answered (a non-streamed one, or a stream before its first token) is cancelled when the server
reports the disconnect, so an abandoned request does not keep a model busy. The call is traced as
`cancelled` either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from llmforge.core.errors import InvalidRequestError, LLMForgeError
from llmforge.core.types import Delta
from llmforge.gateway.call import Call, Caller
from llmforge.gateway.responses import (
    STREAM_HEADERS,
    call_headers,
    describe_validation_error,
    error_response,
    forge_error_response,
    json_response,
    open_stream,
    wants_cache,
)
from llmforge.gateway.service import Gateway
from llmforge.gateway.wire import (
    ChatCompletionRequest,
    EmbeddingRequest,
    chunk_body,
    completion_body,
    embeddings_body,
    error_body,
    usage_chunk_body,
)

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
EMBEDDINGS_PATH = "/v1/embeddings"

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Authenticate = Callable[[Request], Awaitable[Caller | None]]


class ClientGone(Exception):
    """The client hung up before it was answered; nobody is left to answer."""


class OpenAIRoutes:
    """An ASGI app serving the paths in `routes`; anything else is not its business (see
    `GatewayApp`, which also puts the size limit and the in-flight gauge in front of it)."""

    def __init__(self, gateway: Gateway, authenticate: Authenticate) -> None:
        self.gateway = gateway
        self.authenticate = authenticate
        self.routes: dict[str, Callable[[Request, bytes], Awaitable[Response]]] = {
            CHAT_PATH: self.chat_completions,
            EMBEDDINGS_PATH: self.embeddings,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if scope["method"] != "POST":
            response = error_response(
                path, 405, "Method Not Allowed", "invalid_request_error", None,
                "method_not_allowed", {"Allow": "POST"},
            )  # fmt: skip
            await response(scope, receive, send)
            return
        try:
            body = await read_body(receive)
            response = await self.routes[path](Request(scope, receive), body)
        except ClientGone:
            return
        except LLMForgeError as e:
            response = forge_error_response(path, e)
        except Exception:
            log.exception("unhandled error")
            response = error_response(
                path, 500, "Internal server error; see the server log.", "server_error", None,
                "internal_error",
            )  # fmt: skip
        # Servers on ASGI 2.4 report a hang-up mid-stream as a failed send (Starlette raises
        # ClientDisconnect); it is not an error: the stream's generator is closed either way.
        with contextlib.suppress(ClientDisconnect):
            await response(scope, receive, send)

    # -- routes ---------------------------------------------------------------------------------

    async def chat_completions(self, request: Request, body: bytes) -> Response:
        req = parse(ChatCompletionRequest, body)
        call = Call(
            model=req.model,
            messages=req.core_messages(),
            sampling=req.sampling(),
            stream=req.stream,
            caller=await self.authenticate(request),
            use_cache=wants_cache(request.headers),
        )
        if not req.stream:
            completion = await unless_client_leaves(self.gateway.complete(call), request.receive)
            body_out = completion_body(call.id, req.model, call.created, completion)
            return json_response(body_out, headers=call_headers(call))
        first, stream = await unless_client_leaves(open_stream(self.gateway, call), request.receive)
        events = sse(first, stream, call.id, req.model, call.created, req.include_usage)
        headers = {**call_headers(call), **STREAM_HEADERS}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    async def embeddings(self, request: Request, body: bytes) -> Response:
        req = parse(EmbeddingRequest, body)
        call = Call(
            model=req.model,
            kind="embedding",
            inputs=req.texts(),
            caller=await self.authenticate(request),
        )
        result = await unless_client_leaves(self.gateway.embed(call), request.receive)
        vectors = result.vectors
        if req.dimensions is not None and vectors and req.dimensions != len(vectors[0]):
            raise InvalidRequestError(
                f"model '{req.model}' makes {len(vectors[0])}-dimensional vectors; "
                f"dimensions={req.dimensions} is not supported",
                param="dimensions",
            )
        out = embeddings_body(req.model, vectors, result.prompt_tokens, req.encoding_format)
        return json_response(out, headers=call_headers(call))


def parse(model: type[M], body: bytes) -> M:
    """The request body as `model`, validated straight from JSON; a 400 naming the first bad
    field otherwise."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        message, param = describe_validation_error(e.errors(include_url=False))
        raise InvalidRequestError(message, param=param) from None


async def read_body(receive: Receive) -> bytes:
    """The whole request body (its size is bounded by `BodyLimitMiddleware` in front, which
    answers 413 and reports a disconnect instead of the rest of a body over the limit)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def unless_client_leaves(work: Awaitable[T], receive: Receive) -> T:
    """`await work`; if the client disconnects first, `work` is cancelled (it sees a
    CancelledError, as on any cancellation) and `ClientGone` is raised."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled from elsewhere (shutdown): not ours to swallow
        task.uncancel()
        raise ClientGone from None
    finally:
        watcher.cancel()


async def sse(
    first: Delta,
    stream: AsyncGenerator[Delta, None],
    cid: str,
    model: str,
    created: int,
    usage: bool,
) -> AsyncIterator[bytes]:
    """The call's deltas as OpenAI chat.completion.chunk events, ending in `[DONE]`; a failure
    after the first chunk ends the stream with an error event instead."""

    def event(body: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(body) + b"\n\n"

    try:
        yield event(chunk_body(cid, model, created, role=True, text=""))
        delta: Delta | None = first
        while delta is not None:
            if delta.text:
                yield event(chunk_body(cid, model, created, text=delta.text))
            if delta.finish_reason:
                yield event(
                    chunk_body(
                        cid, model, created, finish=delta.finish_reason, sources=delta.sources
                    )
                )
                if usage and delta.usage:
                    yield event(usage_chunk_body(cid, model, created, delta.usage))
                break
            delta = await anext(stream, None)
        yield b"data: [DONE]\n\n"
    except LLMForgeError as e:  # after the first token the status is sent: end with an error event
        yield event(error_body(e.message, e.error_type, e.param, e.code))
    finally:
        await stream.aclose()  # a client that went away stops generation
