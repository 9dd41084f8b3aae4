"""Datasets: the JSONL schema with per-line errors, stable case ids, and cases from traces."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llmforge.core.db import open_engine
from llmforge.core.errors import InvalidRequestError, NotFoundError
from llmforge.evals import TraceFilter, cases_from_traces, load_dataset, write_dataset
from llmforge.evals.dataset import parse_since
from llmforge.traces import Trace, TraceStore

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "evals" / "qa.jsonl"


def write(path: Path, *lines: object) -> Path:
    path.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines), encoding="utf-8"
    )
    return path


def test_the_example_dataset_loads() -> None:
    data = load_dataset(EXAMPLE)
    assert len(data.cases) == 12
    assert data.cases[0].id == "capital-fr" and data.cases[0].expected == "Paris"
    chat = next(c for c in data.cases if c.id == "chat-followup")
    assert [m.role for m in chat.messages()] == ["system", "user", "assistant", "user"]
    assert chat.question() == "Name another one."


def test_every_bad_line_is_reported_with_its_number_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bad.jsonl",
        {"input": "ok"},
        "{not json",
        {"expected": "no input"},
        {"input": "x", "expected": 3},
        {"input": [{"role": "robot", "content": "hi"}]},
        {"input": "x", "typo": 1},
    )
    with pytest.raises(InvalidRequestError) as e:
        load_dataset(path)
    msg = e.value.message
    assert "bad.jsonl line 2: not JSON" in msg
    assert "bad.jsonl line 3: input: Field required" in msg
    assert "bad.jsonl line 4: expected: Input should be a valid string" in msg
    assert "line 5: input." in msg and "line 6: typo: Extra inputs are not permitted" in msg
    assert "line 1" not in msg


def test_a_missing_or_empty_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        load_dataset(tmp_path / "nope.jsonl")
    with pytest.raises(InvalidRequestError, match="has no cases"):
        load_dataset(write(tmp_path / "empty.jsonl", "", "  "))


def test_ids_come_from_content_so_they_survive_reordering(tmp_path: Path) -> None:
    a = load_dataset(write(tmp_path / "a.jsonl", {"input": "one"}, {"input": "two"}))
    b = load_dataset(write(tmp_path / "b.jsonl", {"input": "two"}, {"input": "one"}))
    assert [c.id for c in a.cases] == [c.id for c in reversed(b.cases)]
    dup = load_dataset(write(tmp_path / "d.jsonl", {"input": "same"}, {"input": "same"}))
    assert dup.cases[1].id == dup.cases[0].id + "-2"


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    data = load_dataset(EXAMPLE)
    write_dataset(tmp_path / "copy.jsonl", data.cases)
    assert load_dataset(tmp_path / "copy.jsonl").cases == data.cases


def test_cases_from_traces_with_filters(db_url: str) -> None:
    store = TraceStore(open_engine(db_url))
    now = time.time()

    def trace(model: str, q: str, out: str, age_s: float, status: str = "ok") -> Trace:
        return Trace(
            model=model,
            request={"messages": [{"role": "user", "content": q}], "sampling": {}},
            output=out,
            status=status,  # type: ignore[arg-type]
            created_at=now - age_s,
        )

    store.write(
        [
            trace("teacher", "What is 2+2?", "4", 10),
            trace("teacher", "What is 2+2?", "4", 5),  # a repeat: one case
            trace("teacher", "Capital of Peru?", "Lima", 3 * 86400),  # too old for --since 1d
            trace("teacher", "Broken?", "", 20, status="error"),
            trace("student", "Other model?", "x", 10),
        ]
    )
    cases = cases_from_traces(
        store.engine, TraceFilter(model="teacher", since=parse_since("1d", now))
    )
    assert [(c.question(), c.expected) for c in cases] == [("What is 2+2?", "4")]
    assert cases[0].metadata["model"] == "teacher"
    everything = cases_from_traces(store.engine, TraceFilter(status=None))
    assert len(everything) == 4


def test_since_accepts_durations_and_dates_and_explains_bad_ones() -> None:
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("2026-01-31") == pytest.approx(1769817600.0)
    with pytest.raises(InvalidRequestError, match="use a duration like 7d"):
        parse_since("yesterday")
