"""The `Metric` protocol, what a metric scores (`Output`), what it returns (`Score`), and the
metric registry.

A metric scores one case's output: `await metric.score(case, output)` returns a `Score` with a
value in [0, 1], or an `error` when it could not score (a judge that kept answering malformed JSON,
a case without the `expected` the metric needs). An error is never a silent 0: it is counted apart
and left out of the means. Judge metrics may sample the judge several times; `samples` holds each
value and `value` is their mean.

Metrics are built by factories registered under a name, in code or through the entry-point group
`llmforge.metrics`, exactly like model providers. A factory gets `MetricOptions` (shared knobs such
as `k`, the judge, the embedder) and returns a ready metric. This module knows no metric.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from llmforge.core.errors import ConfigError
from llmforge.core.registry import Registry
from llmforge.evals.dataset import Case
from llmforge.models.base import ChatModel, Embedder


class Output(BaseModel):
    """What the system under test produced for one case."""

    text: str = ""
    retrieved: list[str] = Field(
        default_factory=list, description="ranked ids of retrieved items (retrieval runs)"
    )
    tool_calls: list[str] = Field(
        default_factory=list, description="agent runs: the tools called, in order"
    )
    steps: int | None = Field(None, description="agent runs: model turns taken")
    cost_usd: float | None = Field(None, description="agent runs: what the run's model calls cost")
    status: str | None = Field(None, description="agent runs: how the run ended")


class Score(BaseModel):
    """One metric's verdict on one case."""

    value: float | None = Field(None, description="in [0, 1]; None when `error` is set")
    samples: list[float] = Field(default_factory=list, description="judge metrics: each sample")
    error: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def spread(self) -> float:
        """Standard deviation of the samples (0 with fewer than two)."""
        return statistics.pstdev(self.samples) if len(self.samples) > 1 else 0.0

    @classmethod
    def of(cls, value: float, **details: Any) -> Score:
        return cls(value=value, details=details)

    @classmethod
    def failed(cls, error: str) -> Score:
        return cls(error=error)


@runtime_checkable
class Metric(Protocol):
    """Scores one case's output. `name` is what results and gates call it."""

    name: str

    async def score(self, case: Case, output: Output) -> Score: ...


@dataclass
class MetricOptions:
    """What factories may use. Metrics ignore what they do not need; one that needs a missing part
    (a judge metric without a judge) raises ConfigError at construction, before any case runs."""

    k: int = 5
    samples: int = 1
    rubric: str | None = None
    judge: ChatModel | None = None
    judge_attempts: int = 3
    judge_temperature: float | None = None
    judge_max_tokens: int = 256
    embedder: Embedder | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def need_judge(self, metric: str) -> ChatModel:
        if self.judge is None:
            raise ConfigError(
                f"metric '{metric}' needs a judge model; pass --judge NAME (a chat model in "
                "llmforge.yaml)"
            )
        return self.judge

    def need_embedder(self, metric: str) -> Embedder:
        if self.embedder is None:
            raise ConfigError(
                f"metric '{metric}' needs an embedding model; pass --embedder NAME or configure "
                "one under `embeddings:` in llmforge.yaml"
            )
        return self.embedder


MetricFactory = Callable[[MetricOptions], Metric]

metric_registry: Registry[MetricFactory] = Registry("metric", "llmforge.metrics")

JUDGE_METRICS = frozenset({"rubric", "faithfulness", "answer_relevancy", "pairwise"})
"""Built-in metrics that call a judge model (the CLI asks for --judge only when one is chosen)."""


def build_metrics(names: list[str], options: MetricOptions) -> list[Metric]:
    """The metrics named, built now so a missing judge or unknown name fails before any case."""
    return [metric_registry.get(name)(options) for name in names]
