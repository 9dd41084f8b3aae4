"""Open-loop HTTP load at a fixed request rate, with per-request latency.

Request i is due at `start + i / rate`, whether or not earlier ones have finished (open loop, as
wrk2 does): a slow server makes requests queue, and that queueing is in the latency, which is
measured from the moment a request was due, not from when it was written. Requests go over a pool
of HTTP/1.1 keep-alive connections (one request in flight per connection; a new connection when
all are busy, up to `--max-connections`, then requests wait for one). The client is a raw asyncio
protocol with httptools' parser on uvloop: a few tens of microseconds of CPU per request, so that
the generator is not what is measured (the bench's direct-to-mock baseline shows its ceiling).

One run is a warm-up (sent at the same rate, not recorded) followed by the measured window; then it
waits up to `--drain-s` for answers still out (those that never come count as timeouts). It prints
one JSON object (`StepResult`): latency percentiles of the measured requests, errors by kind, the
rate achieved, how late the generator sent (`send_lag_*`: a large lag means the generator or the
machine could not keep up), the generator's own CPU time, and percentiles of a numeric response
header when asked (`--header x-llmforge-overhead-ms`).

Run: `.venv/bin/python bench/loadgen.py --url http://127.0.0.1:PORT/v1/chat/completions --rate 500
--duration 10 [--warmup 2] [--body JSON] [--header NAME]`. 127.0.0.1 only; plain HTTP only; it does
not read streamed (SSE) answers or follow redirects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import resource
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import orjson

DEFAULT_BODY = {
    "model": "mock",
    "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
    "max_tokens": 16,
}
MAX_REQUESTS = 2_000_000  # hard bound on one run, whatever rate x duration asks


@dataclass
class StepResult:
    """What one run at one rate measured (times in ms)."""

    rate: float
    duration_s: float
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    achieved_rps: float = 0.0  # answered / (from the first measured due to the last answer)
    p50_ms: float = math.nan
    p90_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    mean_ms: float = math.nan
    header_p50: float | None = None  # the numeric response header asked for
    header_p99: float | None = None
    send_lag_p50_ms: float = math.nan  # how late requests were written after they were due
    send_lag_p99_ms: float = math.nan
    connections: int = 0
    answered_total: int = 0  # requests that got an HTTP answer, warm-up included
    client_cpu_s: float = 0.0  # this process's CPU time during the run
    run_s: float = 0.0  # wall time of the run: warm-up, measured window and drain

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method; NaN for no values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class _Request:
    __slots__ = ("due", "header", "measured", "sent", "status")

    def __init__(self, due: float, measured: bool) -> None:
        self.due = due
        self.measured = measured
        self.sent = 0.0
        self.status = 0
        self.header: bytes | None = None


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.current: _Request | None = None
        self.header_value: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.lost(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def send(self, request: _Request) -> None:
        assert self.transport is not None
        self.current = request
        self.header_value = None
        request.sent = time.perf_counter()
        self.transport.write(self.pool.raw)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == self.pool.header:
            self.header_value = value

    def on_message_complete(self) -> None:
        request, self.current = self.current, None
        if request is None:
            return
        request.status = self.parser.get_status_code()
        request.header = self.header_value
        self.pool.done(self, request, keep=self.parser.should_keep_alive())


class _Pool:
    """Connections to one host; hands each due request to an idle connection, a new one, or a
    queue when `max_connections` are busy."""

    def __init__(
        self,
        host: str,
        port: int,
        raw: bytes,
        header: bytes,
        max_connections: int,
        finished: Callable[[_Request], None],
    ) -> None:
        self.host, self.port, self.raw, self.header = host, port, raw, header
        self.max_connections = max_connections
        self.finished = finished
        self.idle: list[_Connection] = []
        self.waiting: deque[_Request] = deque()
        self.open = 0  # connected or connecting
        self.opened_total = 0
        self.loop = asyncio.get_running_loop()
        self.connect_errors = 0

    def submit(self, request: _Request) -> None:
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.send(request)
                return
        if self.open < self.max_connections:
            self.open += 1
            self.opened_total += 1
            self.loop.create_task(self._connect(request))
        else:
            self.waiting.append(request)

    async def _connect(self, request: _Request) -> None:
        try:
            _, proto = await self.loop.create_connection(
                lambda: _Connection(self), self.host, self.port
            )
        except OSError:
            self.open -= 1
            self.connect_errors += 1
            request.status = -1  # connection refused / reset
            self.finished(request)
            return
        conn = cast(_Connection, proto)
        conn.send(request)

    def done(self, conn: _Connection, request: _Request, keep: bool) -> None:
        self.finished(request)
        if not keep and conn.transport is not None:
            conn.transport.close()  # `lost` does the bookkeeping
            return
        if self.waiting:
            conn.send(self.waiting.popleft())
        else:
            self.idle.append(conn)

    def lost(self, conn: _Connection) -> None:
        self.open -= 1
        if conn.current is not None:
            request, conn.current = conn.current, None
            request.status = -2  # connection dropped mid-request
            self.finished(request)
        if self.waiting and self.open < self.max_connections:
            self.open += 1
            self.opened_total += 1
            self.loop.create_task(self._connect(self.waiting.popleft()))

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


def _raw_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run_step(
    url: str,
    rate: float,
    duration_s: float,
    *,
    warmup_s: float = 1.0,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    header: str = "",
    max_connections: int = 512,
    drain_s: float = 10.0,
) -> StepResult:
    """Send `rate` requests/s for `warmup_s + duration_s` seconds and measure the last
    `duration_s` (see the module docstring)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1":
        raise SystemExit(f"loadgen: only http://127.0.0.1 URLs, not {url}")
    port = parts.port or 80
    raw = _raw_request(
        "127.0.0.1", port, parts.path or "/", body or orjson.dumps(DEFAULT_BODY), headers or {}
    )
    interval = 1.0 / rate
    warm_n = int(warmup_s * rate)
    total = min(warm_n + int(duration_s * rate), MAX_REQUESTS)
    latencies: list[float] = []
    lags: list[float] = []
    header_values: list[float] = []
    errors: Counter[str] = Counter()
    outstanding = answered = 0
    last_done = [0.0]
    all_done = asyncio.Event()
    scheduling = True

    def finished(request: _Request) -> None:
        nonlocal outstanding, answered
        outstanding -= 1
        answered += request.status > 0
        if request.measured:
            now = time.perf_counter()
            last_done[0] = max(last_done[0], now)
            if request.status == 200:
                latencies.append(now - request.due)
                if request.header is not None:
                    try:
                        header_values.append(float(request.header))
                    except ValueError:
                        errors["bad_header"] += 1
            elif request.status < 0:
                errors["connection"] += 1
            else:
                errors[f"http_{request.status}"] += 1
        if outstanding == 0 and not scheduling:
            all_done.set()

    pool = _Pool("127.0.0.1", port, raw, header.lower().encode(), max_connections, finished)
    loop = asyncio.get_running_loop()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter() + 0.05
    i = 0
    while i < total:
        now = time.perf_counter()
        due = start + i * interval
        if due > now:
            # timers are millisecond-grained; never spin (the CPU is shared with the server)
            await asyncio.sleep(max(due - now, 0.001))
            continue
        while i < total and start + i * interval <= now:
            request = _Request(start + i * interval, measured=i >= warm_n)
            if request.measured:
                lags.append(now - request.due)
            outstanding += 1
            pool.submit(request)
            i += 1
        await asyncio.sleep(0)  # let answers in between bursts
    scheduling = False
    window_end = start + total * interval
    if outstanding:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_done.wait(), drain_s)
    measured = total - warm_n
    timed_out = measured - len(latencies) - sum(errors.values())
    if timed_out > 0:
        errors["timeout"] += timed_out
    pool.close()
    await asyncio.sleep(0)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    del loop
    latencies.sort()
    lags.sort()
    header_values.sort()
    window = max(max(window_end, last_done[0]) - (start + warm_n * interval), 1e-9)
    ms = 1000.0
    return StepResult(
        rate=rate,
        duration_s=duration_s,
        sent=measured,
        ok=len(latencies),
        errors=dict(errors),
        achieved_rps=len(latencies) / window,
        p50_ms=percentile(latencies, 50) * ms,
        p90_ms=percentile(latencies, 90) * ms,
        p99_ms=percentile(latencies, 99) * ms,
        max_ms=(latencies[-1] * ms) if latencies else math.nan,
        mean_ms=(sum(latencies) / len(latencies) * ms) if latencies else math.nan,
        header_p50=percentile(header_values, 50) if header_values else None,
        header_p99=percentile(header_values, 99) if header_values else None,
        send_lag_p50_ms=percentile(lags, 50) * ms,
        send_lag_p99_ms=percentile(lags, 99) * ms,
        connections=pool.opened_total,
        answered_total=answered,
        client_cpu_s=(cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        run_s=time.perf_counter() - start,
    )


def _run(coro: Any) -> Any:
    try:
        import uvloop  # uvicorn[standard] brings it
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT/path (POSTed to)")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--body", help="JSON body (default: a short chat completion request)")
    parser.add_argument("--header", default="", help="numeric response header to summarise")
    parser.add_argument("--max-connections", type=int, default=512)
    parser.add_argument("--drain-s", type=float, default=10.0, help="wait for late answers")
    args = parser.parse_args(argv)
    if not 0 < args.rate <= 100_000 or not 0 < args.duration <= 600 or args.warmup < 0:
        raise SystemExit("loadgen: need 0 < rate <= 100000, 0 < duration <= 600, warmup >= 0")
    result = _run(
        run_step(
            args.url,
            args.rate,
            args.duration,
            warmup_s=args.warmup,
            body=args.body.encode() if args.body else None,
            header=args.header,
            max_connections=args.max_connections,
            drain_s=args.drain_s,
        )
    )
    sys.stdout.buffer.write(orjson.dumps(asdict(result)) + b"\n")


if __name__ == "__main__":
    main()
