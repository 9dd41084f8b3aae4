"""An agent run's model steps are admitted and billed as the API key that started the run: its
spend, its traces, its budget; a key revoked while its run waits for approval ends the run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from llmforge.gateway import create_app
from llmforge.traces import TraceStore
from tests.agents.conftest import agent_settings, events
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.reply import Call, Reply
from tests.fakes.server import serve

MASTER = "sk-master-billing"


class Keyed:
    def __init__(self, base: str, fake: FakeOpenAI, app: Any) -> None:
        self.base, self.fake, self.app = base, fake, app

    def admin(self, method: str, path: str, **body: Any) -> dict[str, Any]:
        r = httpx.request(
            method,
            self.base + path,
            json=body or None,
            headers={"Authorization": f"Bearer {MASTER}"},
            timeout=30,
        )
        assert r.status_code < 300, r.text
        out: dict[str, Any] = r.json()
        return out

    def run(self, key: str, agent: str, text: str, **body: Any) -> list[dict[str, Any]]:
        r = httpx.post(
            f"{self.base}/v1/agents/{agent}/runs",
            json={"input": text, **body},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        return events(r)


@pytest.fixture(scope="module")
def keyed(
    upstream: tuple[str, FakeOpenAI], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Keyed]:
    base, fake = upstream
    settings = agent_settings(tmp_path_factory.mktemp("billing"), base)
    settings = settings.model_copy(update={"master_key": SecretStr(MASTER)})
    app = create_app(settings)
    with serve(app) as url:
        yield Keyed(url, fake, app)


def _calc(expression: str) -> Reply:
    return Reply(calls=(Call("calculator", f'{{"expression": "{expression}"}}'),))


def test_each_step_is_spent_from_and_traced_to_the_key_that_started_the_run(
    keyed: Keyed,
) -> None:
    keyed.fake.reset()
    made = keyed.admin("POST", "/admin/keys", name="agent-team", budget_usd=100.0)
    keyed.fake.respond(_calc("6 * 7"), Reply(text="42."))
    done = keyed.run(made["key"], "calc", "What is 6 times 7?")[-1]
    assert done["status"] == "done" and done["usage"]["steps"] == 2
    assert done["usage"]["cost_usd"] > 0
    key = keyed.admin("GET", f"/admin/keys/{made['id']}")
    assert key["spent_usd"] == pytest.approx(done["usage"]["cost_usd"], rel=1e-6)
    assert key["reserved_usd"] == 0
    store: TraceStore = keyed.app.state.ctx.traces
    deadline = time.monotonic() + 5
    while True:
        mine = [t for t in store.list(50) if (t.metadata or {}).get("agent_run") == done["run_id"]]
        if len(mine) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [t.key_id for t in mine] == [made["id"], made["id"]]


def test_a_run_stops_at_its_keys_budget_without_calling_the_model(keyed: Keyed) -> None:
    keyed.fake.reset()
    # one step's worst case (1,024 output tokens at $1,000 per million) is about $1
    made = keyed.admin("POST", "/admin/keys", name="small-budget", budget_usd=0.5)
    keyed.fake.respond(_calc("1 + 1"), Reply(text="2"))
    done = keyed.run(made["key"], "calc", "1+1?")[-1]
    assert done["status"] == "budget_exceeded"
    assert "small-budget" in done["stop_reason"] and "budget" in done["stop_reason"]
    assert keyed.fake.calls == 0
    key = keyed.admin("GET", f"/admin/keys/{made['id']}")
    assert key["spent_usd"] == 0 and key["reserved_usd"] == 0


def test_a_key_revoked_while_its_run_waits_for_approval_ends_the_run(keyed: Keyed) -> None:
    keyed.fake.reset()
    made = keyed.admin("POST", "/admin/keys", name="leaver", budget_usd=100.0)
    keyed.fake.respond(Reply(calls=(Call("python", '{"code": "print(1)"}'),)), Reply(text="1"))
    paused = keyed.run(made["key"], "guarded", "run some code", thread_id="leaver")[-1]
    assert paused["type"] == "approval_needed"
    keyed.admin("DELETE", f"/admin/keys/{made['id']}")
    run = keyed.admin("POST", f"/v1/agents/guarded/runs/{paused['run_id']}/approve")
    assert run["status"] == "failed" and "was revoked" in run["stop_reason"]
    assert keyed.fake.calls == 1  # the model was not asked again for the revoked key


def test_a_run_started_with_the_master_key_is_not_limited_by_any_key(keyed: Keyed) -> None:
    keyed.fake.reset()
    keyed.fake.respond(_calc("2 + 2"), Reply(text="4"))
    done = keyed.run(MASTER, "calc", "2+2?")[-1]
    assert done["status"] == "done" and keyed.fake.calls == 2


def test_a_step_over_the_keys_rate_limit_waits_then_gives_up_after_a_few_tries(
    keyed: Keyed, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmforge.gateway.routes import agents

    monkeypatch.setattr(agents, "MAX_RATE_LIMIT_WAIT_S", 0.2)  # the key's window is a minute
    keyed.fake.reset()
    made = keyed.admin("POST", "/admin/keys", name="one-a-minute", rpm=1, budget_usd=100.0)
    keyed.fake.respond(_calc("3 * 3"), Reply(text="9"))
    started = time.monotonic()
    done = keyed.run(made["key"], "calc", "3*3?")[-1]
    assert time.monotonic() - started >= (agents.RATE_LIMIT_TRIES - 1) * 0.2
    assert done["status"] == "failed" and "one-a-minute" in done["stop_reason"]
    assert keyed.fake.calls == 1  # the first step ran; the second never got past the limit


def test_a_key_may_not_start_an_agent_on_a_model_outside_its_scope(keyed: Keyed) -> None:
    keyed.fake.reset()
    made = keyed.admin("POST", "/admin/keys", name="helper-only", models=["helper"])
    r = httpx.post(
        f"{keyed.base}/v1/agents/calc/runs",
        json={"input": "1+1?"},
        headers={"Authorization": f"Bearer {made['key']}"},
        timeout=30,
    )
    assert r.status_code == 403, r.text
    assert "may not use model 'gpt'" in r.json()["error"]["message"]
    assert keyed.fake.calls == 0
    runs = keyed.admin("GET", "/v1/agents/calc/runs")["data"]
    assert all(run.get("key_id") != made["id"] for run in runs)
