"""Runs, their events and their tool calls, in the configured database.

- `agent_runs`: one row per run (agent, thread, user, status, why it stopped, the answer, its
  sources and artifacts, the calls waiting for approval, usage counted as it is spent, and which
  process runs it with its last heartbeat, so another process can tell a dead run from a live one).
- `agent_events`: the run's events in order (events.py), what `GET` and reconnecting streams
  replay.
- `agent_tool_calls`: each tool call of a run, written `started` before the tool runs and `done`
  with its result after. A run resumed after a crash reuses a recorded result instead of calling
  again, and does not repeat a started, unfinished call of a tool that is not idempotent.

The graph's own state lives in LangGraph's checkpoint tables (checkpoints.py). Synchronous; the
runtime calls it on threads. It decides nothing about runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection, Engine

from llmforge.agents.events import EVENT, AgentEvent, PendingCall, RunStatus, RunUsage
from llmforge.agents.tools import ToolResult
from llmforge.core.db import Migration, migrate
from llmforge.core.errors import NotFoundError
from llmforge.core.types import Message, Source

metadata = sa.MetaData()
runs = sa.Table(
    "agent_runs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("agent", sa.String(64), nullable=False),
    sa.Column("thread_id", sa.String(128), nullable=False, index=True),
    sa.Column("user_id", sa.String(200), nullable=False),
    sa.Column("key_id", sa.String(40)),
    sa.Column("status", sa.String(24), nullable=False, index=True),
    sa.Column("stop_reason", sa.Text),
    sa.Column("input", sa.JSON, nullable=False),
    sa.Column("output", sa.Text, nullable=False, server_default=""),
    sa.Column("sources", sa.JSON),
    sa.Column("artifacts", sa.JSON),
    sa.Column("pending", sa.JSON),
    sa.Column("usage", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("owner", sa.String(200)),
    sa.Column("heartbeat_at", sa.Float),
)
events = sa.Table(
    "agent_events",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("type", sa.String(24), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
tool_calls = sa.Table(
    "agent_tool_calls",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("call_id", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("arguments", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("result", sa.JSON),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
)


def _create(conn: Connection) -> None:
    metadata.create_all(conn, tables=[runs, events, tool_calls])


MIGRATIONS = [Migration("agents.0001_create", _create)]


class AgentRun(BaseModel):
    """A run as stored and as the API shows it."""

    id: str
    agent: str
    thread_id: str
    user_id: str
    key_id: str | None = None
    status: RunStatus
    stop_reason: str | None = None
    input: list[Message]
    output: str = ""
    sources: list[Source] = Field(default_factory=list)
    artifacts: dict[str, str] = Field(
        default_factory=dict, description="e.g. the research report as markdown and html"
    )
    pending: list[PendingCall] = Field(default_factory=list, description="awaiting approval")
    usage: RunUsage = Field(default_factory=RunUsage)
    created_at: float
    updated_at: float
    finished_at: float | None = None
    owner: str | None = None
    heartbeat_at: float | None = None


class RecordedCall(BaseModel):
    call_id: str
    name: str
    arguments: str
    status: str
    result: ToolResult | None = None


class RunStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        migrate(engine, MIGRATIONS)

    # -- runs -----------------------------------------------------------------------------------

    def create(self, run: AgentRun) -> None:
        with self.engine.begin() as conn:
            conn.execute(runs.insert().values(**_row(run)))

    def get(self, run_id: str) -> AgentRun:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise NotFoundError(
                f"No agent run '{run_id}'. List runs with `GET /v1/agents/{{name}}/runs`."
            )
        return _run(row._asdict())

    def update(self, run_id: str, **values: Any) -> None:
        values = {k: _plain(v) for k, v in values.items()}
        values["updated_at"] = time.time()
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(**values))

    def transition(self, run_id: str, expected: str, **values: Any) -> bool:
        """Update the run only if its status is `expected` (one decision wins); whether it did."""
        values = {k: _plain(v) for k, v in values.items()}
        values["updated_at"] = time.time()
        with self.engine.begin() as conn:
            result = conn.execute(
                runs.update().where(runs.c.id == run_id, runs.c.status == expected).values(**values)
            )
        return bool(result.rowcount)

    def list_runs(
        self,
        agent: str | None = None,
        status: Sequence[str] | None = None,
        thread_id: str | None = None,
        limit: int = 50,
    ) -> list[AgentRun]:
        q = sa.select(runs).order_by(runs.c.created_at.desc()).limit(limit)
        if agent:
            q = q.where(runs.c.agent == agent)
        if status:
            q = q.where(runs.c.status.in_(list(status)))
        if thread_id:
            q = q.where(runs.c.thread_id == thread_id)
        with self.engine.connect() as conn:
            return [_run(r._asdict()) for r in conn.execute(q)]

    def claim(self, run_id: str, owner: str, stale_before: float, previous: str | None) -> bool:
        """Take over a running run whose owner is `previous` and silent since `stale_before`
        (or dead); False when another process got it first."""
        now = time.time()
        with self.engine.begin() as conn:
            result = conn.execute(
                runs.update()
                .where(
                    runs.c.id == run_id,
                    runs.c.status == "running",
                    runs.c.owner == previous if previous is not None else runs.c.owner.is_(None),
                    sa.or_(runs.c.heartbeat_at.is_(None), runs.c.heartbeat_at < stale_before),
                )
                .values(owner=owner, heartbeat_at=now, updated_at=now)
            )
        return bool(result.rowcount)

    def heartbeat(self, run_ids: Sequence[str], owner: str) -> None:
        if run_ids:
            with self.engine.begin() as conn:
                conn.execute(
                    runs.update()
                    .where(runs.c.id.in_(list(run_ids)), runs.c.owner == owner)
                    .values(heartbeat_at=time.time())
                )

    def finished_threads(self, before: float) -> list[str]:
        """Threads whose every run finished before `before` (retention)."""
        with self.engine.connect() as conn:
            q = (
                sa.select(runs.c.thread_id)
                .group_by(runs.c.thread_id)
                .having(sa.func.max(sa.func.coalesce(runs.c.finished_at, now_far())) < before)
            )
            return list(conn.scalars(q))

    def threads(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.scalars(sa.select(runs.c.thread_id).distinct()))

    # -- events ---------------------------------------------------------------------------------

    def add_event(self, event: AgentEvent) -> AgentEvent:
        """Store the event as the run's next one; returns it with its `seq`."""
        with self.engine.begin() as conn:
            last = conn.scalar(
                sa.select(sa.func.max(events.c.seq)).where(events.c.run_id == event.run_id)
            )
            numbered = event.model_copy(update={"seq": (last or 0) + 1})
            conn.execute(
                events.insert().values(
                    run_id=event.run_id,
                    seq=numbered.seq,
                    type=event.type,
                    data=numbered.model_dump(mode="json"),
                    created_at=time.time(),
                )
            )
        return numbered

    def events(self, run_id: str, after: int = 0) -> list[AgentEvent]:
        q = (
            sa.select(events.c.data)
            .where(events.c.run_id == run_id, events.c.seq > after)
            .order_by(events.c.seq)
        )
        with self.engine.connect() as conn:
            return [EVENT.validate_python(d) for d in conn.scalars(q)]

    # -- tool calls -----------------------------------------------------------------------------

    def recorded_call(self, run_id: str, call_id: str) -> RecordedCall | None:
        q = sa.select(tool_calls).where(
            tool_calls.c.run_id == run_id, tool_calls.c.call_id == call_id
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            return None
        data = row._asdict()
        return RecordedCall.model_validate(data)

    def call_started(self, run_id: str, call_id: str, name: str, arguments: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                tool_calls.delete().where(
                    tool_calls.c.run_id == run_id, tool_calls.c.call_id == call_id
                )
            )
            conn.execute(
                tool_calls.insert().values(
                    run_id=run_id,
                    call_id=call_id,
                    name=name,
                    arguments=arguments,
                    status="started",
                    started_at=time.time(),
                )
            )

    def call_done(self, run_id: str, call_id: str, result: ToolResult) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                tool_calls.update()
                .where(tool_calls.c.run_id == run_id, tool_calls.c.call_id == call_id)
                .values(
                    status="done", result=result.model_dump(mode="json"), finished_at=time.time()
                )
            )

    def calls(self, run_id: str) -> list[RecordedCall]:
        q = (
            sa.select(tool_calls)
            .where(tool_calls.c.run_id == run_id)
            .order_by(tool_calls.c.started_at)
        )
        with self.engine.connect() as conn:
            return [RecordedCall.model_validate(r._asdict()) for r in conn.execute(q)]


def now_far() -> float:
    return 1e18  # a run not finished never counts as old


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _row(run: AgentRun) -> dict[str, Any]:
    return run.model_dump(mode="json")


def _run(row: dict[str, Any]) -> AgentRun:
    row["sources"] = row.get("sources") or []
    row["artifacts"] = row.get("artifacts") or {}
    row["pending"] = row.get("pending") or []
    return AgentRun.model_validate(row)
