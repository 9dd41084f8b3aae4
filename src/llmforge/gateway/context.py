"""`AppContext`, what every route shares; the one authentication dependency; `api_router`, the
router every API module makes its routes on.

`create_app` builds one AppContext and keeps it as `app.state.ctx`; route functions reach it through
`app_context(request)` (a FastAPI dependency: `ctx: Ctx`), the plain-ASGI lane hands it over
directly. `authenticate` is the only way a route learns who is calling: the caller (None when
authentication is off) or a 401. `require_master` narrows it to the master key (403 otherwise).
Nothing here builds anything or decides a policy: that is admission's job (admission.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute
from sqlalchemy.engine import Engine
from starlette.requests import Request
from starlette.responses import Response

from llmforge.core.errors import PermissionDeniedError
from llmforge.core.settings import Settings
from llmforge.gateway.admission import KeyAdmission
from llmforge.gateway.call import Caller
from llmforge.gateway.metrics import GatewayMetrics
from llmforge.gateway.response_store import ResponseStore
from llmforge.gateway.service import Gateway
from llmforge.models import ModelCatalog
from llmforge.traces import TraceRecorder, TraceStore

T = TypeVar("T")


@dataclass
class AppContext:
    """What routes and extensions share; reachable as `app.state.ctx`."""

    settings: Settings
    engine: Engine
    catalog: ModelCatalog
    traces: TraceStore
    recorder: TraceRecorder
    gateway: Gateway
    admission: KeyAdmission
    metrics: GatewayMetrics
    responses: ResponseStore
    _shared: dict[str, Any] = field(default_factory=dict)

    async def authenticate(self, conn: Request) -> Caller | None:
        return await self.admission.authenticate(conn)

    def shared(self, key: str, build: Callable[[], T]) -> T:
        """The app's one object under `key` (a store, a registry of runs), built on first use
        and closed (`aclose`, if it has one) with the app."""
        if key not in self._shared:
            self._shared[key] = build()
        value: T = self._shared[key]
        return value

    async def aclose(self) -> None:
        for value in self._shared.values():
            close = getattr(value, "aclose", None)
            if close is not None:
                result = close()
                if inspect.isawaitable(result):
                    await result
        self._shared.clear()


def context_of(app: FastAPI | Any) -> AppContext:
    ctx: AppContext = app.state.ctx
    return ctx


async def app_context(conn: Request) -> AppContext:
    """The dependency every FastAPI route uses to reach the app's context."""
    return context_of(conn.app)


Ctx = Annotated[AppContext, Depends(app_context)]


async def authenticate(conn: Request) -> Caller | None:
    """Who is calling: the caller, or None when authentication is off (no master key); a missing
    or unknown key is a 401. The one authentication dependency of every route."""
    return await context_of(conn.app).authenticate(conn)


Authenticated = Annotated[Caller | None, Depends(authenticate)]


async def require_master(caller: Authenticated) -> Caller | None:
    """The master key only (403 for other keys, and when authentication is off)."""
    if caller is None:
        raise PermissionDeniedError(
            "This needs the master key, and authentication is off: set LLMFORGE_MASTER_KEY (or "
            "`master_key`) and send it as `Authorization: Bearer <master key>`."
        )
    if not caller.master:
        raise PermissionDeniedError("Only the master key may do this.")
    return caller


MasterOnly = Depends(require_master)


class StrictJsonRequest(Request):
    """A request whose JSON body is parsed by orjson, which (unlike the standard library) refuses
    lone surrogates and NaN: text no database or model can take is a 400 at the door."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            response: Response = await handler(StrictJsonRequest(request.scope, request.receive))
            return response

        return strict


def api_router(**options: Any) -> APIRouter:
    """An APIRouter for one API module: its JSON bodies parsed strictly (StrictJsonRoute)."""
    return APIRouter(route_class=StrictJsonRoute, **options)
