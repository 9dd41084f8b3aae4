"""Decode speed of the local model through the LLMForge gateway vs raw llama-cpp-python.

Measures, in one run and with the same prompt, `max_tokens`, GGUF, context size, thread count and
chat template (the GGUF's own), greedy decoding on both sides:

- raw: `llama_cpp.Llama.create_chat_completion(stream=True)` in this process;
- gateway: `llmforge serve` in a separate process (its event loop does not share this process's
  GIL), read as a streamed `/v1/chat/completions` (SSE, `include_usage`) with httpx, as a client
  would.

Per side: time to first token (TTFT), decode tokens/s (tokens after the first / time from the first
to the last token), end-to-end tokens/s (tokens / time from sending the request to the last token)
and CPU time per generated token of every process involved (raw: this one; gateway: server and
client), prompt processing included. Both rates use the same token count: the gateway's usage chunk
when both texts are equal. Both sides start every answer from an empty KV cache (the gateway resets
it per call), so the prompt is processed in full each time. After a warm-up of each, raw and gateway
runs alternate (raw first on even rounds, gateway first on odd) and never overlap: before every run
the bench waits until the server process is idle, so the two copies of the model never compete for
the cores. Figures are medians. Other processes busy on the machine skew the timings: the bench
measures how much CPU they took during the runs and warns above 5%.

Goal: ratio (gateway/raw) of decode tokens/s >= 0.95, i.e. the gateway costs at most 5% of the
model's speed.

Run: `make bench` (which runs `.venv/bin/python bench/local_decode.py`); options `--max-tokens`,
`--runs`, `--threads` (default: all CPUs), `--json`. Offline: the built-in SmolLM2 GGUF only.
Not measured here: long prompts, concurrent requests, remote providers.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from rich.console import Console
from rich.table import Table

from llmforge.models.builtin import resolve

MODEL_SPEC = "builtin:smollm2"
MODEL_NAME = "local"
CONTEXT = 4096
GOAL = 0.95
OTHER_LOAD_WARNING = 0.05  # share of all CPUs used by processes other than the bench's
NO_CACHE = {"x-llmforge-cache": "no"}  # always a real generation, even where a cache is on
PROMPT = (
    "Write a long story about a lighthouse keeper who finds a message in a bottle and sails "
    "across the sea to find who wrote it. Describe every day of the journey in detail."
)


@dataclass(frozen=True)
class Run:
    """One streamed answer, timed from the moment the request was made."""

    text: str
    tokens: int  # gateway: usage.completion_tokens; raw: content chunks (one per token)
    ttft_s: float
    first_to_last_s: float
    total_s: float
    cpu_s: float  # CPU time of every process involved (raw: this one; gateway: server + client)

    def decode_tps(self, tokens: int) -> float:
        return (tokens - 1) / self.first_to_last_s if self.first_to_last_s > 0 else 0.0

    def e2e_tps(self, tokens: int) -> float:
        return tokens / self.total_s if self.total_s > 0 else 0.0


@dataclass(frozen=True)
class Figures:
    """Medians over the measured runs of one side."""

    tokens: int
    ttft_ms: float
    decode_tps: float
    e2e_tps: float
    cpu_ms_per_token: float

    @classmethod
    def of(cls, runs: list[Run], tokens: int) -> Figures:
        return cls(
            tokens=tokens,
            ttft_ms=statistics.median(r.ttft_s for r in runs) * 1000,
            decode_tps=statistics.median(r.decode_tps(tokens) for r in runs),
            e2e_tps=statistics.median(r.e2e_tps(tokens) for r in runs),
            cpu_ms_per_token=statistics.median(r.cpu_s for r in runs) * 1000 / tokens,
        )


# -- raw llama-cpp-python --------------------------------------------------------------------------


def load_raw(path: Path, threads: int) -> Any:
    from llama_cpp import Llama

    return Llama(
        model_path=str(path),
        n_ctx=CONTEXT,
        n_threads=threads,
        n_threads_batch=threads,
        chat_format="chat_template.default",  # the GGUF's own template, as the gateway uses
        verbose=False,
    )


def run_raw(llm: Any, messages: list[dict[str, str]], max_tokens: int) -> Run:
    times: list[float] = []
    parts: list[str] = []
    llm.reset()  # a fresh KV cache, as the gateway starts every call (same numerics, same TTFT)
    cpu = time.process_time()
    start = time.perf_counter()
    for chunk in llm.create_chat_completion(
        messages, stream=True, temperature=0, max_tokens=max_tokens
    ):
        text = chunk["choices"][0]["delta"].get("content")
        if text:
            times.append(time.perf_counter())
            parts.append(text)
    cpu = time.process_time() - cpu
    return _timed("".join(parts), len(times), start, times, cpu)


# -- the gateway in its own process ----------------------------------------------------------------


@contextmanager
def gateway_process(threads: int) -> Iterator[tuple[str, int]]:
    """Start `llmforge serve` on a free port with the local model only; yield (base URL, pid)."""
    with tempfile.TemporaryDirectory(prefix="llmforge-bench-") as tmp:
        config = Path(tmp, "llmforge.yaml")
        config.write_text(
            yaml.safe_dump(
                {
                    "database": f"sqlite:///{tmp}/bench.db",
                    "server": {"preload": True},
                    "models": [
                        {
                            "name": MODEL_NAME,
                            "provider": "llamacpp",
                            "path": MODEL_SPEC,
                            "context_length": CONTEXT,
                            "threads": threads,
                        }
                    ],
                    "embeddings": [],
                }
            )
        )
        port = _free_port()
        command = [sys.executable, "-m", "llmforge", "serve", "--config", str(config)]
        log_path = Path(tmp, "server.log")
        # LLMFORGE_* variables beat the config file: keep the caller's out of the bench's server
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMFORGE_")}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*command, "--port", str(port)],
                cwd=tmp,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            base = f"http://127.0.0.1:{port}"
            try:
                _wait_for_health(base, proc, log_path)
                yield base, proc.pid
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def run_gateway(
    client: httpx.Client, base: str, pid: int, messages: list[dict[str, str]], max_tokens: int
) -> Run:
    body = {
        "model": MODEL_NAME,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    times: list[float] = []
    parts: list[str] = []
    usage: dict[str, int] | None = None
    cpu = time.process_time() + cpu_seconds(pid)
    start = time.perf_counter()
    url = base + "/v1/chat/completions"
    with client.stream("POST", url, json=body, headers=NO_CACHE) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"gateway answered {response.status_code}: {response.text}")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = orjson.loads(data)
            if "error" in event:
                raise RuntimeError(f"gateway stream failed: {event['error']}")
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", ()):
                text = choice["delta"].get("content")
                if text:
                    times.append(time.perf_counter())
                    parts.append(text)
    if usage is None:
        raise RuntimeError("the gateway sent no usage chunk (stream_options.include_usage)")
    wait_idle(pid)  # the server's share of the answer ends with its trace written
    cpu = time.process_time() + cpu_seconds(pid) - cpu
    return _timed("".join(parts), usage["completion_tokens"], start, times, cpu)


def wait_idle(pid: int, timeout_s: float = 10.0) -> bool:
    """Wait until process `pid` uses under 5% of a core over 100 ms (its model is not decoding
    and its trace writer is done). False if it never settled."""
    deadline = time.monotonic() + timeout_s
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_seconds(pid)
        if now - before < 0.005:
            return True
        before = now
    return False


class OtherLoad:
    """How much of the machine's CPU time, from now on, goes to processes other than this one and
    the server (Linux /proc/stat; None elsewhere)."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.start = self._sample()

    def share(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, ours, wall = (b - a for a, b in zip(self.start, end, strict=True))
        return max(0.0, busy - ours) / (wall * (os.cpu_count() or 1)) if wall > 0 else None

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + fields[4]  # idle + iowait
        busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guests are in user already
        return busy, time.process_time() + cpu_seconds(self.pid), time.monotonic()


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by all threads of process `pid` (Linux /proc; 0 elsewhere)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])  # nanoseconds on the CPU
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return total / 1e9


# -- the comparison --------------------------------------------------------------------------------


def measure(max_tokens: int, runs: int, threads: int, console: Console) -> dict[str, Any]:
    messages = [{"role": "user", "content": PROMPT}]
    path = resolve(MODEL_SPEC)
    with gateway_process(threads) as (base, pid), httpx.Client(timeout=300) as client:
        llm = load_raw(path, threads)
        raw: list[Run] = []
        gateway: list[Run] = []
        unsettled = 0

        def one(side: str) -> Run:
            nonlocal unsettled
            unsettled += not wait_idle(pid)
            if side == "raw":
                return run_raw(llm, messages, max_tokens)
            return run_gateway(client, base, pid, messages, max_tokens)

        with console.status("warming up (the gateway loads its model)"):
            one("gateway")
            one("raw")
        others = OtherLoad(pid)
        for i in range(runs):
            with console.status(f"round {i + 1}/{runs}"):
                for side in ("raw", "gateway") if i % 2 == 0 else ("gateway", "raw"):
                    (raw if side == "raw" else gateway).append(one(side))
        other_share = others.share()

    raw_tokens, gw_tokens = raw[0].tokens, gateway[0].tokens
    texts_match = all(r.text == g.text for r, g in zip(raw, gateway, strict=True))
    # identical texts come from identical greedy tokens: count them once, the gateway's way
    raw_fig = Figures.of(raw, gw_tokens if texts_match else raw_tokens)
    gw_fig = Figures.of(gateway, gw_tokens)
    return {
        "model": path.name,
        "threads": threads,
        "context": CONTEXT,
        "max_tokens": max_tokens,
        "runs": runs,
        "tokens": {"raw_chunks": raw_tokens, "gateway_usage": gw_tokens},
        "texts_match": texts_match,
        "raw": asdict(raw_fig),
        "gateway": asdict(gw_fig),
        "ratio": {
            "decode": gw_fig.decode_tps / raw_fig.decode_tps,
            "e2e": gw_fig.e2e_tps / raw_fig.e2e_tps,
            "cpu_per_token": gw_fig.cpu_ms_per_token / raw_fig.cpu_ms_per_token,
        },
        "goal": GOAL,
        "server_not_idle": unsettled,
        "other_cpu_share": None if other_share is None else round(other_share, 3),
        "per_run": {
            "raw_decode_tps": [round(r.decode_tps(raw_fig.tokens), 2) for r in raw],
            "gateway_decode_tps": [round(r.decode_tps(gw_fig.tokens), 2) for r in gateway],
        },
    }


def report(result: dict[str, Any], console: Console) -> None:
    table = Table(
        title="LLMForge gateway vs raw llama-cpp-python",
        caption=f"{result['model']}, {result['threads']} threads, max_tokens "
        f"{result['max_tokens']}, medians of {result['runs']} runs each",
    )
    for column in ("", "tokens", "TTFT ms", "decode tok/s", "e2e tok/s", "CPU ms/tok"):
        table.add_column(column, justify="left" if not column else "right")
    for label, key in (("raw", "raw"), ("gateway", "gateway")):
        f = result[key]
        table.add_row(
            label,
            str(f["tokens"]),
            f"{f['ttft_ms']:.1f}",
            f"{f['decode_tps']:.1f}",
            f"{f['e2e_tps']:.1f}",
            f"{f['cpu_ms_per_token']:.2f}",
        )
    console.print(table)
    tokens = result["tokens"]
    console.print(
        f"tokens: gateway usage {tokens['gateway_usage']}, raw chunks {tokens['raw_chunks']}; "
        f"texts match: {'yes' if result['texts_match'] else 'NO'}"
    )
    ratio = result["ratio"]
    verdict = "met" if ratio["decode"] >= GOAL else "missed"
    console.print(
        f"[bold]ratio (gateway/raw) = {ratio['decode']:.2f}[/bold] (decode tok/s; goal >= {GOAL}: "
        f"{verdict}); end-to-end {ratio['e2e']:.2f}; CPU per token {ratio['cpu_per_token']:.2f}"
    )
    if (share := result["other_cpu_share"]) is not None and share > OTHER_LOAD_WARNING:
        console.print(
            f"[yellow]warning: other processes used {share:.0%} of the CPUs during the runs; "
            "the timings are skewed; run again on an idle machine[/yellow]"
        )
    if result["server_not_idle"]:
        console.print(
            f"[yellow]warning: the server was still busy before {result['server_not_idle']} "
            "run(s); figures may be skewed[/yellow]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=10, help="measured runs per side")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if args.max_tokens < 2 or args.runs < 1 or args.threads < 1:
        parser.error("need --max-tokens >= 2, --runs >= 1, --threads >= 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out
    console = Console(stderr=args.json)
    try:
        result = measure(args.max_tokens, args.runs, args.threads, console)
    except (RuntimeError, httpx.HTTPError) as e:
        sys.exit(f"error: {e}")
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        report(result, console)


# -- plumbing --------------------------------------------------------------------------------------


def _timed(text: str, tokens: int, start: float, times: list[float], cpu_s: float) -> Run:
    if not times:
        raise RuntimeError("the model produced no text; try another prompt")
    return Run(text, tokens, times[0] - start, times[-1] - times[0], times[-1] - start, cpu_s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_health(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"`llmforge serve` exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"`llmforge serve` did not answer {base}/health within 120 s")


if __name__ == "__main__":
    main()
