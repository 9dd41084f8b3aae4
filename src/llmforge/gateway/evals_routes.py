"""Evaluation runs over HTTP, read-only, for the UI and dashboards.

    GET /v1/evals/runs                   recent runs with their summaries (`?limit=`, newest first)
    GET /v1/evals/runs/{id}              one run, its summary and every case's result
    GET /v1/evals/runs/{id}/report       the run's self-contained HTML report

Every route needs a valid key when keys are on (`ctx.authenticate`). An unknown run is a 404 in
the OpenAI error shape. Runs are made by `llmforge eval run`; nothing here starts one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response

from llmforge.evals import EvalStore, render_html

if TYPE_CHECKING:
    from llmforge.gateway.app import AppContext

# the report is data, not an app: no scripts, nothing fetched, inline styles only
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def add_eval_routes(app: FastAPI, ctx: AppContext) -> None:
    store = EvalStore(ctx.engine)

    @app.get("/v1/evals/runs")
    async def list_runs(request: Request, limit: int = Query(50, ge=1, le=1000)) -> Response:
        await ctx.authenticate(request)
        runs = await asyncio.to_thread(store.list_runs, limit)
        return _json(
            {"object": "list", "data": [{"object": "eval_run", **r.model_dump()} for r in runs]}
        )

    @app.get("/v1/evals/runs/{run_id}")
    async def get_run(run_id: str, request: Request) -> Response:
        await ctx.authenticate(request)
        run = await asyncio.to_thread(store.get_run, run_id)
        results = await asyncio.to_thread(store.results, run_id)
        return _json(
            {
                "object": "eval_run",
                **run.model_dump(),
                "results": [r.model_dump() for r in results],
            }
        )

    @app.get("/v1/evals/runs/{run_id}/report")
    async def get_report(run_id: str, request: Request) -> Response:
        await ctx.authenticate(request)
        run = await asyncio.to_thread(store.get_run, run_id)
        results = await asyncio.to_thread(store.results, run_id)
        return HTMLResponse(
            render_html(run, results), headers={"Content-Security-Policy": REPORT_CSP}
        )
