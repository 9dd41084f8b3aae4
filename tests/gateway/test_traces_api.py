"""The traces API behind the traces page: filters, pages, one call, time series, facets, drift;
with keys on, a key sees only its own calls and drift needs the master key. The real app with
scripted models on a temporary SQLite file."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmforge.core.settings import load_settings
from llmforge.gateway import create_app
from llmforge.traces import Trace

MASTER = "sk-master-traces"
MODELS = [
    {"name": "fake", "provider": "fake", "responses": ["Hello there."]},
    {"name": "other", "provider": "fake", "responses": ["Other answer."]},
]


def settings(tmp: Path, **overrides: Any) -> Any:
    return load_settings(
        None,
        database=f"sqlite:///{tmp / 't.db'}",
        models=MODELS,
        embeddings=[{"name": "hash", "provider": "fake", "dimensions": 16}],
        server={"preload": False},
        **overrides,
    )


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_for_traces(client: TestClient, n: int, key: str = MASTER) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        data: list[dict[str, Any]] = client.get("/v1/traces", headers=auth(key)).json()["data"]
        if len(data) >= n or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


def chat(client: TestClient, key: str, model: str, text: str) -> Any:
    return client.post(
        "/v1/chat/completions",
        headers=auth(key),
        json={"model": model, "messages": [{"role": "user", "content": text}]},
    )


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[TestClient, str, str]]:
    """An app with keys on and two keys, each with one call made."""
    with TestClient(create_app(settings(tmp_path, master_key=MASTER))) as client:
        keys = []
        for name in ("alice", "bob"):
            created = client.post("/admin/keys", headers=auth(MASTER), json={"name": name})
            keys.append(created.json()["key"])
        alice, bob = keys
        assert chat(client, alice, "fake", "alice asks about the weather").status_code == 200
        assert chat(client, bob, "other", "bob asks about trains").status_code == 200
        wait_for_traces(client, 2)
        yield client, alice, bob


def test_a_call_is_listed_with_previews_and_shown_whole(keyed: tuple[TestClient, str, str]) -> None:
    client = keyed[0]
    data = wait_for_traces(client, 2)
    first = next(t for t in data if t["model"] == "fake")
    assert first["prompt_preview"] == "alice asks about the weather"
    assert first["output_preview"] == "Hello there."
    assert first["status"] == "ok"
    assert "request" not in first  # lists carry previews, not whole requests

    whole = client.get(f"/v1/traces/{first['id']}", headers=auth(MASTER)).json()
    assert whole["request"]["messages"] == [
        {"role": "user", "content": "alice asks about the weather"}
    ]
    assert whole["output"] == "Hello there."
    assert whole["prompt_text"] == "alice asks about the weather"
    assert {"latency_ms", "retries", "fallbacks", "cost_usd", "completion_tokens"} <= set(whole)


def test_a_key_sees_only_its_own_calls(keyed: tuple[TestClient, str, str]) -> None:
    client, alice, bob = keyed
    mine = wait_for_traces(client, 1, alice)
    assert [t["prompt_preview"] for t in mine] == ["alice asks about the weather"]
    bobs = wait_for_traces(client, 1, bob)
    assert [t["model"] for t in bobs] == ["other"]

    other = client.get(f"/v1/traces/{bobs[0]['id']}", headers=auth(alice))
    assert other.status_code == 404
    asked = client.get("/v1/traces", params={"key_id": bobs[0]["key_id"]}, headers=auth(alice))
    assert asked.status_code == 403
    facets = client.get("/v1/traces/facets", headers=auth(alice)).json()
    assert facets["models"] == ["fake"]
    assert len(facets["keys"]) == 1
    stats = client.get("/v1/traces/stats", headers=auth(alice)).json()
    assert stats["totals"]["requests"] == 1

    assert client.get("/v1/traces").status_code == 401
    assert client.get("/v1/traces/drift", headers=auth(alice)).status_code == 403
    everything = client.get("/v1/traces/facets", headers=auth(MASTER)).json()
    assert everything["models"] == ["fake", "other"]


def stored(**fields: Any) -> Trace:
    return Trace(**{"model": "fake", "request": {"prompt": "p"}, "kind": "text", **fields})


def test_filters_pages_and_time_series(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path))) as client:
        store = client.app.state.ctx.traces  # type: ignore[attr-defined]
        now = time.time()
        rows = [
            stored(created_at=now - 3000 + i, latency_ms=10.0 * (i + 1), cost_usd=0.001)
            for i in range(100)
        ]
        rows += [
            stored(created_at=now - 600, status="error", error="boom", latency_ms=5.0),
            stored(created_at=now - 500, cache="hit", model="other", latency_ms=1.0),
        ]
        store.write(rows)

        def get(path: str, **params: Any) -> Any:
            response = client.get(path, params=params)
            assert response.status_code == 200, response.text
            return response.json()

        assert [t["error"] for t in get("/v1/traces", status="error")["data"]] == ["boom"]
        assert [t["model"] for t in get("/v1/traces", cache="hit")["data"]] == ["other"]
        assert len(get("/v1/traces", model="fake", since=now - 2950, limit=500)["data"]) == 51
        assert get("/v1/traces", since=now - 400)["data"] == []

        page1 = get("/v1/traces", limit=60)
        assert page1["has_more"] and len(page1["data"]) == 60
        page2 = get("/v1/traces", limit=60, before=page1["next_before"])
        assert not page2["has_more"] and len(page2["data"]) == 42
        ids = [t["id"] for t in page1["data"] + page2["data"]]
        assert len(set(ids)) == 102

        stats = get("/v1/traces/stats", model="fake", since=now - 3600, until=now, buckets=12)
        assert stats["width_s"] == 300 and len(stats["buckets"]) <= 13
        assert stats["totals"]["requests"] == 101
        assert stats["totals"]["errors"] == 1
        assert stats["totals"]["cost_usd"] == pytest.approx(0.1)
        assert stats["totals"]["p50_ms"] == 500.0  # nearest rank over 101 latencies
        assert stats["totals"]["p99_ms"] == 990.0
        assert sum(b["requests"] for b in stats["buckets"]) == 101
        ages = get("/v1/traces/stats", since=0, until=1e11, buckets=60)  # any range: <= 61
        assert len(ages["buckets"]) <= 61 and ages["totals"]["requests"] == 102

        bad = client.get("/v1/traces", params={"status": "weird"})
        assert bad.status_code == 400
        assert client.get("/v1/traces/nope").status_code == 404
        drift = get("/v1/traces/drift")
        assert drift["enabled"] is False and "enabled: true" in drift["hint"]


def test_drift_report_and_reset_when_enabled(tmp_path: Path) -> None:
    drift = {"enabled": True, "reference_size": 10, "window_size": 10, "min_samples": 5}
    with TestClient(
        create_app(settings(tmp_path, master_key=MASTER, observability={"drift": drift}))
    ) as client:
        for i in range(15):
            assert chat(client, MASTER, "fake", f"question number {i}").status_code == 200
        wait_for_traces(client, 15)
        deadline = time.monotonic() + 10
        while True:
            body = client.get("/v1/traces/drift", headers=auth(MASTER)).json()
            model = next((m for m in body["models"] if m["model"] == "fake"), None)
            if (model and model["recent_calls"] == 5) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert body["enabled"] and body["embedding"] == "hash"
        assert model is not None and model["reference_calls"] == 10 and model["ready"]
        assert not model["alarm"]
        metrics = client.get("/metrics", headers=auth(MASTER)).text
        assert 'llmforge_drift_calls{model="fake",window="reference"} 10.0' in metrics

        reset = client.post("/v1/traces/drift/reset", headers=auth(MASTER), json={"model": "fake"})
        assert reset.status_code == 200 and reset.json()["models"] == []
