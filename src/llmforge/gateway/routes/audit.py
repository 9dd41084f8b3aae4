"""The audit log over HTTP, and the record of every call when `audit.requests` is on.

    GET /v1/audit/verify      walk the chain: `{ok, rows, head_seq, head_hash, problems}`
                              (`?expect_head=` a head hash kept from before)
    GET /v1/audit/entries     rows in order (`?after=SEQ&limit=&kind=`)
    GET /v1/audit/export      the whole log as JSON lines with the head trailer (for an auditor)

All need the master key when keys are on. `RequestAuditor` is a call observer: each finished call
becomes a `request` row (ids, model, key, status, tokens, and the SHA-256 of the prompt and the
answer; their text only with `audit.plaintext`). Rows are written in order on one thread of their
own, after the response, like traces: a crash in between loses those calls' rows, never half a
row and never a link of the chain. Guard verdicts that block are written before the answer
(guard/pipeline.py), key changes with the change itself (keys.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import threading
from typing import Any

from fastapi import Query
from fastapi.responses import Response
from sqlalchemy.engine import Engine

from llmforge.audit import AuditLog, export_lines
from llmforge.core.config import AuditConfig
from llmforge.gateway.call import Call
from llmforge.gateway.context import AppContext, Ctx, MasterOnly, api_router
from llmforge.gateway.replies import json_response

log = logging.getLogger(__name__)
router = api_router(tags=["audit"], dependencies=[MasterOnly])
MAX_SEQ = 2**62  # sequence numbers are 64-bit


class NdjsonResponse(Response):
    """JSON lines (documented as such in /openapi.json)."""

    media_type = "application/x-ndjson"


def _log(ctx: AppContext) -> AuditLog:
    return ctx.shared("audit.log", lambda: AuditLog(ctx.engine))


@router.get("/v1/audit/verify")
async def verify(ctx: Ctx, expect_head: str | None = None) -> Response:
    result = await asyncio.to_thread(_log(ctx).verify, expect_head=expect_head)
    return json_response(result.model_dump(mode="json"))


@router.get("/v1/audit/entries")
async def entries(
    ctx: Ctx,
    after: int = Query(0, ge=0, le=MAX_SEQ),
    limit: int = Query(100, ge=1, le=1000),
    kind: str | None = None,
) -> Response:
    rows = await asyncio.to_thread(_log(ctx).entries, after=after, limit=limit, kind=kind)
    return json_response({"data": [r.model_dump(mode="json") for r in rows]})


@router.get("/v1/audit/export", response_class=NdjsonResponse)
async def export(ctx: Ctx, after: int = Query(0, ge=0, le=MAX_SEQ)) -> Response:
    lines = await asyncio.to_thread(lambda: list(export_lines(_log(ctx), after=after)))
    return NdjsonResponse(b"".join(lines))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


class RequestAuditor:
    """A call observer writing one `request` row per finished call (see the module docstring)."""

    def __init__(self, engine: Engine, config: AuditConfig) -> None:
        self.log = AuditLog(engine)
        self.plaintext = config.plaintext
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name="audit-requests", daemon=True)
        self._thread.start()

    def finished(self, call: Call) -> None:
        prompt = call.prompt or "\n".join(m.content for m in call.messages)
        data: dict[str, Any] = {
            "model": call.model,
            "served_by": call.served_by,
            "status": call.status,
            "error_type": call.error_type,
            "prompt_tokens": call.usage.prompt_tokens,
            "completion_tokens": call.usage.completion_tokens,
            "prompt_sha256": _sha(prompt),
            "output_sha256": _sha(call.output),
        }
        if self.plaintext:
            data["prompt"], data["output"] = prompt, call.output
        key = call.caller.key_id if call.caller else None
        self._queue.put({"actor": key, "subject": call.id, "data": data})

    def _write(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self.log.record("request", **item)
            except Exception:  # the database refused: logged, not retried (the row is lost)
                log.exception("audit: a request row could not be written")

    async def aclose(self) -> None:
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join, 5.0)


def observers(ctx_engine: Engine, config: AuditConfig) -> list[RequestAuditor]:
    return [RequestAuditor(ctx_engine, config)] if config.requests else []
