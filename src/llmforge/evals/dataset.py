"""Evaluation datasets: JSONL files of cases, their schema, and building them from traces.

One case per line: `input` (a text, or a list of chat messages), optional `expected` (the reference
answer), `context` (passages the answer should be grounded in), `relevant` (ids or file names a
retriever should find) and `metadata` (free-form). A bad line is reported with its number and field
(`qa.jsonl line 3: expected: Input should be a valid string`), every bad line at once. Cases
without an `id` get one from their content, so ids stay stable when lines move and two runs of an
edited dataset still pair up in `compare`.

Synthesizing cases from a knowledge base is in `synthesis.py`; scoring is elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.engine import Engine

from llmforge.core.errors import InvalidRequestError, NotFoundError
from llmforge.core.types import Message
from llmforge.traces.store import traces

MAX_REPORTED_ERRORS = 10


class Case(BaseModel):
    """One evaluation case (one JSONL line)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field("", description="stable id; derived from the content when absent")
    input: str | list[Message] = Field(description="a user text or a whole conversation")
    expected: str | None = Field(None, description="the reference answer")
    context: list[str] = Field(default_factory=list, description="passages to be grounded in")
    relevant: list[str] = Field(
        default_factory=list, description="retrieval: ids or file names that should be found"
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    def messages(self) -> list[Message]:
        if isinstance(self.input, str):
            return [Message(role="user", content=self.input)]
        return list(self.input)

    def question(self) -> str:
        """The last user turn: what a judge is told was asked."""
        if isinstance(self.input, str):
            return self.input
        return next((m.content for m in reversed(self.input) if m.role == "user"), "")

    def content_id(self) -> str:
        raw = json.dumps(
            [self.model_dump(mode="json", include={"input"}), self.expected],
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(raw.encode()).hexdigest()[:12]


class Dataset(BaseModel):
    name: str
    digest: str = Field(description="sha256 of the cases, for run ids and reports")
    cases: list[Case]


def load_dataset(path: Path) -> Dataset:
    """Read and check a JSONL dataset; every malformed line is reported in one error."""
    if not path.is_file():
        raise NotFoundError(f"Dataset '{path}' does not exist; give a .jsonl file of cases.")
    raw = path.read_bytes()
    cases: list[Case] = []
    errors: list[str] = []
    for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"{path.name} line {number}: not JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(data, dict):
            errors.append(f"{path.name} line {number}: expected a JSON object with `input`")
            continue
        try:
            cases.append(Case.model_validate(data))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(line)"
            errors.append(f"{path.name} line {number}: {where}: {first['msg']}")
    if errors:
        more = len(errors) - MAX_REPORTED_ERRORS
        shown = errors[:MAX_REPORTED_ERRORS] + ([f"... and {more} more"] if more > 0 else [])
        raise InvalidRequestError(
            "Invalid dataset: " + "; ".join(shown) + ". Each line needs `input` (text or "
            "messages); optional: id, expected, context, relevant, metadata."
        )
    if not cases:
        raise InvalidRequestError(f"Dataset '{path}' has no cases; add one JSON object per line.")
    return Dataset(name=path.stem, digest=hashlib.sha256(raw).hexdigest(), cases=with_ids(cases))


def with_ids(cases: Sequence[Case]) -> list[Case]:
    """Cases with an id each: their own, else from their content; repeated ids get a suffix."""
    seen: dict[str, int] = {}
    out = []
    for case in cases:
        base = case.id or case.content_id()
        seen[base] = seen.get(base, 0) + 1
        cid = base if seen[base] == 1 else f"{base}-{seen[base]}"
        out.append(case if cid == case.id else case.model_copy(update={"id": cid}))
    return out


def write_dataset(path: Path, cases: Iterable[Case]) -> int:
    """Write cases as JSONL (UTF-8, one per line); returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for case in cases:
            f.write(case.model_dump_json(exclude_defaults=True) + "\n")
            n += 1
    return n


class TraceFilter(BaseModel):
    """Which recorded calls become cases."""

    model: str | None = None
    since: float | None = Field(None, description="unix time; only calls at or after it")
    until: float | None = None
    status: str | None = "ok"
    contains: str | None = Field(None, description="only calls whose last user turn has this")
    limit: int = Field(1000, gt=0)


def cases_from_traces(engine: Engine, flt: TraceFilter) -> list[Case]:
    """Chat calls recorded by the gateway as cases: the conversation as `input`, the recorded answer
    as `expected` (a reference, e.g. from a teacher model). Identical conversations appear once."""
    t = traces
    q = sa.select(t).where(t.c.kind == "chat").order_by(t.c.created_at.desc()).limit(flt.limit)
    if flt.model:
        q = q.where(t.c.model == flt.model)
    if flt.since is not None:
        q = q.where(t.c.created_at >= flt.since)
    if flt.until is not None:
        q = q.where(t.c.created_at < flt.until)
    if flt.status:
        q = q.where(t.c.status == flt.status)
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("traces"):
            return []
        rows = list(conn.execute(q))
    cases: list[Case] = []
    seen: set[str] = set()
    for row in reversed(rows):  # oldest first
        try:
            messages = [Message.model_validate(m) for m in row.request.get("messages", [])]
        except ValidationError:
            continue
        if not messages:
            continue
        case = Case(
            input=messages,
            expected=row.output or None,
            metadata={"trace_id": row.id, "model": row.model, "created_at": row.created_at},
        )
        if flt.contains and flt.contains not in case.question():
            continue
        key = case.content_id()
        if key in seen:
            continue
        seen.add(key)
        cases.append(case)
    return with_ids(cases)


def parse_since(value: str, now: float | None = None) -> float:
    """`7d`, `12h`, `30m` (ago) or an ISO date/time, as unix time."""
    import datetime as dt

    now = time.time() if now is None else now
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    if value[:-1].isdigit() and value[-1:] in units:
        return now - int(value[:-1]) * units[value[-1]]
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(
            f"--since '{value}': use a duration like 7d, 12h, 30m or an ISO date like 2026-01-31",
            param="since",
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()
