"""Evaluation runs in the database: runs, per-case results, and the cache of model outputs.

Tables (migration `evals.0001_create`):

- `eval_runs`: one row per run: id, dataset, model, judge, metrics, options, status, summary.
- `eval_results`: one row per (run, case), written in its own transaction once the case's output
  and every metric are done, so a killed run keeps whole cases only; the primary key makes a
  resumed run unable to store a case twice.
- `eval_outputs`: model outputs keyed by sha256 of (model, messages, sampling), so a re-run with
  other metrics, or a second run id over the same dataset, does not generate again.

The store is synchronous (callers in async code use `asyncio.to_thread`); it computes nothing.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from llmforge.core.db import Migration, migrate
from llmforge.core.errors import NotFoundError
from llmforge.evals.base import Output, Score

metadata = sa.MetaData()

eval_runs = sa.Table(
    "eval_runs",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("dataset", sa.String(500), nullable=False),
    sa.Column("dataset_digest", sa.String(64), nullable=False),
    sa.Column("cases", sa.Integer, nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("judge", sa.String(200)),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("options", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("summary", sa.JSON),
)

eval_results = sa.Table(
    "eval_results",
    metadata,
    sa.Column(
        "run_id",
        sa.String(200),
        sa.ForeignKey("eval_runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("case_id", sa.String(200), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("case", sa.JSON, nullable=False),
    sa.Column("output", sa.JSON, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("scores", sa.JSON, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

eval_outputs = sa.Table(
    "eval_outputs",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("output", sa.JSON, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


def _create(conn: Connection) -> None:
    metadata.create_all(conn)
    conn.execute(sa.text("CREATE INDEX ix_eval_runs_created_at ON eval_runs (created_at)"))


MIGRATIONS = [Migration("evals.0001_create", _create)]

RunStatus = Literal["running", "done", "failed"]


class MetricSummary(BaseModel):
    """One metric over a run: mean over the scored cases, and how scores vary."""

    mean: float | None = None
    std: float = Field(0.0, description="standard deviation across cases")
    spread: float = Field(0.0, description="mean within-case standard deviation of judge samples")
    scored: int = 0
    errors: int = 0


class RunInfo(BaseModel):
    id: str
    created_at: float
    finished_at: float | None = None
    dataset: str
    dataset_digest: str
    cases: int
    target: str
    judge: str | None = None
    metrics: list[str]
    options: dict[str, Any] = Field(default_factory=dict)
    status: RunStatus
    summary: dict[str, MetricSummary] = Field(default_factory=dict)
    done: int = Field(0, description="cases stored so far")


class CaseResult(BaseModel):
    case_id: str
    position: int
    case: dict[str, Any]
    output: Output
    error: str | None = None
    scores: dict[str, Score]
    latency_ms: float = 0.0


class EvalStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        migrate(engine, MIGRATIONS)

    # -- runs --------------------------------------------------------------------------------

    def create_run(self, run: RunInfo) -> None:
        with self.engine.begin() as conn:
            conn.execute(eval_runs.insert().values(**_run_row(run)))

    def find_run(self, run_id: str) -> RunInfo | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(eval_runs).where(eval_runs.c.id == run_id)).first()
            if row is None:
                return None
            done = conn.scalar(sa.select(sa.func.count()).where(eval_results.c.run_id == run_id))
        return _run(row, done or 0)

    def get_run(self, run_id: str) -> RunInfo:
        run = self.find_run(run_id)
        if run is None:
            raise NotFoundError(
                f"No evaluation run '{run_id}'. List them with `llmforge eval list`.",
                param="run_id",
            )
        return run

    def list_runs(self, limit: int = 50) -> list[RunInfo]:
        counts = (
            sa.select(eval_results.c.run_id, sa.func.count().label("done"))
            .group_by(eval_results.c.run_id)
            .subquery()
        )
        q = (
            sa.select(eval_runs, counts.c.done)
            .outerjoin(counts, counts.c.run_id == eval_runs.c.id)
            .order_by(eval_runs.c.created_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_run(row, row.done or 0) for row in conn.execute(q)]

    def set_status(
        self, run_id: str, status: RunStatus, summary: dict[str, MetricSummary] | None = None
    ) -> None:
        values: dict[str, Any] = {"status": status}
        if summary is not None:
            values["summary"] = {k: v.model_dump() for k, v in summary.items()}
        if status != "running":
            values["finished_at"] = time.time()
        with self.engine.begin() as conn:
            conn.execute(eval_runs.update().where(eval_runs.c.id == run_id).values(**values))

    # -- results -----------------------------------------------------------------------------

    def done_case_ids(self, run_id: str) -> set[str]:
        with self.engine.connect() as conn:
            return set(
                conn.scalars(
                    sa.select(eval_results.c.case_id).where(eval_results.c.run_id == run_id)
                )
            )

    def add_result(self, run_id: str, result: CaseResult) -> bool:
        """Store one case's result; False when it was already stored (a resumed run)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    eval_results.insert().values(
                        run_id=run_id,
                        case_id=result.case_id,
                        position=result.position,
                        case=result.case,
                        output=result.output.model_dump(),
                        error=result.error,
                        scores={k: v.model_dump() for k, v in result.scores.items()},
                        latency_ms=result.latency_ms,
                        created_at=time.time(),
                    )
                )
        except IntegrityError:
            return False
        return True

    def results(self, run_id: str) -> list[CaseResult]:
        q = (
            sa.select(eval_results)
            .where(eval_results.c.run_id == run_id)
            .order_by(eval_results.c.position)
        )
        with self.engine.connect() as conn:
            return [
                CaseResult(
                    case_id=r.case_id,
                    position=r.position,
                    case=r.case,
                    output=Output.model_validate(r.output),
                    error=r.error,
                    scores={k: Score.model_validate(v) for k, v in r.scores.items()},
                    latency_ms=r.latency_ms,
                )
                for r in conn.execute(q)
            ]

    # -- output cache ------------------------------------------------------------------------

    def cached_output(self, key: str) -> tuple[Output, float] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(eval_outputs).where(eval_outputs.c.key == key)).first()
        return None if row is None else (Output.model_validate(row.output), row.latency_ms)

    def cache_output(self, key: str, model: str, output: Output, latency_ms: float) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    eval_outputs.insert().values(
                        key=key,
                        model=model,
                        output=output.model_dump(),
                        latency_ms=latency_ms,
                        created_at=time.time(),
                    )
                )
        except IntegrityError:
            pass  # the same output was cached meanwhile


def _run_row(run: RunInfo) -> dict[str, Any]:
    row = run.model_dump(exclude={"done"})
    row["summary"] = {k: v.model_dump() for k, v in run.summary.items()}
    return row


def _run(row: Any, done: int) -> RunInfo:
    data = dict(row._mapping)
    data.pop("done", None)
    data["summary"] = data.get("summary") or {}
    return RunInfo.model_validate({**data, "done": done})
