"""`llmforge audit verify` and `export` as an auditor runs them: exit 1 naming the tampered row."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from llmforge.audit import AuditLog
from llmforge.audit.log import audit_log
from llmforge.core.db import open_engine
from tests.cli_process import llmforge


def test_verify_and_export_from_the_command_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    (tmp_path / "llmforge.yaml").write_text(f"database: {url}\n")
    log = AuditLog(open_engine(url))
    for i in range(4):
        log.record("model.promoted", actor="ci", subject=f"student-v{i}")
    ok = llmforge("audit", "verify", cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: 4 rows")

    exported = llmforge("audit", "export", "--out", "audit.jsonl", cwd=tmp_path)
    assert exported.returncode == 0
    offline = llmforge("audit", "verify", "--file", "audit.jsonl", cwd=tmp_path)
    assert offline.returncode == 0, offline.stdout

    with log.engine.begin() as conn:
        conn.execute(sa.delete(audit_log).where(audit_log.c.seq == 2))
    bad = llmforge("audit", "verify", cwd=tmp_path)
    assert bad.returncode == 1
    assert "deleted: row 2 was deleted" in bad.stdout and "TAMPERED" in bad.stdout
