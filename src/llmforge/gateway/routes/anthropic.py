"""The Anthropic Messages API: `POST /v1/messages` on the lane, over the same `Gateway` as the
OpenAI routes, so Anthropic clients can use any configured model (tools included).

The route converts Anthropic wire <-> core types (`wire/anthropic.py`) and builds a `Call` exactly
as the OpenAI routes do, so keys, limits, the cache, routing and traces apply unchanged. Being on
the lane, a non-streamed call is cancelled when its client hangs up, and bad JSON (lone surrogates
included) is a 400. Errors take Anthropic's shape (replies.py, by path); a failure after the first
token ends the stream with an `error` event.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from llmforge.core.errors import LLMForgeError
from llmforge.core.types import Delta, FinishReason, Usage
from llmforge.gateway.call import Call
from llmforge.gateway.context import AppContext
from llmforge.gateway.lane import LaneRoute, parse, unless_client_leaves
from llmforge.gateway.replies import (
    call_headers,
    json_response,
    open_stream,
    stream_response,
    wants_cache,
)
from llmforge.gateway.wire.anthropic import (
    MESSAGES_PATH,
    AnthropicError,
    MessagesRequest,
    StreamEvents,
    anthropic_error_body,
    message_body,
    new_message_id,
    sse_event,
)


async def messages(ctx: AppContext, request: Request, body: bytes) -> Response:
    req = parse(MessagesRequest, body)
    call = Call(
        model=req.model,
        messages=req.core_messages(),
        sampling=req.sampling(),
        stream=req.stream,
        caller=await ctx.authenticate(request),
        use_cache=wants_cache(request.headers),
        id=new_message_id(),
        metadata=req.tags(),
    )
    if not req.stream:
        completion = await unless_client_leaves(ctx.gateway.complete(call), request.receive)
        return json_response(
            message_body(call.id, req.model, completion), headers=call_headers(call)
        )
    first, stream = await unless_client_leaves(open_stream(ctx.gateway, call), request.receive)
    return stream_response(_events(first, stream, StreamEvents(call.id, req.model)), call)


async def _events(
    first: Delta, stream: AsyncGenerator[Delta, None], events: StreamEvents
) -> AsyncIterator[bytes]:
    try:
        for head in events.head():
            yield head
        finish: FinishReason | None = None
        usage = Usage()
        delta: Delta | None = first
        while delta is not None:
            for event in events.delta(delta):
                yield event
            finish = delta.finish_reason or finish
            usage = delta.usage or usage
            delta = await anext(stream, None)
        for tail in events.tail(finish, usage):
            yield tail
    except LLMForgeError as e:  # after the first token the status is sent: end with an error event
        yield sse_event("error", anthropic_error_body(e.http_status, e.message))
    finally:
        await stream.aclose()  # a client that went away stops generation


LANE = [
    LaneRoute(
        MESSAGES_PATH, messages, MessagesRequest, "Create a message (Anthropic Messages API)",
        "anthropic", AnthropicError,
    )
]  # fmt: skip
