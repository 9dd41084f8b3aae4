"""Database engine and migrations: WAL on SQLite, ordered idempotent steps, safe on an existing
file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from llmforge.core.db import Migration, applied_migrations, migrate, open_engine
from llmforge.core.errors import ConfigError
from llmforge.traces import MIGRATIONS as TRACE_MIGRATIONS
from llmforge.traces import Trace, TraceStore


def test_sqlite_engine_uses_wal_and_creates_the_folder(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path}/deep/er/x.db")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert (tmp_path / "deep" / "er" / "x.db").exists()


def test_bad_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a database URL"):
        open_engine("not a url")


def test_migrations_apply_once_in_order(db_url: str) -> None:
    engine = open_engine(db_url)
    calls: list[str] = []

    def step(name: str):
        def apply(conn: Connection) -> None:
            calls.append(name)
            conn.exec_driver_sql(f"CREATE TABLE {name} (x INTEGER)")

        return apply

    steps = [Migration("t.0001", step("a")), Migration("t.0002", step("b"))]
    assert migrate(engine, steps) == ["t.0001", "t.0002"]
    assert migrate(engine, steps) == []
    assert calls == ["a", "b"]
    more = [*steps, Migration("t.0003", step("c"))]
    assert migrate(engine, more) == ["t.0003"]
    assert applied_migrations(engine) == {"t.0001", "t.0002", "t.0003"}


def test_a_failing_migration_leaves_no_trace_and_can_be_retried(db_url: str) -> None:
    engine = open_engine(db_url)

    def broken(conn: Connection) -> None:
        conn.exec_driver_sql("CREATE TABLE half (x INTEGER)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        migrate(engine, [Migration("t.0001", broken)])
    assert "t.0001" not in applied_migrations(engine)
    assert not sa.inspect(engine).has_table("half")

    def fixed(conn: Connection) -> None:
        conn.exec_driver_sql("CREATE TABLE half (x INTEGER)")

    assert migrate(engine, [Migration("t.0001", fixed)]) == ["t.0001"]


def test_existing_database_file_keeps_its_rows_when_migrated_again(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = TraceStore(open_engine(f"sqlite:///{path}"))
    store.write([Trace(model="m", request={"messages": []}, output="kept")])
    store.engine.dispose()
    # an unrelated table written by someone else must survive too
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE notes (t TEXT)")
        raw.execute("INSERT INTO notes VALUES ('hello')")
    engine = open_engine(f"sqlite:///{path}")
    assert migrate(engine, TRACE_MIGRATIONS) == []
    assert [t.output for t in TraceStore(engine).list()] == ["kept"]
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT t FROM notes").scalar() == "hello"
