"""Starting an evaluation run over HTTP (what the evaluations page does) and comparing two runs:
the run goes on in the background and is polled; bad requests are refused before it starts.
Scripted chat models on the real app and a temporary SQLite file."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmforge.core.settings import load_settings
from llmforge.gateway import create_app

MASTER = "sk-master-evals"
CASES = [
    {"id": "capital", "input": "Paris", "expected": "Paris"},
    {"id": "echo", "input": "hello", "expected": "hello"},
    {"id": "color", "input": "blue", "expected": "Paris"},
]
DATASET = "\n".join(json.dumps(c) for c in CASES)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp_path / 't.db'}",
        models=[
            {"name": "echo", "provider": "fake"},  # answers with the question
            {"name": "paris", "provider": "fake", "responses": ["Paris"]},
        ],
        embeddings=[],
        server={"preload": False},
        master_key=MASTER,
    )
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {MASTER}"}) as c:
        yield c


def start(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/evals/runs", json={"dataset": DATASET, "dataset_name": "qa", **body})


def finished(client: TestClient, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        response = client.get(f"/v1/evals/runs/{run_id}")
        if response.status_code == 200 and response.json()["status"] != "running":
            body: dict[str, Any] = response.json()
            return body
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")


def test_a_started_run_scores_every_case_and_two_runs_compare(client: TestClient) -> None:
    a = start(client, model="echo", metrics=["exact_match"])
    assert a.status_code == 202, a.text
    assert a.json()["cases"] == 3 and a.json()["id"].startswith("qa-echo-")
    b = start(client, model="paris", metrics=["exact_match", "token_f1"])
    run_a, run_b = finished(client, a.json()["id"]), finished(client, b.json()["id"])
    assert run_a["status"] == "done"
    assert run_a["summary"]["exact_match"]["mean"] == pytest.approx(2 / 3)
    assert [r["case_id"] for r in run_b["results"]] == ["capital", "echo", "color"]
    assert [r["scores"]["exact_match"]["value"] for r in run_b["results"]] == [1.0, 0.0, 1.0]

    listed = client.get("/v1/evals/runs").json()["data"]
    assert {r["id"] for r in listed} == {run_a["id"], run_b["id"]}

    comparison = client.get("/v1/evals/compare", params={"a": run_a["id"], "b": run_b["id"]})
    assert comparison.status_code == 200
    body = comparison.json()
    assert body["shared_cases"] == 3
    assert [m["metric"] for m in body["metrics"]] == ["exact_match"]  # the metrics both have
    delta = body["metrics"][0]
    assert delta["delta"] == pytest.approx(0.0)
    assert (delta["wins"], delta["losses"], delta["ties"]) == (1, 1, 1)
    assert delta["ci_low"] <= 0 <= delta["ci_high"] and not delta["significant"]
    assert body["a"]["target"] == "echo" and body["b"]["target"] == "paris"

    again = start(client, model="echo", metrics=["exact_match"])  # the same run: resumed, done
    assert again.json()["id"] == run_a["id"]
    assert finished(client, run_a["id"])["done"] == 3


def test_bad_requests_are_refused_before_a_run_starts(client: TestClient) -> None:
    unknown = start(client, model="echo", metrics=["exact_match", "vibes"])
    assert unknown.status_code == 400 and "vibes" in unknown.json()["error"]["message"]
    no_judge = start(client, model="echo", metrics=["rubric"])
    assert no_judge.status_code == 400 and "judge" in no_judge.json()["error"]["message"]
    no_model = start(client, model="gpt-9", metrics=["exact_match"])
    assert no_model.status_code == 404
    bad = client.post(
        "/v1/evals/runs", json={"dataset": '{"input": "ok"}\nnot json', "model": "echo"}
    )
    assert bad.status_code == 400
    assert "line 2: not JSON" in bad.json()["error"]["message"]
    assert client.get("/v1/evals/runs").json()["data"] == []
    missing = client.get("/v1/evals/compare", params={"a": "x", "b": "y"})
    assert missing.status_code == 404


def test_only_the_master_key_starts_runs(client: TestClient) -> None:
    key = client.post("/admin/keys", json={"name": "reader"}).json()["key"]
    refused = client.post(
        "/v1/evals/runs",
        json={"dataset": DATASET, "model": "echo"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert refused.status_code == 403
    readable = client.get("/v1/evals/runs", headers={"Authorization": f"Bearer {key}"})
    assert readable.status_code == 200
