"""Collect: the prompts of a task, from the gateway's traces, a JSONL file or a route's online
feedback, deduplicated and split into train / val / test.

A prompt's split comes from a salted hash of its conversation, not from a shuffle: the same prompt
lands in the same split on every collection, so as traffic grows and the dataset is collected
again, no test prompt ever moves into training. The dataset is written as three JSONL files of
`Example`s in a folder named by the sha256 of its content, which is the first link of a distilled
model's lineage.

This module reads and writes files and the traces table; it calls no model.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.engine import Engine

from llmforge.core.errors import InvalidRequestError, NotFoundError
from llmforge.core.types import Message
from llmforge.distill.config import CollectSpec
from llmforge.distill.store import DistillStore
from llmforge.traces.store import traces

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


class Example(BaseModel):
    """One prompt of the task; `label` is the teacher's answer once labelled, `reference` a gold
    answer when the source has one (it is what evaluation scores against)."""

    id: str
    messages: list[Message]
    reference: str | None = None
    label: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def key(self) -> str:
        """sha256 of the conversation: what deduplication and the split are decided on."""
        raw = json.dumps([m.compact() for m in self.messages], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(raw.encode()).hexdigest()


class DatasetInfo(BaseModel):
    sha256: str
    folder: str
    source: str
    counts: dict[str, int]
    duplicates: int = 0
    created_at: float = Field(default_factory=time.time)


def split_of(example: Example, spec: CollectSpec, fixed_test: bool = False) -> Split:
    """The example's split; with a fixed test split, only train or val (by `val_share`)."""
    digest = hashlib.sha256((spec.split_seed + example.key()).encode()).digest()
    x = int.from_bytes(digest[:8], "big") / 2**64
    if fixed_test:
        return "val" if x < spec.val_share else "train"
    if x < spec.test_share:
        return "test"
    if x < spec.test_share + spec.val_share:
        return "val"
    return "train"


def from_traces(engine: Engine, spec: CollectSpec) -> list[Example]:
    """Successful chat calls that match the filters, oldest first."""
    t = traces
    q = (
        sa.select(t)
        .where(t.c.kind == "chat", t.c.status == "ok")
        .order_by(t.c.created_at.desc())
        .limit(spec.limit if not spec.metadata else spec.limit * 10)
    )
    for column, value in ((t.c.model, spec.model), (t.c.key_id, spec.key_id)):
        if value is not None:
            q = q.where(column == value)
    if spec.since is not None:
        q = q.where(t.c.created_at >= spec.since)
    if spec.until is not None:
        q = q.where(t.c.created_at < spec.until)
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("traces"):
            return []
        rows = list(conn.execute(q))
    out: list[Example] = []
    for row in reversed(rows):
        tags = row.metadata or {}
        if any(tags.get(k) != v for k, v in spec.metadata.items()):
            continue
        try:
            messages = [Message.model_validate(m) for m in row.request.get("messages", [])]
        except ValidationError:
            continue
        if messages and not any(m.images or m.tool_calls for m in messages):
            out.append(Example(id=row.id, messages=messages, metadata={"trace_id": row.id}))
        if len(out) >= spec.limit:
            break
    return out


def from_jsonl(path: Path, spec: CollectSpec) -> list[Example]:
    """One object a line: the prompt in `text_field`, a gold label in `label_field` if any."""
    if not path.is_file():
        raise NotFoundError(f"Collect source '{path}' does not exist; give a .jsonl file.")
    out: list[Example] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidRequestError(f"{path.name} line {number}: not JSON ({e.msg})") from None
        text = data.get(spec.text_field) if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequestError(
                f"{path.name} line {number}: needs a text field '{spec.text_field}' (set "
                "collect.text_field)"
            )
        messages = [Message(role="system", content=spec.system)] if spec.system else []
        messages.append(Message(role="user", content=text))
        reference = data.get(spec.label_field) if spec.label_field else None
        out.append(
            Example(
                id=str(data.get("id") or f"{path.stem}-{number}"),
                messages=messages,
                reference=None if reference is None else str(reference),
            )
        )
        if len(out) >= spec.limit:
            break
    return out


def from_feedback(store: DistillStore, spec: CollectSpec) -> list[Example]:
    """A route's escalations and disagreements; the teacher's answer is the reference."""
    assert spec.route is not None
    return [
        Example(
            id=f.id,
            messages=f.messages,
            reference=f.teacher_answer,
            metadata={"feedback": f.kind, "reason": f.reason or ""},
        )
        for f in store.feedback(spec.route, limit=spec.limit)
    ]


def build_dataset(
    examples: Sequence[Example],
    spec: CollectSpec,
    root: Path,
    source: str,
    test: Sequence[Example] | None = None,
) -> DatasetInfo:
    """Deduplicate, split and write the dataset under `root/<sha256>/`; an identical dataset
    already written is reused. With a fixed `test` split, prompts it holds are left out of the
    others and the rest is split between train and val."""
    seen: set[str] = {ex.key() for ex in test or ()}
    unique: list[Example] = []
    for ex in examples:
        key = ex.key()
        if key not in seen:
            seen.add(key)
            unique.append(ex)
    if not unique:
        raise InvalidRequestError(
            f"Nothing to collect from {source}: no example matched. Check the filters under "
            "`collect:` (model, metadata, since) or send traffic first."
        )
    parts: dict[Split, list[Example]] = {s: [] for s in SPLITS}
    for ex in unique:
        parts[split_of(ex, spec, fixed_test=test is not None)].append(ex)
    if test is not None:
        parts["test"] = list(test)
    if not parts["train"] or not parts["test"]:
        raise InvalidRequestError(
            f"{len(unique)} examples leave an empty train or test split; collect more (a few "
            "dozen at least) or change collect.test_share."
        )
    text = {s: _jsonl(parts[s]) for s in SPLITS}
    digest = hashlib.sha256("".join(f"{s}\n{text[s]}" for s in SPLITS).encode()).hexdigest()
    folder = root / digest[:16]
    if not (folder / "dataset.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for s in SPLITS:
            (folder / f"{s}.jsonl").write_text(text[s], encoding="utf-8")
    info = DatasetInfo(
        sha256=digest,
        folder=str(folder),
        source=source,
        counts={s: len(parts[s]) for s in SPLITS},
        duplicates=len(examples) - len(unique),
    )
    (folder / "dataset.json").write_text(info.model_dump_json(indent=2), encoding="utf-8")
    return info


def read_split(folder: Path, split: Split) -> list[Example]:
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        raise NotFoundError(f"Dataset split '{path}' is missing; run `llmforge distill collect`.")
    return [
        Example.model_validate_json(line)
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def write_split(folder: Path, split: Split, examples: Iterable[Example]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{split}.jsonl.tmp"
    tmp.write_text(_jsonl(examples), encoding="utf-8")
    tmp.replace(folder / f"{split}.jsonl")


def _jsonl(examples: Iterable[Example]) -> str:
    return "".join(ex.model_dump_json(exclude_defaults=True) + "\n" for ex in examples)
