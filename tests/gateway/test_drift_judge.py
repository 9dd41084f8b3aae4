"""Drift's judge signal through the real app: a judge model (a fake OpenAI-compatible upstream
that grades answers as a rubric judge would) grades the sampled share of a model's answers; when
the answers turn bad the mean judge score falls and the `judge_score` alarm sounds, on the drift
API and at /metrics, while the judge's own calls stay out of the traffic. A failing judge costs
only the grades."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmforge.core.config import DriftConfig
from llmforge.core.db import open_engine
from llmforge.core.errors import ConfigError
from llmforge.core.settings import load_settings
from llmforge.gateway import create_app
from llmforge.models import ModelCatalog
from llmforge.traces import Trace
from llmforge.traces.drift import DriftMonitor
from tests.fakes.openai_upstream import FakeOpenAI, Fault
from tests.fakes.reply import Reply
from tests.fakes.server import serve

GOOD = ["The capital of France is Paris.", "Paris is the French capital city."]
BAD = ["The capital of France is Lyon.", "The capital of France is Nice."]
GRADES = {GOOD[0]: 5, GOOD[1]: 4, BAD[0]: 1, BAD[1]: 2}


class Grader(FakeOpenAI):
    """A judge upstream: grades the ANSWER of a rubric prompt from 1 to 5 (JSON, as asked)."""

    def _decide(self, body: dict[str, Any], i: int) -> Reply:
        asked = str(body["messages"][-1]["content"])
        answer = asked.rsplit("ANSWER:\n", 1)[-1].strip()
        grade = GRADES.get(answer, 3)
        return Reply(text=json.dumps({"reasoning": f"graded {answer!r}", "score": grade}))


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[str, FakeOpenAI, str, Grader]]:
    traffic, grader = FakeOpenAI(), Grader()
    with serve(traffic.app) as traffic_url, serve(grader.app) as grader_url:
        yield traffic_url, traffic, grader_url, grader


def settings(tmp: Path, traffic_url: str, grader_url: str, **drift: Any) -> Any:
    return load_settings(
        None,
        database=f"sqlite:///{tmp / 't.db'}",
        models=[
            {"name": "gpt", "provider": "openai", "base_url": traffic_url + "/v1"},
            {"name": "grader", "provider": "openai", "base_url": grader_url + "/v1"},
        ],
        embeddings=[{"name": "hash", "provider": "fake", "dimensions": 32}],
        server={"preload": False},
        router={"retries": 0},
        observability={
            "drift": {
                "enabled": True,
                "reference_size": 10,
                "window_size": 10,
                "min_samples": 5,
                "judge": "grader",
                "judge_share": 1.0,
                "judge_min_samples": 5,
                **drift,
            }
        },
    )


def ask(client: TestClient, traffic: FakeOpenAI, answers: list[str], start: int) -> None:
    traffic.respond(*[Reply(text=a) for a in answers])
    for i, _ in enumerate(answers, start):
        body = {
            "model": "gpt",
            "messages": [{"role": "user", "content": f"What is the capital of France? (#{i})"}],
        }
        assert client.post("/v1/chat/completions", json=body).status_code == 200


def drift_when(client: TestClient, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The model's drift report once `ready` holds of it (the monitor works in the background)."""
    deadline = time.monotonic() + 15
    while True:
        models = client.get("/v1/traces/drift").json()["models"]
        model = next((m for m in models if m["model"] == "gpt"), None)
        if model is not None and ready(model):
            return model
        assert time.monotonic() < deadline, models
        time.sleep(0.05)


def judge_signal(model: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in model["signals"] if s["name"] == "judge_score")
    return found


def test_answers_the_judge_grades_low_sound_the_judge_score_alarm(
    upstreams: tuple[str, FakeOpenAI, str, Grader], tmp_path: Path
) -> None:
    traffic_url, traffic, grader_url, grader = upstreams
    traffic.reset()
    grader.reset()
    with TestClient(create_app(settings(tmp_path, traffic_url, grader_url))) as client:
        ask(client, traffic, GOOD * 10, 0)  # the reference, then recent traffic like it
        steady = drift_when(client, lambda m: m["recent_calls"] == 10)
        signal = judge_signal(steady)
        assert steady["ready"] and not steady["alarm"], steady
        assert signal["reference"] == signal["recent"] == 0.875  # grades 5 and 4 -> 1.0, 0.75
        assert signal["score"] == 0.0 and not signal["alarm"]

        ask(client, traffic, BAD * 5, 20)  # same questions, wrong answers of the same length
        shifted = drift_when(client, lambda m: judge_signal(m)["recent"] == 0.125)
        signal = judge_signal(shifted)
        assert signal["alarm"] and shifted["alarm"], shifted
        assert signal["recent"] == 0.125 and signal["score"] == -0.75
        others = [s["name"] for s in shifted["signals"] if s["alarm"]]
        assert others == ["judge_score"]  # prompts, lengths, refusals and errors did not move

        metrics = client.get("/metrics").text
        assert 'llmforge_drift_alarm{model="gpt",signal="judge_score"} 1.0' in metrics
        assert 'llmforge_drift_score{model="gpt",signal="judge_score"} -0.75' in metrics
        # every answer was graded once, by calls that are not traffic
        assert grader.calls == 30
        facets = client.get("/v1/traces/facets").json()
        assert "grader" not in json.dumps(facets)


def test_a_failing_judge_leaves_answers_ungraded_and_the_rest_of_drift_working(
    upstreams: tuple[str, FakeOpenAI, str, Grader], tmp_path: Path
) -> None:
    traffic_url, traffic, grader_url, grader = upstreams
    traffic.reset()
    grader.reset()
    grader.always = Fault(status=500)
    try:
        with TestClient(create_app(settings(tmp_path, traffic_url, grader_url))) as client:
            ask(client, traffic, GOOD * 10, 0)
            model = drift_when(client, lambda m: m["recent_calls"] == 10)
    finally:
        grader.always = None
    signal = judge_signal(model)
    assert model["ready"] and not model["alarm"]
    assert signal["score"] is None and signal["reference"] is None
    assert "0 vs 0 graded answers" in signal["detail"]
    assert grader.calls > 0


def test_only_the_configured_share_of_answered_calls_is_graded(tmp_path: Path) -> None:
    class Constant:
        async def score(self, prompt: str, answer: str) -> float | None:
            return 1.0

    config = DriftConfig(enabled=True, judge="grader", judge_share=0.25)
    monitor = DriftMonitor(config, judge=Constant())
    answered = [Trace(model="m", request={"messages": []}, output="an answer")] * 400
    graded = [s for t in answered if (s := monitor.sample(t)) and s.judged_answer is not None]
    assert 70 <= len(graded) <= 130  # about a quarter (3.4 standard deviations either way)
    failed = Trace(model="m", request={"messages": []}, status="error", error="boom")
    empty = Trace(model="m", request={"messages": []}, output="")
    for trace in [failed, empty] * 50:
        sample = monitor.sample(trace)
        assert sample is not None and sample.judged_answer is None
    unjudged = DriftMonitor(DriftConfig(enabled=True)).sample(answered[0])
    assert unjudged is not None and unjudged.judged_answer is None  # no judge: nothing graded


def test_judge_must_be_a_configured_chat_model(tmp_path: Path) -> None:
    def drift_settings(judge: str) -> Any:
        return load_settings(
            None,
            database=f"sqlite:///{tmp_path / 't.db'}",
            models=[{"name": "fake", "provider": "fake"}],
            observability={"drift": {"enabled": True, "judge": judge}},
        )

    with pytest.raises(ConfigError, match="'nope' is not under `models:`; known: fake"):
        create_app(drift_settings("nope"))
    known = drift_settings("fake")
    catalog = ModelCatalog.from_settings(known)
    with pytest.raises(ConfigError, match="nothing builds judges"):
        DriftMonitor.from_settings(known, catalog, open_engine(known.database))
