"""The agents API: runs of the configured agents over HTTP, with an SSE stream of typed events.

    GET  /v1/agents                                   the agents (graph, model, tools, approvals)
    GET  /v1/agents/pending                           runs waiting for approval, every agent
    GET  /v1/agents/{name}                            one agent
    POST /v1/agents/{name}/runs                       start a run {input, thread_id, user, stream}
    GET  /v1/agents/{name}/runs                       its runs (`?status=`, `?thread_id=`)
    GET  /v1/agents/{name}/runs/{id}                  one run (`?events=true`: with its events)
    GET  /v1/agents/{name}/runs/{id}/events           SSE: its events after `?after=N`, then live
    POST /v1/agents/{name}/runs/{id}/approve          {arguments: {call_id: {...}}} (edits)
    POST /v1/agents/{name}/runs/{id}/reject           {reason}
    POST /v1/agents/{name}/runs/{id}/resume           a run a dead process left running

A run's stream (`stream: true`, the default) sends `event: <type>` / `data: <json>` pairs (step,
tool_call, tool_result, approval_needed, message, done) and ends when the run stops or waits for
approval; the run goes on if the client leaves. Without `stream`, the answer is the run once it
stopped or paused; `approve`/`reject`/`resume` answer the same way (or stream with `stream: true`).

Who may do what with keys on: any valid key starts and reads runs; deciding on approvals and
listing pending ones takes the master key (a person, not the agent's caller). `install` builds the
process's `AgentRuntime` over the gateway's own `Gateway` (so agent steps are routed, admitted as
the key that started the run, billed to it, and traced with the run id in the trace's metadata)
and ties it to the app's lifespan.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import orjson
from fastapi import Depends, FastAPI, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from llmforge.agents import AgentEvent, AgentRun, AgentRuntime, ModelAnswer
from llmforge.agents.model import RUNTIME_KEY
from llmforge.core.errors import (
    BudgetExceededError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from llmforge.core.types import Message, Sampling
from llmforge.gateway.admission import KeyAdmission, check_scope
from llmforge.gateway.call import Call, Caller
from llmforge.gateway.context import AppContext, Authenticated, Ctx, api_router, authenticate
from llmforge.gateway.replies import STREAM_HEADERS, json_response
from llmforge.gateway.service import Gateway
from llmforge.kb import shared_knowledge_bases

router = api_router(tags=["agents"], dependencies=[Depends(authenticate)])
RATE_LIMIT_TRIES = 5  # a step refused by the key's RPM/TPM limit is tried this often in all
MAX_RATE_LIMIT_WAIT_S = 60.0


class GatewayModels:
    """The runtime's ModelClient: every agent step is a `Call` through the gateway, admitted as
    the API key that started the run (its model scope, rate limits and budget; its spend and
    traces). A step refused by the key's rate limit waits the limit's Retry-After and tries
    again (`RATE_LIMIT_TRIES` in all); an exhausted budget or a revoked key ends the run."""

    def __init__(self, gateway: Gateway, admission: KeyAdmission) -> None:
        self.gateway = gateway
        self.admission = admission

    async def complete(
        self,
        model: str,
        messages: Sequence[Message],
        sampling: Sampling,
        tags: Mapping[str, str],
        key_id: str | None = None,
    ) -> ModelAnswer:
        caller = None if key_id is None else await self.admission.caller_for(key_id)
        for attempt in range(1, RATE_LIMIT_TRIES + 1):
            call = Call(
                model=model,
                messages=list(messages),
                sampling=sampling,
                metadata=dict(tags),
                use_cache=False,
                caller=caller,
            )
            try:
                completion = await self.gateway.complete(call)
            except RateLimitError as e:
                if isinstance(e, BudgetExceededError) or attempt == RATE_LIMIT_TRIES:
                    raise
                await asyncio.sleep(min(e.retry_after_s, MAX_RATE_LIMIT_WAIT_S))
                continue
            return ModelAnswer(completion=completion, cost_usd=call.cost_usd, trace_id=call.id)
        raise AssertionError("unreachable")


def runtime_of(ctx: AppContext) -> AgentRuntime:
    return ctx.catalog.shared(
        RUNTIME_KEY,
        lambda: AgentRuntime(
            ctx.settings,
            GatewayModels(ctx.gateway, ctx.admission),
            engine=ctx.engine,
            knowledge_bases=lambda: shared_knowledge_bases(ctx.catalog),
            embedder=ctx.catalog.embedder,
        ),
    )


def install(app: FastAPI, ctx: AppContext) -> None:
    """Build the runtime now (before any `agent` model can build one without the gateway) and
    start it with the app: checkpointer, resuming runs a dead process left; stop it first."""
    runtime = runtime_of(ctx)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state:
            await runtime.start()
            if ctx.settings.agents.resume_on_start:
                await runtime.resume_orphans()
            try:
                yield state
            finally:
                await runtime.aclose()

    app.router.lifespan_context = lifespan


# -- wire -----------------------------------------------------------------------------------------


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=200_000)


class RunRequest(BaseModel):
    """The body of `POST /v1/agents/{name}/runs`."""

    model_config = ConfigDict(extra="forbid")

    input: str | list[InputMessage] = Field(description="a user message, or several messages")
    thread_id: str | None = Field(
        None, max_length=128, description="continue this thread (its conversation); default: new"
    )
    user: str | None = Field(
        None, max_length=200, description="whose long-term memory (default: the API key's)"
    )
    stream: bool = Field(True, description="SSE events; false: the run once it stops or pauses")


class ApproveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arguments: dict[str, dict[str, Any]] | None = Field(
        None, description="edited arguments by call id; calls not named run as proposed"
    )
    stream: bool = False


class RejectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=2000)
    stream: bool = False


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream: bool = False


def _messages(body: RunRequest) -> list[Message]:
    if isinstance(body.input, str):
        return [Message(role="user", content=body.input)]
    return [Message(role=m.role, content=m.content) for m in body.input]


def _run_body(run: AgentRun, events: list[AgentEvent] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"object": "agent.run", **run.model_dump(mode="json")}
    if events is not None:
        body["events"] = [e.model_dump(mode="json") for e in events]
    return body


def _sse(runtime: AgentRuntime, run: AgentRun, after: int = 0) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        async for event in runtime.follow(run.id, after):
            yield (
                f"event: {event.type}\n".encode()
                + b"data: "
                + orjson.dumps(event.model_dump(mode="json"))
                + b"\n\n"
            )

    headers = {**STREAM_HEADERS, "x-llmforge-run-id": run.id}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def _answer(runtime: AgentRuntime, run: AgentRun, stream: bool) -> Response:
    if stream:
        return _sse(runtime, run)
    return json_response(_run_body(await runtime.wait(run.id)))


def _own_run(runtime: AgentRuntime, name: str, run_id: str) -> AgentRun:
    runtime.config(name)
    run = runtime.get(run_id)
    if run.agent != name:
        raise NotFoundError(f"Run '{run_id}' is not a run of agent '{name}' (it is {run.agent}'s).")
    return run


def _decider(caller: Caller | None) -> str | None:
    """Who decides: the master key when keys are on (None: keys off, anyone on the host)."""
    if caller is not None and not caller.master:
        raise PermissionDeniedError(
            "Approving, rejecting and listing pending agent runs takes the master key."
        )
    return caller.name if caller is not None else None


def _info(runtime: AgentRuntime, name: str) -> dict[str, Any]:
    info = next(i for i in runtime.agents() if i.name == name)
    return {"object": "agent", **vars(info)}


# -- routes ---------------------------------------------------------------------------------------


@router.get("/v1/agents")
async def list_agents(ctx: Ctx) -> Response:
    runtime = runtime_of(ctx)
    return json_response(
        {"object": "list", "data": [_info(runtime, a.name) for a in runtime.agents()]}
    )


@router.get("/v1/agents/pending")
async def list_pending(ctx: Ctx, caller: Authenticated) -> Response:
    _decider(caller)
    store = runtime_of(ctx).store
    runs = await asyncio.to_thread(store.list_runs, None, ["waiting_approval"], None, 1000)
    return json_response({"object": "list", "data": [_run_body(r) for r in runs]})


@router.get("/v1/agents/{name}")
async def get_agent(ctx: Ctx, name: str) -> Response:
    runtime = runtime_of(ctx)
    runtime.config(name)
    return json_response(_info(runtime, name))


@router.post("/v1/agents/{name}/runs")
async def start_run(ctx: Ctx, caller: Authenticated, name: str, body: RunRequest) -> Response:
    runtime = runtime_of(ctx)
    if caller is not None and caller.models is not None:  # refused now, not at its first step
        check_scope(caller, (await runtime.definition(name)).model)
    user = body.user or (caller.key_id if caller is not None and not caller.master else None)
    run = await runtime.start_run(
        name,
        _messages(body),
        thread_id=body.thread_id,
        user_id=user,
        key_id=caller.key_id if caller is not None else None,
    )
    return await _answer(runtime, run, body.stream)


@router.get("/v1/agents/{name}/runs")
async def list_runs(
    ctx: Ctx,
    name: str,
    status: str | None = Query(None, description="comma-separated statuses"),
    thread_id: str | None = None,
    limit: int = Query(50, ge=1, le=1000),
) -> Response:
    runtime = runtime_of(ctx)
    runtime.config(name)
    statuses = [s.strip() for s in status.split(",") if s.strip()] if status else None
    runs = await asyncio.to_thread(runtime.store.list_runs, name, statuses, thread_id, limit)
    return json_response({"object": "list", "data": [_run_body(r) for r in runs]})


@router.get("/v1/agents/{name}/runs/{run_id}")
async def get_run(ctx: Ctx, name: str, run_id: str, events: bool = False) -> Response:
    runtime = runtime_of(ctx)
    run = await asyncio.to_thread(_own_run, runtime, name, run_id)
    found = await asyncio.to_thread(runtime.store.events, run_id) if events else None
    return json_response(_run_body(run, found))


@router.get("/v1/agents/{name}/runs/{run_id}/events")
async def follow_run(
    ctx: Ctx, name: str, run_id: str, after: int = Query(0, ge=0)
) -> StreamingResponse:
    runtime = runtime_of(ctx)
    return _sse(runtime, await asyncio.to_thread(_own_run, runtime, name, run_id), after)


@router.post("/v1/agents/{name}/runs/{run_id}/approve")
async def approve_run(
    ctx: Ctx, caller: Authenticated, name: str, run_id: str, body: ApproveRequest | None = None
) -> Response:
    actor = _decider(caller)
    runtime = runtime_of(ctx)
    await asyncio.to_thread(_own_run, runtime, name, run_id)
    body = body or ApproveRequest()
    run = await runtime.approve(run_id, body.arguments, actor)
    return await _answer(runtime, run, body.stream)


@router.post("/v1/agents/{name}/runs/{run_id}/reject")
async def reject_run(
    ctx: Ctx, caller: Authenticated, name: str, run_id: str, body: RejectRequest | None = None
) -> Response:
    actor = _decider(caller)
    runtime = runtime_of(ctx)
    await asyncio.to_thread(_own_run, runtime, name, run_id)
    body = body or RejectRequest()
    run = await runtime.reject(run_id, body.reason, actor)
    return await _answer(runtime, run, body.stream)


@router.post("/v1/agents/{name}/runs/{run_id}/resume")
async def resume_run(
    ctx: Ctx, name: str, run_id: str, body: ResumeRequest | None = None
) -> Response:
    runtime = runtime_of(ctx)
    await asyncio.to_thread(_own_run, runtime, name, run_id)
    run = await runtime.resume(run_id)
    return await _answer(runtime, run, (body or ResumeRequest()).stream)
