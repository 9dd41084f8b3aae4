"""The guards over HTTP: scanning a text, the review queue and its page.

    POST /v1/guard/scan                  the configured input guards on one text (any valid key)
    GET  /v1/guard/reviews               queued items (`?status=pending|decided|all&guard=&limit=`)
    GET  /v1/guard/reviews/export        decided items as JSONL training rows (`?guard_type=`)
    GET  /v1/guard/reviews/{id}          one item
    POST /v1/guard/reviews/{id}          a person's decision: `{"decision": "confirm" |
                                         "override", "note": ...}`; audited
    GET  /guard/review                   the review page (it asks for the master key and calls
                                         the routes above)

The review routes need the master key when keys are on. `build` makes the app's `GuardPipeline`
from the settings (None when no policy is configured: the gateway then runs no guard code at all);
the guards themselves run inside `Gateway` (service.py), not here.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import Query
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine

from llmforge.core.errors import InvalidRequestError
from llmforge.core.settings import Settings
from llmforge.gateway.context import AppContext, Authenticated, Ctx, MasterOnly, api_router
from llmforge.gateway.replies import json_response
from llmforge.guard import GuardContext, GuardPipeline, ReviewQueue
from llmforge.models import ModelCatalog

router = api_router(tags=["guard"])
PIPELINE = "guard.pipeline"


class NdjsonResponse(Response):
    """JSON lines (documented as such in /openapi.json)."""

    media_type = "application/x-ndjson"


def build(settings: Settings, engine: Engine, catalog: ModelCatalog) -> GuardPipeline | None:
    """The app's guards, or None when no policy is configured."""
    if not settings.guard.policies:
        return None
    return GuardPipeline(
        settings.guard,
        GuardContext(embedder=catalog.embedder, chat=catalog.chat),
        engine=engine,
        known_models=[m.name for m in settings.models],
        judge=catalog.chat,
    )


def install(ctx: AppContext, pipeline: GuardPipeline | None) -> None:
    """Keep the pipeline with the app (closed with it)."""
    if pipeline is not None:
        ctx.shared(PIPELINE, lambda: pipeline)


def _pipeline(ctx: AppContext) -> GuardPipeline:
    pipeline: GuardPipeline | None = ctx._shared.get(PIPELINE)
    if pipeline is None:
        raise InvalidRequestError(
            "No guards are configured on this server: add `guard.guards` and `guard.policies` "
            "to llmforge.yaml (see docs/safety.md)."
        )
    return pipeline


def _reviews(ctx: AppContext) -> ReviewQueue:
    pipeline: GuardPipeline | None = ctx._shared.get(PIPELINE)
    if pipeline is not None and pipeline.reviews is not None:
        return pipeline.reviews
    return ctx.shared("guard.reviews", lambda: ReviewQueue(ctx.engine))


class ScanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=200_000)
    policy: str | None = Field(None, description="a policy's input guards (default: all guards)")
    where: Literal["input", "tool", "output"] = "input"


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["confirm", "override"]
    note: str | None = Field(None, max_length=4000)
    reviewer: str | None = Field(None, max_length=200, description="who decides (default: key)")


@router.post("/v1/guard/scan")
async def scan(ctx: Ctx, caller: Authenticated, body: ScanRequest) -> Response:
    """Every verdict of the guards on `text` (nothing is queued or audited)."""
    verdicts = await _pipeline(ctx).scan(body.text, policy=body.policy, where=body.where)
    worst = max(verdicts, key=lambda v: ("allow", "mask", "redact", "refuse", "block").index(
        v.action), default=None)  # fmt: skip
    return json_response(
        {
            "action": worst.action if worst else "allow",
            "verdicts": [v.model_dump(mode="json") for v in verdicts],
        }
    )


@router.get("/v1/guard/reviews", dependencies=[MasterOnly])
async def list_reviews(
    ctx: Ctx,
    status: Literal["pending", "decided", "all"] = "pending",
    guard: str | None = None,
    limit: int = Query(50, ge=1, le=500),
) -> Response:
    items = await asyncio.to_thread(
        _reviews(ctx).list, status=None if status == "all" else status, guard=guard, limit=limit
    )
    return json_response({"data": [i.model_dump(mode="json") for i in items]})


@router.get("/v1/guard/reviews/export", dependencies=[MasterOnly], response_class=NdjsonResponse)
async def export_reviews(ctx: Ctx, guard_type: str | None = "injection") -> Response:
    lines = await asyncio.to_thread(lambda: list(_reviews(ctx).export_labelled(guard_type)))
    return NdjsonResponse(b"".join(lines))


@router.get("/v1/guard/reviews/{review_id}", dependencies=[MasterOnly])
async def get_review(ctx: Ctx, review_id: str) -> Response:
    item = await asyncio.to_thread(_reviews(ctx).get, review_id)
    return json_response(item.model_dump(mode="json"))


@router.post("/v1/guard/reviews/{review_id}", dependencies=[MasterOnly])
async def decide_review(
    ctx: Ctx, caller: Authenticated, review_id: str, body: DecisionRequest
) -> Response:
    by = body.reviewer or (caller.key_id if caller is not None else "anonymous")
    item = await asyncio.to_thread(
        _reviews(ctx).decide, review_id, body.decision, by=by, note=body.note
    )
    return json_response(item.model_dump(mode="json"))


@router.get("/guard/review", include_in_schema=False)
async def review_page() -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": PAGE_CSP})


@router.get("/guard/review.js", include_in_schema=False)
async def review_script() -> Response:
    return Response(SCRIPT, media_type="text/javascript")


PAGE_CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>LLMForge · guard review</title>
<style>body{font:14px system-ui;margin:2em;max-width:70em}pre{white-space:pre-wrap;
background:#f4f4f4;padding:.5em}.item{border-bottom:1px solid #ddd;padding:1em 0}
button{margin-right:.5em}</style></head>
<body><h1>Guard review queue</h1>
<p><label>Master key <input id="key" type="password" size="40"></label>
<button id="load">Load pending</button></p><div id="items"></div>
<script src="/guard/review.js"></script></body></html>
"""
SCRIPT = """
const $ = (id) => document.getElementById(id);
function headers() {
  const key = $('key').value;
  return key ? {'Authorization': 'Bearer ' + key, 'Content-Type': 'application/json'}
             : {'Content-Type': 'application/json'};
}
async function load() {
  const r = await fetch('/v1/guard/reviews?status=pending', {headers: headers()});
  const box = $('items');
  box.replaceChildren();
  if (!r.ok) { box.textContent = (await r.json()).error.message; return; }
  for (const item of (await r.json()).data) {
    const div = document.createElement('div');
    div.className = 'item';
    const head = document.createElement('div');
    const judge = item.judge_score === null ? 'not judged' : 'judge ' + item.judge_score.toFixed(2);
    head.textContent = `${item.id} · ${item.guard} (${item.code || ''}) · ` +
      `${item.flagged ? 'flagged: ' + item.action : 'sampled, allowed'} · ` +
      `score ${item.score.toFixed(2)} · ${judge}`;
    const text = document.createElement('pre');
    text.textContent = item.text;
    div.append(head, text);
    for (const decision of ['confirm', 'override']) {
      const b = document.createElement('button');
      b.textContent = decision === 'confirm' ? 'Guard was right' : 'Guard was wrong';
      b.onclick = async () => {
        const d = await fetch('/v1/guard/reviews/' + item.id, {method: 'POST',
          headers: headers(), body: JSON.stringify({decision})});
        if (d.ok) div.remove(); else alert((await d.json()).error.message);
      };
      div.append(b);
    }
    box.append(div);
  }
}
$('load').onclick = load;
"""
