"""`POST /v1/messages`: the Anthropic Messages API over the same `Gateway` as the OpenAI routes, so
Anthropic clients can use any configured model.

The route converts Anthropic wire <-> core types (`anthropic_wire.py`) and builds a `Call` exactly
as the OpenAI route does, so keys, limits, the cache, routing and traces apply unchanged. Errors
take Anthropic's shape (responses.py, by path); a failure after the first token
ends the stream with an `error` event. It does not translate tools or images (refused with a 400).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from llmforge.core.errors import LLMForgeError
from llmforge.core.types import Delta, Usage
from llmforge.gateway.anthropic_wire import (
    MESSAGES_PATH,
    MessagesRequest,
    anthropic_error_body,
    message_body,
    new_message_id,
    sse_event,
    stream_head,
    stream_tail,
    text_event,
)
from llmforge.gateway.call import Call
from llmforge.gateway.responses import (
    STREAM_HEADERS,
    call_headers,
    json_response,
    open_stream,
    wants_cache,
)

if TYPE_CHECKING:
    from llmforge.gateway.app import AppContext


def add_anthropic_routes(app: FastAPI, ctx: AppContext) -> None:
    @app.post(MESSAGES_PATH)
    async def messages(req: MessagesRequest, request: Request) -> Response:
        call = Call(
            model=req.model,
            messages=req.core_messages(),
            sampling=req.sampling(),
            stream=req.stream,
            caller=await ctx.authenticate(request),
            use_cache=wants_cache(request.headers),
            id=new_message_id(),
        )
        if not req.stream:
            completion = await ctx.gateway.complete(call)
            body = message_body(call.id, req.model, completion)
            return json_response(body, headers=call_headers(call))
        first, stream = await open_stream(ctx.gateway, call)
        events = _events(first, stream, call.id, req.model)
        headers = {**call_headers(call), **STREAM_HEADERS}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def _events(
    first: Delta, stream: AsyncGenerator[Delta, None], mid: str, model: str
) -> AsyncIterator[bytes]:
    try:
        for head in stream_head(mid, model):
            yield head
        finish: str | None = None
        usage = Usage()
        delta: Delta | None = first
        while delta is not None:
            if delta.text:
                yield text_event(delta.text)
            if delta.finish_reason:
                finish, usage = delta.finish_reason, delta.usage or usage
                break
            delta = await anext(stream, None)
        for tail in stream_tail(finish, usage):
            yield tail
    except LLMForgeError as e:  # after the first token the status is sent: end with an error event
        yield sse_event("error", anthropic_error_body(e.http_status, e.message))
    finally:
        await stream.aclose()  # a client that went away stops generation
