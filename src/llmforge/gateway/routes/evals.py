"""Evaluation runs over HTTP, read-only, for the UI and dashboards.

    GET /v1/evals/runs                   recent runs with their summaries (`?limit=`, newest first)
    GET /v1/evals/runs/{id}              one run, its summary and every case's result
    GET /v1/evals/runs/{id}/report       the run's self-contained HTML report

Every route needs a valid key when keys are on. An unknown run is a 404 in the OpenAI error shape.
Runs are made by `llmforge eval run`; nothing here starts one.
"""

from __future__ import annotations

import asyncio

from fastapi import Depends, Query
from fastapi.responses import HTMLResponse, Response

from llmforge.evals import EvalStore, render_html
from llmforge.gateway.context import AppContext, Ctx, api_router, authenticate
from llmforge.gateway.replies import json_response

# the report is data, not an app: no scripts, nothing fetched, inline styles only
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

router = api_router(tags=["evals"], dependencies=[Depends(authenticate)])


def _store(ctx: AppContext) -> EvalStore:
    return ctx.shared("evals.store", lambda: EvalStore(ctx.engine))


@router.get("/v1/evals/runs")
async def list_runs(ctx: Ctx, limit: int = Query(50, ge=1, le=1000)) -> Response:
    runs = await asyncio.to_thread(_store(ctx).list_runs, limit)
    return json_response(
        {"object": "list", "data": [{"object": "eval_run", **r.model_dump()} for r in runs]}
    )


@router.get("/v1/evals/runs/{run_id}")
async def get_run(ctx: Ctx, run_id: str) -> Response:
    store = _store(ctx)
    run = await asyncio.to_thread(store.get_run, run_id)
    results = await asyncio.to_thread(store.results, run_id)
    return json_response(
        {"object": "eval_run", **run.model_dump(), "results": [r.model_dump() for r in results]}
    )


@router.get("/v1/evals/runs/{run_id}/report", response_class=HTMLResponse)
async def get_report(ctx: Ctx, run_id: str) -> Response:
    store = _store(ctx)
    run = await asyncio.to_thread(store.get_run, run_id)
    results = await asyncio.to_thread(store.results, run_id)
    return HTMLResponse(render_html(run, results), headers={"Content-Security-Policy": REPORT_CSP})
