"""The OpenAI API: `POST /v1/chat/completions`, `/v1/completions` (legacy text) and `/v1/embeddings`
on the lane (lane.py), `GET /v1/models` as a FastAPI route.

Each route converts the wire body (`wire/openai.py`) to a `Call`, hands it to the `Gateway` and
turns the answer back into wire JSON or SSE events; keys, limits, budgets, the cache, routing,
metrics and traces all happen in the Gateway, the same for every route.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from llmforge.core.errors import InvalidRequestError, LLMForgeError
from llmforge.core.types import Delta, Message
from llmforge.gateway.call import Call
from llmforge.gateway.context import AppContext, Authenticated, Ctx, api_router
from llmforge.gateway.lane import LaneRoute, parse, unless_client_leaves
from llmforge.gateway.replies import (
    call_headers,
    json_response,
    open_stream,
    sse_data,
    stream_response,
    wants_cache,
)
from llmforge.gateway.wire.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ErrorBody,
    chunk_body,
    completion_body,
    delta_chunks,
    embeddings_body,
    error_body,
    models_body,
    text_chunk_body,
    text_completion_body,
    text_usage_chunk_body,
    usage_chunk_body,
)

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
DONE = b"data: [DONE]\n\n"


async def chat_completions(ctx: AppContext, request: Request, body: bytes) -> Response:
    req = parse(ChatCompletionRequest, body)
    call = Call(
        model=req.model,
        messages=req.core_messages(),
        sampling=req.sampling(),
        stream=req.stream,
        caller=await ctx.authenticate(request),
        use_cache=wants_cache(request.headers),
        metadata=req.metadata or {},
    )
    if not req.stream:
        completion = await unless_client_leaves(ctx.gateway.complete(call), request.receive)
        body_out = completion_body(call.id, req.model, call.created, completion)
        return json_response(body_out, headers=call_headers(call))
    first, stream = await unless_client_leaves(open_stream(ctx.gateway, call), request.receive)
    return stream_response(chat_events(first, stream, call, req.include_usage), call)


async def chat_events(
    first: Delta, stream: AsyncGenerator[Delta, None], call: Call, usage: bool
) -> AsyncIterator[bytes]:
    """The call's deltas as chat.completion.chunk events, ending in `[DONE]`; a failure after the
    first chunk ends the stream with an error event instead. Each choice's first chunk carries
    the assistant role."""
    cid, model, created = call.id, call.model, call.created
    started: set[int] = set()
    try:
        delta: Delta | None = first
        while delta is not None:
            if delta.choice not in started:
                started.add(delta.choice)
                yield sse_data(chunk_body(cid, model, created, choice=delta.choice, role=True))
            for chunk in delta_chunks(cid, model, created, delta):
                yield sse_data(chunk)
            if usage and delta.usage:
                yield sse_data(usage_chunk_body(cid, model, created, delta.usage))
            delta = await anext(stream, None)
        yield DONE
    except LLMForgeError as e:  # after the first token the status is sent: end with an error event
        yield sse_data(error_body(e.message, e.error_type, e.param, e.code))
    finally:
        await stream.aclose()  # a client that went away stops generation


async def completions(ctx: AppContext, request: Request, body: bytes) -> Response:
    req = parse(CompletionRequest, body)
    call = Call(
        model=req.model,
        kind="text",
        prompt=req.text,
        messages=[Message(role="user", content=req.text)],
        sampling=req.sampling(),
        stream=req.stream,
        caller=await ctx.authenticate(request),
        use_cache=wants_cache(request.headers),
        metadata=req.metadata or {},
    )
    echo = req.text if req.echo else ""
    if not req.stream:
        completion = await unless_client_leaves(ctx.gateway.complete(call), request.receive)
        body_out = text_completion_body(call.id, req.model, call.created, completion, echo)
        return json_response(body_out, headers=call_headers(call))
    first, stream = await unless_client_leaves(open_stream(ctx.gateway, call), request.receive)
    return stream_response(text_events(first, stream, call, req.include_usage, echo), call)


async def text_events(
    first: Delta, stream: AsyncGenerator[Delta, None], call: Call, usage: bool, echo: str
) -> AsyncIterator[bytes]:
    """The call's deltas as legacy text_completion events, ending in `[DONE]`."""
    cid, model, created = call.id, call.model, call.created
    echoed: set[int] = set()
    try:
        delta: Delta | None = first
        while delta is not None:
            if echo and delta.choice not in echoed:
                echoed.add(delta.choice)
                piece = Delta(choice=delta.choice)
                yield sse_data(text_chunk_body(cid, model, created, piece, text=echo))
            if delta.text or delta.finish_reason:
                yield sse_data(text_chunk_body(cid, model, created, delta))
            if usage and delta.usage:
                yield sse_data(text_usage_chunk_body(cid, model, created, delta.usage))
            delta = await anext(stream, None)
        yield DONE
    except LLMForgeError as e:
        yield sse_data(error_body(e.message, e.error_type, e.param, e.code))
    finally:
        await stream.aclose()


async def embeddings(ctx: AppContext, request: Request, body: bytes) -> Response:
    req = parse(EmbeddingRequest, body)
    call = Call(
        model=req.model,
        kind="embedding",
        inputs=req.texts(),
        caller=await ctx.authenticate(request),
    )
    result = await unless_client_leaves(ctx.gateway.embed(call), request.receive)
    vectors = result.vectors
    if req.dimensions is not None and vectors and req.dimensions != len(vectors[0]):
        raise InvalidRequestError(
            f"model '{req.model}' makes {len(vectors[0])}-dimensional vectors; "
            f"dimensions={req.dimensions} is not supported",
            param="dimensions",
        )
    out = embeddings_body(req.model, vectors, result.prompt_tokens, req.encoding_format)
    return json_response(out, headers=call_headers(call))


LANE = [
    LaneRoute(
        CHAT_PATH, chat_completions, ChatCompletionRequest, "Create a chat completion", "openai",
        ErrorBody,
    ),
    LaneRoute(
        COMPLETIONS_PATH, completions, CompletionRequest, "Create a text completion (legacy)",
        "openai", ErrorBody,
    ),
    LaneRoute(
        EMBEDDINGS_PATH, embeddings, EmbeddingRequest, "Create embeddings", "openai", ErrorBody,
        streams=False,
    ),
]  # fmt: skip

router = api_router(tags=["openai"])


@router.get("/v1/models")
async def list_models(ctx: Ctx, caller: Authenticated) -> Response:
    """The models this caller may use (a key sees only its scope)."""
    scope = caller.models if caller is not None else None
    infos = [m for m in ctx.catalog.infos() if scope is None or m.name in scope]
    return json_response(models_body([(m.name, m.kind, m.provider) for m in infos]))
