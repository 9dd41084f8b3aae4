"""Text no database or model can take is refused at the door, on every route.

A lone surrogate (`"\\ud800"`) is valid JSON to Python's standard library but not UTF-8: it once
reached a trace row the database could not store (and stopped all tracing) and a model whose error
echoed the whole rendered prompt. Every route now answers 400 in its API's shape, and the calls
after it are served and traced as usual.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from llmforge.core.settings import load_settings
from llmforge.traces import TraceStore
from llmforge.ui import create_web_app
from tests.fakes.server import serve

LONE = b"\\ud800"  # as the JSON escape a client sends


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FastAPI]]:
    tmp: Path = tmp_path_factory.mktemp("strict")
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp / 'gw.db'}",
        models=[{"name": "fake", "provider": "fake", "responses": ["All good."]}],
        embeddings=[{"name": "hash", "provider": "fake", "dimensions": 8}],
        kb={"path": str(tmp / "kb"), "embedding": "hash"},
        server={"preload": False},
    )
    app = create_web_app(settings)
    with serve(app) as base:
        yield base, app


def post(base: str, path: str, body: bytes) -> httpx.Response:
    return httpx.post(
        base + path, content=body, headers={"content-type": "application/json"}, timeout=10
    )


ROUTES = [
    ("/v1/chat/completions", b'{"model":"fake","messages":[{"role":"user","content":"%s"}]}'),
    ("/v1/completions", b'{"model":"fake","prompt":"%s"}'),
    ("/v1/embeddings", b'{"model":"hash","input":"%s"}'),
    ("/v1/kb/docs/search", b'{"query":"%s"}'),
    ("/api/conversations", b'{"title":"%s"}'),
    ("/v1/kb", b'{"name":"%s"}'),
]


@pytest.mark.parametrize(("path", "template"), ROUTES, ids=[p for p, _ in ROUTES])
def test_lone_surrogate_is_a_400_on_openai_shaped_routes(
    gateway: tuple[str, FastAPI], path: str, template: bytes
) -> None:
    r = post(gateway[0], path, template % LONE)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "JSON" in err["message"]


def test_lone_surrogate_is_a_400_in_anthropics_shape(gateway: tuple[str, FastAPI]) -> None:
    body = b'{"model":"fake","max_tokens":8,"system":"SECRET-SYSTEM-PROMPT",'
    body += b'"messages":[{"role":"user","content":"%s"}]}' % LONE
    r = post(gateway[0], "/v1/messages", body)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "SECRET-SYSTEM-PROMPT" not in r.text  # nothing of the prompt is echoed


def test_calls_after_a_refused_one_are_served_and_traced(gateway: tuple[str, FastAPI]) -> None:
    base, app = gateway
    bad = b'{"model":"fake","max_tokens":8,"messages":[{"role":"user","content":"%s"}]}' % LONE
    assert post(base, "/v1/messages", bad).status_code == 400
    ids = []
    for _ in range(3):
        r = httpx.post(
            base + "/v1/chat/completions",
            json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert r.status_code == 200
        ids.append(r.headers["x-request-id"])
    store: TraceStore = app.state.ctx.traces
    deadline = time.monotonic() + 5
    while {t.id for t in store.list(limit=50)} < set(ids):
        assert time.monotonic() < deadline, "the calls after the refused one were not traced"
        time.sleep(0.05)


def test_nan_is_refused_too(gateway: tuple[str, FastAPI]) -> None:
    """The standard library's JSON also takes NaN, which no wire model should see."""
    r = post(gateway[0], "/api/conversations", b'{"title": NaN}')
    assert r.status_code == 400
    r = post(
        gateway[0],
        "/v1/chat/completions",
        b'{"model":"fake","messages":[{"role":"user","content":"x"}],"temperature":NaN}',
    )
    assert r.status_code == 400
