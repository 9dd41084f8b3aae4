"""Database engine and migrations.

`open_engine(url)` returns a SQLAlchemy 2 engine: SQLite in WAL mode (the default, a file under
`.llmforge/`) or PostgreSQL by URL (where text stores NUL as U+FFFD, see `_postgres_text`).
Schema changes are ordered `Migration`s that each package owns; `migrate()` applies the ones not
yet recorded in `llmforge_migrations`, each in its own transaction, so an interrupted upgrade never
leaves a half-applied step and re-running is always safe. This module knows no package's tables.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from llmforge.core.errors import ConfigError

_migrations = sa.Table(
    "llmforge_migrations",
    sa.MetaData(),
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), server_default=sa.func.current_timestamp()),
)


@dataclass(frozen=True)
class Migration:
    """One schema step. `id` is global and stable, e.g. `traces.0001_create`."""

    id: str
    apply: Callable[[Connection], None]


def open_engine(url: str) -> Engine:
    """An engine for `url`; creates the SQLite file's folder and turns on WAL and foreign keys."""
    try:
        parsed = sa.make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"database: '{url}' is not a database URL. "
            "Use sqlite:///path/to/file.db or postgresql+psycopg://user:pass@host/db"
        ) from None
    # JSON columns through orjson: several times the standard library's speed, and trace rows
    # are written on every call
    kwargs: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": orjson.loads}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    engine = sa.create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    elif parsed.get_driver_name() == "psycopg":
        sa.event.listen(engine, "connect", _postgres_text)
    return engine


def sortable_id() -> str:
    """32 hex digits that sort by creation time: 48 bits of Unix milliseconds, then 80 random
    bits (UUIDv7's layout). As a primary key, each new row lands at the end of the index instead
    of at a random leaf, so a table that grows by hundreds of rows a second (traces) writes a few
    pages per batch, not one per row, however large it has grown."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _postgres_text(dbapi_conn: Any, _record: Any) -> None:
    """PostgreSQL's text cannot hold NUL ("\\x00", which a JSON escape can carry), where SQLite's
    can: strings are sent with U+FFFD in its place, so a row that SQLite stores is not refused
    (a trace lost, a 500 on a conversation). Inside JSON values it is escaped and kept as is."""
    for dumper in _nul_safe_dumpers():
        dbapi_conn.adapters.register_dumper(str, dumper)


@functools.cache
def _nul_safe_dumpers() -> tuple[type, ...]:
    from psycopg.types.string import StrBinaryDumper, StrDumperUnknown

    def nul_safe(base: Any) -> type:
        def dump(self: Any, obj: str) -> Any:
            return base.dump(self, obj.replace("\x00", "\ufffd") if "\x00" in obj else obj)

        return type(f"NulSafe{base.__name__}", (base,), {"dump": dump})

    # in psycopg's order: the text dumper registered last is the one `%s` uses (an untyped
    # literal the server casts to what the column needs, e.g. pgvector's `vector`)
    return nul_safe(StrBinaryDumper), nul_safe(StrDumperUnknown)


def _has_migrations_table(engine: Engine) -> bool:
    try:
        return sa.inspect(engine).has_table(_migrations.name)
    except OperationalError:
        return False


def applied_migrations(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(_migrations.name):
            return set()
        return set(conn.scalars(sa.select(_migrations.c.id)))


def migrate(engine: Engine, migrations: Sequence[Migration]) -> list[str]:
    """Apply the migrations not yet recorded, in order; return the ids applied now."""
    try:
        _migrations.create(engine, checkfirst=True)
    except (OperationalError, sa.exc.ProgrammingError, IntegrityError) as e:
        # created concurrently by another process? SQLite says "already exists" as an
        # OperationalError; PostgreSQL as a duplicate table or a duplicate row of its catalog
        if not _has_migrations_table(engine):
            if isinstance(e, OperationalError):
                raise ConfigError(f"database '{engine.url!r}' cannot be opened: {e.orig}") from None
            raise
    done = applied_migrations(engine)
    applied = []
    for m in migrations:
        if m.id in done:
            continue
        try:
            with engine.begin() as conn:
                conn.execute(_migrations.insert().values(id=m.id))  # claims the step first
                m.apply(conn)
        except IntegrityError:
            continue  # another process applied it meanwhile; its transaction carried the step
        applied.append(m.id)
    return applied
