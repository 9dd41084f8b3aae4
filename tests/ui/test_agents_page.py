"""The agents page in headless Chromium against a real server with a master key. The agent
`ops-helper` runs on a scripted OpenAI-compatible upstream and asks a person before each calculator
call: a run started in the page streams its events live, pauses, shows up waiting for approval,
and finishes once approved there with edited arguments; a rejected run stops without the tool; a
key that is not the master key may start runs but not decide them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, ViewportSize, expect

from tests.fakes.reply import Call, Reply
from tests.ui.conftest import (
    DESKTOP,
    MASTER,
    PHONE,
    OpsServer,
    PageFactory,
    open_page,
    require_chromium,
    screenshot,
)
from tests.ui.test_workbench import CHECK_I18N, fits

require_chromium()

pytestmark = pytest.mark.slow


@pytest.fixture
def server(ops_server: OpsServer) -> Iterator[OpsServer]:
    ops_server.upstream.reset()
    yield ops_server


def start_run(page: Page, server: OpsServer, task: str, expression: str) -> str:
    """Start `task` in the page; the model first asks the calculator for `expression`."""
    server.upstream.respond(Reply(calls=(Call("calculator", f'{{"expression": "{expression}"}}'),)))
    page.select_option("#run-agent", "ops-helper")
    page.fill("#run-input", task)
    page.click("#start-button")
    expect(page.locator("#start-status")).to_contain_text("started")
    run_id = page.locator("#start-status").inner_text().split()[1]
    detail = page.locator("[data-testid=run-detail]")
    expect(detail.locator("[data-testid=run-status]")).to_have_text("waiting for approval")
    expect(detail.locator("[data-testid=event][data-type=approval_needed]")).to_contain_text(
        expression
    )
    return run_id


def test_a_run_started_here_waits_for_approval_and_finishes_with_edited_arguments(
    new_page: PageFactory, server: OpsServer
) -> None:
    page = new_page(server, key=MASTER)
    open_page(page, server, "/agents")
    expect(page.locator("[data-testid=agent][data-name=ops-helper]")).to_contain_text("calculator")
    expect(page.locator("[data-testid=no-pending], #no-pending")).to_be_visible()
    run_id = start_run(page, server, "What is six times seven?", "2+2")
    detail = page.locator("[data-testid=run-detail]")
    assert server.upstream.calls == 1  # the model asked; the tool has not run

    pending = page.locator(f"[data-testid=pending-run][data-id='{run_id}']")
    expect(pending).to_contain_text("What is six times seven?")
    args = pending.locator("[data-testid=call-args]")
    expect(args).to_have_js_property("readOnly", True)
    pending.locator("[data-testid=edit]").click()
    args.fill("not json")
    pending.locator("[data-testid=approve]").click()
    expect(page.locator("#error")).to_contain_text("must be a JSON object")
    args.fill('{"expression": "6*7"}')
    pending.locator("[data-testid=approve]").click()

    expect(detail.locator("[data-testid=run-status]")).to_have_text("done")
    expect(detail.locator("[data-testid=event][data-type=tool_result]")).to_contain_text("6*7 = 42")
    expect(detail.locator("[data-testid=run-output]")).to_contain_text("42")
    expect(pending).to_have_count(0)
    expect(page.locator("#no-pending")).to_be_visible()
    expect(page.locator(f"[data-testid=run][data-id='{run_id}']")).to_have_attribute(
        "data-status", "done"
    )
    run = server.call("GET", f"/v1/agents/ops-helper/runs/{run_id}").json()
    assert run["status"] == "done" and "6*7 = 42" in run["output"]
    rows = server.call("GET", "/v1/audit/entries?kind=agent.approve").json()["data"]
    assert [r["subject"] for r in rows] == [run_id] and rows[0]["actor"] == "master"

    # a finished run opened from the list replays its events
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.locator(f"[data-testid=run][data-id='{run_id}']").click()
    expect(detail.locator("[data-testid=event][data-type=done]")).to_have_count(1)
    events = detail.locator("[data-testid=event]")
    expect(events.and_(page.locator("[data-type=approval_needed]"))).to_contain_text("2+2")
    expect(events.and_(page.locator("[data-type=tool_call]"))).to_contain_text("6*7")


def test_a_rejected_run_stops_without_calling_the_tool(
    new_page: PageFactory, server: OpsServer
) -> None:
    page = new_page(server, key=MASTER)
    open_page(page, server, "/agents")
    run_id = start_run(page, server, "Delete everything, then add 1 and 1.", "1+1")
    pending = page.locator(f"[data-testid=pending-run][data-id='{run_id}']")
    pending.locator("[data-testid=reject-reason]").fill("not today")
    pending.locator("[data-testid=reject]").click()
    detail = page.locator("[data-testid=run-detail]")
    expect(detail.locator("[data-testid=run-status]")).to_have_text("rejected")
    expect(detail.locator("[data-testid=event][data-type=done]")).to_contain_text("not today")
    expect(detail.locator("[data-testid=event][data-type=tool_result]")).to_have_count(0)
    expect(pending).to_have_count(0)
    assert server.upstream.calls == 1


def test_another_key_starts_runs_but_cannot_decide_them(
    new_page: PageFactory, server: OpsServer
) -> None:
    made = server.call("POST", "/admin/keys", json={"name": "agent-user"}).json()
    page = new_page(server, key=made["key"])
    open_page(page, server, "/agents")
    expect(page.locator("[data-testid=pending-off]")).to_have_text(
        "Approving and listing pending runs takes the master key."
    )
    run_id = start_run(page, server, "Add 3 and 4.", "3+4")
    expect(page.locator("[data-testid=pending-run]")).to_have_count(0)
    # the master key decides it, elsewhere
    r = server.call("POST", f"/v1/agents/ops-helper/runs/{run_id}/approve", json={})
    assert r.status_code == 200 and r.json()["status"] == "done"

    page = new_page(server)
    open_page(page, server, "/agents")
    expect(page.locator("#error")).to_contain_text("Set your API key")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_it_fits_the_screen_in_both_languages(
    new_page: PageFactory, server: OpsServer, viewport: ViewportSize, tmp_path: Path
) -> None:
    phone = viewport == PHONE
    page = new_page(server, key=MASTER, viewport=viewport, locale="zh-CN" if phone else "en-US")
    open_page(page, server, "/agents")
    if not phone:  # one run left waiting, as a person finds it
        start_run(page, server, "What is 17 * 23 + 4?", "17*23+4")
        expect(page.locator("[data-testid=pending-run]")).to_have_count(1)
    else:
        expect(page.locator("h1")).to_have_text("智能体")
        expect(page.locator("[data-testid=pending-run] [data-testid=approve]")).to_have_text("批准")
    expect(page.locator(".rail-link[data-page=agents]")).to_have_attribute("aria-current", "page")
    fits(page)
    assert page.evaluate(CHECK_I18N) == {"onlyEn": [], "onlyZh": [], "missing": []}
    page.locator("h1").scroll_into_view_if_needed()
    screenshot(page, "agents-phone-zh" if phone else "agents", tmp_path)
