"""The FastAPI application: OpenAI-compatible routes over `Gateway`, and the one error handler.

`create_app(settings)` builds everything from the settings object (no globals, nothing done at
import): database engine and migrations, model catalog, trace recorder. Routes convert wire <-> core
types and nothing else. Every error leaves as an OpenAI-style JSON body; a client's mistake is a
4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from fastapi.telemetry import TelemetryConfig
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmforge import __version__
from llmforge.core.db import open_engine
from llmforge.core.errors import (
    BudgetExceededError,
    InvalidRequestError,
    LLMForgeError,
    OverloadedError,
    RateLimitError,
)
from llmforge.core.settings import Settings
from llmforge.core.types import Delta
from llmforge.gateway.admin import add_admin_routes
from llmforge.gateway.admission import KeyAdmission
from llmforge.gateway.anthropic_wire import anthropic_error_body, speaks_anthropic
from llmforge.gateway.body_limit import BodyLimitMiddleware
from llmforge.gateway.cache import build_cache
from llmforge.gateway.call import Call, Caller
from llmforge.gateway.evals_routes import add_eval_routes
from llmforge.gateway.kb_routes import add_kb_routes
from llmforge.gateway.keys import KeyStore
from llmforge.gateway.metrics import GatewayMetrics, InFlightMiddleware
from llmforge.gateway.router import Router
from llmforge.gateway.service import Gateway
from llmforge.gateway.wire import (
    ChatCompletionRequest,
    EmbeddingRequest,
    chunk_body,
    completion_body,
    embeddings_body,
    error_body,
    models_body,
    usage_chunk_body,
)
from llmforge.models import ModelCatalog
from llmforge.traces import TraceRecorder, TraceStore

log = logging.getLogger(__name__)


async def no_auth(_request: Request) -> Caller | None:
    return None


@dataclass
class AppContext:
    """What routes and extensions share; reachable as `app.state.ctx`."""

    settings: Settings
    engine: Engine
    catalog: ModelCatalog
    traces: TraceStore
    recorder: TraceRecorder
    gateway: Gateway
    authenticate: Callable[[Request], Awaitable[Caller | None]] = no_auth
    metrics: GatewayMetrics | None = None  # extensions may add families to metrics.registry


Extension = Callable[[FastAPI, AppContext], None]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def create_app(
    settings: Settings,
    *,
    catalog: ModelCatalog | None = None,
    extensions: tuple[Extension, ...] = (),
) -> FastAPI:
    engine = open_engine(settings.database)
    catalog = catalog or ModelCatalog.from_settings(settings)
    store = TraceStore(engine)
    recorder = TraceRecorder(store, settings.traces.queue_size)
    router = Router(catalog, settings.router)
    admission = KeyAdmission.from_settings(settings, KeyStore(engine), catalog, router.plan)
    metrics = GatewayMetrics(router)
    cache = build_cache(settings, engine, catalog)
    gateway = Gateway(
        catalog,
        recorder if settings.traces.enabled else None,
        router=router,
        admission=admission,
        cache=cache,
        observers=[metrics],
    )
    ctx = AppContext(settings, engine, catalog, store, recorder, gateway, metrics=metrics)
    ctx.authenticate = admission.authenticate

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        recorder.start()
        await admission.start()
        preload = asyncio.create_task(catalog.preload()) if settings.server.preload else None
        if preload is not None:
            preload.add_done_callback(_report_preload)
        # What exists now (modules, routes, schemas: ~100k objects) lives as long as the app: out
        # of the collector's sight, a full collection under load takes ~2 ms instead of ~100 ms.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            if preload is not None:
                preload.cancel()
            await gateway.drain()
            await admission.aclose()
            if cache is not None:
                await cache.aclose()
            await recorder.stop()
            await catalog.aclose()
            engine.dispose()

    # FastAPI's own OpenTelemetry hooks stay off: `/metrics` and the traces table observe every
    # call already, and checking for OTel providers on each request is measurable at 500 req/s.
    no_otel: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
    app = FastAPI(title="LLMForge", version=__version__, lifespan=lifespan, telemetry=no_otel)
    app.state.ctx = ctx
    _install_error_handlers(app)
    _add_routes(app, ctx)
    # imported here: the Anthropic routes use this module's helpers (call_headers, open_stream)
    from llmforge.gateway.anthropic_routes import add_anthropic_routes

    add_anthropic_routes(app, ctx)
    add_admin_routes(app, admission, [m.name for m in catalog.infos()])
    add_kb_routes(app, ctx)
    add_eval_routes(app, ctx)
    for extend in extensions:
        extend(app, ctx)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.server.max_body_bytes)
    app.add_middleware(InFlightMiddleware, gauge=metrics.in_flight)
    return app


def _report_preload(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        message = error.message if isinstance(error, LLMForgeError) else repr(error)
        log.error("loading models failed: %s", message)


def _add_routes(app: FastAPI, ctx: AppContext) -> None:
    gateway = ctx.gateway

    @app.get("/health")
    async def health() -> Response:
        return json_response({"status": "ok", "version": __version__})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        assert ctx.metrics is not None
        return Response(ctx.metrics.render(), media_type=ctx.metrics.content_type)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        caller = await ctx.authenticate(request)
        scope = caller.models if caller is not None else None  # a key sees the models it may use
        infos = [m for m in ctx.catalog.infos() if scope is None or m.name in scope]
        return json_response(models_body([(m.name, m.kind, m.provider) for m in infos]))

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        call = Call(
            model=req.model,
            messages=req.core_messages(),
            sampling=req.sampling(),
            stream=req.stream,
            caller=await ctx.authenticate(request),
            use_cache=wants_cache(request),
        )
        if not req.stream:
            completion = await gateway.complete(call)
            body = completion_body(call.id, req.model, call.created, completion)
            return json_response(body, headers=call_headers(call))
        first, stream = await open_stream(gateway, call)
        events = _sse(first, stream, call.id, req.model, call.created, req.include_usage)
        headers = {**call_headers(call), **STREAM_HEADERS}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest, request: Request) -> Response:
        call = Call(
            model=req.model,
            kind="embedding",
            inputs=req.texts(),
            caller=await ctx.authenticate(request),
        )
        result = await gateway.embed(call)
        vectors = result.vectors
        if req.dimensions is not None and vectors and req.dimensions != len(vectors[0]):
            raise InvalidRequestError(
                f"model '{req.model}' makes {len(vectors[0])}-dimensional vectors; "
                f"dimensions={req.dimensions} is not supported",
                param="dimensions",
            )
        body = embeddings_body(req.model, vectors, result.prompt_tokens, req.encoding_format)
        return json_response(body, headers=call_headers(call))


CACHE_HEADER = "x-llmforge-cache"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def wants_cache(request: Request) -> bool:
    """False when the client sends `x-llmforge-cache: no` (or `no-cache`, `0`)."""
    return request.headers.get(CACHE_HEADER, "").lower() not in ("no", "no-cache", "0")


async def open_stream(gateway: Gateway, call: Call) -> tuple[Delta, AsyncGenerator[Delta, None]]:
    """The first delta and the rest of the call's stream. A failure before the first token closes
    the stream and is raised, so it leaves as a plain HTTP error."""
    stream = gateway.stream(call)
    try:
        return await anext(stream), stream
    except BaseException:
        await stream.aclose()
        raise


def call_headers(call: Call) -> dict[str, str]:
    """What the gateway tells the client about how the call was served."""
    headers = {
        "x-request-id": call.id,
        "x-llmforge-overhead-ms": f"{call.overhead_ms():.2f}",
    }
    if call.deployment:
        headers["x-llmforge-deployment"] = call.deployment
    if call.served_by and call.served_by != call.model:
        headers["x-llmforge-served-by"] = call.served_by
    if call.cache != "off":
        headers[CACHE_HEADER] = call.cache
    return headers


async def _sse(
    first: Delta,
    stream: AsyncGenerator[Delta, None],
    cid: str,
    model: str,
    created: int,
    usage: bool,
) -> AsyncIterator[bytes]:
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


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LLMForgeError)
    async def forge_error(request: Request, e: LLMForgeError) -> Response:
        headers = {}
        if isinstance(e, OverloadedError | RateLimitError) and not isinstance(
            e, BudgetExceededError
        ):
            headers["Retry-After"] = str(max(1, round(e.retry_after_s)))
        return error_response(
            request, e.http_status, e.message, e.error_type, e.param, e.code, headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError) -> Response:
        message, param = describe_validation_error(e.errors())
        return error_response(
            request, 400, message, "invalid_request_error", param, "invalid_request"
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        detail = e.detail if isinstance(e.detail, str) else "HTTP error"
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        return error_response(
            request, e.status_code, detail, kind, None, code, dict(e.headers or {})
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(
            request,
            500,
            "Internal server error; see the server log.",
            "server_error",
            None,
            "internal_error",
        )


def error_response(
    request: Request,
    status: int,
    message: str,
    type_: str,
    param: str | None,
    code: str | None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error in the shape of the API the request spoke: Anthropic's on its routes, else
    OpenAI's."""
    if speaks_anthropic(request.url.path):
        return json_response(anthropic_error_body(status, message), status, headers)
    return json_response(error_body(message, type_, param, code), status, headers)


def describe_validation_error(errors: Any) -> tuple[str, str | None]:
    """The first problem as (message, param), e.g. ("messages.0.role: Input should be ...",
    "messages.0.role")."""
    if not errors:
        return "Invalid request.", None
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        return f"Malformed JSON body: {err.get('ctx', {}).get('error', err.get('msg'))}", None
    if not loc and err.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        return "The request body must be a JSON object.", None
    # strip the union-member suffixes pydantic adds (e.g. "content.str")
    param = ".".join(
        p
        for p in loc
        if not p.startswith(("list[", "function-")) and p not in ("str", "int", "float", "bool")
    )
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err.get("type") == "missing":
        msg = "required field is missing"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{param}: {msg}{more}" if param else msg + more, param or None
