"""Every package's migrations, found automatically, build the same schema on SQLite and on
PostgreSQL, apply once, and are safe when several processes start together.

A package's migrations are a module-level `MIGRATIONS` list of `core.db.Migration` anywhere in
src/llmforge: a new store is in this matrix as soon as it has one, with no change here."""

from __future__ import annotations

import ast
import importlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import llmforge
from llmforge.core.db import Migration, applied_migrations, migrate, open_engine
from tests.conftest import POSTGRES_ENV, postgres_schema, server_url

SRC = Path(llmforge.__file__).parent


def _modules_with_migrations() -> list[str]:
    """Modules of src/llmforge that assign a module-level MIGRATIONS (read, not imported)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            if any(isinstance(t, ast.Name) and t.id == "MIGRATIONS" for t in targets):
                module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
                found.append(module)
    return found


MODULES = _modules_with_migrations()


def _migrations(module: str) -> list[Migration]:
    steps = importlib.import_module(module).MIGRATIONS
    assert steps and all(isinstance(m, Migration) for m in steps), module
    return list(steps)


def all_migrations() -> list[Migration]:
    return [m for module in MODULES for m in _migrations(module)]


def schema_of(engine: sa.Engine) -> dict[str, object]:
    """Tables with their columns (name, nullability, a coarse type) and their indexes' columns."""
    inspector = sa.inspect(engine)
    out: dict[str, object] = {}
    for table in sorted(inspector.get_table_names()):
        columns = {
            c["name"]: (c["nullable"], _coarse(c["type"])) for c in inspector.get_columns(table)
        }
        # a UNIQUE column is a constraint on SQLite and a constraint plus its index on PostgreSQL
        indexes = sorted(
            {(tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)}
            | {(tuple(u["column_names"]), True) for u in inspector.get_unique_constraints(table)}
        )
        primary = tuple(inspector.get_pk_constraint(table)["constrained_columns"])
        foreign = sorted(
            (tuple(f["constrained_columns"]), f["referred_table"])
            for f in inspector.get_foreign_keys(table)
        )
        out[table] = {"columns": columns, "indexes": indexes, "pk": primary, "fk": foreign}
    return out


def _coarse(kind: sa.types.TypeEngine[object]) -> str:
    """The family a column's type belongs to, as both engines report it back."""
    name = type(kind).__name__.upper()
    for family, words in (
        ("int", ("INT",)),
        ("float", ("FLOAT", "REAL", "DOUBLE", "NUMERIC")),
        ("text", ("CHAR", "TEXT", "STRING", "CLOB")),
        ("json", ("JSON",)),
        ("bool", ("BOOL",)),
        ("time", ("DATE", "TIME")),
        ("bytes", ("BLOB", "BYTEA", "BINARY")),
    ):
        if any(w in name for w in words):
            return family
    return name


def test_migrations_are_found_for_every_store() -> None:
    # the stores that exist today; new ones join by themselves
    for module in (
        "llmforge.traces.store",
        "llmforge.gateway.keys",
        "llmforge.gateway.cache",
        "llmforge.gateway.response_store",
        "llmforge.ui.conversations",
        "llmforge.evals.store",
        "llmforge.kb.manifest",
    ):
        assert module in MODULES
    ids = [m.id for m in all_migrations()]
    assert len(ids) == len(set(ids)), "two migrations share an id"


@pytest.fixture
def postgres_engine() -> Iterator[sa.Engine]:
    with postgres_schema(server_url(POSTGRES_ENV, "a PostgreSQL")) as url:
        engine = open_engine(url)
        yield engine
        engine.dispose()


def test_every_migration_builds_the_same_schema_on_postgresql_as_on_sqlite(
    tmp_path: Path, postgres_engine: sa.Engine
) -> None:
    sqlite = open_engine(f"sqlite:///{tmp_path / 'x.db'}")
    steps = all_migrations()
    assert migrate(sqlite, steps) == [m.id for m in steps]
    assert migrate(postgres_engine, steps) == [m.id for m in steps]
    lite, pg = schema_of(sqlite), schema_of(postgres_engine)
    assert sorted(lite) == sorted(pg)
    for table in lite:
        assert lite[table] == pg[table], table
    # run again: nothing to do on either
    assert migrate(sqlite, steps) == []
    assert migrate(postgres_engine, steps) == []


def test_processes_starting_together_apply_each_step_once(database_url: str) -> None:
    """Several gateway workers starting at once on a new database (`serve --workers N`)."""
    steps = all_migrations()
    url = database_url
    results: list[list[str]] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(4)

    def start() -> None:
        engine = open_engine(url)  # an engine of its own, as a separate process has
        try:
            gate.wait()
            results.append(migrate(engine, steps))
        except BaseException as e:
            errors.append(e)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    applied = [m for r in results for m in r]
    assert sorted(applied) == sorted(m.id for m in steps)  # each step once, by someone
    assert applied_migrations(open_engine(url)) == {m.id for m in steps}
