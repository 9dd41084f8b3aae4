"""`GET /metrics`: every family an operator dashboards on, with the right values after real calls,
and the `x-llmforge-overhead-ms` header. Live gateways on 127.0.0.1 in front of a fake OpenAI
upstream; the text is parsed with prometheus_client's own parser."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from llmforge.core.settings import Settings, load_settings
from llmforge.gateway import create_app
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.server import serve

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    fake = FakeOpenAI()
    with serve(fake.app) as base:
        yield base


def settings_for(tmp: Path, upstream: str) -> Settings:
    def up(name: str, model_id: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "provider": "openai",
            "base_url": upstream + "/v1",
            "model_id": model_id,
            **extra,
        }

    return load_settings(
        None,
        database=f"sqlite:///{tmp / 'gw.db'}",
        models=[
            up("echo", "echo", retries=0, price={"input_per_mtok": 1.0, "output_per_mtok": 2.0}),
            up("flaky", "fail-503", retries=1, fallbacks=["echo"]),
            up("down", "fail-500", retries=0),
            {"name": "fake", "provider": "fake", "responses": ["Hello from the fake model."]},
            {"name": "slow", "provider": "fake", "responses": ["one two three"], "delay_s": 0.3},
        ],
        embeddings=[{"name": "hash", "provider": "fake", "dimensions": 8}],
        server={"preload": False},
        router={"backoff_s": 0.01, "circuit_failures": 2},
        cache={"enabled": True},
    )


def scrape(base: str) -> Samples:
    r = httpx.get(base + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def chat(base: str, model: str, text: str, **params: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **params}
    return httpx.post(base + "/v1/chat/completions", json=body, timeout=30)


def stream(base: str, model: str, text: str) -> tuple[httpx.Headers, list[str]]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": True}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=30) as r:
        return r.headers, [line for line in r.iter_lines() if line]


def settled(base: str, name: str, expected: float, **labels: str) -> Samples:
    """Streams are counted when their settlement task ends, just after the last chunk."""
    deadline = time.monotonic() + 5
    while True:
        samples = scrape(base)
        if value(samples, name, **labels) == expected or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def test_metrics_count_requests_tokens_cost_cache_retries_fallbacks_and_errors(
    tmp_path: Path, upstream: str
) -> None:
    with serve(create_app(settings_for(tmp_path, upstream))) as base:
        assert chat(base, "echo", "a b c").status_code == 200  # miss: 7 prompt, 3 completion
        assert chat(base, "echo", "a b c").headers["x-llmforge-cache"] == "hit"
        flaky = chat(base, "flaky", "x y")  # 503, retried once, then falls back to echo
        assert flaky.status_code == 200 and flaky.headers["x-llmforge-served-by"] == "echo"
        assert chat(base, "down", "boom").status_code == 502
        stream(base, "fake", "hi")
        emb = httpx.post(base + "/v1/embeddings", json={"model": "hash", "input": ["a b"]})
        assert emb.status_code == 200
        s = settled(
            base,
            "llmforge_requests_total",
            1,
            model="fake",
            served_by="fake",
            status="ok",
            kind="chat",
        )

    def requests(model: str, served_by: str, status: str = "ok", kind: str = "chat") -> float:
        labels = {"model": model, "served_by": served_by, "status": status, "kind": kind}
        return value(s, "llmforge_requests_total", **labels)

    assert requests("echo", "echo") == 1
    assert requests("echo", "") == 1  # the cache hit: no model served it
    assert requests("flaky", "echo") == 1
    assert requests("down", "", "error") == 1
    assert requests("hash", "hash", kind="embedding") == 1

    assert value(s, "llmforge_request_duration_seconds_count", model="echo", kind="chat") == 2
    assert value(s, "llmforge_request_duration_seconds_sum", model="echo", kind="chat") > 0
    assert value(s, "llmforge_time_to_first_token_seconds_count", model="fake") == 1
    assert value(s, "llmforge_time_to_first_token_seconds_count", model="echo") == 0
    assert value(s, "llmforge_gateway_overhead_seconds_count", kind="chat") == 5
    assert value(s, "llmforge_gateway_overhead_seconds_count", kind="embedding") == 1

    # echo served the miss and the fallback (7 prompt tokens each; 3 + 2 completion tokens)
    assert value(s, "llmforge_prompt_tokens_total", model="echo") == 14
    assert value(s, "llmforge_completion_tokens_total", model="echo") == 5
    assert value(s, "llmforge_prompt_tokens_total", model="hash") == 2
    assert value(s, "llmforge_cost_usd_total", model="echo", key="") == pytest.approx(24e-6)

    assert value(s, "llmforge_cache_lookups_total", model="echo", result="miss") == 1
    assert value(s, "llmforge_cache_lookups_total", model="echo", result="hit") == 1
    assert value(s, "llmforge_cache_lookups_total", model="flaky", result="miss") == 1
    assert value(s, "llmforge_retries_total", model="flaky") == 1
    assert value(s, "llmforge_fallbacks_total", model="flaky", from_model="flaky") == 1
    assert value(s, "llmforge_errors_total", model="down", type="UpstreamError") == 1
    assert sum(v for (n, _), v in s.items() if n == "llmforge_errors_total") == 1

    # flaky failed twice (circuit_failures: 2): open; down failed once: still closed
    assert value(s, "llmforge_circuit_state", deployment="flaky") == 2
    assert value(s, "llmforge_circuit_state", deployment="down") == 0
    assert value(s, "llmforge_requests_in_flight") == 0

    labels = {v for (_, ls), _ in s.items() for _, v in ls}
    assert not any(v.startswith("chatcmpl-") for v in labels)  # never a per-request label


def test_circuit_state_shows_half_open_after_the_cooldown(tmp_path: Path, upstream: str) -> None:
    settings = settings_for(tmp_path, upstream).model_copy(
        update={
            "router": settings_for(tmp_path, upstream).router.model_copy(
                update={"circuit_cooldown_s": 0.2}
            )
        }
    )
    with serve(create_app(settings)) as base:
        chat(base, "flaky", "x")
        assert value(scrape(base), "llmforge_circuit_state", deployment="flaky") == 2
        time.sleep(0.25)
        assert value(scrape(base), "llmforge_circuit_state", deployment="flaky") == 1


def test_in_flight_gauge_counts_a_stream_until_its_last_chunk(
    tmp_path: Path, upstream: str
) -> None:
    with serve(create_app(settings_for(tmp_path, upstream))) as base:
        body = {"model": "slow", "messages": [{"role": "user", "content": "go"}], "stream": True}
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            next(lines)
            assert value(scrape(base), "llmforge_requests_in_flight") == 1
            assert [line for line in lines if line][-1] == "data: [DONE]"
        s = settled(
            base,
            "llmforge_requests_total",
            1,
            model="slow",
            served_by="slow",
            status="ok",
            kind="chat",
        )
        assert value(s, "llmforge_requests_in_flight") == 0


def test_overhead_header_is_small_and_measured_when_a_stream_starts(
    tmp_path: Path, upstream: str
) -> None:
    with serve(create_app(settings_for(tmp_path, upstream))) as base:
        plain = chat(base, "fake", "hi")
        assert 0 <= float(plain.headers["x-llmforge-overhead-ms"]) < 100
        started = time.perf_counter()
        headers, lines = stream(base, "slow", "go")  # 3 tokens, 0.3 s upstream wait each
        took_ms = (time.perf_counter() - started) * 1000
        assert lines[-1] == "data: [DONE]" and took_ms > 800
        assert 0 <= float(headers["x-llmforge-overhead-ms"]) < 200  # not the stream's length
        s = settled(
            base,
            "llmforge_requests_total",
            1,
            model="slow",
            served_by="slow",
            status="ok",
            kind="chat",
        )
    assert value(s, "llmforge_gateway_overhead_seconds_count", kind="chat") == 2
    assert value(s, "llmforge_gateway_overhead_seconds_sum", kind="chat") < 0.3


def test_two_apps_in_one_process_keep_separate_metrics(tmp_path: Path, upstream: str) -> None:
    one = create_app(settings_for(tmp_path / "one", upstream))
    two = create_app(settings_for(tmp_path / "two", upstream))
    with serve(one) as a, serve(two) as b:
        chat(a, "fake", "hi")
        labels = {"model": "fake", "served_by": "fake", "status": "ok", "kind": "chat"}
        assert value(scrape(a), "llmforge_requests_total", **labels) == 1
        assert value(scrape(b), "llmforge_requests_total", **labels) == 0


# -- who may read /metrics ----------------------------------------------------------------------


def test_metrics_need_the_master_key_or_the_metrics_token_when_keys_are_on(
    tmp_path: Path, upstream: str
) -> None:
    settings = settings_for(tmp_path, upstream).model_copy(
        update={"master_key": SecretStr("sk-master"), "metrics_token": SecretStr("scrape-me")}
    )
    app = create_app(settings)
    with serve(app) as base:
        created = httpx.post(
            base + "/admin/keys",
            json={"name": "app"},
            headers={"Authorization": "Bearer sk-master"},
            timeout=10,
        )
        user_key = created.json()["key"]

        def get(token: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return httpx.get(base + "/metrics", headers=headers, timeout=10)

        assert get(None).status_code == 401  # key ids, models and traffic are not public
        assert get("nonsense").status_code == 401
        assert get(user_key).status_code == 403  # an ordinary key may call models, not scrape
        for allowed in ("sk-master", "scrape-me"):
            r = get(allowed)
            assert r.status_code == 200 and "llmforge_requests_in_flight" in r.text


def test_metrics_token_alone_closes_metrics_without_keys(tmp_path: Path, upstream: str) -> None:
    settings = settings_for(tmp_path, upstream).model_copy(
        update={"metrics_token": SecretStr("scrape-me")}
    )
    with serve(create_app(settings)) as base:
        assert httpx.get(base + "/metrics", timeout=10).status_code == 401
        ok = httpx.get(base + "/metrics", headers={"Authorization": "Bearer scrape-me"}, timeout=10)
        assert ok.status_code == 200
        # the API itself stays open (no master key)
        assert chat(base, "fake", "hi").status_code == 200
