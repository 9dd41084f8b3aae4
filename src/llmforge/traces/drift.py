"""Drift: per model, is recent traffic unlike a reference window of earlier traffic?

`DriftMonitor` is a batch observer of the `TraceRecorder` (`recorder.observe(monitor.observe)`):
`observe` only turns each written chat or text call into a small `Sample` (its prompt's text, its
answer's length, whether the answer is a refusal, whether the call failed) and queues it; a task of
its own embeds the prompts in batches with the configured embedder, has the judge grade the sampled
answers, and adds the samples to their model's windows. Nothing runs on the request path, and the
queue is bounded (the oldest pending samples are dropped first, and counted).

Per model the first `reference_size` samples are the **reference**, kept until `reset`; the last
`window_size` are the **recent** window. Once both hold `min_samples`, four signals compare them:

- `prompt_embedding`: how far the centroid of the recent prompts' (unit) embeddings moved from the
  reference's, in units of the reference's spread (root mean squared distance to its centroid),
  with the sampling noise of both means subtracted: about 0 for traffic like the reference's, 1
  when the centroid moved as far as a typical prompt lies from it. Alarm at `embedding_threshold`.
- `answer_length`: population stability index of answer lengths (tokens) over the reference's
  quintiles, less its expected value from sampling alone. Alarm at `length_threshold` (0.25 is
  the usual "significant shift").
- `refusal_rate` and `error_rate`: recent minus reference rate. Alarm when the change is at least
  `rate_threshold` and a two-proportion z-test gives |z| >= 3 (small windows do not cry wolf).
- `judge_score`, a fifth only when `judge` names a model: the judge grades a sampled share
  (`judge_share`) of answered calls, each 0-1; the score is the recent minus the reference mean.
  Alarm when the change is at least `judge_threshold`, both windows hold `judge_min_samples`
  graded answers and a z-test of the two means gives |z| >= 3. The judge (an `AnswerJudge`; the
  gateway's is the evals `rubric` metric) is called by the monitor's task, off the request path,
  and not through the gateway: its calls are not traffic, so not traced, sampled or graded.

`report()` returns every model's signals (also on the traces page); `DriftCollector` exposes them
at `/metrics` as `llmforge_drift_score{model,signal}`, `llmforge_drift_alarm{model,signal}` and
`llmforge_drift_calls{model,window}`. At start the windows are seeded from the traces table (each
model's latest `reference_size + window_size` calls, oldest first, the same share of them judged),
so a restart does not forget the traffic; the reference is then the older part of that history.

Deliberately not here: choosing or building the judge (the gateway hands one in), persisting
windows, and alerting (Prometheus / Grafana alert on the gauges).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from llmforge.core.config import DriftConfig
from llmforge.core.errors import ConfigError, LLMForgeError
from llmforge.core.settings import Settings
from llmforge.models.base import Embedder
from llmforge.traces.query import prompt_text
from llmforge.traces.store import Trace, traces

log = logging.getLogger(__name__)

DEFAULT_REFUSALS = (
    r"\b(i'?m|i am|we are|we're) (sorry|afraid)\b.{0,60}\b(can ?not|can't|unable|not able|won't)\b",
    r"\bi (can ?not|can't|won't|will not|am unable to|'m unable to|am not able to) "
    r"(help|assist|provide|comply|do that|answer|share|support)",
    r"\bas an ai\b",
    r"(抱歉|对不起|很遗憾).{0,30}(无法|不能|不可以)",
    r"我(无法|不能)(帮助|提供|回答|协助|满足)",
)
SIGNALS = ("prompt_embedding", "answer_length", "refusal_rate", "error_rate", "judge_score")
MAX_PENDING = 10_000
EMBED_BATCH = 32
PROMPT_CHARS = 2000
ANSWER_CHARS = 4000
Z_ALARM = 3.0


@dataclass(frozen=True)
class Sample:
    """What drift needs of one call."""

    model: str
    prompt: str
    answer_tokens: int
    refused: bool
    error: bool
    judged_answer: str | None = None
    """the answer, when this call is in the share the judge grades"""


class AnswerJudge(Protocol):
    """Grades one answer to its prompt (the gateway wires in a judge model)."""

    async def score(self, prompt: str, answer: str) -> float | None:
        """The answer's grade in [0, 1], or None when the judge gave no verdict."""
        ...


class DriftSignal(BaseModel):
    name: str
    score: float | None = Field(None, description="None until both windows hold enough calls")
    threshold: float
    alarm: bool = False
    reference: float | None = Field(None, description="the reference window's value, if any")
    recent: float | None = Field(None, description="the recent window's value, if any")
    detail: str = ""


class ModelDrift(BaseModel):
    model: str
    reference_calls: int
    recent_calls: int
    ready: bool = Field(description="both windows hold at least min_samples calls")
    alarm: bool
    signals: list[DriftSignal]


class DriftReport(BaseModel):
    enabled: bool = True
    embedding: str | None = None
    reference_size: int
    window_size: int
    min_samples: int
    pending: int = 0
    dropped: int = 0
    models: list[ModelDrift]


@dataclass
class _Window:
    vectors: deque[np.ndarray]
    lengths: deque[int]
    refused: deque[bool]
    errors: deque[bool]
    scores: deque[float]

    @classmethod
    def of(cls, size: int | None) -> _Window:
        return cls(*(deque(maxlen=size) for _ in range(5)))

    def add(self, sample: Sample, vector: np.ndarray | None, score: float | None) -> None:
        self.errors.append(sample.error)
        if vector is not None:
            self.vectors.append(vector)
        if score is not None:
            self.scores.append(score)
        if not sample.error:  # a failed call has no answer to measure
            self.lengths.append(sample.answer_tokens)
            self.refused.append(sample.refused)

    def __len__(self) -> int:
        return len(self.errors)


@dataclass
class _ModelState:
    reference: _Window
    recent: _Window
    reference_size: int
    version: int = 0
    cached: ModelDrift | None = field(default=None, repr=False)

    def add(self, sample: Sample, vector: np.ndarray | None, score: float | None) -> None:
        if len(self.reference) < self.reference_size:
            self.reference.add(sample, vector, score)
        else:
            self.recent.add(sample, vector, score)
        self.version += 1
        self.cached = None


class DriftMonitor:
    """Per-model reference and recent windows, fed from written traces (module docstring)."""

    def __init__(
        self,
        config: DriftConfig,
        embedder: Embedder | None = None,
        engine: Engine | None = None,
        embedding_name: str | None = None,
        judge: AnswerJudge | None = None,
    ) -> None:
        self.config = config
        self.embedding_name = embedding_name
        self._embedder = embedder
        self._grader = judge
        self._sampler = random.Random()
        self._judge_failed = False
        self._engine = engine
        patterns = config.refusal_patterns or list(DEFAULT_REFUSALS)
        try:
            self._refusal = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
        except re.error as e:
            raise ConfigError(
                f"observability.drift.refusal_patterns: not a regular expression ({e}); fix or "
                "remove it"
            ) from None
        self._models: dict[str, _ModelState] = {}
        self._pending: deque[Sample] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._started = time.time()
        self.dropped = 0
        self._embed_failed = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        embedders: EmbedderLookup,
        engine: Engine,
        judges: Callable[[str], AnswerJudge] | None = None,
    ) -> DriftMonitor | None:
        """The monitor the settings ask for, or None when drift is off. `judges` builds the
        judge of a chat model's name (needed when `judge` is configured)."""
        config = settings.observability.drift
        if not config.enabled:
            return None
        names = [e.name for e in settings.embeddings]
        name = config.embedding or (names[0] if names else None)
        if name is not None and name not in names:
            raise ConfigError(
                f"observability.drift.embedding: '{name}' is not under `embeddings:`; known: "
                f"{', '.join(names) or '(none)'}"
            )
        embedder = embedders.embedder(name) if name is not None else None
        judge = None
        if config.judge is not None:
            chat = [m.name for m in settings.models]
            if config.judge not in chat:
                raise ConfigError(
                    f"observability.drift.judge: '{config.judge}' is not under `models:`; "
                    f"known: {', '.join(chat) or '(none)'}"
                )
            if judges is None:
                raise ConfigError(
                    "observability.drift.judge is set but nothing builds judges here; start the "
                    "monitor from the gateway (create_app) or unset it"
                )
            judge = judges(config.judge)
        return cls(config, embedder, engine, name, judge)

    # -- feeding ----------------------------------------------------------------------------

    def observe(self, batch: Sequence[Trace]) -> None:
        """The recorder's batch observer: queue a sample per chat or text call; never waits."""
        for trace in batch:
            sample = self.sample(trace)
            if sample is not None:
                self._queue(sample)
        self._ensure_running()

    def sample(self, trace: Trace) -> Sample | None:
        """The drift sample of a trace, or None for calls drift does not judge (embeddings,
        cancelled calls)."""
        if trace.kind == "embedding" or trace.status == "cancelled":
            return None
        answer = trace.output or ""
        tokens = trace.completion_tokens or math.ceil(len(answer) / 4)
        error = trace.status == "error"
        graded = (
            self._grader is not None
            and not error
            and bool(answer.strip())
            and self._sampler.random() < self.config.judge_share
        )
        return Sample(
            model=trace.model,
            prompt=prompt_text(trace.kind, trace.request)[:PROMPT_CHARS],
            answer_tokens=tokens,
            refused=bool(answer) and self._refusal.search(answer[:400]) is not None,
            error=error,
            judged_answer=answer[:ANSWER_CHARS] if graded else None,
        )

    def _queue(self, sample: Sample) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(sample)
        self._idle.clear()
        self._wake.set()

    def _ensure_running(self) -> None:
        if self._task is None:
            self._idle.clear()  # set again once the seed and the queue are processed
            self._task = asyncio.create_task(self._run(), name="drift-monitor")

    def start(self) -> None:
        """Start the task (seeding from the traces table first); `observe` also starts it."""
        self._ensure_running()

    async def drain(self) -> None:
        """Wait until every queued sample is in its window (tests, and before a report)."""
        self._ensure_running()
        await self._idle.wait()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        if self._engine is not None:
            try:
                seeded = await asyncio.to_thread(self._seed_samples, self._engine)
            except Exception:
                log.exception("drift: reading past traces failed; starting with empty windows")
                seeded = []
            self._pending.extendleft(reversed(seeded))
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._pending.popleft() for _ in range(min(EMBED_BATCH, len(self._pending)))]
            vectors, scores = await asyncio.gather(
                self._embed([s.prompt for s in batch]),
                asyncio.gather(*(self._grade(s) for s in batch)),
            )
            for sample, vector, score in zip(batch, vectors, scores, strict=True):
                self._state(sample.model).add(sample, vector, score)

    async def _embed(self, texts: list[str]) -> list[np.ndarray | None]:
        if self._embedder is None:
            return [None] * len(texts)
        try:
            result = await self._embedder.embed([t or " " for t in texts])
        except LLMForgeError as e:
            if not self._embed_failed:
                log.warning("drift: embedding prompts failed (%s); prompts are skipped", e.message)
            self._embed_failed = True
            return [None] * len(texts)
        self._embed_failed = False
        out: list[np.ndarray | None] = []
        for vector in result.vectors:
            v = np.asarray(vector, dtype=np.float32)
            norm = float(np.linalg.norm(v))
            out.append(v / norm if norm > 0 else None)
        return out

    async def _grade(self, sample: Sample) -> float | None:
        if self._grader is None or sample.judged_answer is None:
            return None
        try:
            score = await self._grader.score(sample.prompt, sample.judged_answer)
        except Exception as e:  # a judge's failure costs its grade, never the monitor
            if not self._judge_failed:
                reason = e.message if isinstance(e, LLMForgeError) else f"{type(e).__name__}: {e}"
                log.warning("drift: the judge failed (%s); answers go ungraded", reason)
            self._judge_failed = True
            return None
        self._judge_failed = False
        return None if score is None else min(max(float(score), 0.0), 1.0)

    def _seed_samples(self, engine: Engine) -> list[Sample]:
        keep = self.config.reference_size + self.config.window_size
        c = traces.c
        judged = [c.kind.in_(("chat", "text")), c.status != "cancelled"]
        judged.append(c.created_at < self._started)
        samples: list[Sample] = []
        with engine.connect() as conn:
            models = [m for (m,) in conn.execute(sa.select(c.model).where(*judged).distinct())]
            for model in models:
                q = (
                    sa.select(traces)
                    .where(c.model == model, *judged)
                    .order_by(c.created_at.desc())
                    .limit(keep)
                )
                rows = [Trace.model_validate(r._asdict()) for r in conn.execute(q)]
                samples += [s for t in reversed(rows) if (s := self.sample(t)) is not None]
        return samples

    def _state(self, model: str) -> _ModelState:
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _ModelState(
                _Window.of(None), _Window.of(self.config.window_size), self.config.reference_size
            )
        return state

    def reset(self, model: str | None = None) -> None:
        """Forget the windows (of one model, or all): the next calls become the reference."""
        for name in [model] if model is not None else list(self._models):
            self._models.pop(name, None)

    # -- judging ----------------------------------------------------------------------------

    def report(self) -> DriftReport:
        return DriftReport(
            embedding=self.embedding_name,
            reference_size=self.config.reference_size,
            window_size=self.config.window_size,
            min_samples=self.config.min_samples,
            pending=len(self._pending),
            dropped=self.dropped,
            models=[self.model_report(m) for m in sorted(self._models)],
        )

    def model_report(self, model: str) -> ModelDrift:
        state = self._state(model)
        if state.cached is None:
            state.cached = self._judge(model, state)
        return state.cached

    def _judge(self, model: str, state: _ModelState) -> ModelDrift:
        cfg = self.config
        ref, rec = state.reference, state.recent
        ready = len(ref) >= cfg.min_samples and len(rec) >= cfg.min_samples
        signals = [
            self._embedding_signal(ref, rec, ready),
            self._length_signal(ref, rec, ready),
            _rate_signal("refusal_rate", ref.refused, rec.refused, cfg, ready),
            _rate_signal("error_rate", ref.errors, rec.errors, cfg, ready),
        ]
        if self._grader is not None:
            signals.append(self._judge_signal(ref, rec, ready))
        return ModelDrift(
            model=model,
            reference_calls=len(ref),
            recent_calls=len(rec),
            ready=ready,
            alarm=any(s.alarm for s in signals),
            signals=signals,
        )

    def _embedding_signal(self, ref: _Window, rec: _Window, ready: bool) -> DriftSignal:
        threshold = self.config.embedding_threshold
        signal = DriftSignal(name="prompt_embedding", threshold=threshold)
        n = self.config.min_samples
        if self._embedder is None:
            signal.detail = "no embedding model configured"
            return signal
        if not ready or len(ref.vectors) < n or len(rec.vectors) < n:
            return signal
        signal.score = round(centroid_shift(np.stack(ref.vectors), np.stack(rec.vectors)), 4)
        signal.alarm = signal.score >= threshold
        signal.detail = f"{len(ref.vectors)} vs {len(rec.vectors)} prompts"
        return signal

    def _length_signal(self, ref: _Window, rec: _Window, ready: bool) -> DriftSignal:
        threshold = self.config.length_threshold
        signal = DriftSignal(name="answer_length", threshold=threshold)
        if ref.lengths:
            signal.reference = round(float(np.mean(ref.lengths)), 2)
        if rec.lengths:
            signal.recent = round(float(np.mean(rec.lengths)), 2)
        n = self.config.min_samples
        if ready and len(ref.lengths) >= n and len(rec.lengths) >= n:
            signal.score = round(psi(list(ref.lengths), list(rec.lengths)), 4)
            signal.alarm = signal.score >= threshold
            signal.detail = "mean answer tokens; score: population stability index"
        return signal

    def _judge_signal(self, ref: _Window, rec: _Window, ready: bool) -> DriftSignal:
        cfg = self.config
        signal = DriftSignal(name="judge_score", threshold=cfg.judge_threshold)
        if ref.scores:
            signal.reference = round(float(np.mean(ref.scores)), 4)
        if rec.scores:
            signal.recent = round(float(np.mean(rec.scores)), 4)
        graded = f"mean judge score of {len(ref.scores)} vs {len(rec.scores)} graded answers"
        n = cfg.judge_min_samples
        if not ready or len(ref.scores) < n or len(rec.scores) < n:
            signal.detail = graded
            return signal
        change = float(np.mean(rec.scores) - np.mean(ref.scores))
        z = mean_difference_z(list(ref.scores), list(rec.scores))
        signal.score = round(change, 4)
        signal.alarm = abs(change) >= cfg.judge_threshold and abs(z) >= Z_ALARM
        signal.detail = f"{graded}; z = {z:.2f}"
        return signal


def _rate_signal(
    name: str, ref: deque[bool], rec: deque[bool], cfg: DriftConfig, ready: bool
) -> DriftSignal:
    signal = DriftSignal(name=name, threshold=cfg.rate_threshold)
    if ref:
        signal.reference = round(sum(ref) / len(ref), 4)
    if rec:
        signal.recent = round(sum(rec) / len(rec), 4)
    if not ready or not ref or not rec:
        return signal
    p_ref, p_rec = sum(ref) / len(ref), sum(rec) / len(rec)
    z = two_proportion_z(sum(ref), len(ref), sum(rec), len(rec))
    signal.score = round(p_rec - p_ref, 4)
    signal.alarm = abs(p_rec - p_ref) >= cfg.rate_threshold and abs(z) >= Z_ALARM
    signal.detail = f"z = {z:.2f}"
    return signal


def centroid_shift(reference: np.ndarray, recent: np.ndarray) -> float:
    """Distance between the two sets' centroids in units of the reference's spread, with the
    expected sampling noise of both centroids removed (about 0 when both come from one
    distribution). Rows are unit vectors."""
    mu_ref, mu_rec = reference.mean(axis=0), recent.mean(axis=0)
    spread_ref = float(np.mean(np.sum((reference - mu_ref) ** 2, axis=1)))
    spread_rec = float(np.mean(np.sum((recent - mu_rec) ** 2, axis=1)))
    if spread_ref <= 1e-12:
        spread_ref = max(spread_rec, 1e-12)
    distance = float(np.sum((mu_rec - mu_ref) ** 2))
    noise = spread_ref / len(reference) + spread_rec / len(recent)
    return math.sqrt(max(distance - noise, 0.0) / spread_ref)


def psi(reference: Sequence[float], recent: Sequence[float], bins: int = 5) -> float:
    """Population stability index of `recent` against `reference` over the reference's quantile
    bins, less what sampling alone gives on average ((bins - 1) x (1/n1 + 1/n2)), floored at 0:
    about 0 for the same distribution, above 0.25 for a significant shift."""
    ref = np.asarray(reference, dtype=np.float64)
    rec = np.asarray(recent, dtype=np.float64)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    rec_counts = np.bincount(np.searchsorted(edges, rec, side="right"), minlength=len(edges) + 1)
    eps = 1e-4
    p = np.maximum(ref_counts / len(ref), eps)
    q = np.maximum(rec_counts / len(rec), eps)
    raw = float(np.sum((q - p) * np.log(q / p)))
    return max(raw - len(edges) * (1 / len(ref) + 1 / len(rec)), 0.0)


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> float:
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0
    return (x2 / n2 - x1 / n1) / se


def mean_difference_z(reference: Sequence[float], recent: Sequence[float]) -> float:
    """Welch's z of recent's mean minus reference's (unequal variances); infinite when neither
    varies and the means differ."""
    diff = float(np.mean(recent) - np.mean(reference))
    se = math.sqrt(
        float(np.var(reference, ddof=1)) / len(reference)
        + float(np.var(recent, ddof=1)) / len(recent)
    )
    if se == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / se


class EmbedderLookup(Protocol):
    """What `from_settings` needs of the model catalog."""

    def embedder(self, name: str) -> Embedder: ...


class DriftCollector(Collector):
    """The monitor's signals as Prometheus gauges, computed at scrape time."""

    def __init__(self, monitor: DriftMonitor) -> None:
        self.monitor = monitor

    def describe(self) -> Iterator[Metric]:
        yield from self._families([])

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self.monitor.report().models)

    @staticmethod
    def _families(models: Sequence[ModelDrift]) -> Iterator[Metric]:
        score = GaugeMetricFamily(
            "llmforge_drift_score",
            "Drift of recent traffic from the reference window, by model and signal "
            "(prompt_embedding: centroid shift in reference spreads; answer_length: PSI; "
            "refusal_rate, error_rate: recent minus reference rate; judge_score: recent minus "
            "reference mean judge score).",
            labels=["model", "signal"],
        )
        alarm = GaugeMetricFamily(
            "llmforge_drift_alarm",
            "1 when a drift signal passes its threshold, by model and signal.",
            labels=["model", "signal"],
        )
        calls = GaugeMetricFamily(
            "llmforge_drift_calls",
            "Calls in each drift window (reference, recent), by model.",
            labels=["model", "window"],
        )
        for m in models:
            calls.add_metric([m.model, "reference"], m.reference_calls)
            calls.add_metric([m.model, "recent"], m.recent_calls)
            for s in m.signals:
                if s.score is not None:
                    score.add_metric([m.model, s.name], s.score)
                    alarm.add_metric([m.model, s.name], 1.0 if s.alarm else 0.0)
        yield score
        yield alarm
        yield calls
