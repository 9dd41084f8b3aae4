"""The distillation API, for the master key only: the registry, the routing policies and what
they collected.

    GET  /v1/distill/models                      every distilled model version (lineage, scores)
    GET  /v1/distill/runs                        recent stage runs (`?limit=`)
    GET  /v1/distill/routes                      routing policies with their online comparison
    PUT  /v1/distill/routes/{model}              create or change the policy on a model name
    POST /v1/distill/routes/{model}/promote      every call to the student (`{"force": false}`)
    POST /v1/distill/routes/{model}/rollback     every call back to the model (`{"version": N}`)
    GET  /v1/distill/routes/{model}/feedback     escalations and disagreements: the next dataset

Training and export run from `llmforge distill` (minutes of CPU work, not an HTTP request); these
routes only translate HTTP to the distill package's store and commands. A change made here applies
to this gateway's next call; other gateways pick it up within `distill.refresh_s`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from llmforge.distill import DistillStore, Route, RoutePolicy, promote, rollback
from llmforge.gateway.context import AppContext, Ctx, MasterOnly, api_router
from llmforge.gateway.replies import json_response

router = api_router(tags=["distill"], dependencies=[MasterOnly])


class RouteBody(BaseModel):
    """The body of `PUT /v1/distill/routes/{model}`."""

    model_config = ConfigDict(extra="forbid")

    student: str = Field(min_length=1, description="a registered distilled model name")
    share: float = Field(0.1, ge=0, le=1, description="share of calls the student answers")
    min_logprob: float = Field(-1.0, le=0, description="escalate below this mean logprob")
    shadow: float = Field(0.0, ge=0, le=1, description="teacher calls also asked of the student")
    promote_min: int = Field(50, ge=1)
    promote_agreement: float = Field(0.9, ge=0, le=1)
    auto_promote: bool = False


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: bool = False


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(None, ge=1, description="also re-activate this student version")


def _store(ctx: AppContext) -> DistillStore:
    return ctx.shared("distill.store", lambda: DistillStore(ctx.engine))


def _applied(ctx: AppContext) -> None:
    policy = ctx.gateway.router.policy
    if isinstance(policy, RoutePolicy):
        policy.invalidate()


def _route(store: DistillStore, route: Route) -> dict[str, Any]:
    comparison = store.comparison(route.model, route.updated_at)
    return {
        "object": "distill.route",
        **route.model_dump(),
        "online": {**comparison.model_dump(), "agreement": comparison.agreement},
    }


@router.get("/v1/distill/models")
async def list_models(ctx: Ctx) -> Response:
    versions = await asyncio.to_thread(_store(ctx).versions)
    data = [{"object": "distill.model", "id": v.id, **v.model_dump()} for v in versions]
    return json_response({"object": "list", "data": data})


@router.get("/v1/distill/runs")
async def list_runs(ctx: Ctx, limit: int = Query(50, ge=1, le=1000)) -> Response:
    runs = await asyncio.to_thread(_store(ctx).list_runs, None, limit)
    data = [{"object": "distill.run", **r.model_dump()} for r in runs]
    return json_response({"object": "list", "data": data})


@router.get("/v1/distill/routes")
async def list_routes(ctx: Ctx) -> Response:
    store = _store(ctx)

    def read() -> list[dict[str, Any]]:
        return [_route(store, r) for r in store.routes()]

    return json_response({"object": "list", "data": await asyncio.to_thread(read)})


@router.put("/v1/distill/routes/{model}")
async def put_route(ctx: Ctx, model: str, body: RouteBody) -> Response:
    store = _store(ctx)
    ctx.catalog.config(model)  # an unknown model name is a 404

    def write() -> dict[str, Any]:
        if body.share:
            store.require_active(body.student)
        route = store.put_route(Route(model=model, state="canary", **body.model_dump()))
        return _route(store, route)

    answer = await asyncio.to_thread(write)
    _applied(ctx)
    return json_response(answer)


@router.post("/v1/distill/routes/{model}/promote")
async def promote_route(ctx: Ctx, model: str, body: PromoteBody | None = None) -> Response:
    store = _store(ctx)
    force = body.force if body else False
    route = await asyncio.to_thread(promote, store, model, force)
    _applied(ctx)
    return json_response(await asyncio.to_thread(_route, store, route))


@router.post("/v1/distill/routes/{model}/rollback")
async def rollback_route(ctx: Ctx, model: str, body: RollbackBody | None = None) -> Response:
    store = _store(ctx)
    version = body.version if body else None
    route = await asyncio.to_thread(rollback, store, model, version)
    _applied(ctx)
    return json_response(await asyncio.to_thread(_route, store, route))


@router.get("/v1/distill/routes/{model}/feedback")
async def list_feedback(ctx: Ctx, model: str, limit: int = Query(100, ge=1, le=10_000)) -> Response:
    store = _store(ctx)
    await asyncio.to_thread(store.route, model)  # an unknown route is a 404
    found = await asyncio.to_thread(store.feedback, model, ("escalation", "disagreement"), limit)
    data = [{"object": "distill.feedback", **f.model_dump()} for f in found]
    return json_response({"object": "list", "data": data})
