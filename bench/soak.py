"""Soak: many concurrent SSE streams through the gateway for a long time, and what it costs.

Starts a streaming mock upstream (below: bench/mock_upstream.py's server, answering `stream: true`
with `--tokens` chunks `--token-ms` apart after `--ttft-ms`), `llmforge serve` in its own
process (SQLite in a temporary folder unless `--database`; `--redis-url`, `--workers`), and
`--streams` clients that each open a streamed chat completion, read it to `[DONE]` and start the
next, for `--duration` seconds (default 600). Every call goes through a key with a budget, so
admission and settlement run on every call.

Reports: calls and errors (goal: 0), added latency (the stream's end as the client sees it minus
the upstream's own schedule; p50/p99, and the same for a short anchor run straight to the upstream
with the same clients, so the client's own cost is visible), the gateway's RSS after warm-up and
at the end (goal: growth < 5%), its open file descriptors, and the trace rows written against the
calls made (goal: equal). `--kill-at S` kills the gateway with -9 after S seconds and restarts it,
to count what a crash costs. The machine's load average is printed with the figures.

Run: `.venv/bin/python bench/soak.py --duration 180 [--streams 200] [--json]`. Offline, 127.0.0.1
only; it stops by itself. It is not a test: nothing here fails a build.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from tests.scale.gateway_process import GatewayProcess, open_fds, rss_bytes  # noqa: E402

from mock_upstream import MockUpstream, _bodies  # noqa: E402

MASTER = "soak-master-key"


# -- the streaming upstream ----------------------------------------------------------------------


class StreamingUpstream(MockUpstream):
    """mock_upstream's server, streaming: a POST to .../chat/completions is answered with `tokens`
    SSE chunks, the first after `ttft_s`, then one every `token_s`, then usage and [DONE]. One
    request at a time per connection (the gateway's pool does not pipeline)."""

    def __init__(self, ttft_s: float, token_s: float, tokens: int) -> None:
        super().__init__(ttft_s, _bodies())
        self.ttft_s, self.token_s, self.tokens = ttft_s, token_s, tokens

    def on_message_complete(self) -> None:
        url = self.url.split(b"?", 1)[0]
        if not (url.endswith(b"/chat/completions") and self.parser.get_method() == b"POST"):
            super().on_message_complete()
            return
        self.url = b""
        if self.transport is None:
            return
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n"
        )
        for i in range(self.tokens):
            self.loop.call_later(self.ttft_s + i * self.token_s, self._chunk, i)

    def _chunk(self, i: int) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        delta: dict[str, Any] = {"content": f" w{i}"}
        event: dict[str, Any] = {
            "id": "chatcmpl-soak",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "mock",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        out = b"data: " + orjson.dumps(event) + b"\n\n"
        if i == self.tokens - 1:
            event["choices"] = [{"index": 0, "delta": {}, "finish_reason": "stop"}]
            event["usage"] = {
                "prompt_tokens": 12,
                "completion_tokens": self.tokens,
                "total_tokens": 12 + self.tokens,
            }
            out += b"data: " + orjson.dumps(event) + b"\n\ndata: [DONE]\n\n"
        transport.write(b"%x\r\n%s\r\n" % (len(out), out))
        if i == self.tokens - 1:
            transport.write(b"0\r\n\r\n")


async def serve_upstream(port: int, ttft_s: float, token_s: float, tokens: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: StreamingUpstream(ttft_s, token_s, tokens), "127.0.0.1", port, backlog=4096
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


# -- the clients -----------------------------------------------------------------------------------


@dataclass
class Tally:
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    added_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def one_stream(
    session: Any, url: str, headers: dict[str, str], expected_s: float, tally: Tally
) -> None:
    import aiohttp

    body = {
        "model": "mock",
        "messages": [{"role": "user", "content": "soak"}],
        "stream": True,
        "max_tokens": 256,
    }
    started = time.monotonic()
    tally.calls += 1
    first: float | None = None
    done = False
    try:
        async with session.post(url, json=body, headers=headers) as r:
            if r.status != 200:
                tally.error(f"http {r.status}")
                await r.read()
                return
            async for line in r.content:
                if not line.startswith(b"data: "):
                    continue
                if line.startswith(b"data: [DONE]"):
                    done = True
                elif b'"error"' in line:
                    tally.error("error event")
                elif first is None:
                    first = time.monotonic()
    except (TimeoutError, aiohttp.ClientError) as e:
        tally.error(type(e).__name__)
        return
    if not done:
        tally.error("no [DONE]")
        return
    end = time.monotonic()
    tally.added_ms.append((end - started - expected_s) * 1000)
    if first is not None:
        tally.ttft_ms.append((first - started) * 1000)


async def drive(
    base: str, streams: int, seconds: float, expected_s: float, headers: dict[str, str]
) -> Tally:
    import aiohttp

    tally = Tally()
    end = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            while time.monotonic() < end:
                await one_stream(session, base + "/v1/chat/completions", headers, expected_s, tally)

        await asyncio.gather(*(client() for _ in range(streams)))
    return tally


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# -- the run ---------------------------------------------------------------------------------------


def start_upstream(args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [
            *(sys.executable, __file__, "--upstream", "--ttft-ms", str(args.ttft_ms)),
            *("--token-ms", str(args.token_ms), "--tokens", str(args.tokens)),
        ],
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
    )
    assert proc.stdout is not None
    ready = proc.stdout.readline().decode().split()
    return proc, int(ready[1])


def gateway_config(args: argparse.Namespace, upstream_port: int, folder: Path) -> dict[str, Any]:
    config: dict[str, Any] = {
        "database": args.database or f"sqlite:///{folder / 'soak.db'}",
        "master_key": MASTER,
        "embeddings": [],
        "server": {"preload": False},
        "traces": {"queue_size": 10_000},
        "models": [
            {
                "name": "mock",
                "provider": "openai",
                "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                "model_id": "mock",
                "timeout_s": 30,
                "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.1},
            }
        ],
    }
    if args.redis_url:
        config["redis_url"] = args.redis_url
    return config


def gateway_pids(gateway: GatewayProcess) -> list[int]:
    pids = gateway.worker_pids()
    return [*pids, gateway.proc.pid] if gateway.proc is not None and gateway.workers > 1 else pids


def sample(gateway: GatewayProcess) -> tuple[int, int]:
    """The gateway's RSS (bytes) and open fds, over all its processes."""
    pids = gateway_pids(gateway)
    return sum(rss_bytes(p) for p in pids), sum(open_fds(p) for p in pids)


def count_traces(database: str, since: float) -> int:
    import sqlalchemy as sa

    from llmforge.core.db import open_engine

    engine = open_engine(database)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT count(*) FROM traces WHERE created_at >= :t"), {"t": since}
        )
        return int(rows.scalar() or 0)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    folder = Path(tempfile.mkdtemp(prefix="llmforge-soak-"))
    expected_s = (args.ttft_ms + (args.tokens - 1) * args.token_ms) / 1000
    upstream, port = start_upstream(args, folder / "upstream.log")
    try:
        # the anchor: the same clients straight to the upstream
        anchor_s = min(30.0, max(5.0, args.duration / 10))
        direct = await drive(f"http://127.0.0.1:{port}", args.streams, anchor_s, expected_s, {})

        config = gateway_config(args, port, folder)
        gateway = GatewayProcess(config, folder, workers=args.workers).start()
        key = httpx.post(
            gateway.base + "/admin/keys",
            json={"name": "soak", "budget_usd": 1000.0, "rpm": 1_000_000},
            headers={"Authorization": f"Bearer {MASTER}"},
        ).json()
        headers = {"Authorization": f"Bearer {key['key']}"}
        since = time.time() - 1
        samples: list[tuple[float, int, int]] = []
        started = time.monotonic()

        async def monitor() -> None:
            while True:
                await asyncio.sleep(5)
                if gateway.proc is not None:
                    rss, fds = sample(gateway)
                    samples.append((time.monotonic() - started, rss, fds))

        async def crash() -> None:
            await asyncio.sleep(args.kill_at)
            await asyncio.to_thread(gateway.kill)
            await asyncio.to_thread(gateway.start)

        watcher = asyncio.create_task(monitor())
        crasher = asyncio.create_task(crash()) if args.kill_at else None
        through = await drive(gateway.base, args.streams, args.duration, expected_s, headers)
        watcher.cancel()
        if crasher is not None:
            await crasher
        end_rss, end_fds = sample(gateway)
        spent = httpx.get(
            gateway.base + f"/admin/keys/{key['id']}",
            headers={"Authorization": f"Bearer {MASTER}"},
        ).json()
        gateway.stop()
        traces = count_traces(config["database"], since)
    finally:
        upstream.send_signal(signal.SIGTERM)
        upstream.wait(10)
    warm = [s for s in samples if s[0] >= min(60.0, args.duration / 5)] or samples
    start_rss = warm[0][1] if warm else end_rss
    loadavg = os.getloadavg()
    added_direct = [pct(direct.added_ms, p) for p in (50, 99)]
    added_through = [pct(through.added_ms, p) for p in (50, 99)]
    return {
        "duration_s": args.duration,
        "streams": args.streams,
        "workers": args.workers,
        "database": "sqlite" if not args.database else args.database.split(":", 1)[0],
        "upstream": {"ttft_ms": args.ttft_ms, "token_ms": args.token_ms, "tokens": args.tokens},
        "calls": through.calls,
        "errors": through.errors,
        "error_count": sum(through.errors.values()),
        "anchor_added_ms_p50_p99": added_direct,
        "added_ms_p50_p99": added_through,
        "gateway_added_ms_p50_p99": [
            None if a is None or b is None else a - b
            for a, b in zip(added_through, added_direct, strict=True)
        ],
        "ttft_ms_p50_p99": [pct(through.ttft_ms, p) for p in (50, 99)],
        "rss_mb_start_end": [round(start_rss / 2**20, 1), round(end_rss / 2**20, 1)],
        "rss_growth_pct": round((end_rss / start_rss - 1) * 100, 2) if start_rss else None,
        "fds_start_end": [warm[0][2] if warm else end_fds, end_fds],
        "fds_max": max((s[2] for s in samples), default=end_fds),
        "trace_rows": traces,
        "spent_usd": spent.get("spent_usd"),
        "reserved_usd": spent.get("reserved_usd"),
        "killed_at_s": args.kill_at,
        "loadavg_1_5_15": [round(x, 2) for x in loadavg],
        "mean_calls_per_s": round(through.calls / args.duration, 1),
        "added_ms_mean": round(statistics.fmean(through.added_ms), 1) if through.added_ms else None,
    }


def print_report(data: dict[str, Any]) -> None:
    def ms(pair: list[float | None]) -> str:
        return " / ".join("-" if x is None else f"{x:.1f}" for x in pair)

    print(
        f"soak: {data['streams']} streams for {data['duration_s']:.0f} s, "
        f"{data['workers']} worker(s), {data['database']}, upstream {data['upstream']}"
    )
    print(
        f"  calls {data['calls']} ({data['mean_calls_per_s']}/s), errors {data['error_count']} "
        f"{data['errors'] or ''}"
    )
    print(
        f"  added latency p50/p99 ms: through gateway {ms(data['added_ms_p50_p99'])}, "
        f"anchor (direct) {ms(data['anchor_added_ms_p50_p99'])}, "
        f"gateway's share {ms(data['gateway_added_ms_p50_p99'])}"
    )
    print(f"  time to first token p50/p99 ms: {ms(data['ttft_ms_p50_p99'])}")
    print(
        f"  RSS MB after warm-up / end: {data['rss_mb_start_end']} "
        f"(growth {data['rss_growth_pct']}%); open fds {data['fds_start_end']} "
        f"(max {data['fds_max']})"
    )
    print(
        f"  trace rows {data['trace_rows']} for {data['calls']} calls; key spent "
        f"${data['spent_usd']}, still reserved ${data['reserved_usd']}"
    )
    print(f"  load average {data['loadavg_1_5_15']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    p.add_argument("--streams", type=int, default=200, help="concurrent streams")
    p.add_argument("--tokens", type=int, default=32, help="chunks per answer")
    p.add_argument("--token-ms", type=float, default=50.0, help="between chunks")
    p.add_argument("--ttft-ms", type=float, default=100.0, help="before the first chunk")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--database", help="a database URL (default: SQLite in a temporary folder)")
    p.add_argument("--redis-url")
    p.add_argument("--kill-at", type=float, default=0.0, help="kill -9 and restart after S s")
    p.add_argument("--json", action="store_true")
    p.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.upstream:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
        asyncio.run(serve_upstream(0, args.ttft_ms / 1000, args.token_ms / 1000, args.tokens))
        return
    data = asyncio.run(run(args))
    if args.json:
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        print_report(data)


if __name__ == "__main__":
    main()
