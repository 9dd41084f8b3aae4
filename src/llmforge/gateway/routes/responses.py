"""OpenAI's Responses API: `POST /v1/responses` on the lane; `GET` / `DELETE /v1/responses/{id}`
and `GET /v1/responses/{id}/input_items` as FastAPI routes.

A response is one `Call` through the same `Gateway` as chat (keys, limits, budgets, cache, routing,
fallbacks, metrics, traces), so every configured model — local or remote — answers the Responses
API, tools included. `previous_response_id` continues the conversation a stored response ended
(response_store.py); `store: false` keeps nothing. Errors take the OpenAI shape; a failure after
the first event ends the stream with `response.failed`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from fastapi import Depends
from starlette.requests import Request
from starlette.responses import Response

from llmforge.core.errors import LLMForgeError
from llmforge.core.types import Completion, Delta, Message
from llmforge.gateway.call import Call, Caller
from llmforge.gateway.context import AppContext, Authenticated, Ctx, api_router, authenticate
from llmforge.gateway.lane import LaneRoute, parse, unless_client_leaves
from llmforge.gateway.replies import (
    call_headers,
    json_response,
    open_stream,
    stream_response,
    wants_cache,
)
from llmforge.gateway.wire.openai import ErrorBody
from llmforge.gateway.wire.responses import (
    RESPONSES_PATH,
    ResponseRequest,
    ResponseShape,
    StoredResponse,
    StreamEvents,
    input_items_body,
    new_response_id,
    request_items,
)
from llmforge.models import CompletionBuilder


async def create_response(ctx: AppContext, request: Request, body: bytes) -> Response:
    req = parse(ResponseRequest, body)
    caller = await ctx.authenticate(request)
    history: list[Message] = []
    if req.previous_response_id:
        previous = await asyncio.to_thread(ctx.responses.get, req.previous_response_id, caller)
        history = previous.conversation
    turn = req.input_messages()
    system = [Message(role="system", content=req.instructions)] if req.instructions else []
    call = Call(
        model=req.model,
        messages=[*system, *history, *turn],
        sampling=req.sampling(),
        stream=req.stream,
        caller=caller,
        use_cache=wants_cache(request.headers),
        id=new_response_id(),
        metadata=req.metadata or {},
    )
    shape = ResponseShape(call.id, req, req.previous_response_id)
    keep = Keeper(ctx, req, call, [*history, *turn], caller)
    if not req.stream:
        completion = await unless_client_leaves(ctx.gateway.complete(call), request.receive)
        answer = shape.finished(completion)
        await keep(completion, answer)
        return json_response(answer, headers=call_headers(call))
    first, stream = await unless_client_leaves(open_stream(ctx.gateway, call), request.receive)
    return stream_response(_events(first, stream, StreamEvents(shape), keep), call)


class Keeper:
    """Stores a finished response (unless `store: false`) with the conversation it ended."""

    def __init__(
        self,
        ctx: AppContext,
        req: ResponseRequest,
        call: Call,
        conversation: list[Message],
        caller: Caller | None,
    ) -> None:
        self.ctx, self.req, self.call = ctx, req, call
        self.conversation, self.caller = conversation, caller

    async def __call__(self, completion: Completion, body: dict[str, object]) -> None:
        if not self.req.store:
            return
        answer = Message(
            role="assistant", content=completion.text, tool_calls=completion.tool_calls
        )
        stored = StoredResponse(
            id=self.call.id,
            key_id=self.caller.key_id if self.caller is not None else None,
            created_at=self.call.created,
            body=body,
            conversation=[*self.conversation, answer],
            input_items=request_items(self.req, self.call.id),
        )
        await asyncio.to_thread(self.ctx.responses.put, stored)


async def _events(
    first: Delta, stream: AsyncGenerator[Delta, None], events: StreamEvents, keep: Keeper
) -> AsyncIterator[bytes]:
    answer = CompletionBuilder()
    try:
        for head in events.head():
            yield head
        delta: Delta | None = first
        while delta is not None:
            answer.add(delta)
            for out in events.delta(delta):
                yield out
            delta = await anext(stream, None)
        completion = answer.result()
        for tail in events.tail(completion):
            yield tail
        await keep(completion, events.shape.finished(completion))
    except LLMForgeError as e:  # after the first event the status is sent: end with a failure
        yield events.failed(e.message, e.code)
    finally:
        await stream.aclose()  # a client that went away stops generation


LANE = [
    LaneRoute(
        RESPONSES_PATH, create_response, ResponseRequest, "Create a model response (Responses API)",
        "responses", ErrorBody,
    )
]  # fmt: skip

router = api_router(tags=["responses"], dependencies=[Depends(authenticate)])


@router.get("/v1/responses/{response_id}")
async def get_response(ctx: Ctx, caller: Authenticated, response_id: str) -> Response:
    stored = await asyncio.to_thread(ctx.responses.get, response_id, caller)
    return json_response(stored.body)


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(ctx: Ctx, caller: Authenticated, response_id: str) -> Response:
    stored = await asyncio.to_thread(ctx.responses.get, response_id, caller)
    return json_response(input_items_body(stored.input_items))


@router.delete("/v1/responses/{response_id}")
async def delete_response(ctx: Ctx, caller: Authenticated, response_id: str) -> Response:
    await asyncio.to_thread(ctx.responses.delete, response_id, caller)
    return json_response({"id": response_id, "object": "response", "deleted": True})
