"""`/v1/evals/...` through the real ASGI app: list, detail, the HTML report, 404 and auth."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from llmforge.core.db import open_engine
from llmforge.core.settings import Settings, load_settings
from llmforge.evals import CaseResult, EvalStore, MetricSummary, Output, RunInfo, Score
from llmforge.gateway import create_app

MODELS = [{"name": "fake", "provider": "fake", "responses": ["hi"]}]
EMBEDDINGS = [{"name": "hash", "provider": "fake"}]


def settings(tmp: Path, **extra: object) -> Settings:
    return load_settings(
        None, database=f"sqlite:///{tmp / 'gw.db'}", models=MODELS, embeddings=EMBEDDINGS, **extra
    )


def seed(s: Settings) -> None:
    store = EvalStore(open_engine(s.database))
    store.create_run(
        RunInfo(
            id="r1",
            created_at=1.0,
            dataset="qa",
            dataset_digest="d",
            cases=1,
            target="fake",
            metrics=["exact_match"],
            status="done",
            summary={"exact_match": MetricSummary(mean=1.0, scored=1)},
        )
    )
    store.add_result(
        "r1",
        CaseResult(
            case_id="c1",
            position=0,
            case={"input": "<i>q</i>"},
            output=Output(text="hi"),
            scores={"exact_match": Score(value=1.0)},
        ),
    )
    store.engine.dispose()


def test_runs_are_listed_shown_and_reported(tmp_path: Path) -> None:
    s = settings(tmp_path)
    with TestClient(create_app(s)) as client:
        assert client.get("/v1/evals/runs").json() == {"object": "list", "data": []}
        seed(s)
        [run] = client.get("/v1/evals/runs").json()["data"]
        assert run["id"] == "r1" and run["done"] == 1
        assert run["summary"]["exact_match"]["mean"] == 1.0
        detail = client.get("/v1/evals/runs/r1").json()
        assert detail["object"] == "eval_run"
        assert detail["results"][0]["scores"]["exact_match"]["value"] == 1.0
        report = client.get("/v1/evals/runs/r1/report")
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in report.headers["content-security-policy"]
        assert "&lt;i&gt;q&lt;/i&gt;" in report.text and "<svg" in report.text


def test_an_unknown_run_is_an_openai_style_404(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path))) as client:
        for path in ("/v1/evals/runs/nope", "/v1/evals/runs/nope/report"):
            r = client.get(path)
            assert r.status_code == 404
            err = r.json()["error"]
            assert err["code"] == "not_found" and "No evaluation run 'nope'" in err["message"]
        assert client.get("/v1/evals/runs?limit=0").status_code == 400


def test_eval_routes_need_a_key_when_keys_are_on(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path, master_key="sk-master"))) as client:
        r = client.get("/v1/evals/runs")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        ok = client.get("/v1/evals/runs", headers={"Authorization": "Bearer sk-master"})
        assert ok.status_code == 200
