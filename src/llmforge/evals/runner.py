"""Running an evaluation: produce each case's output, score it with every metric, store it.

`run_eval(spec, store, target, metrics)` is concurrent (`concurrency` cases at a time) and
resumable: a run's id is derived from its dataset, target and options (or given), and a run whose
id is already stored continues with the cases it lacks, so re-running a killed command finishes the
run without scoring any case twice. Outputs of model targets are cached by (model config, messages,
sampling): a run with other metrics over the same dataset does not generate again.

A target is what is evaluated: a chat model (`ModelTarget`) or a retriever (`RetrievalTarget`, a
knowledge base whose ranked hits are scored by the retrieval metrics). This module does not build
models or metrics from names; the CLI does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, Field

from llmforge.core.config import ModelConfig
from llmforge.core.errors import InvalidRequestError, LLMForgeError
from llmforge.core.types import Sampling
from llmforge.evals.base import Metric, Output, Score
from llmforge.evals.dataset import Case, Dataset
from llmforge.evals.store import CaseResult, EvalStore, MetricSummary, RunInfo
from llmforge.models.base import ChatModel


class Target(Protocol):
    """What is evaluated. `cache_key` is None for targets whose outputs must not be cached."""

    name: str

    def cache_key(self, case: Case) -> str | None: ...

    async def produce(self, case: Case) -> Output: ...


class ModelTarget:
    def __init__(
        self, name: str, model: ChatModel, config: ModelConfig, sampling: Sampling
    ) -> None:
        self.name = name
        self._model = model
        self._config = config
        self.sampling = sampling

    def cache_key(self, case: Case) -> str:
        raw = json.dumps(
            {
                "model": self._config.model_dump(mode="json"),
                "messages": [m.model_dump(mode="json") for m in case.messages()],
                "sampling": self.sampling.model_dump(mode="json"),
            },
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(raw.encode()).hexdigest()

    async def produce(self, case: Case) -> Output:
        completion = await self._model.complete(case.messages(), self.sampling)
        return Output(text=completion.text)


Retriever = Callable[[str, int], Awaitable[list[tuple[str, str]]]]
"""(query, k) -> ranked hits as (chunk id, source path)."""


class RetrievalTarget:
    """A knowledge base's search. A hit counts as the `relevant` entry it matches (its chunk id, its
    source path or the source's file name), else as its chunk id."""

    def __init__(self, name: str, search: Retriever, k: int) -> None:
        self.name = name
        self._search = search
        self._k = k

    def cache_key(self, case: Case) -> None:
        return None  # an index changes under the same name: always search again

    async def produce(self, case: Case) -> Output:
        hits = await self._search(case.question(), self._k)
        wanted = set(case.relevant)
        ranked = []
        for chunk_id, source in hits:
            names = [chunk_id, source, source.replace("\\", "/").rsplit("/", 1)[-1]]
            ranked.append(next((n for n in names if n in wanted), chunk_id))
        return Output(text="\n".join(s for _, s in hits), retrieved=ranked)


class RunSpec(BaseModel):
    """Everything that decides a run's results (and so its default id)."""

    dataset: Dataset
    target: str
    metrics: list[str]
    judge: str | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="sampling, k, samples, ...")
    concurrency: int = Field(4, ge=1)
    run_id: str | None = None
    use_cache: bool = True

    def default_id(self) -> str:
        raw = json.dumps(
            [self.dataset.digest, self.target, self.metrics, self.judge, self.options],
            sort_keys=True,
        )
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{self.dataset.name}-{self.target}")[:80]
        return f"{slug}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"


Progress = Callable[[int, int], None]


async def run_eval(
    spec: RunSpec,
    store: EvalStore,
    target: Target,
    metrics: Sequence[Metric],
    progress: Progress | None = None,
) -> RunInfo:
    """Run (or resume) the evaluation; returns the finished run with its summary."""
    run_id = spec.run_id or spec.default_id()
    cases = spec.dataset.cases
    existing = await asyncio.to_thread(store.find_run, run_id)
    if existing is None:
        info = RunInfo(
            id=run_id,
            created_at=time.time(),
            dataset=spec.dataset.name,
            dataset_digest=spec.dataset.digest,
            cases=len(cases),
            target=spec.target,
            judge=spec.judge,
            metrics=spec.metrics,
            options=spec.options,
            status="running",
        )
        await asyncio.to_thread(store.create_run, info)
    else:
        _check_resumable(existing, spec)
        await asyncio.to_thread(store.set_status, run_id, "running")
    done = await asyncio.to_thread(store.done_case_ids, run_id)
    pending = [(i, c) for i, c in enumerate(cases) if c.id not in done]
    finished = len(cases) - len(pending)
    if progress:
        progress(finished, len(cases))
    gate = asyncio.Semaphore(spec.concurrency)

    async def one(position: int, case: Case) -> None:
        nonlocal finished
        async with gate:
            result = await _evaluate(position, case, target, metrics, store, spec.use_cache)
            await asyncio.to_thread(store.add_result, run_id, result)
        finished += 1
        if progress:
            progress(finished, len(cases))

    try:
        await _all(one(i, c) for i, c in pending)
    except BaseException:
        await asyncio.to_thread(store.set_status, run_id, "failed")
        raise
    summary = summarize(await asyncio.to_thread(store.results, run_id), spec.metrics)
    await asyncio.to_thread(store.set_status, run_id, "done", summary)
    return await asyncio.to_thread(store.get_run, run_id)


async def _all(jobs: Any) -> None:
    """Run the jobs; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(j) for j in jobs]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


def _check_resumable(run: RunInfo, spec: RunSpec) -> None:
    mine = (spec.dataset.digest, spec.target, spec.metrics, spec.judge)
    theirs = (run.dataset_digest, run.target, run.metrics, run.judge)
    if mine != theirs:
        raise InvalidRequestError(
            f"Run '{run.id}' exists with another dataset, target, metrics or judge "
            f"({run.target}; {', '.join(run.metrics)}); pass another --run-id to start a new run.",
            param="run_id",
        )


async def _evaluate(
    position: int,
    case: Case,
    target: Target,
    metrics: Sequence[Metric],
    store: EvalStore,
    use_cache: bool,
) -> CaseResult:
    started = time.perf_counter()
    key = target.cache_key(case) if use_cache else None
    cached = await asyncio.to_thread(store.cached_output, key) if key else None
    try:
        if cached is not None:
            output, latency_ms = cached
        else:
            output = await target.produce(case)
            latency_ms = (time.perf_counter() - started) * 1000
            if key:
                await asyncio.to_thread(store.cache_output, key, target.name, output, latency_ms)
    except LLMForgeError as e:
        failed = f"no output to score: {e.message}"
        return CaseResult(
            case_id=case.id,
            position=position,
            case=case.model_dump(mode="json"),
            output=Output(),
            error=e.message,
            scores={m.name: Score.failed(failed) for m in metrics},
            latency_ms=(time.perf_counter() - started) * 1000,
        )
    scores = dict(
        zip([m.name for m in metrics], await _score_all(case, output, metrics), strict=True)
    )
    return CaseResult(
        case_id=case.id,
        position=position,
        case=case.model_dump(mode="json"),
        output=output,
        scores=scores,
        latency_ms=latency_ms,
    )


async def _score_all(case: Case, output: Output, metrics: Sequence[Metric]) -> list[Score]:
    async def one(metric: Metric) -> Score:
        try:
            return await metric.score(case, output)
        except LLMForgeError as e:  # e.g. the embedder failed: this case's score is an error
            return Score.failed(e.message)

    jobs: list[Awaitable[Score]] = [one(m) for m in metrics]
    return list(await asyncio.gather(*jobs))


def summarize(results: Sequence[CaseResult], metrics: Sequence[str]) -> dict[str, MetricSummary]:
    out = {}
    for name in metrics:
        scores = [r.scores[name] for r in results if name in r.scores]
        values = [s.value for s in scores if s.value is not None]
        sampled = [s.spread for s in scores if len(s.samples) > 1]
        out[name] = MetricSummary(
            mean=statistics.fmean(values) if values else None,
            std=statistics.pstdev(values) if len(values) > 1 else 0.0,
            spread=statistics.fmean(sampled) if sampled else 0.0,
            scored=len(values),
            errors=len(scores) - len(values),
        )
    return out
