"""The audit log: an append-only table in which every row carries the hash of the row before it.

`AuditLog(engine).record(kind, actor=..., subject=..., data=...)` appends one row in one
transaction (or inside the caller's, when given a `Connection`: a key change and its audit row
commit together or not at all). Each row's `hash` is SHA-256 over the previous row's hash and the
row's own content (id, time, kind, actor, subject, data as canonical JSON), so editing a row,
deleting one or changing their order breaks the chain at that place; `verify()` walks the chain
and names each such place (`Problem`). A one-row `audit_head` table holds the last sequence
number and hash: appending updates it first, which serialises writers on SQLite and PostgreSQL
alike (the row lock), and it lets `verify()` notice rows cut off the end.

What the log deliberately does not do: it does not stop someone with write access to the database
from rewriting the whole chain after an edit (recomputing every later hash). That is caught only
against a head hash kept elsewhere: `verify(expect_head=...)`, the head printed by
`llmforge audit verify` and written at the end of every export. It stores what callers give it;
callers decide what is safe to keep (the gateway records hashes of prompts, not their text, unless
`audit.plaintext` is on).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, Field, PrivateAttr, computed_field
from sqlalchemy.engine import Connection, Engine

from llmforge.core.db import Migration, migrate

GENESIS = "0" * 64  # the `prev_hash` of the first row

metadata = sa.MetaData()
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("id", sa.String(40), nullable=False, unique=True),
    sa.Column("at_us", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(100), nullable=False),
    sa.Column("actor", sa.String(200)),
    sa.Column("subject", sa.String(300)),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)


def _create(conn: Connection) -> None:
    audit_log.create(conn)
    audit_head.create(conn)
    conn.execute(audit_head.insert().values(id=1, seq=0, hash=GENESIS))
    conn.execute(sa.text("CREATE INDEX ix_audit_log_kind ON audit_log (kind)"))


MIGRATIONS = [Migration("audit.0001_create", _create)]


class AuditEntry(BaseModel):
    """One row of the log, as stored and exported."""

    seq: int = Field(description="position in the log, from 1")
    id: str
    at_us: int = Field(description="Unix time in microseconds")
    kind: str = Field(description="what happened, e.g. `key.created`, `guard.blocked`")
    actor: str | None = Field(None, description="who did it: a key id, `master`, a person")
    subject: str | None = Field(None, description="what it was done to: a key, call, model, run")
    data: dict[str, Any] = Field(default_factory=dict)
    prev_hash: str
    hash: str
    _data_text: str | None = PrivateAttr(None)  # the stored JSON text, when read from the table

    @computed_field  # type: ignore[prop-decorator]
    @property
    def at(self) -> float:
        """Unix time in seconds."""
        return self.at_us / 1e6

    def recomputed_hash(self) -> str:
        """The hash this row's content and `prev_hash` give (equal to `hash` unless edited)."""
        text = self._data_text if self._data_text is not None else canonical(self.data)
        return row_hash(
            self.prev_hash, self.id, self.at_us, self.kind, self.actor, self.subject, text
        )


class Problem(BaseModel):
    """One place where the chain does not hold."""

    kind: Literal["edited", "deleted", "reordered", "broken", "head"]
    seq: int = Field(description="the row where it shows (for `deleted`: the first missing one)")
    message: str


class Verification(BaseModel):
    ok: bool
    rows: int
    head_seq: int
    head_hash: str = Field(description="keep it elsewhere; check a later verify against it")
    problems: list[Problem] = Field(default_factory=list)


def canonical(data: Mapping[str, Any]) -> str:
    """`data` as the one JSON text that is stored and hashed (sorted keys, no spaces)."""
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()


def _clean(value: str | None) -> str | None:
    # PostgreSQL's text cannot hold NUL (core/db.py sends U+FFFD instead): hash what is stored
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def row_hash(
    prev_hash: str,
    id: str,
    at_us: int,
    kind: str,
    actor: str | None,
    subject: str | None,
    data: str,
) -> str:
    content = orjson.dumps([id, at_us, kind, actor, subject, data])
    return hashlib.sha256(prev_hash.encode() + b"\n" + content).hexdigest()


class AuditLog:
    """The log in one database. Synchronous and transactional; async code calls it on a worker
    thread (`asyncio.to_thread`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        migrate(engine, MIGRATIONS)

    def record(
        self,
        kind: str,
        *,
        actor: str | None = None,
        subject: str | None = None,
        data: Mapping[str, Any] | None = None,
        conn: Connection | None = None,
    ) -> AuditEntry:
        """Append one row and return it. With `conn`, inside that connection's transaction."""
        if conn is not None:
            return _append(conn, kind, actor, subject, data or {})
        with self.engine.begin() as own:
            return _append(own, kind, actor, subject, data or {})

    def head(self) -> tuple[int, str]:
        """The last row's sequence number and hash (0 and GENESIS when empty)."""
        with self.engine.connect() as conn:
            seq, hash_ = conn.execute(
                sa.select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
            ).one()
        return int(seq), str(hash_)

    def entries(
        self, *, after: int = 0, limit: int | None = None, kind: str | None = None
    ) -> list[AuditEntry]:
        """Rows with `seq > after`, in order (at most `limit`; only `kind` when given)."""
        q = sa.select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq)
        if kind is not None:
            q = q.where(audit_log.c.kind == kind)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [_entry(row._mapping) for row in conn.execute(q)]

    def iter_entries(self, *, batch: int = 1000) -> Iterator[AuditEntry]:
        """Every row in order, read `batch` at a time (for verify and export of a large log)."""
        after = 0
        while True:
            rows = self.entries(after=after, limit=batch)
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1].seq

    def verify(self, *, expect_head: str | None = None) -> Verification:
        """Walk the chain; each edited, deleted or reordered row is a `Problem` naming it."""
        rows = list(self.iter_entries())
        head_seq, head_hash = self.head()
        problems = check_chain(rows)
        last_seq, last_hash = (rows[-1].seq, rows[-1].hash) if rows else (0, GENESIS)
        if head_seq > last_seq:
            problems.append(
                Problem(
                    kind="deleted",
                    seq=last_seq + 1,
                    message=_span("deleted from the end of the log", last_seq + 1, head_seq),
                )
            )
        elif head_seq == last_seq and head_hash != last_hash:
            problems.append(
                Problem(
                    kind="head",
                    seq=last_seq,
                    message=f"row {last_seq}, the last, was edited: its hash is not the one the "
                    "head recorded when it was appended",
                )
            )
        elif head_seq < last_seq:
            problems.append(
                Problem(
                    kind="head",
                    seq=head_seq + 1,
                    message=_span("added behind the log's back (past its head)",
                                  head_seq + 1, last_seq),
                )
            )  # fmt: skip
        if expect_head is not None and expect_head not in {r.hash for r in rows} | {GENESIS}:
            problems.append(
                Problem(
                    kind="head",
                    seq=last_seq,
                    message=f"the head {expect_head[:16]}... you kept is no row's hash any more: "
                    "the log was rewritten from some row up to it",
                )
            )
        return Verification(
            ok=not problems,
            rows=len(rows),
            head_seq=head_seq,
            head_hash=head_hash,
            problems=problems,
        )


def record(
    target: Engine | Connection,
    kind: str,
    *,
    actor: str | None = None,
    subject: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Append one row to the audit log of `target`'s database: the API other packages call (key
    changes, model promotions and rollbacks, agent approvals). Given a `Connection`, the row is
    part of that connection's transaction; given an engine, it is its own transaction. Creates the
    tables on first use."""
    if isinstance(target, Connection):
        return _append(target, kind, actor, subject, data or {})
    return AuditLog(target).record(kind, actor=actor, subject=subject, data=data)


def _append(
    conn: Connection,
    kind: str,
    actor: str | None,
    subject: str | None,
    data: Mapping[str, Any],
) -> AuditEntry:
    if not sa.inspect(conn).has_table(audit_head.name):
        # a caller's own transaction on a database without the log yet: create it there, and
        # record the steps as `migrate` would (it may not run beside this open transaction)
        applied = sa.table("llmforge_migrations", sa.column("id"))
        for m in MIGRATIONS:
            conn.execute(applied.insert().values(id=m.id))
            m.apply(conn)
    h = audit_head.c
    # Taking the head first locks it (SQLite: the write lock; PostgreSQL: the row) until commit,
    # so appends are serialised and the chain never forks.
    conn.execute(audit_head.update().where(h.id == 1).values(seq=h.seq + 1))
    seq, prev_hash = conn.execute(sa.select(h.seq, h.hash).where(h.id == 1)).one()
    entry_id = "aud_" + uuid.uuid4().hex[:20]
    at_us = time.time_ns() // 1000
    kind, actor, subject = _clean(kind) or "", _clean(actor), _clean(subject)
    text = canonical(data)
    digest = row_hash(prev_hash, entry_id, at_us, kind, actor, subject, text)
    conn.execute(
        audit_log.insert().values(
            seq=seq,
            id=entry_id,
            at_us=at_us,
            kind=kind,
            actor=actor,
            subject=subject,
            data=text,
            prev_hash=prev_hash,
            hash=digest,
        )
    )
    conn.execute(audit_head.update().where(h.id == 1).values(hash=digest))
    return AuditEntry(
        seq=int(seq),
        id=entry_id,
        at_us=at_us,
        kind=kind,
        actor=actor,
        subject=subject,
        data=orjson.loads(text),
        prev_hash=prev_hash,
        hash=digest,
    )


def _entry(r: sa.RowMapping) -> AuditEntry:
    entry = AuditEntry.model_construct(
        seq=int(r["seq"]),
        id=r["id"],
        at_us=int(r["at_us"]),
        kind=r["kind"],
        actor=r["actor"],
        subject=r["subject"],
        data=_data(r["data"]),
        prev_hash=r["prev_hash"],
        hash=r["hash"],
    )
    entry._data_text = r["data"]
    return entry


def _data(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"_unreadable": text}
    return value if isinstance(value, dict) else {"_value": value}


def check_chain(rows: list[AuditEntry], *, start: tuple[str, int] = (GENESIS, 1)) -> list[Problem]:
    """The problems of a chain given in stored order (by `seq`), starting after the row whose
    hash and next sequence number are `start`. Also used on an exported file."""
    problems: list[Problem] = []
    position = {r.hash: i for i, r in enumerate(rows)}
    expected_prev, expected_seq = start
    explained: set[int] = set()  # rows whose broken link a problem already reported explains
    for i, r in enumerate(rows):
        if r.recomputed_hash() != r.hash:
            problems.append(
                Problem(
                    kind="edited",
                    seq=r.seq,
                    message=f"row {r.seq} ({r.kind}) was edited: its content no longer matches "
                    "its hash",
                )
            )
        gap = r.seq > expected_seq
        if gap:
            problems.append(
                Problem(
                    kind="deleted",
                    seq=expected_seq,
                    message=_span("deleted", expected_seq, r.seq - 1),
                )
            )
        if r.prev_hash != expected_prev and not gap and i not in explained:
            nxt = rows[i + 1] if i + 1 < len(rows) else None
            before = position.get(r.prev_hash)
            if nxt is not None and r.prev_hash == nxt.hash and nxt.prev_hash == expected_prev:
                problems.append(
                    Problem(
                        kind="reordered",
                        seq=r.seq,
                        message=f"rows {r.seq} and {nxt.seq} were swapped: each holds the "
                        "other's place in the chain",
                    )
                )
                explained.add(i + 1)
                if i + 2 < len(rows) and rows[i + 2].prev_hash == r.hash:
                    explained.add(i + 2)
            elif before is not None:
                problems.append(
                    Problem(
                        kind="reordered",
                        seq=r.seq,
                        message=f"row {r.seq} was moved: it was appended after row "
                        f"{rows[before].seq}, not after row {r.seq - 1}",
                    )
                )
            else:
                problems.append(
                    Problem(
                        kind="broken",
                        seq=r.seq,
                        message=f"row {r.seq} does not follow row {r.seq - 1}: a row between "
                        f"them was deleted and the rest renumbered, or row {r.seq - 1} was "
                        "edited with its hash rewritten",
                    )
                )
        expected_prev, expected_seq = r.hash, r.seq + 1
    return problems


def _span(what: str, first: int, last: int) -> str:
    """`row 4 was deleted`, `rows 4-6 were deleted from the end of the log`."""
    if first == last:
        return f"row {first} was {what}"
    return f"rows {first}-{last} were {what}"
