"""Label: the teacher answers every prompt of the dataset.

Each answer is cached in `distill_labels` by sha256 of (teacher config, messages, sampling, sample
index) as soon as it arrives, so a killed run resumes where it stopped and re-running a finished
one costs nothing. With `samples` > 1 (self-consistency) the teacher answers k times at a
temperature and the majority answer (compared after the evals tokenization: case and punctuation
ignored) is kept if at least `min_agreement` of the samples agree. A `judge` model may then grade
each label with the evals `rubric` metric; labels graded under `judge_min` are dropped. Cost is
counted at the teacher's `price` or the flywheel's list price.

The teacher is any configured chat model, handed in; this module builds no model.
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
from llmforge.core.types import Sampling
from llmforge.distill.collect import SPLITS, Example, Split
from llmforge.distill.config import LabelSpec
from llmforge.distill.store import CachedLabel, DistillStore
from llmforge.evals import Case, MetricOptions, Output, build_metrics
from llmforge.evals.metrics import tokens
from llmforge.models.base import ChatModel

Progress = Callable[[int, int], None]


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
) -> tuple[dict[Split, list[Example]], LabelResult]:
    """The examples with the teacher's `label` (dropped ones left out), and what it took."""
    price = teacher_price(teacher_config, spec)
    config_json = teacher_config.model_dump(mode="json")
    gate = asyncio.Semaphore(spec.concurrency)
    total = sum(len(v) for v in splits.values())
    done = 0
    stats = {"calls": 0, "cached": 0}
    latencies: list[float] = []
    answers: list[CachedLabel] = []

    async def one_sample(example: Example, index: int) -> CachedLabel:
        sampling = label_sampling(spec, index)
        key = _key(config_json, example, sampling, index)
        cached = await asyncio.to_thread(store.cached_label, key)
        if cached is not None:
            stats["cached"] += 1
            return cached
        async with gate:
            started = time.perf_counter()
            completion = await teacher.complete(example.messages, sampling)
            latency = (time.perf_counter() - started) * 1000
        usage = completion.usage
        label = CachedLabel(
            answer=completion.text.strip(),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=(
                usage.prompt_tokens * price.input_per_mtok
                + usage.completion_tokens * price.output_per_mtok
            )
            / 1_000_000,
            latency_ms=latency,
        )
        await asyncio.to_thread(store.cache_label, key, teacher_name, label)
        stats["calls"] += 1
        return label

    async def one(example: Example) -> Example | None:
        nonlocal done
        samples = [await one_sample(example, i) for i in range(spec.samples)]
        answers.extend(samples)
        latencies.extend(s.latency_ms for s in samples)
        votes = Counter(normalized(s.answer) for s in samples)
        winner, count = votes.most_common(1)[0]
        done += 1
        if progress:
            progress(done, total)
        if count / len(samples) < spec.min_agreement or not winner:
            return None
        answer = next(s.answer for s in samples if normalized(s.answer) == winner)
        return example.model_copy(
            update={"label": answer, "metadata": {**example.metadata, "agreement": count}}
        )

    if progress:
        progress(0, total)
    labelled: dict[Split, list[Example]] = {}
    dropped = 0
    for split in SPLITS:
        results = await asyncio.gather(*(one(ex) for ex in splits.get(split, [])))
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
        latency_p50_ms=statistics.median(latencies) if latencies else None,
    )
    return labelled, result


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
