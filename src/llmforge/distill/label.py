"""Label: the teacher answers every prompt of the dataset.

Each answer is cached in `distill_labels` by sha256 of (teacher config, messages, sampling, sample
index) as soon as it arrives, so a killed run resumes where it stopped and re-running a finished
one costs nothing. With `samples` > 1 (self-consistency) the teacher answers k times at a
temperature and the majority answer (compared after the evals tokenization: case and punctuation
ignored) is kept if at least `min_agreement` of the samples agree. A `judge` model may then grade
each label with the evals `rubric` metric; labels graded under `judge_min` are dropped. Cost is
counted at the teacher's `price` or the flywheel's list price.

The teacher's answers are a map over batches of prompts run by an `Executor` (core/dispatch.py):
in this process by default, with the teacher handed in and at most `concurrency` calls at once;
on a cluster (`executor: ray://...`) each batch is a task that builds the teacher from its config
(so it must be self-contained: an upstream server or a local file the workers can read) and makes
at most `concurrency` calls at once, and the batches answered are cached as each wave of them
comes back. The judge runs here. This module builds no model in this process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence

from pydantic import BaseModel, Field

from llmforge.core.config import ModelConfig, Price
from llmforge.core.dispatch import Executor, InProcessExecutor
from llmforge.core.types import Completion, Message, Sampling
from llmforge.distill.collect import SPLITS, Example, Split
from llmforge.distill.config import LabelSpec
from llmforge.distill.store import CachedLabel, DistillStore
from llmforge.evals import Case, MetricOptions, Output, build_metrics
from llmforge.evals.metrics import tokens
from llmforge.models import ModelCatalog
from llmforge.models.base import ChatModel

Progress = Callable[[int, int], None]
BATCH_ASKS = 32  # prompts per batch sent to a cluster
WAVE_BATCHES = 8  # batches per map on a cluster: what is answered is cached after each wave


class Ask(BaseModel):
    """One teacher call: a prompt and its sampling, under its cache key."""

    key: str
    messages: list[Message]
    sampling: Sampling


class TeacherBatch(BaseModel):
    """What a cluster worker needs to answer some asks: the teacher's config and price."""

    teacher: ModelConfig
    price: Price
    concurrency: int
    asks: list[Ask]


class LabelResult(BaseModel):
    dataset: str
    folder: str = ""
    teacher: str
    counts: dict[str, int] = Field(description="labelled examples kept, per split")
    dropped: int = Field(0, description="no majority, or graded down by the judge")
    calls: int = Field(0, description="teacher calls made by this run (the rest were cached)")
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = Field(0.0, description="what labelling the dataset costs at the price")
    cost_per_1k_usd: float = Field(0.0, description="teacher cost per 1,000 requests")
    latency_p50_ms: float | None = None


def teacher_price(config: ModelConfig, spec: LabelSpec) -> Price:
    return Price(
        input_per_mtok=(
            config.price.input_per_mtok
            if spec.price_input_per_mtok is None
            else spec.price_input_per_mtok
        ),
        output_per_mtok=(
            config.price.output_per_mtok
            if spec.price_output_per_mtok is None
            else spec.price_output_per_mtok
        ),
    )


def label_sampling(spec: LabelSpec, index: int) -> Sampling:
    temperature = (
        spec.temperature if spec.temperature is not None else (0.0 if spec.samples == 1 else 0.7)
    )
    return Sampling(max_tokens=spec.max_tokens, temperature=temperature, seed=index)


def normalized(answer: str) -> str:
    return " ".join(tokens(answer))


async def label_examples(
    splits: dict[Split, list[Example]],
    dataset: str,
    teacher_name: str,
    teacher: ChatModel,
    teacher_config: ModelConfig,
    spec: LabelSpec,
    store: DistillStore,
    judge: ChatModel | None = None,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> tuple[dict[Split, list[Example]], LabelResult]:
    """The examples with the teacher's `label` (dropped ones left out), and what it took. The
    teacher's calls run on `executor` (default: this process)."""
    executor = executor or InProcessExecutor()
    price = teacher_price(teacher_config, spec)
    config_json = teacher_config.model_dump(mode="json")
    total = sum(len(v) for v in splits.values())
    asks: dict[tuple[str, int], Ask] = {}  # (example id, sample) -> its ask
    for examples in splits.values():
        for example in examples:
            for index in range(spec.samples):
                sampling = label_sampling(spec, index)
                key = _key(config_json, example, sampling, index)
                asks[(example.id, index)] = Ask(
                    key=key, messages=list(example.messages), sampling=sampling
                )
    found = await asyncio.to_thread(store.cached_labels, [a.key for a in asks.values()])
    stats = {"calls": 0, "cached": sum(1 for a in asks.values() if a.key in found)}
    todo = list({a.key: a for a in asks.values() if a.key not in found}.values())
    # for progress: the examples each unanswered key belongs to, and how many keys each lacks
    waiting: dict[str, list[str]] = {}
    lacking: Counter[str] = Counter()
    for (example_id, _), ask in asks.items():
        if ask.key not in found:
            waiting.setdefault(ask.key, []).append(example_id)
            lacking[example_id] += 1
    done = total - len(lacking)

    async def keep(labels: Sequence[CachedLabel], batch: TeacherBatch) -> None:
        """Cache the batch's answers (on a thread), then count them (on the loop)."""
        nonlocal done
        pairs = list(zip(batch.asks, labels, strict=True))
        await asyncio.to_thread(_cache_all, store, teacher_name, pairs)
        for ask, label in pairs:
            found[ask.key] = label
            for example_id in waiting.pop(ask.key, []):
                lacking[example_id] -= 1
                done += lacking[example_id] == 0
        stats["calls"] += len(labels)

    reported = done

    def report() -> None:
        nonlocal reported
        if progress and done != reported:
            reported = done
            progress(done, total)

    def batch_of(part: list[Ask]) -> TeacherBatch:
        return TeacherBatch(
            teacher=teacher_config, price=price, concurrency=spec.concurrency, asks=part
        )

    if progress:
        progress(0, total)
    if executor.local:  # the teacher handed in; every batch at once, `concurrency` calls at once
        gate = asyncio.Semaphore(spec.concurrency)

        async def here(batch: TeacherBatch) -> None:
            labels = await _answer(teacher, batch, gate)
            await keep(labels, batch)
            report()

        await executor.map(here, [batch_of(todo[i : i + 1]) for i in range(len(todo))])
    else:
        batches = [batch_of(todo[i : i + BATCH_ASKS]) for i in range(0, len(todo), BATCH_ASKS)]
        for w in range(0, len(batches), WAVE_BATCHES):
            wave = batches[w : w + WAVE_BATCHES]
            for batch, labels in zip(wave, await executor.map(answer_batch, wave), strict=True):
                await keep(labels, batch)
            report()
    answers: list[CachedLabel] = []

    def one(example: Example) -> Example | None:
        samples = [found[asks[(example.id, i)].key] for i in range(spec.samples)]
        answers.extend(samples)
        votes = Counter(normalized(s.answer) for s in samples)
        winner, count = votes.most_common(1)[0]
        if count / len(samples) < spec.min_agreement or not winner:
            return None
        answer = next(s.answer for s in samples if normalized(s.answer) == winner)
        return example.model_copy(
            update={"label": answer, "metadata": {**example.metadata, "agreement": count}}
        )

    labelled: dict[Split, list[Example]] = {}
    dropped = 0
    for split in SPLITS:
        results = [one(ex) for ex in splits.get(split, [])]
        kept = [ex for ex in results if ex is not None]
        if judge is not None and kept:
            kept = await _judged(kept, judge, spec)
        dropped += len(splits.get(split, [])) - len(kept)
        labelled[split] = kept
    requests = max(len(answers), 1)
    result = LabelResult(
        dataset=dataset,
        teacher=teacher_name,
        counts={s: len(v) for s, v in labelled.items()},
        dropped=dropped,
        calls=stats["calls"],
        cached=stats["cached"],
        prompt_tokens=sum(a.prompt_tokens for a in answers),
        completion_tokens=sum(a.completion_tokens for a in answers),
        cost_usd=sum(a.cost_usd for a in answers),
        cost_per_1k_usd=sum(a.cost_usd for a in answers) / requests * 1000,
        latency_p50_ms=statistics.median(a.latency_ms for a in answers) if answers else None,
    )
    return labelled, result


def _cache_all(store: DistillStore, teacher: str, pairs: list[tuple[Ask, CachedLabel]]) -> None:
    for ask, label in pairs:
        store.cache_label(ask.key, teacher, label)


async def answer_batch(batch: TeacherBatch) -> list[CachedLabel]:
    """A cluster task: build the teacher from its config, answer the batch, close it."""
    catalog = ModelCatalog([batch.teacher], [])
    try:
        teacher = catalog.chat(batch.teacher.name)
        return await _answer(teacher, batch, asyncio.Semaphore(batch.concurrency))
    finally:
        await catalog.aclose()


async def _answer(
    teacher: ChatModel, batch: TeacherBatch, gate: asyncio.Semaphore
) -> list[CachedLabel]:
    async def one(ask: Ask) -> CachedLabel:
        async with gate:
            started = time.perf_counter()
            completion = await teacher.complete(ask.messages, ask.sampling)
            latency = (time.perf_counter() - started) * 1000
        return _label(completion, batch.price, latency)

    return list(await asyncio.gather(*(one(ask) for ask in batch.asks)))


def _label(completion: Completion, price: Price, latency_ms: float) -> CachedLabel:
    usage = completion.usage
    return CachedLabel(
        answer=completion.text.strip(),
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cost_usd=(
            usage.prompt_tokens * price.input_per_mtok
            + usage.completion_tokens * price.output_per_mtok
        )
        / 1_000_000,
        latency_ms=latency_ms,
    )


async def _judged(examples: Sequence[Example], judge: ChatModel, spec: LabelSpec) -> list[Example]:
    [rubric] = build_metrics(["rubric"], MetricOptions(judge=judge, rubric=spec.rubric))

    async def keep(ex: Example) -> bool:
        case = Case(id=ex.id, input=list(ex.messages), expected=ex.reference)
        score = await rubric.score(case, Output(text=ex.label or ""))
        return score.value is not None and score.value >= spec.judge_min

    verdicts = await asyncio.gather(*(keep(ex) for ex in examples))
    return [ex for ex, ok in zip(examples, verdicts, strict=True) if ok]


def _key(config: object, example: Example, sampling: Sampling, index: int) -> str:
    raw = json.dumps(
        {
            "teacher": config,
            "messages": [m.compact() for m in example.messages],
            "sampling": sampling.model_dump(mode="json"),
            "sample": index,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(raw.encode()).hexdigest()
