"""The review queue: guard hits and a sample of traffic, pre-scored by a judge, decided by people.

Every guard hit and a configured share of all guarded calls (`review_sample`) become a `Review`
in the `guard_reviews` table, with the text as the guards saw it (personal data masked when the
policy masks it). A judge model, when configured, pre-scores pending items (`pre_score`): the
probability that the guard should have hit. A person then confirms the guard's decision or
overrides it (API, CLI or the review page); each decision is written to the audit log in the same
transaction, and decided items are the labelled data of the guard's next training run
(`export_labelled`: JSONL rows `text`, `label`, `source`). It does not retrain anything itself.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection, Engine

from llmforge.audit import record
from llmforge.core.db import Migration, migrate
from llmforge.core.errors import InvalidRequestError, NotFoundError
from llmforge.core.types import Message, Sampling
from llmforge.models.base import ChatModel

Status = Literal["pending", "decided"]
Decision = Literal["confirm", "override"]

metadata = sa.MetaData()
reviews = sa.Table(
    "guard_reviews",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("guard", sa.String(200), nullable=False),
    sa.Column("guard_type", sa.String(100), nullable=False),
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("flagged", sa.Boolean, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("code", sa.String(100)),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("call_id", sa.String(64)),
    sa.Column("model", sa.String(200)),
    sa.Column("key_id", sa.String(40)),
    sa.Column("judge_score", sa.Float),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("decision", sa.String(16)),
    sa.Column("label", sa.Boolean),
    sa.Column("decided_by", sa.String(200)),
    sa.Column("decided_at", sa.Float),
    sa.Column("note", sa.Text),
)


def _create(conn: Connection) -> None:
    reviews.create(conn)
    conn.execute(sa.text("CREATE INDEX ix_guard_reviews_status ON guard_reviews (status)"))


MIGRATIONS = [Migration("guard.0001_reviews", _create)]


class NewReview(BaseModel):
    guard: str
    guard_type: str
    direction: str
    action: str
    flagged: bool = Field(description="whether the guard hit (False: a sampled allowed text)")
    score: float
    code: str | None = None
    text: str
    call_id: str | None = None
    model: str | None = None
    key_id: str | None = None


class Review(NewReview):
    id: str
    created_at: float
    judge_score: float | None = None
    status: Status = "pending"
    decision: Decision | None = None
    label: bool | None = Field(None, description="True: the text is a hit for this guard")
    decided_by: str | None = None
    decided_at: float | None = None
    note: str | None = None


class ReviewQueue:
    """Synchronous and transactional; async callers use `asyncio.to_thread`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        migrate(engine, MIGRATIONS)

    def add(self, item: NewReview) -> str:
        review_id = "rv_" + uuid.uuid4().hex[:16]
        with self.engine.begin() as conn:
            conn.execute(
                reviews.insert().values(
                    id=review_id, created_at=time.time(), status="pending", **item.model_dump()
                )
            )
        return review_id

    def get(self, review_id: str) -> Review:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(reviews).where(reviews.c.id == review_id)).first()
        if row is None:
            raise NotFoundError(
                f"No review '{review_id}'. List them with `llmforge guard review list`.",
                param="review_id",
            )
        return Review.model_validate(row._asdict())

    def list(
        self, *, status: Status | None = "pending", guard: str | None = None, limit: int = 50
    ) -> list[Review]:
        q = sa.select(reviews).order_by(reviews.c.created_at.desc()).limit(limit)
        if status is not None:
            q = q.where(reviews.c.status == status)
        if guard is not None:
            q = q.where(reviews.c.guard == guard)
        with self.engine.connect() as conn:
            return [Review.model_validate(r._asdict()) for r in conn.execute(q)]

    def decide(
        self, review_id: str, decision: Decision, *, by: str, note: str | None = None
    ) -> Review:
        """Confirm or override the guard's decision; recorded in the audit log with it."""
        if decision not in ("confirm", "override"):
            raise InvalidRequestError(
                f"decision must be confirm or override, not '{decision}'", param="decision"
            )
        item = self.get(review_id)
        label = item.flagged if decision == "confirm" else not item.flagged
        with self.engine.begin() as conn:
            conn.execute(
                reviews.update()
                .where(reviews.c.id == review_id)
                .values(
                    status="decided",
                    decision=decision,
                    label=label,
                    decided_by=by,
                    decided_at=time.time(),
                    note=note,
                )
            )
            record(
                conn,
                "guard.review",
                actor=by,
                subject=review_id,
                data={
                    "guard": item.guard,
                    "decision": decision,
                    "label": label,
                    "call_id": item.call_id,
                    "score": item.score,
                    "judge_score": item.judge_score,
                },
            )
        return self.get(review_id)

    def set_judge_score(self, review_id: str, score: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                reviews.update().where(reviews.c.id == review_id).values(judge_score=score)
            )

    def export_labelled(self, guard_type: str | None = "injection") -> Iterable[bytes]:
        """Decided items as training rows (`text`, `label`: injection|benign for the injection
        guard, hit|clean for others, `source`: review)."""
        q = sa.select(reviews).where(reviews.c.status == "decided").order_by(reviews.c.decided_at)
        if guard_type is not None:
            q = q.where(reviews.c.guard_type == guard_type)
        with self.engine.connect() as conn:
            rows = [Review.model_validate(r._asdict()) for r in conn.execute(q)]
        for r in rows:
            positive, negative = (
                ("injection", "benign") if r.guard_type == "injection" else ("hit", "clean")
            )
            row: dict[str, Any] = {
                "id": r.id,
                "text": r.text,
                "label": positive if r.label else negative,
                "source": "review",
                "guard": r.guard,
            }
            yield orjson.dumps(row) + b"\n"


JUDGE_PROMPT = (
    "A safety guard ('{guard}', {code}) {verdict} the text below. Is it really {what}? "
    "Answer with a single number from 0 to 1: the probability that it is.\n\nText:\n{text}"
)
WHAT = {
    "prompt_injection": "a prompt injection or jailbreak attempt",
    "pii_detected": "personal data or a secret",
    "content_policy": "on a refused topic",
}


async def judge_score(judge: ChatModel, item: Review | NewReview) -> float | None:
    """The judge's probability that the guard should hit this text (None if unreadable)."""
    prompt = JUDGE_PROMPT.format(
        guard=item.guard,
        code=item.code or "a check",
        verdict="flagged" if item.flagged else "allowed",
        what=WHAT.get(item.code or "", "something the guard should catch"),
        text=item.text[:4000],
    )
    answer = await judge.complete(
        [Message(role="user", content=prompt)], Sampling(max_tokens=8, temperature=0)
    )
    found = re.search(r"[01](?:\.\d+)?", answer.text)
    return None if found is None else min(max(float(found.group()), 0.0), 1.0)
