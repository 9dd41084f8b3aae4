"""The gateway's ASGI application: `create_app(settings)` and the FastAPI routes and error
handlers around the two hot OpenAI routes (openai_routes.py).

`create_app` builds everything from the settings object (no globals, nothing done at import):
database engine and migrations, model catalog, trace recorder, router, admission, cache, metrics.
Routes convert wire <-> core types and nothing else. Every error leaves as an OpenAI-style JSON
body (Anthropic's on `/v1/messages`; see responses.py); a client's mistake is a 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.telemetry import TelemetryConfig
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from llmforge import __version__
from llmforge.core.db import open_engine
from llmforge.core.errors import LLMForgeError
from llmforge.core.settings import Settings
from llmforge.gateway.admin import add_admin_routes
from llmforge.gateway.admission import KeyAdmission
from llmforge.gateway.anthropic_routes import add_anthropic_routes
from llmforge.gateway.body_limit import BodyLimitMiddleware
from llmforge.gateway.cache import build_cache
from llmforge.gateway.call import Caller
from llmforge.gateway.evals_routes import add_eval_routes
from llmforge.gateway.kb_routes import add_kb_routes
from llmforge.gateway.keys import KeyStore
from llmforge.gateway.metrics import GatewayMetrics, InFlightMiddleware
from llmforge.gateway.openai_routes import OpenAIRoutes
from llmforge.gateway.responses import (
    error_response,
    forge_error_response,
    json_response,
    validation_error_response,
)
from llmforge.gateway.router import Router
from llmforge.gateway.service import Gateway
from llmforge.gateway.wire import models_body
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


class GatewayApp(FastAPI):
    """FastAPI, with the OpenAI routes (`openai`, for `openai_paths`) served before its
    middleware stack."""

    openai: ASGIApp | None = None
    openai_paths: frozenset[str] = frozenset()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.openai_paths and self.openai:
            await self.openai(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


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
    app = GatewayApp(title="LLMForge", version=__version__, lifespan=lifespan, telemetry=no_otel)
    app.state.ctx = ctx
    openai = OpenAIRoutes(gateway, admission.authenticate)
    app.openai_paths = frozenset(openai.routes)
    # the same two guards as the FastAPI routes get below
    app.openai = InFlightMiddleware(
        BodyLimitMiddleware(openai, max_bytes=settings.server.max_body_bytes),
        gauge=metrics.in_flight,
    )
    _install_error_handlers(app)
    _add_routes(app, ctx)
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


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LLMForgeError)
    async def forge_error(request: Request, e: LLMForgeError) -> Response:
        return forge_error_response(request.url.path, e)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError) -> Response:
        return validation_error_response(request.url.path, e.errors())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        detail = e.detail if isinstance(e.detail, str) else "HTTP error"
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        return error_response(
            request.url.path, e.status_code, detail, kind, None, code, dict(e.headers or {})
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(
            request.url.path,
            500,
            "Internal server error; see the server log.",
            "server_error",
            None,
            "internal_error",
        )
