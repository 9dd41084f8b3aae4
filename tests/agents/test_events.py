"""A run's event stream (GET /v1/agents/{name}/runs/{id}/events) against a live server: the
whole history of a run that paused for approval, and a live stream past a decided approval."""

from __future__ import annotations

import httpx

from tests.agents.conftest import Live, events, start
from tests.fakes.reply import Call, Reply


def _approved_run(gw: Live, thread: str) -> tuple[str, list[dict[str, object]]]:
    """A `guarded` run that paused before `python`; approved with a streamed answer."""
    gw.fake.respond(
        Reply(calls=(Call("python", '{"code": "print(6 * 7)"}'),)), Reply(text="It printed 42.")
    )
    paused = start(gw.base, "guarded", "run some code", thread_id=thread)
    assert paused[-1]["type"] == "approval_needed"
    run_id = str(paused[-1]["run_id"])
    r = httpx.post(
        f"{gw.base}/v1/agents/guarded/runs/{run_id}/approve", json={"stream": True}, timeout=60
    )
    assert r.status_code == 200, r.text
    return run_id, events(r)


def test_live_stream_of_an_approval_goes_on_past_the_decided_pause_to_done(gw: Live) -> None:
    _run_id, streamed = _approved_run(gw, "events-live")
    types = [e["type"] for e in streamed]
    assert types.index("approval_needed") < types.index("tool_result")
    assert types[-1] == "done" and streamed[-1]["status"] == "done"
    assert streamed[-1]["output"] == "It printed 42."
    result = next(e for e in streamed if e["type"] == "tool_result")
    assert result["name"] == "python" and "42" in str(result["text"])


def test_finished_run_replays_its_whole_history_past_the_approval(gw: Live) -> None:
    run_id, _ = _approved_run(gw, "events-replay")
    stored = httpx.get(f"{gw.base}/v1/agents/guarded/runs/{run_id}?events=true").json()["events"]
    r = httpx.get(f"{gw.base}/v1/agents/guarded/runs/{run_id}/events", timeout=10)
    assert r.status_code == 200
    replayed = events(r)
    assert [e["seq"] for e in replayed] == [e["seq"] for e in stored]
    assert [e["type"] for e in replayed][-1] == "done"
    assert "approval_needed" in [e["type"] for e in replayed]
    # a client that reconnects after the approval gets the rest, not an empty stream
    pause = next(e["seq"] for e in replayed if e["type"] == "approval_needed")
    rest = events(
        httpx.get(f"{gw.base}/v1/agents/guarded/runs/{run_id}/events?after={pause}", timeout=10)
    )
    assert rest == replayed[pause:]


def test_stream_of_a_waiting_run_ends_at_the_pause_it_waits_on(gw: Live) -> None:
    gw.fake.respond(Reply(calls=(Call("python", '{"code": "print(1)"}'),)))
    paused = start(gw.base, "guarded", "run some code", thread_id="events-waiting")
    run_id = paused[-1]["run_id"]
    r = httpx.get(f"{gw.base}/v1/agents/guarded/runs/{run_id}/events", timeout=10)
    assert [e["seq"] for e in events(r)] == [e["seq"] for e in paused]
    assert events(r)[-1]["type"] == "approval_needed"
    httpx.post(f"{gw.base}/v1/agents/guarded/runs/{run_id}/reject", json={})
