"""The gateway's ASGI application: `create_app(settings)`.

`create_app` builds everything from the settings object (no globals, nothing done at import):
database engine and migrations, model catalog, trace recorder, router, admission, cache, metrics,
the `AppContext` routes share (context.py), the lane (the model-running routes as plain ASGI,
lane.py) and the FastAPI app with every other route (`routes/`: one module per API), the error
handlers and the middlewares. Every error leaves as a JSON body in the shape of the API spoken
(replies.py); a client's mistake is a 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.telemetry import TelemetryConfig
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from llmforge import __version__
from llmforge.core.db import open_engine
from llmforge.core.errors import LLMForgeError
from llmforge.core.settings import Settings
from llmforge.distill import RoutePolicy, served_models
from llmforge.gateway.admission import KeyAdmission
from llmforge.gateway.body_limit import BodyLimitMiddleware
from llmforge.gateway.cache import build_cache
from llmforge.gateway.context import AppContext, StrictJsonRoute
from llmforge.gateway.keys import KeyStore
from llmforge.gateway.lane import Lane, LaneRoute, openapi_paths
from llmforge.gateway.metrics import GatewayMetrics, InFlightMiddleware
from llmforge.gateway.outage import database_unavailable
from llmforge.gateway.replies import (
    error_response,
    forge_error_response,
    validation_error_response,
)
from llmforge.gateway.response_store import ResponseStore
from llmforge.gateway.router import Router
from llmforge.gateway.routes import (
    admin,
    agents,
    anthropic,
    audit,
    distill,
    evals,
    guard,
    kb,
    openai,
    ops,
    responses,
    traces,
)
from llmforge.gateway.service import Gateway
from llmforge.gateway.wire.openai import ErrorBody
from llmforge.models import ModelCatalog
from llmforge.traces import TraceRecorder, TraceStore

log = logging.getLogger(__name__)

Extension = Callable[[FastAPI, AppContext], None]
LANE: Sequence[LaneRoute] = [*openai.LANE, *anthropic.LANE, *responses.LANE]
ROUTERS = [
    ops.router,
    openai.router,
    responses.router,
    admin.router,
    kb.router,
    evals.router,
    traces.router,
    agents.router,
    distill.router,
    guard.router,
    audit.router,
]


class GatewayApp(FastAPI):
    """FastAPI, with the lane's routes served before its middleware stack."""

    lane: ASGIApp | None = None
    lane_paths: frozenset[str] = frozenset()
    lane_routes: Sequence[LaneRoute] = ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.lane_paths and self.lane:
            await self.lane(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    def openapi(self) -> dict[str, Any]:
        """FastAPI's schema plus the lane's routes; validation errors documented as our 400."""
        if self.openapi_schema:
            return self.openapi_schema
        schema = get_openapi(title=self.title, version=self.version, routes=self.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        error_ref = {"$ref": "#/components/schemas/ErrorBody"}
        error_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(error_schema.pop("$defs", {}))
        components["ErrorBody"] = error_schema
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                _document_errors(operation.setdefault("responses", {}), error_ref)
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        lane_paths, lane_schemas = openapi_paths(self.lane_routes)
        schema["paths"].update(lane_paths)
        components.update(lane_schemas)
        self.openapi_schema = schema
        return schema


# Statuses any FastAPI route may answer besides its own: a bad body or parameter (400), keys on
# (401, 403), an unknown name (404), a wrong method (405), a body over the limit (413), rate limits
# (429), and a server fault (500).
COMMON_ERRORS = {
    "400": "Invalid request.",
    "401": "Missing or unknown API key (when keys are on).",
    "403": "The key may not do this.",
    "404": "Not found.",
    "405": "Method not allowed.",
    "413": "Request body over `server.max_body_bytes`.",
    "429": "Rate limited.",
    "500": "A server fault; see the server log.",
    "503": "Overloaded or a store unavailable; retry after `Retry-After`.",
}


def _document_errors(responses: dict[str, Any], error_ref: dict[str, Any]) -> None:
    responses.pop("422", None)
    for status, text in COMMON_ERRORS.items():
        responses.setdefault(
            status, {"description": text, "content": {"application/json": {"schema": error_ref}}}
        )


def create_app(
    settings: Settings,
    *,
    catalog: ModelCatalog | None = None,
    extensions: tuple[Extension, ...] = (),
) -> FastAPI:
    engine = open_engine(settings.database)
    # distilled models in the registry are served by name; routing policies may steer calls
    catalog = catalog or ModelCatalog(
        [*settings.models, *served_models(settings, engine)], settings.embeddings, settings
    )
    store = TraceStore(engine)
    recorder = TraceRecorder(store, settings.traces.queue_size)
    router = Router(catalog, settings.router, RoutePolicy.from_settings(settings, engine))
    admission = KeyAdmission.from_settings(settings, KeyStore(engine), catalog, router.plan)
    metrics = GatewayMetrics(router, recorder)
    cache = build_cache(settings, engine, catalog)
    guards = guard.build(settings, engine, catalog)  # None without policies: no guard code runs
    auditors = audit.observers(engine, settings.audit)
    gateway = Gateway(
        catalog,
        recorder if settings.traces.enabled else None,
        router=router,
        admission=admission,
        cache=cache,
        observers=[metrics, *auditors],
        guards=guards,
    )
    ctx = AppContext(
        settings,
        engine,
        catalog,
        store,
        recorder,
        gateway,
        admission,
        metrics,
        ResponseStore(engine),
    )
    guard.install(ctx, guards)
    if auditors:  # closed with the app: its last rows written
        ctx.shared("audit.requests", lambda: auditors[0])
    traces.install_observability(ctx)  # OpenTelemetry export, drift: off unless configured

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
            await ctx.aclose()
            await catalog.aclose()
            engine.dispose()

    # FastAPI's own OpenTelemetry hooks stay off: `/metrics` and the traces table observe every
    # call already, and checking for OTel providers on each request is measurable at 500 req/s.
    no_otel: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
    app = GatewayApp(title="LLMForge", version=__version__, lifespan=lifespan, telemetry=no_otel)
    app.router.route_class = StrictJsonRoute  # every route added from here on, extensions' too
    app.state.ctx = ctx
    lane = Lane(ctx, LANE)
    app.lane_paths, app.lane_routes = lane.paths, LANE
    # the same two guards as the FastAPI routes get below
    app.lane = InFlightMiddleware(
        BodyLimitMiddleware(lane, max_bytes=settings.server.max_body_bytes),
        gauge=metrics.in_flight,
    )
    _install_error_handlers(app)
    for api in ROUTERS:
        app.include_router(api)
    kb.mount_mcp(app, ctx)
    agents.install(app, ctx)
    for extend in extensions:
        extend(app, ctx)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.server.max_body_bytes)
    app.add_middleware(InFlightMiddleware, gauge=metrics.in_flight)
    return app


def _report_preload(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        message = error.message if isinstance(error, LLMForgeError) else repr(error)
        log.error("loading models failed: %s", message)


METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(app: GatewayApp, scope: Scope) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the first
    matching route's): each method is tried against the routes as a request would be."""
    if scope.get("path") in app.lane_paths:
        return ["POST"]
    return [
        method
        for method in METHODS
        if any(r.matches({**scope, "method": method})[0] == Match.FULL for r in app.router.routes)
    ]


def _install_error_handlers(app: GatewayApp) -> None:
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
        headers = dict(e.headers or {})
        if e.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        return error_response(request.url.path, e.status_code, detail, kind, None, code, headers)

    @app.exception_handler(SQLAlchemyError)
    async def database_error(request: Request, e: SQLAlchemyError) -> Response:
        """A database that is unreachable for now is a 503 (outage.py), any other database
        error a 500 like every unexpected one."""
        if (outage := database_unavailable(e)) is not None:
            return forge_error_response(request.url.path, outage)
        return await unexpected(request, e)

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
