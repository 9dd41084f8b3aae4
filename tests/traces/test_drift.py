"""Drift: a model's recent traffic compared with its reference window raises an alarm when prompts,
answer lengths, refusals or errors shift, and stays quiet while traffic stays alike. Traces flow
through the real recorder and SQLite store; prompts are embedded by the fake (word-hashing)
embedder, which gives texts that share words similar vectors."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from llmforge.core.config import DriftConfig
from llmforge.core.db import open_engine
from llmforge.core.errors import ConfigError
from llmforge.core.settings import load_settings
from llmforge.models import ModelCatalog
from llmforge.models.fake import FakeEmbedder
from llmforge.traces import Trace, TraceRecorder, TraceStore
from llmforge.traces.drift import DriftCollector, DriftMonitor, centroid_shift, psi

COOKING = [
    "how long should I boil {a} pasta with {b}",
    "what goes well with {a} and roasted {b}",
    "can I bake {a} bread without {b}",
    "a quick dinner recipe with {a} and {b}",
]
COOKING_WORDS = ["garlic", "tomato", "basil", "onion", "butter", "rice", "chicken", "lemon"]
FINANCE = [
    "what is the interest rate on a {a} savings account in {b}",
    "should I refinance my {a} mortgage before {b}",
    "how are {a} dividends taxed in {b}",
    "compare {a} index funds and {b} bonds",
]
FINANCE_WORDS = ["fixed", "variable", "quarterly", "annual", "2025", "pension", "offshore", "etf"]
CONFIG = DriftConfig(enabled=True, reference_size=120, window_size=60, min_samples=30)


def calls(
    rng: random.Random,
    n: int,
    *,
    templates: list[str] = COOKING,
    words: list[str] = COOKING_WORDS,
    answer_words: tuple[int, int] = (20, 40),
    refusals: float = 0.0,
    errors: float = 0.0,
    model: str = "local",
) -> Iterator[Trace]:
    for _ in range(n):
        prompt = rng.choice(templates).format(a=rng.choice(words), b=rng.choice(words))
        if rng.random() < errors:
            yield Trace(
                model=model,
                request={"messages": [{"role": "user", "content": prompt}]},
                status="error",
                error="model 'local': upstream answered 500",
            )
            continue
        length = rng.randint(*answer_words)
        answer = (
            "I'm sorry, but I cannot help with that request."
            if rng.random() < refusals
            else " ".join(["word"] * length)
        )
        yield Trace(
            model=model,
            request={"messages": [{"role": "user", "content": prompt}]},
            output=answer,
            completion_tokens=len(answer.split()),
        )


def signals(monitor: DriftMonitor, model: str = "local") -> dict[str, tuple[float | None, bool]]:
    report = monitor.model_report(model)
    return {s.name: (s.score, s.alarm) for s in report.signals}


async def feed(monitor: DriftMonitor, traces: Iterator[Trace]) -> None:
    monitor.observe(list(traces))
    await monitor.drain()


async def test_traffic_like_the_reference_raises_no_alarm() -> None:
    rng = random.Random(1)
    monitor = DriftMonitor(CONFIG, FakeEmbedder(64))
    await feed(monitor, calls(rng, 120, refusals=0.05, errors=0.02))
    await feed(monitor, calls(rng, 60, refusals=0.05, errors=0.02))
    report = monitor.model_report("local")
    assert report.ready
    assert (report.reference_calls, report.recent_calls) == (120, 60)
    assert not report.alarm, report
    score, _ = signals(monitor)["prompt_embedding"]
    assert score is not None and score < 0.25
    await monitor.aclose()


async def test_shifted_stream_sounds_every_alarm(tmp_path: Path) -> None:
    """The whole path: traces recorded, written in batches, observed, embedded, judged, and the
    alarm readable at /metrics' families."""
    store = TraceStore(open_engine(f"sqlite:///{tmp_path / 't.db'}"))
    recorder = TraceRecorder(store)
    monitor = DriftMonitor(CONFIG, FakeEmbedder(64))
    recorder.observe(monitor.observe)
    rng = random.Random(2)
    for trace in calls(rng, 120, refusals=0.02):
        recorder.record(trace)
    await recorder.flush()
    shifted = calls(
        rng,
        60,
        templates=FINANCE,
        words=FINANCE_WORDS,
        answer_words=(150, 300),
        refusals=0.3,
        errors=0.25,
    )
    for trace in shifted:
        recorder.record(trace)
    await recorder.flush()
    await monitor.drain()
    await recorder.stop()

    found = signals(monitor)
    assert "judge_score" not in found  # only with a judge (test_drift_judge.py)
    assert all(alarm for _, alarm in found.values()), found
    shift = found["prompt_embedding"][0]
    assert shift is not None and shift > 1.5 * CONFIG.embedding_threshold
    assert monitor.model_report("local").alarm

    registry = CollectorRegistry()
    registry.register(DriftCollector(monitor))
    text = generate_latest(registry).decode()
    assert 'llmforge_drift_alarm{model="local",signal="prompt_embedding"} 1.0' in text
    assert 'llmforge_drift_alarm{model="local",signal="error_rate"} 1.0' in text
    assert 'llmforge_drift_calls{model="local",window="recent"} 60.0' in text
    await monitor.aclose()


async def test_each_model_is_judged_against_its_own_reference() -> None:
    rng = random.Random(3)
    monitor = DriftMonitor(CONFIG, FakeEmbedder(64))
    await feed(monitor, calls(rng, 120, model="a"))
    await feed(monitor, calls(rng, 120, templates=FINANCE, words=FINANCE_WORDS, model="b"))
    await feed(monitor, calls(rng, 60, model="a"))
    await feed(monitor, calls(rng, 60, templates=FINANCE, words=FINANCE_WORDS, model="b"))
    assert [m.alarm for m in monitor.report().models] == [False, False]
    await monitor.aclose()


async def test_too_few_calls_are_not_judged() -> None:
    rng = random.Random(4)
    monitor = DriftMonitor(CONFIG, FakeEmbedder(64))
    await feed(monitor, calls(rng, 120))
    await feed(monitor, calls(rng, 10, templates=FINANCE, words=FINANCE_WORDS, errors=1.0))
    report = monitor.model_report("local")
    assert not report.ready and not report.alarm
    assert all(s.score is None for s in report.signals)
    await monitor.aclose()


async def test_windows_are_seeded_from_stored_traces_and_reset_forgets_them(
    tmp_path: Path,
) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 't.db'}")
    store = TraceStore(engine)
    rng = random.Random(5)
    store.write(list(calls(rng, 120)))
    store.write(list(calls(rng, 60, templates=FINANCE, words=FINANCE_WORDS)))
    store.write([Trace(model="local", kind="embedding", request={"input": ["x"]})])
    monitor = DriftMonitor(CONFIG, FakeEmbedder(64), engine)
    await monitor.drain()  # starts the task, which reads the table first
    report = monitor.model_report("local")
    assert (report.reference_calls, report.recent_calls) == (120, 60)
    assert signals(monitor)["prompt_embedding"][1]

    monitor.reset("local")
    assert monitor.report().models == []
    await monitor.aclose()


async def test_without_an_embedder_the_other_signals_still_work() -> None:
    rng = random.Random(6)
    monitor = DriftMonitor(CONFIG, None)
    await feed(monitor, calls(rng, 120))
    await feed(monitor, calls(rng, 60, errors=0.5))
    found = monitor.model_report("local").signals
    embedding = next(s for s in found if s.name == "prompt_embedding")
    assert embedding.score is None and "no embedding model" in embedding.detail
    assert signals(monitor)["error_rate"][1]
    await monitor.aclose()


def test_chinese_refusals_count_as_refusals() -> None:
    monitor = DriftMonitor(CONFIG)

    def refused(answer: str) -> bool:
        trace = Trace(model="m", kind="text", request={"prompt": "x"}, output=answer)
        sample = monitor.sample(trace)
        assert sample is not None
        return sample.refused

    assert refused("抱歉，我无法回答这个问题。")
    assert refused("I'm sorry, but I can't help with that.")
    assert not refused("北京是中国的首都。")
    assert not refused("Sorry for the wait: the answer is 42.")


def test_statistics_are_zero_for_identical_samples_and_grow_with_the_shift() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.normal(size=(400, 16))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    same = centroid_shift(base[:200], base[200:])
    moved = base[200:] + 0.5
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    assert same < 0.15 < centroid_shift(base[:200], moved)
    lengths = list(rng.integers(10, 50, size=300))
    assert psi(lengths[:150], lengths[150:]) < 0.1
    assert psi(lengths, [x * 4 for x in lengths]) > 1


def test_settings_must_name_a_known_embedder(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp_path / 't.db'}",
        models=[{"name": "fake", "provider": "fake"}],
        embeddings=[{"name": "hash", "provider": "fake"}],
        observability={"drift": {"enabled": True, "embedding": "nope"}},
    )
    catalog = ModelCatalog.from_settings(settings)
    with pytest.raises(ConfigError, match="'nope' is not under `embeddings:`; known: hash"):
        DriftMonitor.from_settings(settings, catalog, open_engine(settings.database))
    off = settings.model_copy(update={"observability": load_settings(None).observability})
    assert DriftMonitor.from_settings(off, catalog, open_engine(settings.database)) is None
