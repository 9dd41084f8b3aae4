"""The audit log: rows chain by hash, and `verify` names every edited, deleted or reordered row —
on SQLite and on PostgreSQL (where LLMFORGE_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from llmforge.audit import AuditLog, export, record, verify_file
from llmforge.audit.log import audit_log
from llmforge.core.db import open_engine


@pytest.fixture
def log(database_url: str) -> AuditLog:
    return AuditLog(open_engine(database_url))


def fill(log: AuditLog, n: int = 6) -> None:
    for i in range(n):
        log.record("key.created", actor="master", subject=f"key_{i}", data={"i": i, "name": "x"})


def test_rows_chain_and_an_untouched_log_verifies(log: AuditLog) -> None:
    fill(log)
    rows = log.entries()
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    result = log.verify()
    assert result.ok and result.rows == 6 and result.head_hash == rows[-1].hash


def test_an_edited_row_is_named(log: AuditLog) -> None:
    fill(log)
    with log.engine.begin() as conn:
        conn.execute(
            audit_log.update().where(audit_log.c.seq == 3).values(data='{"i":99,"name":"x"}')
        )
    result = log.verify()
    assert not result.ok
    assert [(p.kind, p.seq) for p in result.problems] == [("edited", 3)]
    assert "row 3" in result.problems[0].message


def test_an_edit_with_its_hash_rewritten_breaks_the_next_link(log: AuditLog) -> None:
    fill(log)
    rows = log.entries()
    forged = rows[2].model_copy(update={"subject": "key_evil"})
    forged_hash = forged.recomputed_hash()
    with log.engine.begin() as conn:
        conn.execute(
            audit_log.update()
            .where(audit_log.c.seq == 3)
            .values(subject="key_evil", hash=forged_hash)
        )
    problems = log.verify().problems
    assert [(p.kind, p.seq) for p in problems] == [("broken", 4)]
    assert "row 3 was edited" in problems[0].message


def test_a_deleted_row_is_named(log: AuditLog) -> None:
    fill(log)
    with log.engine.begin() as conn:
        conn.execute(sa.delete(audit_log).where(audit_log.c.seq == 4))
    problems = log.verify().problems
    assert [(p.kind, p.seq) for p in problems] == [("deleted", 4)]
    assert problems[0].message == "row 4 was deleted"


def test_rows_cut_off_the_end_are_named(log: AuditLog) -> None:
    fill(log)
    with log.engine.begin() as conn:
        conn.execute(sa.delete(audit_log).where(audit_log.c.seq >= 5))
    problems = log.verify().problems
    assert [(p.kind, p.seq) for p in problems] == [("deleted", 5)]
    assert "rows 5-6" in problems[0].message


def test_a_swapped_pair_is_named(log: AuditLog) -> None:
    fill(log)
    swap(log.engine, 3, 4)
    problems = log.verify().problems
    assert [(p.kind, p.seq) for p in problems] == [("reordered", 3)]
    assert "rows 3 and 4 were swapped" in problems[0].message


def swap(engine: Engine, a: int, b: int) -> None:
    with engine.begin() as conn:
        seq = audit_log.c.seq
        conn.execute(audit_log.update().where(seq == a).values(seq=-1))
        conn.execute(audit_log.update().where(seq == b).values(seq=a))
        conn.execute(audit_log.update().where(seq == -1).values(seq=b))


def test_a_rewritten_chain_is_caught_against_a_kept_head(log: AuditLog) -> None:
    fill(log, 3)
    kept = log.verify().head_hash
    with log.engine.begin() as conn:
        conn.execute(sa.delete(audit_log))
        conn.execute(sa.text("UPDATE audit_head SET seq = 0, hash = :g"), {"g": "0" * 64})
    fill(log, 3)  # a whole new chain, consistent in itself
    assert log.verify().ok
    result = log.verify(expect_head=kept)
    assert not result.ok and result.problems[0].kind == "head"


def test_a_row_recorded_in_a_callers_transaction_is_rolled_back_with_it(log: AuditLog) -> None:
    fill(log, 1)
    with pytest.raises(RuntimeError), log.engine.begin() as conn:
        record(conn, "key.revoked", actor="master", subject="key_0")
        raise RuntimeError("the key change failed")
    assert [r.kind for r in log.entries()] == ["key.created"]
    assert log.verify().ok


def test_the_module_level_record_creates_the_log_on_first_use(db_url: str) -> None:
    engine = open_engine(db_url)
    entry = record(engine, "model.promoted", actor="ci", subject="student-v2", data={"from": 1})
    assert entry.seq == 1 and AuditLog(engine).verify().ok


def test_concurrent_writers_never_fork_the_chain(log: AuditLog) -> None:
    def write(t: int) -> None:
        for i in range(10):
            log.record("request", subject=f"{t}-{i}")

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = log.verify()
    assert result.ok and result.rows == 40


def test_an_export_verifies_on_its_own_and_catches_edits(log: AuditLog, tmp_path: Path) -> None:
    fill(log)
    path = tmp_path / "audit.jsonl"
    with path.open("w") as f:
        assert export(log, f) == 6
    assert verify_file(path).ok
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"key_1"', '"key_9"')
    path.write_text("\n".join(lines) + "\n")
    problems = verify_file(path).problems
    assert [(p.kind, p.seq) for p in problems] == [("edited", 2)]
