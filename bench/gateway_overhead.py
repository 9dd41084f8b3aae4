"""What the gateway adds on the request path: LLMForge vs going direct vs LiteLLM's proxy.

In one run, on 127.0.0.1 only:

- `mock_upstream.py` in its own process: an OpenAI-compatible chat completion after a fixed
  latency L (default 20 ms);
- the targets, each one worker process: **direct** (the mock itself), **llmforge** (`python -m
  llmforge serve` with one `openai` model pointing at the mock; traces on, as by default, in a tmp
  SQLite; no master key; cache off; `server.preload: false`) and **litellm** (LiteLLM's proxy from
  its own venv `bench/.venv-litellm`, made and cached by this script; the mock as an `openai/`
  model with `api_base`; no database, so no spend or error logs are written; no master key, which
  LiteLLM allows with `LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY`; `LITELLM_LOG=ERROR`;
  `--num_workers 1`, its default uvicorn server);
- `loadgen.py` in a separate process per measurement: open-loop load at a fixed rate (latency is
  measured from when each request was due, so queueing counts).

Fixed rates (default 100, 300, 500 requests/s; each a warm-up then a measured window) run
interleaved: at each rate every target in turn, so drifting background load hits all alike. For
each: latency p50/p90/p99/max, errors, and the server's CPU time per request; **added** latency is a
target's percentile minus direct's at the same rate; for LLMForge also the percentiles of its
self-measured `x-llmforge-overhead-ms` header. Then **max sustained RPS** per target: open-loop
steps of rising rate (x1.5 from `--ramp-start`, then bisection between the last pass and the first
failure); a step passes when every request is answered, none with an error, and p99 stays within
the bound (default 10 x L: past a server's capacity an open-loop queue grows without end); a
failed step is run once more before it counts (other work on the machine makes single steps
noisy); the highest passing rate is reported. Direct's figure is the ceiling of the mock and the
generator on this machine: no gateway can be measured above it. Before each measurement the bench
waits until every server is idle (a backlog left by an overloaded step is served first), and a
target that answered under half of a fixed rate is not run at the higher ones.

Goals (on 2 cores, everything above sharing them): LLMForge added p50 <= 1 ms and p99 <= 5 ms at
500 RPS; LLMForge max sustained RPS >= 3x LiteLLM's.

Run: `.venv/bin/python bench/gateway_overhead.py [--quick] [--json] [--latency-ms 20]
[--rates 100,300,500] [--duration 10] [--no-litellm]`. The first run installs `litellm[proxy]`
and `httptools` (uvicorn's fast parser, which LLMForge's server has too) from the package index
into `bench/.venv-litellm` (a few minutes); if that fails the LiteLLM column is skipped with a
message. It does not measure streaming, embeddings, auth, rate limits or
the cache (all off), or a model's own time.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
LITELLM_VENV = BENCH / ".venv-litellm"
# httptools: uvicorn's fast HTTP parser, which LLMForge's uvicorn[standard] has (else: h11)
LITELLM_SPEC = ("litellm[proxy]", "httptools")
OVERHEAD_HEADER = "x-llmforge-overhead-ms"
GOAL_RATE = 500.0
GOAL_ADDED_P50_MS = 1.0
GOAL_ADDED_P99_MS = 5.0
GOAL_RPS_RATIO = 3.0
RAMP_FACTOR = 1.5
MAX_RAMP_STEPS = 16  # rising steps per target, before bisection
LOAD_WARNING = 0.5  # 1-minute load average at the start, per CPU... of other work
REQUEST = {
    "model": "mock",
    "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
    "max_tokens": 16,
}


@dataclass
class Target:
    name: str
    url: str  # the chat completions URL the load goes to
    pid: int  # the serving process (its descendants are counted too)
    note: str = ""


@dataclass
class Measured:
    """One loadgen run against one target, plus the server's CPU time over it."""

    target: str
    step: dict[str, Any]  # loadgen's StepResult
    server_cpu_ms_per_req: float
    other_cpu_share: float | None  # share of all CPUs used by processes not in this bench

    @property
    def passed_errors(self) -> bool:
        return not self.step["errors"]


@dataclass
class Ramp:
    target: str
    max_rps: float = 0.0
    capped: bool = False  # passed at the highest rate tried: the true maximum is higher
    steps: list[dict[str, Any]] = field(default_factory=list)


# -- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """CPU time of process `pid` and all its descendants so far (Linux /proc; 0 elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[int, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        child, parent = int(stat.parent.name), int(fields[1])
        children.setdefault(parent, []).append(child)
        stats[child] = (int(fields[11]), int(fields[12]))  # utime, stime
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        utime, stime = stats.get(p, (0, 0))
        total += utime + stime
        todo.extend(children.get(p, ()))
    return total / tick


def machine_busy_seconds() -> float | None:
    """CPU seconds all CPUs spent busy since boot (Linux /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@contextmanager
def process(
    name: str, command: list[str], log_dir: Path, env: dict[str, str | None] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` with its output in `log_dir/<name>.log`; `env` entries set to None are
    removed from the environment."""
    environ = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=log_dir, stdout=log, stderr=subprocess.STDOUT, env=environ
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(
    name: str, url: str, proc: subprocess.Popen[bytes], log_dir: Path, timeout_s: float
) -> None:
    """Poll with a real chat completion until it answers 200."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            r = httpx.post(url, json=REQUEST, timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:300]}"
        except httpx.TransportError as e:
            last = repr(e)
        time.sleep(0.25)
    tail = (log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{name} did not answer at {url} ({last}); its log ends:\n{tail}")


def start_mock(stack: ExitStack, latency_ms: float, log_dir: Path) -> Target:
    port = free_port()
    command = [
        sys.executable,
        str(BENCH / "mock_upstream.py"),
        "--port",
        str(port),
        "--latency-ms",
        str(latency_ms),
    ]
    proc = stack.enter_context(process("mock", command, log_dir))
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    wait_ready("mock", url, proc, log_dir, 30)
    return Target("direct", url, proc.pid, f"mock upstream, fixed latency {latency_ms:g} ms")


def start_llmforge(stack: ExitStack, mock_port: int, log_dir: Path) -> Target:
    config = log_dir / "llmforge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": f"sqlite:///{log_dir}/llmforge.db",
                "server": {"preload": False},
                "models": [
                    {
                        "name": "mock",
                        "provider": "openai",
                        "base_url": f"http://127.0.0.1:{mock_port}/v1",
                        "model_id": "mock",
                    }
                ],
            }
        )
    )
    port = free_port()
    command = [sys.executable, "-m", "llmforge", "serve", "--config", str(config)]
    env: dict[str, str | None] = {"LLMFORGE_MASTER_KEY": None}  # no keys: anonymous calls
    proc = stack.enter_context(process("llmforge", [*command, "--port", str(port)], log_dir, env))
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    wait_ready("llmforge", url, proc, log_dir, 90)
    return Target(
        "llmforge",
        url,
        proc.pid,
        "llmforge serve, 1 process, traces on (SQLite), no keys, cache off",
    )


def litellm_venv(console: Console) -> Path | None:
    """`bench/.venv-litellm/bin/litellm`, installing it on first use; None if that fails."""
    exe = LITELLM_VENV / "bin" / "litellm"
    stamp = LITELLM_VENV / ".installed"
    wanted = " ".join(LITELLM_SPEC)
    if exe.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return exe
    console.print(f"installing {wanted} into {LITELLM_VENV} (first run only) ...")
    try:
        if not (LITELLM_VENV / "bin" / "python").exists():
            subprocess.run(
                [shutil.which("python3") or sys.executable, "-m", "venv", str(LITELLM_VENV)],
                check=True,
                capture_output=True,
                timeout=300,
            )
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet", *LITELLM_SPEC],
            check=True,
            capture_output=True,
            timeout=1800,
        )
    except (OSError, subprocess.SubprocessError) as e:
        output = getattr(e, "stderr", b"") or b""
        console.print(
            f"[yellow]could not install {wanted} ({e!r}): skipping LiteLLM.[/]\n"
            + output.decode(errors="replace")[-1500:]
        )
        return None
    if not exe.exists():
        console.print(f"[yellow]{exe} missing after the install: skipping LiteLLM.[/]")
        return None
    stamp.write_text(wanted + "\n")
    return exe


LITELLM_ENV: dict[str, str | None] = {
    # no keys, as for LLMForge: without this LiteLLM refuses to start with no master key
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    "LITELLM_LOG": "ERROR",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price map at start-up
    "DISABLE_ADMIN_UI": "True",
    "DATABASE_URL": None,  # no database: no spend logs, no key checks
    "LITELLM_MASTER_KEY": None,
}


def start_litellm(stack: ExitStack, exe: Path, mock_port: int, log_dir: Path) -> Target:
    config = log_dir / "litellm.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": "mock",
                        "litellm_params": {
                            "model": "openai/mock",
                            "api_base": f"http://127.0.0.1:{mock_port}/v1",
                            "api_key": "sk-bench",
                        },
                    }
                ],
                "litellm_settings": {"set_verbose": False, "request_timeout": 30},
                "general_settings": {"disable_spend_logs": True, "disable_error_logs": True},
            }
        )
    )
    port = free_port()
    command = [
        str(exe),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    proc = stack.enter_context(process("litellm", command, log_dir, LITELLM_ENV))
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    wait_ready("litellm", url, proc, log_dir, 180)
    version = subprocess.run(
        [
            str(LITELLM_VENV / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout.strip()
    return Target(
        "litellm",
        url,
        proc.pid,
        f"litellm {version or '?'} proxy, --num_workers 1, no database (no spend/error logs), "
        "LITELLM_LOG=ERROR",
    )


# -- measuring -------------------------------------------------------------------------------------


def measure(
    target: Target,
    rate: float,
    duration_s: float,
    warmup_s: float,
    drain_s: float,
    bench_pids: list[int],
) -> Measured:
    """One loadgen process at `rate` against `target`, once every server is idle."""
    wait_idle(bench_pids)
    command = [
        sys.executable,
        str(BENCH / "loadgen.py"),
        "--url",
        target.url,
        "--rate",
        f"{rate:g}",
        "--duration",
        f"{duration_s:g}",
        "--warmup",
        f"{warmup_s:g}",
        "--body",
        orjson.dumps(REQUEST).decode(),
        "--header",
        OVERHEAD_HEADER,
        "--drain-s",
        f"{drain_s:g}",
    ]
    server0, ours0, busy0 = cpu_seconds(target.pid), _bench_cpu(bench_pids), machine_busy_seconds()
    done = subprocess.run(
        command, capture_output=True, timeout=warmup_s + duration_s + drain_s + 60
    )
    server1, ours1, busy1 = cpu_seconds(target.pid), _bench_cpu(bench_pids), machine_busy_seconds()
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr.decode(errors='replace')[-2000:]}")
    step = orjson.loads(done.stdout)
    requests = step["answered_total"]
    other = None
    if busy0 is not None and busy1 is not None:
        others = (busy1 - busy0) - (ours1 - ours0) - step["client_cpu_s"]
        other = max(others, 0.0) / (step["run_s"] * (os.cpu_count() or 1))
    return Measured(
        target.name,
        step,
        (server1 - server0) * 1000 / max(requests, 1),
        None if other is None else round(other, 3),
    )


def wait_idle(pids: list[int], timeout_s: float = 120.0) -> bool:
    """Wait until every server uses under 5% of a core over 250 ms (a backlog left by an
    overloaded step is served first). False if they never settle."""
    deadline = time.monotonic() + timeout_s
    before = [cpu_seconds(p) for p in pids]
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = [cpu_seconds(p) for p in pids]
        if all(b - a < 0.0125 for a, b in zip(before, now, strict=True)):
            return True
        before = now
    return False


def _bench_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def passes(step: dict[str, Any], bound_ms: float) -> bool:
    return not step["errors"] and step["p99_ms"] <= bound_ms


def ramp(
    target: Target,
    start: float,
    max_rate: float,
    duration_s: float,
    warmup_s: float,
    bound_ms: float,
    bisections: int,
    bench_pids: list[int],
    console: Console,
) -> Ramp:
    """The highest open-loop rate that passes (see the module docstring)."""
    result = Ramp(target.name)
    passed, failed = 0.0, math.inf
    rate = start
    for _ in range(MAX_RAMP_STEPS):
        rate = min(rate, max_rate)
        ok = _ramp_step(target, rate, duration_s, warmup_s, bound_ms, bench_pids, result, console)
        if not ok:
            failed = rate
            break
        passed = rate
        if rate >= max_rate:
            result.capped = True
            break
        rate *= RAMP_FACTOR
    if math.isfinite(failed):
        for _ in range(bisections):
            rate = round((passed + failed) / 2 if passed else failed / 2)
            if rate <= 0 or rate in (passed, failed):
                break
            if _ramp_step(
                target, rate, duration_s, warmup_s, bound_ms, bench_pids, result, console
            ):
                passed = rate
            else:
                failed = rate
    result.max_rps = passed
    return result


def _ramp_step(
    target: Target,
    rate: float,
    duration_s: float,
    warmup_s: float,
    bound_ms: float,
    bench_pids: list[int],
    result: Ramp,
    console: Console,
) -> bool:
    for attempt in range(2):  # a failure is confirmed once: other work on the machine is noisy
        with console.status(f"max RPS of {target.name}: {rate:.0f} req/s"):
            m = measure(
                target,
                rate,
                duration_s,
                warmup_s,
                drain_s=2 * bound_ms / 1000 + 2,
                bench_pids=bench_pids,
            )
        ok = passes(m.step, bound_ms)
        s = m.step
        result.steps.append(
            {
                "rate": rate,
                "passed": ok,
                "retry": attempt > 0,
                "achieved_rps": round(s["achieved_rps"], 1),
                "p99_ms": _r(s["p99_ms"]),
                "errors": s["errors"],
                "server_cpu_ms_per_req": round(m.server_cpu_ms_per_req, 3),
            }
        )
        if ok:
            return True
    return False


def _r(x: float | None, digits: int = 2) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, digits)


# -- the run ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    load0 = os.getloadavg()[0]
    bound_ms = args.p99_bound_ms or 10 * args.latency_ms
    with tempfile.TemporaryDirectory(prefix="llmforge-overhead-") as tmp, ExitStack() as stack:
        log_dir = Path(tmp)
        targets: list[Target] = []
        skipped: dict[str, str] = {}
        with console.status("starting the mock upstream and LLMForge"):
            mock = start_mock(stack, args.latency_ms, log_dir)
            mock_port = int(mock.url.split(":")[2].split("/")[0])
            targets += [mock, start_llmforge(stack, mock_port, log_dir)]
        if args.no_litellm:
            skipped["litellm"] = "--no-litellm"
        else:
            exe = litellm_venv(console)
            if exe is None:
                skipped["litellm"] = "installing litellm[proxy] failed"
            else:
                with console.status("starting LiteLLM's proxy"):
                    try:
                        targets.append(start_litellm(stack, exe, mock_port, log_dir))
                    except RuntimeError as e:
                        console.print(f"[yellow]LiteLLM did not start: skipping it.[/]\n{e}")
                        skipped["litellm"] = "did not start"
        pids = [t.pid for t in targets]

        fixed: list[Measured] = []
        saturated: dict[str, float] = {}
        for rate in sorted(args.rates):
            for target in targets:
                if target.name in saturated:
                    continue  # a higher rate only builds a longer backlog
                with console.status(f"{target.name} at {rate:g} req/s"):
                    m = measure(target, rate, args.duration, args.warmup, 10.0, bench_pids=pids)
                fixed.append(m)
                if m.step["achieved_rps"] < 0.5 * rate:
                    saturated[target.name] = rate
        ramps = [
            ramp(
                target,
                args.ramp_start,
                args.max_rate,
                args.ramp_duration,
                args.warmup / 2,
                bound_ms,
                args.bisections,
                pids,
                console,
            )
            for target in targets
        ]
    return report_data(args, targets, skipped, saturated, fixed, ramps, bound_ms, load0)


def report_data(
    args: argparse.Namespace,
    targets: list[Target],
    skipped: dict[str, str],
    saturated: dict[str, float],
    fixed: list[Measured],
    ramps: list[Ramp],
    bound_ms: float,
    load0: float,
) -> dict[str, Any]:
    direct = {m.step["rate"]: m.step for m in fixed if m.target == "direct"}
    rows = []
    for m in fixed:
        s, base = m.step, direct.get(m.step["rate"])
        rows.append(
            {
                "target": m.target,
                "rate": s["rate"],
                "achieved_rps": round(s["achieved_rps"], 1),
                "ok": s["ok"],
                "errors": s["errors"],
                "p50_ms": _r(s["p50_ms"]),
                "p90_ms": _r(s["p90_ms"]),
                "p99_ms": _r(s["p99_ms"]),
                "max_ms": _r(s["max_ms"]),
                "added_p50_ms": _r(s["p50_ms"] - base["p50_ms"]) if base else None,
                "added_p99_ms": _r(s["p99_ms"] - base["p99_ms"]) if base else None,
                "self_overhead_p50_ms": _r(s["header_p50"], 3),
                "self_overhead_p99_ms": _r(s["header_p99"], 3),
                "server_cpu_ms_per_req": round(m.server_cpu_ms_per_req, 3),
                "send_lag_p99_ms": _r(s["send_lag_p99_ms"]),
                "loadgen_cpu_share": round(s["client_cpu_s"] / s["run_s"], 3),
                "other_cpu_share": m.other_cpu_share,
            }
        )
    by = {(r["target"], r["rate"]): r for r in rows}
    max_rps = {r.target: r.max_rps for r in ramps}
    at_goal = by.get(("llmforge", GOAL_RATE))
    lite_rps = max_rps.get("litellm")
    ratios: dict[str, Any] = {
        "llmforge_added_p50_ms_at_500": at_goal["added_p50_ms"] if at_goal else None,
        "llmforge_added_p99_ms_at_500": at_goal["added_p99_ms"] if at_goal else None,
        "llmforge_rps_over_litellm": (
            round(max_rps["llmforge"] / lite_rps, 2) if lite_rps else None
        ),
    }
    lite_goal = by.get(("litellm", GOAL_RATE))
    if lite_goal and at_goal and lite_goal["server_cpu_ms_per_req"]:
        ratios["litellm_over_llmforge_cpu_per_req"] = round(
            lite_goal["server_cpu_ms_per_req"] / at_goal["server_cpu_ms_per_req"], 2
        )
    goals = {
        "added_p50_le_1ms": _le(ratios["llmforge_added_p50_ms_at_500"], GOAL_ADDED_P50_MS),
        "added_p99_le_5ms": _le(ratios["llmforge_added_p99_ms_at_500"], GOAL_ADDED_P99_MS),
        "rps_ge_3x_litellm": (
            None
            if ratios["llmforge_rps_over_litellm"] is None
            else ratios["llmforge_rps_over_litellm"] >= GOAL_RPS_RATIO
        ),
    }
    return {
        "settings": {
            "latency_ms": args.latency_ms,
            "rates": args.rates,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "ramp": {
                "start": args.ramp_start,
                "factor": RAMP_FACTOR,
                "step_s": args.ramp_duration,
                "max_rate": args.max_rate,
                "bisections": args.bisections,
                "p99_bound_ms": bound_ms,
            },
            "cpus": os.cpu_count(),
            "load_average_at_start": round(load0, 2),
            "load_average_at_end": round(os.getloadavg()[0], 2),
        },
        "targets": {t.name: t.note for t in targets},
        "skipped": skipped,
        "saturated_at": saturated,  # target -> the fixed rate it answered under half of
        "fixed_rates": rows,
        "max_sustained_rps": {
            r.target: {"rps": r.max_rps, "capped": r.capped, "steps": r.steps} for r in ramps
        },
        "ratios": ratios,
        "goals": goals,
    }


def _le(value: float | None, goal: float) -> bool | None:
    return None if value is None else value <= goal


def print_report(data: dict[str, Any], console: Console) -> None:
    s = data["settings"]
    for name, note in data["targets"].items():
        console.print(f"[bold]{name}[/]: {note}")
    for name, why in data["skipped"].items():
        console.print(f"[yellow]{name} skipped: {why}[/]")
    table = Table(
        title=f"Open-loop fixed rates (mock latency {s['latency_ms']:g} ms; ms from when each "
        "request was due)"
    )
    for col in (
        "target",
        "req/s",
        "done/s",
        "p50",
        "p90",
        "p99",
        "max",
        "added p50",
        "added p99",
        "self p50/p99",
        "CPU ms/req",
        "errors",
    ):
        table.add_column(col, justify="left" if col == "target" else "right")
    for r in data["fixed_rates"]:
        self_ = (
            f"{r['self_overhead_p50_ms']:.2f}/{r['self_overhead_p99_ms']:.2f}"
            if r["self_overhead_p50_ms"] is not None
            else ""
        )
        table.add_row(
            r["target"],
            f"{r['rate']:g}",
            f"{r['achieved_rps']:.0f}",
            _f(r["p50_ms"]),
            _f(r["p90_ms"]),
            _f(r["p99_ms"]),
            _f(r["max_ms"]),
            "" if r["target"] == "direct" else _f(r["added_p50_ms"], sign=True),
            "" if r["target"] == "direct" else _f(r["added_p99_ms"], sign=True),
            self_,
            f"{r['server_cpu_ms_per_req']:.2f}",
            ", ".join(f"{k}:{v}" for k, v in r["errors"].items()) or "0",
        )
    console.print(table)
    for name, rate in data["saturated_at"].items():
        higher = [f"{r:g}" for r in s["rates"] if r > rate]
        if higher:
            console.print(
                f"{name} answered under half of {rate:g} req/s: not run at {', '.join(higher)}."
            )
    ramp = s["ramp"]
    table = Table(
        title=f"Max sustained RPS (open-loop steps x{ramp['factor']} from {ramp['start']:g}, "
        f"{ramp['step_s']:g} s each, then {ramp['bisections']} bisection(s); pass = all "
        f"answered, no errors, p99 <= {ramp['p99_bound_ms']:g} ms; ✗ failed)"
    )
    for col in ("target", "max req/s", "steps (req/s: p99 ms, pass)"):
        table.add_column(col)
    for name, r in data["max_sustained_rps"].items():
        steps = "  ".join(
            f"{st['rate']:.0f}:{_f(st['p99_ms'])}{'' if st['passed'] else '✗'}" for st in r["steps"]
        )
        table.add_row(name, f"{r['rps']:.0f}{'+' if r['capped'] else ''}", steps)
    console.print(table)
    ratios, goals = data["ratios"], data["goals"]

    def verdict(ok: bool | None) -> str:
        return "[dim]n/a[/]" if ok is None else ("[green]meets[/]" if ok else "[red]misses[/]")

    console.print(
        f"LLMForge added p50 at {GOAL_RATE:g} req/s: {_f(ratios['llmforge_added_p50_ms_at_500'])} "
        f"ms (goal <= {GOAL_ADDED_P50_MS:g}): {verdict(goals['added_p50_le_1ms'])}"
    )
    console.print(
        f"LLMForge added p99 at {GOAL_RATE:g} req/s: {_f(ratios['llmforge_added_p99_ms_at_500'])} "
        f"ms (goal <= {GOAL_ADDED_P99_MS:g}): {verdict(goals['added_p99_le_5ms'])}"
    )
    rps = data["max_sustained_rps"]
    lf, lt = rps.get("llmforge", {}).get("rps"), rps.get("litellm", {}).get("rps")
    console.print(
        f"Max sustained RPS LLMForge / LiteLLM: {lf or 0:.0f} / {lt or 0:.0f} = "
        f"{_f(ratios['llmforge_rps_over_litellm'])}x (goal >= {GOAL_RPS_RATIO:g}x): "
        f"{verdict(goals['rps_ge_3x_litellm'])}"
    )
    if "litellm_over_llmforge_cpu_per_req" in ratios:
        console.print(
            f"Server CPU per request at {GOAL_RATE:g} req/s, LiteLLM / LLMForge: "
            f"{ratios['litellm_over_llmforge_cpu_per_req']}x"
        )
    direct_rps = rps.get("direct", {})
    if direct_rps.get("rps") and lf and lf >= 0.9 * direct_rps["rps"]:
        console.print(
            "[yellow]LLMForge's maximum is near direct's: the mock or the load generator may be "
            "the limit.[/]"
        )
    cpus = s["cpus"] or 1
    if s["load_average_at_start"] > LOAD_WARNING * cpus or s["load_average_at_end"] > cpus:
        console.print(
            f"[yellow]The machine was busy with other work (load average "
            f"{s['load_average_at_start']} at the start, {s['load_average_at_end']} at the end, "
            f"{cpus} CPUs): latencies are noisy; see other_cpu_share in --json.[/]"
        )


def _f(x: float | None, sign: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.2f}" if sign else f"{x:.2f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--latency-ms", type=float, default=20.0, help="the mock's fixed latency")
    p.add_argument("--rates", default="100,300,500", help="fixed rates, req/s, comma-separated")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per rate")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each")
    p.add_argument("--ramp-start", type=float, default=50.0, help="first max-RPS step, req/s")
    p.add_argument("--ramp-duration", type=float, default=4.0, help="seconds per max-RPS step")
    p.add_argument("--max-rate", type=float, default=5000.0, help="highest rate tried")
    p.add_argument("--bisections", type=int, default=2, help="refinements after a failed step")
    p.add_argument("--p99-bound-ms", type=float, help="max-RPS bound (default 10 x latency)")
    p.add_argument("--no-litellm", action="store_true", help="skip LiteLLM")
    args = p.parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if args.quick:
        args.duration, args.warmup, args.ramp_duration, args.bisections = 3.0, 1.0, 2.0, 1
        args.rates = [r for r in args.rates if r in (100.0, GOAL_RATE)] or args.rates[-1:]
    if not args.rates or any(not 0 < r <= args.max_rate for r in args.rates):
        p.error("--rates must be positive and at most --max-rate")
    if not 0 < args.duration <= 300 or not 0 <= args.warmup <= 60 or args.latency_ms <= 0:
        p.error("need 0 < --duration <= 300, 0 <= --warmup <= 60, --latency-ms > 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    console = Console(stderr=args.json, width=None if sys.stdout.isatty() else 160)
    data = run(args, console)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print_report(data, console)


if __name__ == "__main__":
    main()
