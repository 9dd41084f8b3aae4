"""Agent runs against a live server, the upstream scripted to answer with tool calls."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai

from llmforge.audit import AuditLog
from llmforge.core.config import AgentLimits
from llmforge.core.db import open_engine
from llmforge.traces import TraceStore
from tests.agents.conftest import Live, start
from tests.fakes.reply import Call, Reply


def _calc(expression: str) -> Reply:
    return Reply(calls=(Call("calculator", f'{{"expression": "{expression}"}}'),))


def test_tool_called_and_answer_streamed_as_typed_events(gw: Live) -> None:
    gw.fake.respond(_calc("17 * 23"), Reply(text="It is 391."))
    evs = start(gw.base, "calc", "What is 17 times 23?")
    assert [(e["type"], e.get("node")) for e in evs] == [
        ("step", "agent"),
        ("step", "tools"),
        ("tool_call", None),
        ("tool_result", None),
        ("step", "agent"),
        ("message", None),
        ("done", None),
    ]
    assert evs[2]["name"] == "calculator" and evs[2]["arguments"] == {"expression": "17 * 23"}
    assert evs[3]["text"] == "17 * 23 = 391" and not evs[3]["is_error"]
    done = evs[-1]
    assert done["status"] == "done" and done["output"] == "It is 391."
    assert done["usage"]["steps"] == 2 and done["usage"]["cost_usd"] > 0
    offered = gw.fake.requests[0]["tools"][0]["function"]
    assert offered["name"] == "calculator"
    assert offered["parameters"]["required"] == ["expression"]
    second = gw.fake.requests[1]["messages"]
    call_id = second[-2]["tool_calls"][0]["id"]
    assert second[-1] == {"role": "tool", "tool_call_id": call_id, "content": "17 * 23 = 391"}


def test_every_model_step_is_traced_with_the_run_id(gw: Live) -> None:
    gw.fake.respond(_calc("1 + 1"), Reply(text="2"))
    run_id = start(gw.base, "calc", "1+1?")[-1]["run_id"]
    store: TraceStore = gw.app.state.ctx.traces
    deadline = time.monotonic() + 5
    while True:
        mine = [t for t in store.list(50) if (t.metadata or {}).get("agent_run") == run_id]
        if len(mine) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sorted((t.metadata or {})["agent_step"] for t in mine) == ["1", "2"]
    assert {t.model for t in mine} == {"gpt"} and mine[0].metadata["agent"] == "calc"


def test_run_is_readable_with_its_events_and_listed(gw: Live) -> None:
    gw.fake.respond(Reply(text="Hello."))
    run_id = start(gw.base, "calc", "hi")[-1]["run_id"]
    run = httpx.get(f"{gw.base}/v1/agents/calc/runs/{run_id}?events=true").json()
    assert run["status"] == "done" and run["output"] == "Hello."
    assert [e["type"] for e in run["events"]][-1] == "done"
    listed = httpx.get(f"{gw.base}/v1/agents/calc/runs?status=done").json()["data"]
    assert run_id in [r["id"] for r in listed]
    assert httpx.get(f"{gw.base}/v1/agents/looper/runs/{run_id}").status_code == 404
    assert httpx.get(f"{gw.base}/v1/agents/nope").status_code == 404


def test_run_without_stream_answers_the_finished_run(gw: Live) -> None:
    gw.fake.respond(_calc("2 ** 10"), Reply(text="1024"))
    r = httpx.post(
        f"{gw.base}/v1/agents/calc/runs", json={"input": "2^10?", "stream": False}, timeout=30
    )
    assert r.status_code == 200 and r.json()["status"] == "done" and r.json()["output"] == "1024"


def test_mcp_server_tools_are_called_over_stdio(gw: Live) -> None:
    gw.fake.respond(Reply(calls=(Call("tiny__shout", '{"text": "hello"}'),)), Reply(text="Done."))
    evs = start(gw.base, "tiny", "Shout hello")
    offered = sorted(t["function"]["name"] for t in gw.fake.requests[0]["tools"])
    assert offered == ["tiny__add", "tiny__shout"]
    result = next(e for e in evs if e["type"] == "tool_result")
    assert result["text"] == "HELLO!" and not result["is_error"]
    assert evs[-1]["status"] == "done"
    log = Path(gw.settings.agents.mcp_servers[0].env["TINY_MCP_LOG"]).read_text()
    assert log.splitlines() == ["shout hello"]


def test_bad_tool_arguments_are_an_error_the_model_reads(gw: Live) -> None:
    gw.fake.respond(
        Reply(calls=(Call("calculator", '{"expr": 1}'), Call("nope", "{}"))), Reply(text="Sorry.")
    )
    evs = start(gw.base, "calc", "?")
    results = [e for e in evs if e["type"] == "tool_result"]
    assert [r["is_error"] for r in results] == [True, True]
    assert "expression" in results[0]["text"] and "no tool 'nope'" in results[1]["text"]
    assert evs[-1]["status"] == "done"


def test_budget_stops_a_looping_agent(gw: Live) -> None:
    gw.fake.respond(*[_calc("1 + 1")] * 10)
    evs = start(gw.base, "looper", "loop forever")
    done = evs[-1]
    assert done["type"] == "done" and done["status"] == "budget_exceeded"
    assert done["stop_reason"].startswith("max_steps: 3")
    assert gw.fake.calls == 3


def test_wall_time_budget_stops_a_slow_run(upstream: tuple[str, object], tmp_path: Path) -> None:
    from llmforge.gateway import create_app
    from tests.agents.conftest import agent_settings
    from tests.fakes.openai_upstream import FakeOpenAI, Fault
    from tests.fakes.server import serve

    base, fake = upstream
    assert isinstance(fake, FakeOpenAI)
    fake.reset()
    settings = agent_settings(tmp_path, base)
    slow = settings.agents.definitions[0].model_copy(
        update={"name": "slow", "limits": AgentLimits(max_wall_s=1.0)}
    )
    settings = settings.model_copy(
        update={"agents": settings.agents.model_copy(update={"definitions": [slow]})}
    )
    fake.script(Fault(delay_s=5))
    with serve(create_app(settings)) as url:
        started = time.monotonic()
        evs = start(url, "slow", "take your time")
        assert time.monotonic() - started < 4
    assert evs[-1]["status"] == "budget_exceeded" and "max_wall_s" in evs[-1]["stop_reason"]


def test_reject_ends_the_run_without_calling_the_tool(gw: Live) -> None:
    gw.fake.respond(Reply(calls=(Call("python", '{"code": "print(1)"}'),)))
    evs = start(gw.base, "guarded", "run some code", thread_id="reject-thread")
    assert [e["type"] for e in evs][-2:] == ["tool_call", "approval_needed"] or evs[-1][
        "type"
    ] == "approval_needed"
    run_id = evs[-1]["run_id"]
    assert evs[-1]["calls"][0]["name"] == "python"
    pending = httpx.get(f"{gw.base}/v1/agents/pending").json()["data"]
    assert [p["id"] for p in pending] == [run_id]
    r = httpx.post(
        f"{gw.base}/v1/agents/guarded/runs/{run_id}/reject", json={"reason": "no code today"}
    )
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["status"] == "rejected" and "no code today" in run["stop_reason"]
    assert gw.fake.calls == 1  # the model was not asked again
    assert not (Path(gw.settings.agents.sandbox.scratch) / run_id).exists()
    again = httpx.post(f"{gw.base}/v1/agents/guarded/runs/{run_id}/approve", json={})
    assert again.status_code == 400 and "not waiting for approval" in again.text
    assert httpx.get(f"{gw.base}/v1/agents/pending").json()["data"] == []
    # the decision is a row of the tamper-evident audit log, and the chain still verifies
    log = AuditLog(open_engine(gw.settings.database))
    decisions = [e for e in log.entries() if e.subject == run_id]
    assert [(e.kind, e.data["agent"]) for e in decisions] == [("agent.reject", "guarded")]
    assert log.verify().ok


def test_memory_is_recalled_in_a_later_thread_of_the_same_user(gw: Live) -> None:
    note = '{"note": "The user\'s favourite colour is teal."}'
    gw.fake.respond(Reply(calls=(Call("remember", note),)), Reply(text="Noted."))
    first = start(gw.base, "mem", "My favourite colour is teal.", user="ann")
    assert first[-1]["status"] == "done"
    gw.fake.reset()
    gw.fake.respond(
        Reply(calls=(Call("recall", '{"query": "favourite colour"}'),)), Reply(text="Teal.")
    )
    later = start(gw.base, "mem", "What is my favourite colour?", user="ann")
    system = gw.fake.requests[0]["messages"][0]
    assert system["role"] == "system" and "favourite colour is teal" in system["content"]
    recalled = next(e for e in later if e["type"] == "tool_result")
    assert "favourite colour is teal" in recalled["text"]
    assert later[0]["run_id"] != first[0]["run_id"]
    gw.fake.reset()
    gw.fake.respond(
        Reply(calls=(Call("recall", '{"query": "favourite colour"}'),)), Reply(text="?")
    )
    other = start(gw.base, "mem", "What is my favourite colour?", user="bob")
    assert "teal" not in gw.fake.requests[0]["messages"][0]["content"]
    assert next(e for e in other if e["type"] == "tool_result")["text"] == "Nothing remembered yet."


def test_a_thread_keeps_its_conversation_across_runs(gw: Live) -> None:
    gw.fake.respond(Reply(text="Hello Ann."), Reply(text="You are Ann."))
    start(gw.base, "calc", "I am Ann.", thread_id="t-conv")
    start(gw.base, "calc", "Who am I?", thread_id="t-conv")
    seen = [(m["role"], m["content"]) for m in gw.fake.requests[1]["messages"][1:]]
    assert seen == [
        ("user", "I am Ann."),
        ("assistant", "Hello Ann."),
        ("user", "Who am I?"),
    ]


def test_an_agent_is_a_model_any_openai_client_can_chat_with(gw: Live) -> None:
    gw.fake.respond(_calc("6 * 7"), Reply(text="The answer is 42."))
    client = openai.OpenAI(base_url=gw.base + "/v1", api_key="x")
    answer = client.chat.completions.create(
        model="helper", messages=[{"role": "user", "content": "6 times 7?"}]
    )
    assert answer.choices[0].message.content == "The answer is 42."
    assert answer.usage is not None and answer.usage.total_tokens > 0
    stream = client.chat.completions.create(
        model="helper", messages=[{"role": "user", "content": "again"}], stream=True
    )
    gw.fake.respond(Reply(text="Still 42."))
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text in ("Still 42.", "again")  # scripted reply, or the echo model's words
    runs = httpx.get(f"{gw.base}/v1/agents/calc/runs").json()["data"]
    assert any(r["user_id"] == "model:helper" for r in runs)


def test_bad_run_requests_are_400s(gw: Live) -> None:
    r = httpx.post(f"{gw.base}/v1/agents/calc/runs", json={"input": []})
    assert r.status_code == 400
    r = httpx.post(f"{gw.base}/v1/agents/calc/runs", json={"input": "x", "bogus": 1})
    assert r.status_code == 400
    r = httpx.post(f"{gw.base}/v1/agents/nope/runs", json={"input": "x"})
    assert r.status_code == 404 and "calc" in r.json()["error"]["message"]


def test_cli_lists_pending_runs_and_rejects_one(gw: Live) -> None:
    import json
    import subprocess
    import sys

    gw.fake.respond(Reply(calls=(Call("python", '{"code": "print(2)"}'),)))
    run_id = start(gw.base, "guarded", "run it", thread_id="cli-thread")[-1]["run_id"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "llmforge", "agent", *args, "--url", gw.base],
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = cli("pending", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["run"] for r in json.loads(listed.stdout)] == [run_id]
    rejected = cli("reject", run_id, "--reason", "not now", "--json")
    assert rejected.returncode == 0, rejected.stderr
    assert json.loads(rejected.stdout)["status"] == "rejected"
    again = cli("approve", run_id)
    assert again.returncode == 1 and "not waiting for approval" in again.stderr
