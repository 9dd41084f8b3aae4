"""The flywheel's records in the database: stage runs, the teacher-label cache, distilled model
versions, routing policies and the online feedback they collect.

Tables (migration `distill.0001_create`):

- `distill_runs`: one row per stage run (collect, label, train, eval, export) with its parent run,
  status, wall time and result; the chain of parents is a model's lineage.
- `distill_labels`: each teacher answer by sha256 of (teacher config, messages, sampling, sample
  index), so a killed label run resumes without paying twice.
- `distill_models`: every exported version of a distilled model (file, its sha256, lineage,
  scores); at most one `active` per name, switched in one transaction.
- `distill_routes`: the policy on a model name (share to the student, escalation threshold,
  promotion rule) that a running gateway follows.
- `distill_feedback`: escalations, disagreements and agreements seen online: the next dataset.

The store is synchronous (async callers use `asyncio.to_thread`) and decides nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from llmforge import audit
from llmforge.core.db import Migration, migrate, sortable_id
from llmforge.core.errors import InvalidRequestError, NotFoundError
from llmforge.core.types import Message

metadata = sa.MetaData()

distill_runs = sa.Table(
    "distill_runs",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("flywheel", sa.String(200), nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("parent", sa.String(200)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("wall_s", sa.Float),
    sa.Column("result", sa.JSON),
    sa.Column("error", sa.Text),
)

distill_labels = sa.Table(
    "distill_labels",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("teacher", sa.String(200), nullable=False),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

distill_models = sa.Table(
    "distill_models",
    metadata,
    sa.Column("id", sa.String(250), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("path", sa.Text),
    sa.Column("sha256", sa.String(64)),
    sa.Column("quant", sa.String(16)),
    sa.Column("context_length", sa.Integer),
    sa.Column("lineage", sa.JSON, nullable=False),
    sa.Column("scores", sa.JSON, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("name", "version", name="uq_distill_models_version"),
)

distill_routes = sa.Table(
    "distill_routes",
    metadata,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("student", sa.String(200), nullable=False),
    sa.Column("share", sa.Float, nullable=False),
    sa.Column("min_logprob", sa.Float, nullable=False),
    sa.Column("shadow", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("promote_min", sa.Integer, nullable=False),
    sa.Column("promote_agreement", sa.Float, nullable=False),
    sa.Column("auto_promote", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

distill_feedback = sa.Table(
    "distill_feedback",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("route", sa.String(200), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(200)),
    sa.Column("messages", sa.JSON, nullable=False),
    sa.Column("student_answer", sa.Text),
    sa.Column("teacher_answer", sa.Text),
    sa.Column("student_version", sa.String(250)),
)


def _create(conn: Connection) -> None:
    metadata.create_all(conn)
    conn.execute(sa.text("CREATE INDEX ix_distill_runs_flywheel ON distill_runs (flywheel)"))
    conn.execute(sa.text("CREATE INDEX ix_distill_models_name ON distill_models (name)"))
    conn.execute(sa.text("CREATE INDEX ix_distill_feedback_route ON distill_feedback (route)"))


MIGRATIONS = [Migration("distill.0001_create", _create)]
LOOKUP_CHUNK = 500  # keys per IN (...) query when reading cached labels

Stage = Literal["collect", "label", "train", "eval", "export"]
RunStatus = Literal["running", "done", "failed"]
VersionStatus = Literal["active", "retired", "failed"]
RouteState = Literal["canary", "promoted", "rolled_back"]
FeedbackKind = Literal["escalation", "disagreement", "agreement"]


class StageRun(BaseModel):
    id: str
    flywheel: str
    stage: Stage
    parent: str | None = None
    status: RunStatus
    created_at: float
    finished_at: float | None = None
    wall_s: float | None = None
    result: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class CachedLabel(BaseModel):
    answer: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0


class Lineage(BaseModel):
    """How a distilled model was made: each link names the record it came from."""

    dataset: str = Field(description="sha256 of the collected dataset")
    label_run: str
    train_run: str
    eval_run: str
    export_run: str
    file_sha256: str | None = None
    base: str = Field(description="the student's base (GGUF or HF folder)")
    teacher: str


class ModelVersion(BaseModel):
    name: str
    version: int
    status: VersionStatus
    path: str | None = None
    sha256: str | None = None
    quant: str | None = None
    context_length: int | None = None
    lineage: Lineage
    scores: dict[str, float | None] = Field(default_factory=dict)
    error: str | None = None
    created_at: float

    @property
    def id(self) -> str:
        return f"{self.name}@v{self.version}"


class Route(BaseModel):
    """The policy on a model name: what share of its calls the student answers, and when a
    student answer is escalated to the model itself."""

    model: str
    student: str
    share: float = Field(ge=0, le=1)
    min_logprob: float = -1.0
    shadow: float = Field(0.0, ge=0, le=1)
    state: RouteState = "canary"
    promote_min: int = 50
    promote_agreement: float = 0.9
    auto_promote: bool = False
    updated_at: float = Field(default_factory=time.time)


class Feedback(BaseModel):
    id: str = Field(default_factory=sortable_id)
    route: str
    created_at: float = Field(default_factory=time.time)
    kind: FeedbackKind
    reason: str | None = None
    messages: list[Message]
    student_answer: str | None = None
    teacher_answer: str | None = None
    student_version: str | None = None


class OnlineComparison(BaseModel):
    compared: int = Field(description="calls answered by both student and teacher")
    agreed: int
    escalations: int

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


class DistillStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        migrate(engine, MIGRATIONS)

    # -- stage runs ------------------------------------------------------------------------

    def find_run(self, run_id: str) -> StageRun | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(distill_runs).where(distill_runs.c.id == run_id)).first()
        return None if row is None else StageRun.model_validate(_clean(row))

    def get_run(self, run_id: str) -> StageRun:
        run = self.find_run(run_id)
        if run is None:
            raise NotFoundError(
                f"No distill run '{run_id}'. List them with `llmforge distill status`.",
                param="run_id",
            )
        return run

    def start_run(self, run_id: str, flywheel: str, stage: Stage, parent: str | None) -> None:
        """Record a run as running (a re-run of a failed or killed one starts again in place)."""
        values = {
            "flywheel": flywheel,
            "stage": stage,
            "parent": parent,
            "status": "running",
            "error": None,
        }
        with self.engine.begin() as conn:
            updated = conn.execute(
                distill_runs.update().where(distill_runs.c.id == run_id).values(**values)
            ).rowcount
            if not updated:
                conn.execute(
                    distill_runs.insert().values(id=run_id, created_at=time.time(), **values)
                )

    def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        wall_s: float,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                distill_runs.update()
                .where(distill_runs.c.id == run_id)
                .values(
                    status=status,
                    finished_at=time.time(),
                    wall_s=wall_s,
                    result=result,
                    error=error,
                )
            )

    def list_runs(self, flywheel: str | None = None, limit: int = 50) -> list[StageRun]:
        q = sa.select(distill_runs).order_by(distill_runs.c.created_at.desc()).limit(limit)
        if flywheel:
            q = q.where(distill_runs.c.flywheel == flywheel)
        with self.engine.connect() as conn:
            return [StageRun.model_validate(_clean(r)) for r in conn.execute(q)]

    # -- label cache -----------------------------------------------------------------------

    def cached_labels(self, keys: Sequence[str]) -> dict[str, CachedLabel]:
        """The cached answers among `keys`, by key (one query per `LOOKUP_CHUNK` keys)."""
        found: dict[str, CachedLabel] = {}
        unique = list(dict.fromkeys(keys))
        with self.engine.connect() as conn:
            for i in range(0, len(unique), LOOKUP_CHUNK):
                part = unique[i : i + LOOKUP_CHUNK]
                rows = conn.execute(sa.select(distill_labels).where(distill_labels.c.key.in_(part)))
                for row in rows:
                    found[row.key] = CachedLabel.model_validate(_clean(row))
        return found

    def cache_label(self, key: str, teacher: str, label: CachedLabel) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    distill_labels.insert().values(
                        key=key, teacher=teacher, created_at=time.time(), **label.model_dump()
                    )
                )
        except IntegrityError:
            pass  # the same answer was cached meanwhile

    # -- model versions --------------------------------------------------------------------

    def next_version(self, name: str) -> int:
        with self.engine.connect() as conn:
            top = conn.scalar(
                sa.select(sa.func.max(distill_models.c.version)).where(
                    distill_models.c.name == name
                )
            )
        return int(top or 0) + 1

    def add_version(self, version: ModelVersion) -> None:
        """Store a version; an `active` one replaces the name's active one in one transaction."""
        row = version.model_dump(mode="json")
        row["id"] = version.id
        with self.engine.begin() as conn:
            if version.status == "active":
                _retire_active(conn, version.name)
            conn.execute(distill_models.insert().values(**row))

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        q = sa.select(distill_models).order_by(
            distill_models.c.name, distill_models.c.version.desc()
        )
        if name:
            q = q.where(distill_models.c.name == name)
        with self.engine.connect() as conn:
            return [ModelVersion.model_validate(_clean(r)) for r in conn.execute(q)]

    def active(self, name: str) -> ModelVersion | None:
        q = sa.select(distill_models).where(
            distill_models.c.name == name, distill_models.c.status == "active"
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None else ModelVersion.model_validate(_clean(row))

    def names(self) -> list[str]:
        """Distilled model names with a version that is or was served."""
        q = (
            sa.select(distill_models.c.name)
            .where(distill_models.c.status != "failed")
            .distinct()
            .order_by(distill_models.c.name)
        )
        with self.engine.connect() as conn:
            return list(conn.scalars(q))

    def activate(self, name: str, version: int) -> ModelVersion:
        """Serve `version` of `name` from now on (the previous active one is retired)."""
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(distill_models).where(
                    distill_models.c.name == name, distill_models.c.version == version
                )
            ).first()
            if row is None or row.status == "failed":
                raise NotFoundError(
                    f"No servable version {version} of '{name}'; list them with "
                    "`llmforge distill status`.",
                    param="version",
                )
            _retire_active(conn, name)
            conn.execute(
                distill_models.update()
                .where(distill_models.c.id == row.id)
                .values(status="active", error=None)
            )
        found = self.active(name)
        assert found is not None
        return found

    # -- routes ----------------------------------------------------------------------------

    def put_route(self, route: Route) -> Route:
        row = route.model_dump()
        row["updated_at"] = time.time()
        with self.engine.begin() as conn:
            updated = conn.execute(
                distill_routes.update().where(distill_routes.c.model == route.model).values(**row)
            ).rowcount
            if not updated:
                conn.execute(distill_routes.insert().values(**row))
        return Route.model_validate(row)

    def routes(self) -> list[Route]:
        with self.engine.connect() as conn:
            return [
                Route.model_validate(_clean(r))
                for r in conn.execute(sa.select(distill_routes).order_by(distill_routes.c.model))
            ]

    def route(self, model: str) -> Route:
        found = next((r for r in self.routes() if r.model == model), None)
        if found is None:
            known = ", ".join(r.model for r in self.routes()) or "(none)"
            raise NotFoundError(
                f"No distill route on model '{model}'. Routes: {known}. Create one with "
                "`llmforge distill route MODEL --student NAME`.",
                param="model",
            )
        return found

    def require_active(self, name: str) -> ModelVersion:
        """The active version of `name`, or a 400 saying to export one."""
        found = self.active(name)
        if found is None:
            raise InvalidRequestError(
                f"'{name}' has no active version to serve; export one first "
                "(`llmforge distill export`).",
                param="student",
            )
        return found

    def set_share(self, model: str, share: float, state: RouteState) -> Route:
        """Route `share` of `model`'s calls to its student; each change (a canary share, a
        promotion, a rollback) is also a row of the audit log (`model.<state>`)."""
        route = self.route(model)
        if share:
            self.require_active(route.student)
        changed = self.put_route(route.model_copy(update={"share": share, "state": state}))
        data = {"student": route.student, "share": share, "previous_share": route.share}
        audit.record(self.engine, f"model.{state}", subject=model, data=data)
        return changed

    # -- feedback --------------------------------------------------------------------------

    def add_feedback(self, feedback: Feedback) -> None:
        row = feedback.model_dump(mode="json")
        with self.engine.begin() as conn:
            conn.execute(distill_feedback.insert().values(**row))

    def feedback(
        self,
        route: str,
        kinds: tuple[FeedbackKind, ...] = ("escalation", "disagreement"),
        limit: int = 100_000,
    ) -> list[Feedback]:
        q = (
            sa.select(distill_feedback)
            .where(distill_feedback.c.route == route, distill_feedback.c.kind.in_(kinds))
            .order_by(distill_feedback.c.created_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Feedback.model_validate(_clean(r)) for r in conn.execute(q)]

    def comparison(self, route: str, since: float = 0.0) -> OnlineComparison:
        """Calls since `since` where both the student and the teacher answered."""
        q = (
            sa.select(distill_feedback.c.kind, sa.func.count())
            .where(distill_feedback.c.route == route, distill_feedback.c.created_at >= since)
            .group_by(distill_feedback.c.kind)
        )
        with self.engine.connect() as conn:
            counts: dict[str, int] = {k: n for k, n in conn.execute(q).tuples()}
        agreed = counts.get("agreement", 0)
        return OnlineComparison(
            compared=agreed + counts.get("disagreement", 0),
            agreed=agreed,
            escalations=counts.get("escalation", 0),
        )


def _retire_active(conn: Connection, name: str) -> None:
    conn.execute(
        distill_models.update()
        .where(distill_models.c.name == name, distill_models.c.status == "active")
        .values(status="retired")
    )


def _clean(row: Any) -> dict[str, Any]:
    return {k: v for k, v in row._mapping.items() if v is not None}
