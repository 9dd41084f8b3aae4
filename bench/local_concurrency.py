"""Concurrent streams to the local model: LLMForge (`llmforge serve`) vs a bare llama-server.

Measures, in one run, against the same GGUF (the built-in SmolLM2), thread count, slots
(`--parallel`) and context per slot, as a client would (streamed `/v1/chat/completions`, greedy,
`max_tokens` each, read with httpx in this process):

- aggregate tokens/s at 1, 4 and 8 streams started together (completion tokens of every stream,
  from each stream's usage chunk, over the time from the first request to the last token), and
  p50/p95 time to first token (TTFT) of those streams;
- prompt reuse: a two-turn conversation with a long system prompt (about 900 tokens, fresh per
  round so nothing is cached from before); TTFT of the first turn vs the second, which resends the
  whole conversation plus one new question.

Sides: `llamaserver` is llama.cpp's own server started by this bench (`-np`, `-t`, `-c` set, the
rest at its defaults: the binary `make llama-tools` builds from the llama-cpp-python sdist), and
`llmforge` is `llmforge serve` with one `llamacpp` model (`parallel` and `threads` set), which
manages its own llama-server. Only one side runs at a time (each is started, warmed up, measured
and stopped in turn; the order alternates per round) and every stream has a prompt of its own per
round, so neither side answers from a cache filled by the other. Figures are medians over rounds.

Goals (issue 15): LLMForge's aggregate at 8 streams >= llama-server's; LLMForge's p95 TTFT at 8
streams <= 3x its TTFT at 1 stream; LLMForge's second turn reaches its first token >= 2x faster
than the first.

Run: `.venv/bin/python bench/local_concurrency.py` (options: `--rounds`, `--max-tokens`,
`--threads`, `--parallel`, `--context`, `--json`). Offline. Other processes busy on the machine skew
the timings: the bench measures how much CPU they took and warns above 5%.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
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

from llmforge.core.config import ModelConfig
from llmforge.models import llama_server
from llmforge.models.builtin import resolve

MODEL_SPEC = "builtin:smollm2"
MODEL_NAME = "local"
LEVELS = (1, 4, 8)
SIDES = ("llamaserver", "llmforge")
OTHER_LOAD_WARNING = 0.05
NO_CACHE = {"x-llmforge-cache": "no"}
TOPICS = (
    "a lighthouse keeper who finds a message in a bottle",
    "a baker who opens a shop on the moon",
    "two rival chess players stranded on an island",
    "a robot learning to paint landscapes",
    "a cartographer mapping a city that changes every night",
    "a violinist who can hear the weather",
    "a detective solving a mystery in a library",
    "a child who befriends a dragon in the mountains",
)
RULES = (
    "Answer politely and precisely, in plain English, and keep every answer short.",
    "When a question is ambiguous, state the reading you chose before answering it.",
    "Use metric units unless the user asks for another system of measurement.",
    "Never invent facts; say plainly when you do not know something.",
    "Prefer short sentences, concrete examples and common words over jargon.",
    "When giving steps, number them and keep each step to a single action.",
    "Quote numbers with their units and round them sensibly for the reader.",
    "If the user writes in another language, answer in that language.",
)


@dataclass(frozen=True)
class Stream:
    ttft_s: float
    tokens: int
    end_s: float  # from the level's start


@dataclass(frozen=True)
class Level:
    """One level (N streams started together) on one side, medians over rounds."""

    streams: int
    aggregate_tps: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    tokens: int  # completion tokens of all the level's streams (median round)


# -- one stream ------------------------------------------------------------------------------------


async def stream_once(
    client: httpx.AsyncClient,
    base: str,
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int,
) -> tuple[float, int, str, float]:
    """(TTFT s, completion tokens, text, end time) of one streamed chat completion."""
    body = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    start = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    usage: dict[str, int] | None = None
    async with client.stream(
        "POST", base + "/v1/chat/completions", json=body, headers=NO_CACHE
    ) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{base} answered {response.status_code}: {response.text[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = orjson.loads(data)
            if "error" in event:
                raise RuntimeError(f"{base}: stream failed: {event['error']}")
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    first = first or time.perf_counter()
                    parts.append(text)
    end = time.perf_counter()
    if first is None or usage is None:
        raise RuntimeError(f"{base}: a stream without text or usage")
    return first - start, int(usage["completion_tokens"]), "".join(parts), end


async def level(
    client: httpx.AsyncClient, base: str, model: str, n: int, tag: str, max_tokens: int
) -> list[Stream]:
    """N streams started together, each with a prompt of its own."""
    asks = [
        [{"role": "user", "content": f"({tag}-{i}) Write a long story about {TOPICS[i % 8]}."}]
        for i in range(n)
    ]
    start = time.perf_counter()
    results = await asyncio.gather(*(stream_once(client, base, model, a, max_tokens) for a in asks))
    return [Stream(ttft, tokens, end - start) for ttft, tokens, _, end in results]


async def conversation(
    client: httpx.AsyncClient, base: str, model: str, tag: str, max_tokens: int
) -> tuple[float, float]:
    """TTFT of the first and the second turn of a conversation with a long system prompt."""
    system = f"Session {tag}. You are a careful assistant. " + " ".join(
        f"Rule {i + 1}: {RULES[i % len(RULES)]}" for i in range(56)
    )
    turn = [
        {"role": "system", "content": system},
        {"role": "user", "content": "What is the boiling point of water at sea level?"},
    ]
    first, _, answer, _ = await stream_once(client, base, model, turn, max_tokens)
    turn += [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And at the top of Mount Everest?"},
    ]
    second, _, _, _ = await stream_once(client, base, model, turn, max_tokens)
    return first, second


# -- the two servers -------------------------------------------------------------------------------


@contextmanager
def bare_llama_server(args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    binary = llama_server.binary(ModelConfig(name=MODEL_NAME, provider="llamacpp"))
    if binary is None:
        raise RuntimeError(
            f"no llama-server at {llama_server.default_binary()}; build it: make llama-tools"
        )
    port = _free_port()
    command = [
        str(binary),
        "-m", str(resolve(MODEL_SPEC)),
        "--host", "127.0.0.1",
        "--port", str(port),
        "-np", str(args.parallel),
        "-c", str(args.context * args.parallel),
        "-t", str(args.threads),
        "-tb", str(args.threads),
    ]  # fmt: skip
    with _process(command, {}, port) as running:
        yield running


@contextmanager
def llmforge_serve(args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    with tempfile.TemporaryDirectory(prefix="llmforge-bench-") as tmp:
        config = Path(tmp, "llmforge.yaml")
        model = {
            "name": MODEL_NAME,
            "provider": "llamacpp",
            "path": MODEL_SPEC,
            "context_length": args.context,
            "threads": args.threads,
            "parallel": args.parallel,
            "max_queue": 64,
        }
        config.write_text(
            yaml.safe_dump(
                {
                    "database": f"sqlite:///{tmp}/bench.db",
                    "server": {"preload": True},
                    "models": [model],
                    "embeddings": [],
                }
            )
        )
        port = _free_port()
        command = [sys.executable, "-m", "llmforge", "serve", "--config", str(config)]
        with _process([*command, "--port", str(port)], {"cwd": tmp}, port) as running:
            yield running


@contextmanager
def _process(command: list[str], extra: dict[str, Any], port: int) -> Iterator[tuple[str, int]]:
    # LLMFORGE_* variables beat the config file: keep the caller's out of the bench's servers
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMFORGE_")}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **extra
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(base, proc, log)
            yield base, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Any) -> None:
    deadline = time.monotonic() + 180
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read().decode("utf-8", "replace")[-2000:]
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.post(base + "/v1/chat/completions", json=body, timeout=30).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{base} did not answer within 180 s")


# -- the comparison --------------------------------------------------------------------------------


async def measure_side(side: str, base: str, rnd: int, args: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as client:
        await level(client, base, MODEL_NAME, max(LEVELS), f"warm{rnd}", 8)  # warm-up
        out: dict[str, Any] = {}
        for n in LEVELS:
            out[str(n)] = await level(client, base, MODEL_NAME, n, f"r{rnd}n{n}", args.max_tokens)
        first, second = await conversation(client, base, MODEL_NAME, f"{side}{rnd}", 32)
        out["turns"] = (first, second)
        return out


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    levels = []
    for n in LEVELS:
        per_round = [r[str(n)] for r in rounds]
        aggregates = [sum(s.tokens for s in streams) / max(s.end_s for s in streams)
                      for streams in per_round]  # fmt: skip
        ttfts = [[s.ttft_s * 1000 for s in streams] for streams in per_round]
        levels.append(
            Level(
                streams=n,
                aggregate_tps=statistics.median(aggregates),
                ttft_p50_ms=statistics.median(statistics.median(t) for t in ttfts),
                ttft_p95_ms=statistics.median(_p95(t) for t in ttfts),
                tokens=int(statistics.median(sum(s.tokens for s in st) for st in per_round)),
            )
        )
    firsts = [r["turns"][0] * 1000 for r in rounds]
    seconds = [r["turns"][1] * 1000 for r in rounds]
    return {
        "levels": [asdict(lv) for lv in levels],
        "turn1_ttft_ms": statistics.median(firsts),
        "turn2_ttft_ms": statistics.median(seconds),
    }


def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    starts = {"llamaserver": bare_llama_server, "llmforge": llmforge_serve}
    load = OtherLoad()
    for rnd in range(args.rounds):
        order = SIDES if rnd % 2 == 0 else SIDES[::-1]
        for side in order:
            status = console.status(f"round {rnd + 1}/{args.rounds}: {side}")
            started = time.perf_counter()
            with status, starts[side](args) as (base, pid):
                runs[side].append(asyncio.run(measure_side(side, base, rnd, args)))
                load.add(tree_cpu(pid))  # the server and its engine, before they stop
            took = time.perf_counter() - started
            print(f"round {rnd + 1}/{args.rounds}: {side} {took:.0f} s", file=sys.stderr)
    summary = {side: summarize(runs[side]) for side in SIDES}
    ours, theirs = summary["llmforge"], summary["llamaserver"]

    def at(side: dict[str, Any], n: int) -> dict[str, Any]:
        return next(lv for lv in side["levels"] if lv["streams"] == n)

    ratios = {
        "aggregate_8_llmforge_vs_llamaserver": at(ours, 8)["aggregate_tps"]
        / at(theirs, 8)["aggregate_tps"],
        "llmforge_aggregate_8_vs_1": at(ours, 8)["aggregate_tps"] / at(ours, 1)["aggregate_tps"],
        "llmforge_p95_ttft_8_vs_ttft_1": at(ours, 8)["ttft_p95_ms"] / at(ours, 1)["ttft_p50_ms"],
        "llmforge_turn1_vs_turn2_ttft": ours["turn1_ttft_ms"] / ours["turn2_ttft_ms"],
        "llamaserver_turn1_vs_turn2_ttft": theirs["turn1_ttft_ms"] / theirs["turn2_ttft_ms"],
    }
    return {
        "model": resolve(MODEL_SPEC).name,
        "threads": args.threads,
        "parallel": args.parallel,
        "context_per_slot": args.context,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "sides": summary,
        "ratios": ratios,
        "goals": {
            "aggregate_8_llmforge_vs_llamaserver >= 1": ratios[
                "aggregate_8_llmforge_vs_llamaserver"
            ]
            >= 1,
            "llmforge_p95_ttft_8_vs_ttft_1 <= 3": ratios["llmforge_p95_ttft_8_vs_ttft_1"] <= 3,
            "llmforge_turn1_vs_turn2_ttft >= 2": ratios["llmforge_turn1_vs_turn2_ttft"] >= 2,
        },
        "other_cpu_share": load.share(),
    }


def report(result: dict[str, Any], console: Console) -> None:
    table = Table(
        title="Concurrent streams: LLMForge vs bare llama-server",
        caption=f"{result['model']}, {result['threads']} threads, {result['parallel']} slots x "
        f"{result['context_per_slot']} tokens, max_tokens {result['max_tokens']}, medians of "
        f"{result['rounds']} rounds",
    )
    for column in ("side", "streams", "tokens", "aggregate tok/s", "TTFT p50 ms", "TTFT p95 ms"):
        table.add_column(column, justify="left" if column == "side" else "right")
    for side in SIDES:
        for lv in result["sides"][side]["levels"]:
            table.add_row(
                side,
                str(lv["streams"]),
                str(lv["tokens"]),
                f"{lv['aggregate_tps']:.1f}",
                f"{lv['ttft_p50_ms']:.0f}",
                f"{lv['ttft_p95_ms']:.0f}",
            )
    console.print(table)
    for side in SIDES:
        s = result["sides"][side]
        console.print(
            f"{side}: conversation TTFT turn 1 {s['turn1_ttft_ms']:.0f} ms, "
            f"turn 2 {s['turn2_ttft_ms']:.0f} ms"
        )
    for name, value in result["ratios"].items():
        console.print(f"ratio {name} = [bold]{value:.2f}[/bold]")
    for goal, met in result["goals"].items():
        console.print(f"goal {goal}: {'met' if met else '[red]missed[/red]'}")
    if (share := result["other_cpu_share"]) is not None and share > OTHER_LOAD_WARNING:
        console.print(
            f"[yellow]warning: other processes used {share:.0%} of the CPUs during the runs; "
            "the timings are skewed; run again on an idle machine[/yellow]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--parallel", type=int, default=8, help="slots on both sides")
    parser.add_argument("--context", type=int, default=2048, help="tokens per slot")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if args.rounds < 1 or args.max_tokens < 2 or args.threads < 1 or args.parallel < 1:
        parser.error("need --rounds >= 1, --max-tokens >= 2, --threads >= 1, --parallel >= 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    console = Console(stderr=args.json)
    try:
        result = measure(args, console)
    except (RuntimeError, httpx.HTTPError) as e:
        sys.exit(f"error: {e}")
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        report(result, console)


# -- plumbing --------------------------------------------------------------------------------------


class OtherLoad:
    """Share of all CPUs used by processes other than this one and the servers it started
    (and their children), from now on (Linux /proc; None elsewhere)."""

    def __init__(self) -> None:
        self.servers = 0.0
        self.start = self._busy()
        self.began = time.monotonic()
        self.cpu0 = time.process_time()

    def add(self, cpu_s: float) -> None:
        self.servers += cpu_s

    def share(self) -> float | None:
        busy = self._busy()
        if busy is None or self.start is None:
            return None
        ours = time.process_time() - self.cpu0 + self.servers
        wall = time.monotonic() - self.began
        return round(max(0.0, busy - self.start - ours) / (wall * (os.cpu_count() or 1)), 3)

    @staticmethod
    def _busy() -> float | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by process `pid` and its descendants (Linux /proc; 0 elsewhere)."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_cpu(int(child))
    except (OSError, ValueError, IndexError):
        pass
    return total


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
