"""Decode speed of the local model with a JSON schema (grammar-constrained) vs without.

Measures, in one process and one run, with the same GGUF, prompt, `max_tokens`, context size,
thread count and greedy decoding, through `LlamaCppChatModel.stream` (the backend the gateway
serves local models with):

- plain: no constraint;
- schema: `response_format` json_schema, i.e. every token sampled under the schema's grammar
  (checked on the chosen token first, the whole vocabulary only when the grammar refuses it);
- reference (unless `--no-reference`): llama-cpp-python's own grammar path for the same schema
  (`create_chat_completion(response_format=...)`, which puts the grammar first in its sampler
  chain: every token's text matched against the grammar at every step), in this process too.

Per side: time to first token (TTFT) and decode tokens/s (tokens after the first / time from the
first to the last token), the token count from the answer's usage. Runs alternate between the
sides (order rotating each round) after a warm-up of each; figures are medians. The prompt asks
for a long JSON story, so that both constrained and free answers run to `max_tokens`.

Goal: ratio (schema/plain) of decode tokens/s >= 0.9, i.e. a schema costs at most 10% of the
model's speed.

Run: `.venv/bin/python bench/structured_decode.py`; options `--max-tokens`, `--runs`,
`--threads` (default: all CPUs), `--no-reference`, `--json`. Offline: the built-in SmolLM2 GGUF
only. Not measured here: tool-call envelopes (the same grammar machinery with a larger schema),
long prompts, concurrent requests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from llmforge.core.config import ModelConfig
from llmforge.core.types import Message, ResponseFormat, Sampling
from llmforge.models.builtin import resolve
from llmforge.models.llamacpp import LlamaCppChatModel

MODEL_SPEC = "builtin:smollm2"
CONTEXT = 4096
GOAL = 0.9
PROMPT = (
    "Write a long story about a lighthouse keeper who finds a message in a bottle and sails "
    "across the sea to find who wrote it. Answer in JSON with a title, the characters and the "
    "story, told day by day in detail."
)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "characters": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "role": {"type": "string"}},
                "required": ["name", "role"],
            },
        },
        "story": {"type": "string"},
    },
    "required": ["title", "characters", "story"],
}
SIDES = ("plain", "schema", "reference")


@dataclass(frozen=True)
class Run:
    text: str
    tokens: int
    ttft_s: float
    first_to_last_s: float

    @property
    def decode_tps(self) -> float:
        return (self.tokens - 1) / self.first_to_last_s if self.first_to_last_s > 0 else 0.0


@dataclass(frozen=True)
class Figures:
    """Medians over the measured runs of one side."""

    tokens: int
    ttft_ms: float
    decode_tps: float

    @classmethod
    def of(cls, runs: list[Run]) -> Figures:
        return cls(
            tokens=int(statistics.median(r.tokens for r in runs)),
            ttft_ms=statistics.median(r.ttft_s for r in runs) * 1000,
            decode_tps=statistics.median(r.decode_tps for r in runs),
        )


async def run_backend(model: LlamaCppChatModel, sampling: Sampling) -> Run:
    times: list[float] = []
    parts: list[str] = []
    tokens = 0
    start = time.perf_counter()
    async for delta in model.stream([Message(role="user", content=PROMPT)], sampling):
        if delta.text:
            times.append(time.perf_counter())
            parts.append(delta.text)
        if delta.usage:
            tokens = delta.usage.completion_tokens
    return _timed("".join(parts), tokens, start, times)


def load_reference(threads: int) -> Any:
    from llama_cpp import Llama

    return Llama(
        model_path=str(resolve(MODEL_SPEC)),
        n_ctx=CONTEXT,
        n_threads=threads,
        n_threads_batch=threads,
        chat_format="chat_template.default",  # the GGUF's own template, as the backend uses
        verbose=False,
    )


def run_reference(llm: Any, max_tokens: int) -> Run:
    times: list[float] = []
    parts: list[str] = []
    llm.reset()  # an empty KV cache, as the backend starts every call
    start = time.perf_counter()
    for chunk in llm.create_chat_completion(
        [{"role": "user", "content": PROMPT}],
        stream=True,
        temperature=0,
        max_tokens=max_tokens,
        response_format={"type": "json_object", "schema": SCHEMA},
    ):
        text = chunk["choices"][0]["delta"].get("content")
        if text:
            times.append(time.perf_counter())
            parts.append(text)
    return _timed("".join(parts), len(times), start, times)  # one chunk per token


async def measure(
    max_tokens: int, runs: int, threads: int, reference: bool, console: Console
) -> dict[str, Any]:
    model = LlamaCppChatModel(
        ModelConfig(
            name="local",
            provider="llamacpp",
            path=MODEL_SPEC,
            context_length=CONTEXT,
            threads=threads,
        )
    )
    plain = Sampling(temperature=0, max_tokens=max_tokens)
    schema = plain.model_copy(update={"response_format": ResponseFormat.for_schema(SCHEMA)})
    sides = SIDES if reference else SIDES[:2]
    with console.status("loading"):
        await model.load()
        llm = load_reference(threads) if reference else None

    async def one(side: str) -> Run:
        if side == "reference":
            return await asyncio.to_thread(run_reference, llm, max_tokens)
        return await run_backend(model, plain if side == "plain" else schema)

    try:
        with console.status("warming up"):
            for side in sides:
                await one(side)
        measured: dict[str, list[Run]] = {side: [] for side in sides}
        for i in range(runs):
            with console.status(f"round {i + 1}/{runs}"):
                order = sides[i % len(sides) :] + sides[: i % len(sides)]
                for side in order:
                    measured[side].append(await one(side))
    finally:
        await model.aclose()

    figures = {side: Figures.of(r) for side, r in measured.items()}
    result: dict[str, Any] = {
        "model": resolve(MODEL_SPEC).name,
        "threads": threads,
        "context": CONTEXT,
        "max_tokens": max_tokens,
        "runs": runs,
        **{side: asdict(f) for side, f in figures.items()},
        "ratio": figures["schema"].decode_tps / figures["plain"].decode_tps,
        "goal": GOAL,
        "schema_texts_match_reference": (
            all(
                a.text == b.text
                for a, b in zip(measured["schema"], measured["reference"], strict=True)
            )
            if reference
            else None
        ),
        "per_run_decode_tps": {
            side: [round(r.decode_tps, 2) for r in runs_] for side, runs_ in measured.items()
        },
    }
    if reference:
        result["ratio_reference"] = figures["reference"].decode_tps / figures["plain"].decode_tps
    return result


def report(result: dict[str, Any], console: Console) -> None:
    table = Table(
        title="Local decode with a JSON schema vs without",
        caption=f"{result['model']}, {result['threads']} threads, max_tokens "
        f"{result['max_tokens']}, medians of {result['runs']} runs each",
    )
    for column in ("", "tokens", "TTFT ms", "decode tok/s", "vs plain"):
        table.add_column(column, justify="left" if not column else "right")
    plain = result["plain"]["decode_tps"]
    labels = {
        "plain": "plain",
        "schema": "schema (LLMForge)",
        "reference": "schema (llama-cpp-python)",
    }
    for side, label in labels.items():
        if side not in result:
            continue
        f = result[side]
        table.add_row(
            label,
            str(f["tokens"]),
            f"{f['ttft_ms']:.1f}",
            f"{f['decode_tps']:.1f}",
            f"{f['decode_tps'] / plain:.2f}",
        )
    console.print(table)
    verdict = "met" if result["ratio"] >= GOAL else "missed"
    console.print(
        f"[bold]ratio (schema/plain) = {result['ratio']:.2f}[/bold] (decode tok/s; goal >= "
        f"{GOAL}: {verdict})"
    )
    if result.get("schema_texts_match_reference") is False:
        console.print("[yellow]note: the two schema paths gave different texts[/yellow]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5, help="measured runs per side")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--no-reference", action="store_true", help="skip llama-cpp-python's own grammar path"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if args.max_tokens < 2 or args.runs < 1 or args.threads < 1:
        parser.error("need --max-tokens >= 2, --runs >= 1, --threads >= 1")
    console = Console(stderr=args.json)
    try:
        result = asyncio.run(
            measure(args.max_tokens, args.runs, args.threads, not args.no_reference, console)
        )
    except RuntimeError as e:
        sys.exit(f"error: {e}")
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        report(result, console)


def _timed(text: str, tokens: int, start: float, times: list[float]) -> Run:
    if len(times) < 2:
        raise RuntimeError("the model produced too little text; try another prompt")
    return Run(text, tokens, times[0] - start, times[-1] - times[0])


if __name__ == "__main__":
    main()
