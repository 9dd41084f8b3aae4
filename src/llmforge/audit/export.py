"""The audit log as a file an auditor can take away and check without the database.

`export(log, out)` writes one JSON object per row (`AuditEntry`, hashes included) and ends with a
trailer line `{"head": {...}}` holding the head's sequence number and hash and the verification
done at export time. `verify_file(path)` checks such a file the way `AuditLog.verify` checks the
table, so a copy handed over can be checked on its own. It does not sign the file: keep the head
hash somewhere the log's writers cannot reach, and compare.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

import orjson
from pydantic import BaseModel, ValidationError

from llmforge.audit.log import GENESIS, AuditEntry, AuditLog, Problem, Verification, check_chain
from llmforge.core.errors import InvalidRequestError


class ExportHead(BaseModel):
    seq: int
    hash: str
    rows: int
    exported_at: float
    ok: bool


def export_lines(log: AuditLog, *, after: int = 0) -> Iterable[bytes]:
    """The export, line by line (rows with `seq > after`, then the trailer)."""
    rows = 0
    for entry in log.iter_entries():
        if entry.seq <= after:
            continue
        rows += 1
        yield orjson.dumps(entry.model_dump(mode="json")) + b"\n"
    verification = log.verify()
    head = ExportHead(
        seq=verification.head_seq,
        hash=verification.head_hash,
        rows=rows,
        exported_at=time.time(),
        ok=verification.ok,
    )
    yield orjson.dumps({"head": head.model_dump()}) + b"\n"


def export(log: AuditLog, out: TextIO, *, after: int = 0) -> int:
    """Write the export to `out`; returns the number of rows written."""
    count = 0
    for line in export_lines(log, after=after):
        out.write(line.decode())
        count += 1
    return count - 1


def verify_file(path: Path, *, expect_head: str | None = None) -> Verification:
    """Check an exported file's chain (from its first row, which may start mid-log)."""
    rows: list[AuditEntry] = []
    head: ExportHead | None = None
    number = 0
    try:
        with path.open("rb") as f:
            for line in f:
                number += 1
                if not line.strip():
                    continue
                value = orjson.loads(line)
                if isinstance(value, dict) and "head" in value:
                    head = ExportHead.model_validate(value["head"])
                else:
                    rows.append(AuditEntry.model_validate(value))
    except (OSError, orjson.JSONDecodeError, ValidationError) as e:
        raise InvalidRequestError(
            f"{path}: not an audit export (line {number}): {e}. "
            "Make one with `llmforge audit export`."
        ) from None
    # an export that starts mid-log (`--after`): its first row's link is taken as given
    start = (rows[0].prev_hash, rows[0].seq) if rows else (GENESIS, 1)
    problems: list[Problem] = check_chain(rows, start=start)
    last_seq, last_hash = (rows[-1].seq, rows[-1].hash) if rows else (0, GENESIS)
    if head is not None and (head.seq, head.hash) != (last_seq, last_hash):
        problems.append(
            Problem(
                kind="head",
                seq=last_seq,
                message=f"the file ends at row {last_seq}, but its trailer says the log's head "
                f"was row {head.seq}: rows were cut off or edited after the export",
            )
        )
    if expect_head is not None and expect_head not in {r.hash for r in rows}:
        problems.append(
            Problem(
                kind="head",
                seq=last_seq,
                message=f"the head {expect_head[:16]}... you kept is no row's hash in this file",
            )
        )
    return Verification(
        ok=not problems,
        rows=len(rows),
        head_seq=head.seq if head else last_seq,
        head_hash=head.hash if head else last_hash,
        problems=problems,
    )
