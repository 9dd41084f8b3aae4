"""The traces page in headless Chromium against a real server: calls made through the API show up
in totals, charts and the table; filters narrow them and stay in the address; one call opens with
its request and answer; drift per model is shown."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import PageFactory, Server, open_page, require_chromium

require_chromium()

pytestmark = pytest.mark.slow


def make_calls(server: Server) -> None:
    for i in range(16):
        assert server.chat("fake", f"capital of France, take {i}").status_code == 200
    for _ in range(2):
        assert server.chat("broken", "are you there?").status_code >= 500
    deadline = time.monotonic() + 10  # traces are written in batches
    while time.monotonic() < deadline:
        errors = server.call("GET", "/v1/traces", params={"model": "broken"}).json()["data"]
        if len(errors) >= 2:
            return
        time.sleep(0.05)


def test_filter_calls_open_one_and_see_charts_and_drift(
    new_page: PageFactory, open_server: Server
) -> None:
    make_calls(open_server)
    page = new_page(open_server)
    open_page(page, open_server, "/traces")
    requests = int(page.locator("[data-testid=tile-requests] .tile-value").inner_text())
    assert requests >= 18
    expect(page.locator("#chart-requests svg rect.series-0").first).to_be_attached()
    expect(page.locator("#chart-requests svg rect.series-error").first).to_be_attached()
    expect(page.locator("#chart-latency svg path.chart-line").first).to_be_attached()
    expect(page.locator("#f-model option")).to_contain_text(["All", "broken", "fake"])

    page.select_option("#f-model", "broken")
    rows = page.locator("[data-testid=call]")
    expect(rows).to_have_count(2)  # only this test calls `broken`
    expect(page.locator("[data-testid=call][data-status=error]")).to_have_count(2)
    expect(page.locator("[data-testid=tile-errors] .tile-value")).to_have_text("100.0%")
    assert "model=broken" in page.url

    page.reload()  # the filters live in the address
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#f-model")).to_have_value("broken")
    rows.first.click()
    details = page.locator("[data-testid=call-details]")
    expect(details.locator("[data-testid=call-error]")).to_contain_text("broken")
    expect(details).to_contain_text("are you there?")
    page.keyboard.press("Escape")

    page.select_option("#f-model", "fake")
    page.select_option("#f-status", "ok")
    expect(rows.first).to_contain_text("capital of France")
    rows.first.click()
    expect(details.locator("[data-testid=call-answer]")).to_have_text("Paris")
    expect(details).to_contain_text("Tokens in / out")
    page.keyboard.press("Escape")

    page.select_option("#f-status", "error")
    expect(page.locator("#no-calls")).to_be_visible()

    drift = page.locator("[data-testid=drift-model][data-model=fake]")
    expect(drift.locator(".drift-signal")).to_have_count(4)
    expect(drift).to_contain_text("Prompts (embedding shift)")
