"""Evaluation runs over HTTP, for the UI and dashboards.

    GET  /v1/evals/runs                  recent runs with their summaries (`?limit=`, newest first)
    POST /v1/evals/runs                  start a run of a chat model on a JSONL dataset sent in the
                                         body (202; it runs in the background, poll the run)
    GET  /v1/evals/runs/{id}             one run, its summary and every case's result
    GET  /v1/evals/runs/{id}/report      the run's self-contained HTML report
    GET  /v1/evals/compare?a=&b=         run b against run a: per shared metric, the mean
                                         difference with a paired bootstrap 95% interval

Every route needs a valid key when keys are on; starting a run spends model time, so it needs the
master key then. An unknown run is a 404 in the OpenAI error shape. A started run is the same as
`llmforge eval run DATASET --model NAME` (same run id, so starting it again resumes it); it is
cancelled, and marked failed, when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from pathlib import Path

from fastapi import Depends, Query
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from llmforge.core.errors import InvalidRequestError, LLMForgeError, PermissionDeniedError
from llmforge.core.types import Sampling
from llmforge.evals import (
    JUDGE_METRICS,
    Dataset,
    EvalStore,
    MetricOptions,
    ModelTarget,
    RunSpec,
    build_metrics,
    compare_runs,
    load_dataset,
    metric_registry,
    render_html,
    run_eval,
)
from llmforge.gateway.context import AppContext, Authenticated, Ctx, api_router, authenticate
from llmforge.gateway.replies import json_response

log = logging.getLogger(__name__)

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


class RunStart(BaseModel):
    """The body of `POST /v1/evals/runs`."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, description="the cases, as JSONL text (one case a line)")
    dataset_name: str = Field("dataset", min_length=1, max_length=200)
    model: str = Field(min_length=1, description="the chat model evaluated")
    metrics: list[str] = Field(
        default_factory=lambda: ["exact_match", "token_f1", "rouge_l"], min_length=1
    )
    judge: str | None = Field(None, description="chat model that judges (judge metrics)")
    rubric: str | None = None
    samples: int = Field(1, ge=1, le=10)
    max_tokens: int = Field(256, ge=1, le=32_768)
    temperature: float = Field(0.0, ge=0, le=2)
    concurrency: int = Field(4, ge=1, le=32)


class _Runs:
    """The runs this server started, so they are cancelled when it stops."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def aclose(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for task in list(self.tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _starter(caller: Authenticated) -> None:
    if caller is not None and not caller.master:
        raise PermissionDeniedError("Only the master key may start evaluation runs.")


def _parse_dataset(text: str, name: str) -> Dataset:
    """The JSONL text read as `llmforge eval run` reads a file (same checks, same digest)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)[:100] or "dataset"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{safe.removesuffix('.jsonl')}.jsonl"
        path.write_text(text, encoding="utf-8")
        return load_dataset(path)


@router.post("/v1/evals/runs", status_code=202, dependencies=[Depends(_starter)])
async def start_run(ctx: Ctx, body: RunStart) -> Response:
    known = metric_registry.names()
    unknown = [m for m in body.metrics if m not in known]
    if unknown:
        raise InvalidRequestError(
            f"Unknown metric(s) {', '.join(unknown)}. Known: {', '.join(known)}.", param="metrics"
        )
    if JUDGE_METRICS & set(body.metrics) and body.judge is None:
        raise InvalidRequestError(
            f"{', '.join(sorted(JUDGE_METRICS & set(body.metrics)))} needs a judge: pick a chat "
            "model as `judge`.",
            param="judge",
        )
    catalog = ctx.catalog
    config = catalog.config(body.model)  # 404 for an unknown model
    dataset = await asyncio.to_thread(_parse_dataset, body.dataset, body.dataset_name)
    sampling = Sampling(max_tokens=body.max_tokens, temperature=body.temperature)
    options: dict[str, object] = {
        "sampling": sampling.model_dump(exclude_none=True, exclude_defaults=True)
    }
    if JUDGE_METRICS & set(body.metrics):
        options.update(samples=body.samples, rubric=body.rubric)
    spec = RunSpec(
        dataset=dataset,
        target=body.model,
        metrics=body.metrics,
        judge=body.judge,
        options=options,
        concurrency=body.concurrency,
    )
    judge = catalog.chat(body.judge) if body.judge else None
    mopts = MetricOptions(samples=body.samples, rubric=body.rubric, judge=judge)
    try:
        metrics = build_metrics(body.metrics, mopts)
    except LLMForgeError as e:
        raise InvalidRequestError(e.message, param="metrics") from None
    target = ModelTarget(body.model, catalog.chat(body.model), config, sampling)
    run_id = spec.default_id()
    runs = ctx.shared("evals.runs", _Runs)
    running = runs.tasks.get(run_id)
    if running is None or running.done():
        store = _store(ctx)

        async def run() -> None:
            try:
                await run_eval(spec, store, target, metrics)
            except LLMForgeError as e:
                log.warning("evaluation run %s failed: %s", run_id, e.message)
            finally:
                runs.tasks.pop(run_id, None)

        runs.tasks[run_id] = asyncio.create_task(run(), name=f"eval-{run_id}")
    return json_response(
        {"object": "eval_run", "id": run_id, "status": "running", "cases": len(dataset.cases)},
        202,
    )


@router.get("/v1/evals/compare")
async def compare(
    ctx: Ctx,
    a: str = Query(description="the baseline run's id"),
    b: str = Query(description="the candidate run's id"),
) -> Response:
    store = _store(ctx)

    def load() -> dict[str, object]:
        run_a, run_b = store.get_run(a), store.get_run(b)
        shared = [m for m in run_a.metrics if m in run_b.metrics]
        comparison = compare_runs(a, store.results(a), b, store.results(b), shared)
        return {
            "object": "eval_comparison",
            **comparison.model_dump(),
            "a": run_a.model_dump(),
            "b": run_b.model_dump(),
        }

    return json_response(await asyncio.to_thread(load))


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
