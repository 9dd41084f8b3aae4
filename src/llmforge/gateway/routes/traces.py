"""The traces API, for the traces page and dashboards: recorded calls, their time series, drift.

    GET  /v1/traces                  calls, newest first (`model`, `key_id`, `status`, `cache`,
                                     `kind`, `since`, `until`: filters, times in Unix seconds of
                                     the call's end; `limit`, `before`: pages)
    GET  /v1/traces/stats            the same filters bucketed over time: requests, errors,
                                     latency p50/p95/p99, tokens, spend (`buckets`: at most)
    GET  /v1/traces/facets           the values the filters can take (models, keys, ...)
    GET  /v1/traces/drift            per model: recent traffic against its reference window
    POST /v1/traces/drift/reset      {model?}: forget the windows; the next calls are the reference
    GET  /v1/traces/{id}             one call: request, answer, tokens, latency, retries, cost

With keys on, any valid key may read traces, but only its own: a key's filters are narrowed to its
id and another key's call is a 404. The master key sees every call. Drift describes all traffic,
so it needs the master key (with keys off, anyone). With keys off every route is open, like the
rest of the API.

`install_observability(ctx)` wires what `observability:` asks for to the trace recorder: the
OpenTelemetry exporter (traces/otel.py) and the drift monitor (traces/drift.py), both batch
observers off the request path, closed with the app; drift's judge, when `judge` names a model,
is the evals `rubric` metric on that model, called directly (`RubricJudge`). The routes only
translate HTTP to `llmforge.traces` calls.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from llmforge.core.errors import NotFoundError, PermissionDeniedError
from llmforge.evals.base import MetricOptions, Output
from llmforge.evals.dataset import Case
from llmforge.evals.judge import RubricMetric
from llmforge.gateway.call import Caller
from llmforge.gateway.context import AppContext, Authenticated, Ctx, api_router, authenticate
from llmforge.gateway.replies import json_response
from llmforge.models.base import ChatModel
from llmforge.traces.drift import DriftCollector, DriftMonitor
from llmforge.traces.otel import OtelExporter
from llmforge.traces.query import (
    MAX_LIMIT,
    CacheResult,
    Kind,
    Status,
    TraceQuery,
    facets,
    list_traces,
    prompt_text,
    series,
)

DRIFT = "traces.drift"
MAX_TIME = 1e11  # Unix seconds (year 5138): keeps time arithmetic finite
OTEL = "traces.otel"

router = api_router(tags=["traces"], dependencies=[Depends(authenticate)])


def install_observability(ctx: AppContext) -> None:
    """Attach the OpenTelemetry exporter and the drift monitor the settings ask for (neither by
    default) to the trace recorder; the app closes them (`ctx.shared`)."""
    exporter = OtelExporter.from_settings(ctx.settings)
    if exporter is not None:
        ctx.recorder.observe(exporter.observe)
        ctx.shared(OTEL, lambda: exporter)
    monitor = DriftMonitor.from_settings(
        ctx.settings, ctx.catalog, ctx.engine, lambda name: RubricJudge(ctx.catalog.chat(name))
    )
    if monitor is not None:
        ctx.recorder.observe(monitor.observe)
        ctx.metrics.registry.register(DriftCollector(monitor))
        ctx.shared(DRIFT, lambda: monitor)


class RubricJudge:
    """Drift's `AnswerJudge`: the evals `rubric` metric (its default criteria: correct and
    complete) with the judge model called directly, so its calls are not gateway traffic."""

    def __init__(self, model: ChatModel) -> None:
        self.metric = RubricMetric(MetricOptions(judge=model, judge_attempts=2))

    async def score(self, prompt: str, answer: str) -> float | None:
        return (await self.metric.score(Case(input=prompt or " "), Output(text=answer))).value


def _drift(ctx: AppContext) -> DriftMonitor | None:
    monitor: DriftMonitor | None = ctx.shared(DRIFT, lambda: None)
    return monitor


async def _drift_reader(caller: Authenticated) -> None:
    if caller is not None and not caller.master:
        raise PermissionDeniedError(
            "Drift describes every caller's traffic; only the master key may read or reset it."
        )


def _query(
    caller: Caller | None,
    model: str | None,
    key_id: str | None,
    status: Status | None,
    cache: CacheResult | None,
    kind: Kind | None,
    since: float | None,
    until: float | None,
) -> TraceQuery:
    if caller is not None and not caller.master:
        if key_id is not None and key_id != caller.key_id:
            raise PermissionDeniedError(
                "A key may read only its own traces; leave out key_id or use the master key."
            )
        key_id = caller.key_id
    return TraceQuery(
        model=model or None,
        key_id=key_id or None,
        status=status,
        cache=cache,
        kind=kind,
        since=since,
        until=until,
    )


class Filters:
    """The query parameters every list and series takes."""

    def __init__(
        self,
        caller: Authenticated,
        model: Annotated[str | None, Query(description="the model asked for")] = None,
        key_id: Annotated[str | None, Query(description="an API key's id")] = None,
        status: Status | None = None,
        cache: Annotated[CacheResult | None, Query(description="response cache result")] = None,
        kind: Kind | None = None,
        since: Annotated[float | None, Query(ge=0, le=MAX_TIME, description="Unix seconds")] = None,
        until: Annotated[float | None, Query(ge=0, le=MAX_TIME, description="Unix seconds")] = None,
    ) -> None:
        self.caller = caller
        self.query = _query(caller, model, key_id, status, cache, kind, since, until)


Filtered = Annotated[Filters, Depends()]


@router.get("/v1/traces")
async def get_traces(
    ctx: Ctx,
    filters: Filtered,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    before: Annotated[str | None, Query(description="the last id of the previous page")] = None,
) -> Response:
    page = await asyncio.to_thread(list_traces, ctx.engine, filters.query, limit, before)
    return json_response({"object": "list", **page.model_dump()})


@router.get("/v1/traces/stats")
async def get_stats(
    ctx: Ctx,
    filters: Filtered,
    buckets: Annotated[int, Query(ge=1, le=500, description="time buckets, at most")] = 60,
) -> Response:
    result = await asyncio.to_thread(series, ctx.engine, filters.query, buckets)
    return json_response({"object": "trace_stats", **result.model_dump()})


@router.get("/v1/traces/facets")
async def get_facets(ctx: Ctx, caller: Authenticated) -> Response:
    own = caller.key_id if caller is not None and not caller.master else None
    found = await asyncio.to_thread(facets, ctx.engine, own)
    return json_response({"object": "trace_facets", **found.model_dump()})


@router.get("/v1/traces/drift", dependencies=[Depends(_drift_reader)])
async def get_drift(ctx: Ctx) -> Response:
    monitor = _drift(ctx)
    if monitor is None:
        return json_response(
            {
                "object": "drift",
                "enabled": False,
                "hint": "Turn drift on with `observability: {drift: {enabled: true}}` in "
                "llmforge.yaml.",
                "models": [],
            }
        )
    monitor.start()
    return json_response({"object": "drift", **monitor.report().model_dump()})


class DriftReset(BaseModel):
    """The body of `POST /v1/traces/drift/reset` (optional)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="one model's windows (default: every model's)")


@router.post("/v1/traces/drift/reset", dependencies=[Depends(_drift_reader)])
async def reset_drift(ctx: Ctx, body: DriftReset | None = None) -> Response:
    monitor = _drift(ctx)
    if monitor is None:
        raise NotFoundError(
            "Drift is off; turn it on with `observability: {drift: {enabled: true}}`."
        )
    monitor.reset(body.model if body else None)
    return json_response({"object": "drift", **monitor.report().model_dump()})


@router.get("/v1/traces/{trace_id}")
async def get_trace(ctx: Ctx, trace_id: str, caller: Authenticated) -> Response:
    trace = await asyncio.to_thread(ctx.traces.get, trace_id)
    if caller is not None and not caller.master and trace.key_id != caller.key_id:
        raise NotFoundError(f"No trace '{trace_id}'.")  # another key's call stays invisible
    body = trace.model_dump()
    body["prompt_text"] = prompt_text(trace.kind, trace.request)
    return json_response({"object": "trace", **body})
