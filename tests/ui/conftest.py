"""Browser fixtures for the workbench tests: one headless Chromium per module, fresh contexts that
fail a test on script errors or requests to any other origin, and two real servers on 127.0.0.1
with scripted models: `open_server` (keys off) and `keyed_server` (a master key, with a knowledge
base, calls, evaluation runs and keys already made, as the screenshots show them)."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, ViewportSize, expect, sync_playwright

from llmforge.core.settings import load_settings
from llmforge.traces import Trace
from llmforge.ui import create_web_app
from tests.fakes.server import serve

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MASTER = "sk-ui-master"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
JUDGE_REPLY = '{"reasoning": "The answer names the right city.", "score": 5}'
MANUAL = (
    "# Pump Manual\n\nThis manual covers the water pump.\n\n"
    "## Maintenance\n\n### Seals\n\nReplace the impeller seals every 2000 hours of running.\n\n"
    "## Safety\n\nAlways disconnect power before opening the housing.\n"
)
CASES = [
    {"id": "france", "input": "Paris", "expected": "Paris"},
    {"id": "japan", "input": "Tokyo", "expected": "Tokyo"},
    {"id": "peru", "input": "Where is Lima?", "expected": "Lima"},
]
DATASET = "\n".join(json.dumps(c) for c in CASES)


def require_chromium() -> None:
    """Skip the calling test module without Chromium (fail under CI=true)."""
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing; install it with `apt-get install -y chromium`"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def workbench_settings(tmp: Path, price: dict[str, float] | None = None, **overrides: Any) -> Any:
    fake: dict[str, Any] = {"name": "fake", "provider": "fake", "responses": ["Paris"]}
    if price:
        fake["price"] = price
    return load_settings(
        None,
        database=f"sqlite:///{tmp / 'ui.db'}",
        models=[
            fake,
            {"name": "echo", "provider": "fake"},  # answers with the question
            {"name": "judge", "provider": "fake", "responses": [JUDGE_REPLY]},
            {"name": "broken", "provider": "openai", "base_url": "http://127.0.0.1:9/v1"},
            {
                "name": "docs",
                "provider": "rag",
                "kb": "manuals",
                "model": "cited",
                "rag": {"retrieval": "always", "min_relevance": 0.0},
            },
            {
                "name": "cited",
                "provider": "fake",
                "responses": ["Replace the impeller seals every 2000 hours [1]."],
            },
        ],
        embeddings=[{"name": "hash", "provider": "fake", "dimensions": 64}],
        kb={"path": str(tmp / "kb"), "embedding": "hash"},
        server={"preload": False},
        router={"retries": 0},
        observability={
            "drift": {"enabled": True, "reference_size": 10, "window_size": 10, "min_samples": 5}
        },
        **overrides,
    )


@dataclass
class Server:
    base: str
    key: str | None = None
    made: dict[str, Any] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.base + path, headers=self.headers(), timeout=30, **kw)

    def chat(self, model: str, text: str) -> httpx.Response:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 16,  # keeps a budgeted key's worst case small on the priced model
        }
        return self.call("POST", "/v1/chat/completions", json=body)

    def wait_for_run(self, run_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = self.call("GET", f"/v1/evals/runs/{run_id}")
            if r.status_code == 200 and r.json()["status"] != "running":
                body: dict[str, Any] = r.json()
                return body
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} did not finish")


@pytest.fixture(scope="session")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(create_web_app(workbench_settings(tmp_path_factory.mktemp("open")))) as base:
        yield Server(base)


def ensure_manual(server: Server) -> None:
    """The knowledge base `manuals` (what the `docs` model searches) holding the pump manual."""
    if server.call("GET", "/v1/kb/manuals").status_code == 200:
        return
    assert server.call("POST", "/v1/kb", json={"name": "manuals"}).status_code == 201
    files = {"files": ("pump.md", MANUAL.encode())}
    up = server.call("POST", "/v1/kb/manuals/documents", files=files)
    assert up.status_code == 200, up.text


def populate(server: Server) -> None:
    """What a working installation has: a knowledge base with a manual, calls of every kind,
    two evaluation runs and a few keys."""
    ensure_manual(server)
    for i in range(12):
        server.chat("fake", f"What is the capital of France? ({i})")
    server.chat("docs", "How often do I replace the seals?")
    for _ in range(2):
        server.chat("broken", "are you there?")
    runs = []
    for model, metrics, judge in (
        ("echo", ["exact_match", "token_f1"], None),
        ("fake", ["exact_match", "token_f1", "rubric"], "judge"),
    ):
        body = {"dataset": DATASET, "dataset_name": "capitals", "model": model}
        r = server.call("POST", "/v1/evals/runs", json={**body, "metrics": metrics, "judge": judge})
        assert r.status_code == 202, r.text
        runs.append(server.wait_for_run(r.json()["id"])["id"])
    server.made["runs"] = runs
    keys = [
        {"name": "search-team", "models": ["docs", "fake"], "rpm": 120, "budget_usd": 5.0},
        {"name": "batch-jobs", "tpm": 200000, "budget_usd": 1.0},
        {"name": "intern"},
    ]
    made = [server.call("POST", "/admin/keys", json=k).json() for k in keys]
    server.made["keys"] = made
    user = Server(server.base, made[0]["key"])
    for i in range(3):
        assert user.chat("fake", f"A question from the search team ({i})").status_code == 200


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("keyed")
    price = {"input_per_mtok": 2000.0, "output_per_mtok": 6000.0}  # cents a call, to see spend
    settings = workbench_settings(folder, price, master_key=MASTER)
    app = create_web_app(settings)
    with serve(app) as base:
        server = Server(base, MASTER)
        populate(server)
        app.state.ctx.traces.write(past_day([k["id"] for k in server.made["keys"]]))
        yield server


def past_day(key_ids: list[str]) -> list[Trace]:
    """A day of calls as the trace store keeps them, so charts have a history to draw."""
    rng = random.Random(7)
    now = time.time()
    rows = []
    for step in range(72):  # every 20 minutes
        busy = 1 + math.sin(step / 72 * 2 * math.pi) * 0.6
        for _ in range(int(rng.randint(4, 14) * busy)):
            failed = rng.random() < 0.04
            latency = rng.lognormvariate(5.5, 0.5) * (3 if failed else 1)
            model = rng.choice(["fake", "fake", "docs", "echo"])
            rows.append(
                Trace(
                    created_at=now - 86400 + step * 1200 + rng.uniform(0, 1200),
                    model=model,
                    served_by=None if failed else model,
                    request={"messages": [{"role": "user", "content": "an earlier question"}]},
                    output="" if failed else "an earlier answer",
                    prompt_tokens=rng.randint(20, 400),
                    completion_tokens=0 if failed else rng.randint(10, 300),
                    latency_ms=latency,
                    status="error" if failed else "ok",
                    error="model 'fake': upstream timed out" if failed else None,
                    cost_usd=0.0 if failed else rng.uniform(0.0005, 0.004),
                    key_id=rng.choice(key_ids),
                    cache=rng.choice(["miss", "miss", "miss", "hit"]),
                    finish_reason=None if failed else "stop",
                )
            )
    return rows


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per test module: Playwright's sync API keeps an event loop running while it
    is open, which asyncio tests of later modules could not start beside."""
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


PageFactory = Callable[..., Page]


@pytest.fixture
def new_page(browser: Browser) -> Iterator[PageFactory]:
    """`new_page(server, viewport=..., locale=..., key=...)`: a page in a fresh browser context
    (empty localStorage; `key` stored as the API key). The test fails on a script error or a
    request to another origin."""
    contexts = []
    script_errors: list[str] = []
    outside: list[str] = []

    def make(server: Server, viewport: ViewportSize = DESKTOP, **options: Any) -> Page:
        key = options.pop("key", None)
        context = browser.new_context(viewport=viewport, **options)
        contexts.append(context)

        def only_local(route: Route) -> None:
            if route.request.url.startswith(server.base + "/"):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        context.route("**/*", only_local)
        if key:
            context.add_init_script(f"localStorage.setItem('llmforge.apiKey', {json.dumps(key)})")
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("pageerror", lambda e: script_errors.append(str(e)))
        return page

    try:
        yield make
        assert script_errors == []
        assert outside == []
    finally:
        for context in contexts:
            context.close()


def open_page(page: Page, server: Server, path: str) -> None:
    page.goto(server.base + path)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")


# -- the operations pages: distillation, agents, review queue, audit -------------------------------


@dataclass
class OpsServer(Server):
    """A keyed server with agents over a scripted OpenAI-compatible upstream (`upstream`), whose
    database (`database`) the tests also reach through the packages' own stores."""

    upstream: Any = None
    database: str = ""


def ops_settings(tmp: Path, upstream: str) -> Any:
    """Master key on; `gpt` is the fake upstream's tool-calling model; the agent `ops-helper`
    asks a person before each calculator call; every call is audited."""
    return load_settings(
        None,
        database=f"sqlite:///{tmp / 'ops.db'}",
        master_key=MASTER,
        models=[
            {"name": "fake", "provider": "fake", "responses": ["injection"]},
            {
                "name": "gpt",
                "provider": "openai",
                "base_url": upstream + "/v1",
                "model_id": "tools",
            },
        ],
        embeddings=[{"name": "hash", "provider": "fake", "dimensions": 16}],
        kb={"path": str(tmp / "kb"), "embedding": "hash"},
        agents={
            "definitions": [
                {
                    "name": "ops-helper",
                    "model": "gpt",
                    "description": "Does arithmetic for the operations team.",
                    "tools": [{"name": "calculator", "approval": "required"}],
                }
            ],
            "sandbox": {"scratch": str(tmp / "scratch")},
        },
        server={"preload": False},
        router={"retries": 0},
        audit={"requests": True},
    )


@contextmanager
def ops_server_at(tmp: Path) -> Iterator[OpsServer]:
    from tests.fakes.openai_upstream import FakeOpenAI

    fake = FakeOpenAI()
    with serve(fake.app) as upstream:
        settings = ops_settings(tmp, upstream)
        with serve(create_web_app(settings)) as base:
            yield OpsServer(base, MASTER, upstream=fake, database=settings.database)


@pytest.fixture(scope="module")
def ops_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsServer]:
    """A fresh operations server per test module (the audit test breaks its log on purpose)."""
    with ops_server_at(tmp_path_factory.mktemp("ops")) as server:
        yield server


def screenshot(page: Page, name: str, folder: Path) -> Path:
    """`page` as `folder/name.png`, also kept in $LLMFORGE_UI_SCREENSHOTS when set (docs/img)."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    keep = os.environ.get("LLMFORGE_UI_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path
