"""Faults under load, each quick: an upstream that drips or stalls mid-stream, a burst of 5xx with a
fallback, Redis and PostgreSQL restarted while calls run, a worker killed with -9.

What users rely on: a client sees no error when a fallback exists, the gateway recovers by itself
when a server it depends on comes back, no trace row is lost for a call that was answered, and a
budget is never passed. (Faults the router tests cover already, tests/gateway/test_router.py, are
not repeated: retries after 5xx, drops before and after the first token, hangs before the first
token, circuits, client hang-ups.) The long runs are bench/soak.py's."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from llmforge.core.db import open_engine
from llmforge.core.settings import Settings, load_settings
from llmforge.gateway import create_app
from llmforge.traces import TraceStore
from tests.conftest import POSTGRES_ENV, postgres_schema, server_url
from tests.fakes.openai_upstream import FakeOpenAI, Fault
from tests.fakes.server import free_port, serve
from tests.scale.gateway_process import GatewayProcess
from tests.scale.pg_cluster import Cluster, debian_bin_dir

WORDS = "one two three four five six seven eight nine ten"
MASTER = "master-fault-key"


def remote(name: str, base: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "openai",
        "base_url": base + "/v1",
        "model_id": "echo",
        "timeout_s": 2,
        **extra,
    }


def settings_for(database: str, models: list[dict[str, Any]], **extra: Any) -> Settings:
    return load_settings(
        None,
        database=database,
        models=models,
        embeddings=[],
        router={"retries": 1, "backoff_s": 0.01, "circuit_failures": 3},
        **extra,
    )


async def stream_text(
    http: httpx.AsyncClient, model: str, headers: dict[str, str] | None = None
) -> tuple[int, str, bool]:
    """One streamed chat call: status, the text received, whether it ended with [DONE] and no
    error event."""
    body = {"model": model, "messages": [{"role": "user", "content": WORDS}], "stream": True}
    async with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, "", False
        text, clean, done = "", True, False
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                continue
            import orjson

            event = orjson.loads(data)
            if "error" in event:
                clean = False
                continue
            for choice in event.get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
        return 200, text, clean and done


def traces_of(settings: Settings) -> list[Any]:
    return TraceStore(open_engine(settings.database)).list(limit=100_000)


# -- upstream faults ---------------------------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    with serve(fake.app) as base:
        yield fake, base


async def test_a_slow_drip_longer_than_the_timeout_in_total_streams_whole(
    upstream: tuple[FakeOpenAI, str], tmp_path: Path
) -> None:
    """The timeout is per read, not per call: ten tokens 0.15 s apart take 1.5 s, past timeout_s
    0.5, and arrive whole."""
    fake, base = upstream
    fake.always = Fault(drip_s=0.15)
    settings = settings_for(f"sqlite:///{tmp_path}/g.db", [remote("drip", base, timeout_s=0.5)])
    with serve(create_app(settings)) as gw:
        async with httpx.AsyncClient(base_url=gw, timeout=30) as http:
            started = time.monotonic()
            results = await asyncio.gather(*(stream_text(http, "drip") for _ in range(8)))
            took = time.monotonic() - started
    assert all(r == (200, WORDS, True) for r in results), results
    assert took >= 1.4
    assert [t.status for t in traces_of(settings)] == ["ok"] * 8


def stalling_upstream() -> Starlette:
    """Streams two tokens, then stalls without closing the connection."""

    async def chat(_request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            for word in ("one", " two"):
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
                chunk["choices"] = [{"index": 0, "delta": {"content": word}}]  # type: ignore[assignment]
                import orjson

                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            await asyncio.sleep(3600)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def health(_request: Request) -> StreamingResponse:
        return StreamingResponse(iter([b"ok"]))

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", health)]
    )


async def test_a_stream_stalled_mid_answer_ends_with_an_error_after_the_timeout(
    tmp_path: Path,
) -> None:
    with serve(stalling_upstream()) as base:
        settings = settings_for(
            f"sqlite:///{tmp_path}/g.db", [remote("stall", base, timeout_s=0.5)]
        )
        with serve(create_app(settings)) as gw:
            async with httpx.AsyncClient(base_url=gw, timeout=30) as http:
                started = time.monotonic()
                results = await asyncio.gather(*(stream_text(http, "stall") for _ in range(6)))
                took = time.monotonic() - started
    # what arrived is kept, the stream ends with an error event instead of hanging
    assert all(r == (200, "one two", False) for r in results), results
    assert took < 5
    statuses = [t.status for t in traces_of(settings)]
    assert statuses == ["error"] * 6


async def test_a_burst_of_5xx_with_a_fallback_costs_clients_nothing(
    upstream: tuple[FakeOpenAI, str], tmp_path: Path
) -> None:
    failing, base = upstream
    failing.always = Fault(status=503)
    backup = FakeOpenAI()
    with serve(backup.app) as backup_base:
        models = [remote("primary", base, fallbacks=["backup"]), remote("backup", backup_base)]
        settings = settings_for(f"sqlite:///{tmp_path}/g.db", models)
        with serve(create_app(settings)) as gw:
            async with httpx.AsyncClient(base_url=gw, timeout=30) as http:
                results = await asyncio.gather(*(stream_text(http, "primary") for _ in range(40)))
    assert Counter(results) == {(200, WORDS, True): 40}
    assert backup.calls == 40
    # the circuit opened: the failing upstream did not take every call's retries
    assert failing.calls < 40 * 2
    assert [t.status for t in traces_of(settings)] == ["ok"] * 40


# -- shared servers restarted under load -------------------------------------------------------


async def load(
    gw: str, model: str, seconds: float, clients: int, headers: dict[str, str] | None = None
) -> list[tuple[float, int, bool]]:
    """`clients` loops of streamed calls for `seconds`: (time, status, whole and clean) each."""
    results: list[tuple[float, int, bool]] = []
    end = time.monotonic() + seconds

    async def client() -> None:
        async with httpx.AsyncClient(base_url=gw, timeout=30) as http:
            while time.monotonic() < end:
                try:
                    status, text, clean = await stream_text(http, model, headers)
                except httpx.TransportError:
                    status, text, clean = 0, "", False
                results.append((time.monotonic(), status, clean and text == WORDS))

    await asyncio.gather(*(client() for _ in range(clients)))
    return results


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ping = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True)
            if ping.stdout.strip() == b"PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        server_url("LLMFORGE_TEST_REDIS_URL", "a redis-server")  # skips, or fails under CI
        pytest.skip("redis-server is not installed")
    server = RedisServer()
    server.start()
    yield server
    server.kill()


async def test_redis_restarted_under_load_refuses_calls_while_down_and_recovers(
    upstream: tuple[FakeOpenAI, str], redis_server: RedisServer, tmp_path: Path
) -> None:
    """Limits fail closed: while Redis is away limited calls get 503 (never 500, never unlimited);
    once it is back they pass again, without restarting the gateway."""
    _, base = upstream
    settings = settings_for(
        f"sqlite:///{tmp_path}/g.db",
        [remote("echo", base)],
        master_key=MASTER,
        redis_url=redis_server.url,
    )
    with serve(create_app(settings)) as gw:
        created = httpx.post(
            gw + "/admin/keys",
            json={"name": "limited", "rpm": 100_000},
            headers={"Authorization": f"Bearer {MASTER}"},
        ).json()
        headers = {"Authorization": f"Bearer {created['key']}"}
        running = asyncio.create_task(load(gw, "echo", 4.0, 8, headers))
        await asyncio.sleep(1.0)
        redis_server.kill()
        down_at = time.monotonic()
        await asyncio.sleep(1.0)
        redis_server.start()
        up_at = time.monotonic()
        results = await running
    statuses = Counter(status for _, status, _ in results)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0  # calls were made while it was down, and refused
    before = [ok for t, status, ok in results if t < down_at and status == 200]
    after = [(status, ok) for t, status, ok in results if t > up_at + 0.5]
    assert before and all(before)
    assert after and all(s == 200 and ok for s, ok in after)
    answered = sum(1 for _, status, _ in results if status == 200)
    assert sum(t.status == "ok" for t in traces_of(settings)) == answered


@pytest.fixture
def private_postgres() -> Iterator[Cluster]:
    """A PostgreSQL of this test's own, which it may restart."""
    server_url(POSTGRES_ENV, "a PostgreSQL")  # the PostgreSQL tests run where this is set
    bin_dir = debian_bin_dir()
    if bin_dir is None:
        pytest.skip("Debian's postgresql is not installed")
    folder = Path(tempfile.mkdtemp(prefix="llmforge-pg-fault-"))
    os.chmod(folder, 0o755)
    cluster = Cluster(bin_dir, folder / "data", free_port()).start()
    yield cluster
    cluster.remove()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("how", ["restart", "crash"])
async def test_postgresql_restarted_under_load_recovers_loses_no_trace_and_keeps_budgets(
    upstream: tuple[FakeOpenAI, str], private_postgres: Cluster, how: str
) -> None:
    """Keys, budgets and traces on a PostgreSQL that is shut down (or killed) for a second under
    load: the gateway needs no restart, every answered call is one trace row once the database
    is back, and the budget is not passed; while it is down a call that needs it is refused with
    503 (never 500). Settlements the outage refused are retried once it is back: every
    reservation is released and the key has spent exactly what its answered calls cost."""
    fake, base = upstream
    fake.always = Fault(drip_s=0.01)
    settings = settings_for(
        private_postgres.url,
        [remote("echo", base, price={"input_per_mtok": 1.0, "output_per_mtok": 1.0})],
        master_key=MASTER,
    )
    master = {"Authorization": f"Bearer {MASTER}"}
    with serve(create_app(settings)) as gw:
        created = httpx.post(
            gw + "/admin/keys", json={"name": "b", "budget_usd": 100.0}, headers=master
        ).json()
        headers = {"Authorization": f"Bearer {created['key']}"}
        running = asyncio.create_task(load(gw, "echo", 5.0, 8, headers))
        await asyncio.sleep(1.0)
        if how == "restart":  # a clean shutdown: the server closes its connections
            await asyncio.to_thread(private_postgres.stop, "fast")
        else:  # the server killed: its connections just die
            await asyncio.to_thread(private_postgres.kill)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(private_postgres.start)
        up_at = time.monotonic()
        results = await running
        key = httpx.get(gw + f"/admin/keys/{created['id']}", headers=master).json()
        deadline = time.monotonic() + 10  # owed settlements are retried with back-off (<= 2 s)
        while key["reserved_usd"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            key = httpx.get(gw + f"/admin/keys/{created['id']}", headers=master).json()
    statuses = Counter(s for _, s, _ in results)
    assert set(statuses) <= {0, 200, 503}, statuses  # refused while down, never a 500
    after = [(status, ok) for t, status, ok in results if t > up_at + 0.5]
    assert after and all(s == 200 and ok for s, ok in after)  # recovered by itself
    answered = sum(1 for _, status, _ in results if status == 200)
    rows = traces_of(settings)
    assert sum(t.status == "ok" for t in rows) == answered  # no trace lost
    cost = sum(t.cost_usd or 0 for t in rows)
    assert key["spent_usd"] <= 100.0
    assert key["reserved_usd"] == 0.0  # every reservation released, none left for 24 h
    assert key["spent_usd"] == pytest.approx(cost, abs=1e-8)  # nothing charged twice or missed
    print(  # figures for bench/README.md
        f"{how}: {Counter(s for _, s, _ in results)}, traces {len(rows)}, cost {cost:.6f}, "
        f"spent {key['spent_usd']:.6f}, still reserved {key['reserved_usd']:.6f}"
    )


@pytest.fixture
def database_gone(
    upstream: tuple[FakeOpenAI, str], private_postgres: Cluster
) -> Iterator[tuple[str, FakeOpenAI, dict[str, str], Settings]]:
    """A gateway on `private_postgres` with a key, and the database stopped under it (started
    again afterwards, if the test did not)."""
    fake, base = upstream
    settings = settings_for(private_postgres.url, [remote("echo", base)], master_key=MASTER)
    with serve(create_app(settings)) as gw:
        created = httpx.post(
            gw + "/admin/keys", json={"name": "k"}, headers={"Authorization": f"Bearer {MASTER}"}
        ).json()
        private_postgres.stop("immediate")
        yield gw, fake, {"Authorization": f"Bearer {created['key']}"}, settings
        if not private_postgres.is_running():
            private_postgres.start()


def test_a_call_refused_because_the_database_is_down_is_a_retryable_503(
    database_gone: tuple[str, FakeOpenAI, dict[str, str], Settings],
) -> None:
    """A call that needs the database (its key is looked up there) while it is down: 503 with
    Retry-After in the shape of the API spoken, saying so; the model is not called."""
    gw, fake, headers, _ = database_gone
    body: dict[str, Any] = {"model": "echo", "messages": [{"role": "user", "content": WORDS}]}
    r = httpx.post(gw + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
    error = r.json()["error"]  # OpenAI's shape
    assert error["code"] == "database_unavailable" and error["type"] == "server_error"
    assert error["message"].startswith("The database is unavailable")
    anthropic = {"x-api-key": headers["Authorization"].removeprefix("Bearer ")}
    body = {**body, "max_tokens": 16}
    r = httpx.post(gw + "/v1/messages", json=body, headers=anthropic, timeout=30)
    assert r.status_code == 503 and "Retry-After" in r.headers, r.text
    reply = r.json()  # Anthropic's shape
    assert reply["type"] == "error" and reply["error"]["type"] == "overloaded_error", reply
    assert reply["error"]["message"].startswith("The database is unavailable")
    # the other routes too: the admin API answers 503, not 500
    r = httpx.get(gw + "/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}, timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text
    assert fake.calls == 0


def test_calls_that_need_no_database_are_answered_while_it_is_down_and_traced_after(
    database_gone: tuple[str, FakeOpenAI, dict[str, str], Settings], private_postgres: Cluster
) -> None:
    gw, fake, _, settings = database_gone
    # the master key is checked without the database, and the call's trace waits for it
    body = {"model": "echo", "messages": [{"role": "user", "content": WORDS}]}
    time.sleep(2.1)  # past the routing policy's refresh interval
    r = httpx.post(
        gw + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {MASTER}"},  # the master key needs no lookup
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert fake.calls == 1
    private_postgres.start()
    deadline = time.monotonic() + 15  # the trace writer retries with back-off
    while not (rows := traces_of(settings)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [(t.status, t.output) for t in rows] == [("ok", WORDS)]


# -- a worker killed ---------------------------------------------------------------------------


async def test_a_worker_killed_with_9_is_replaced_and_the_other_keeps_serving(
    upstream: tuple[FakeOpenAI, str], tmp_path: Path
) -> None:
    fake, base = upstream
    fake.always = Fault(drip_s=0.02)
    with postgres_schema(server_url(POSTGRES_ENV, "a PostgreSQL")) as database:
        config = {
            "database": database,
            "embeddings": [],
            "server": {"preload": False},
            "models": [remote("echo", base)],
        }
        server = GatewayProcess(config, tmp_path, workers=2).start()
        try:
            victim = server.worker_pids()[0]
            running = asyncio.create_task(load(server.base, "echo", 4.0, 8))
            await asyncio.sleep(1.0)
            os.kill(victim, 9)
            killed_at = time.monotonic()
            results = await running
            replaced = server.worker_pids()
        finally:
            server.stop()
        statuses = Counter(status for _, status, _ in results)
        late = [(s, ok) for t, s, ok in results if t > killed_at + 2.0]
        assert len(replaced) == 2 and victim not in replaced
        assert late and all(s == 200 and ok for s, ok in late)
        # only calls on the killed worker's connections failed: at most one per client
        assert statuses[0] <= 8, statuses
        rows = TraceStore(open_engine(database)).list(limit=100_000)
        assert len(rows) >= statuses[200] - 8  # the killed worker's last batch may be lost
