"""The evaluations page in headless Chromium against a real server: start two runs from the page,
open one with its cases, scores and the judge's reasoning, and compare the two with intervals and
a chart. Scripted models: `echo` repeats the question, `fake` always says Paris, `judge` grades."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.ui.conftest import DATASET, PageFactory, Server, open_page, require_chromium

require_chromium()

pytestmark = pytest.mark.slow


def start_run(page: Page, model: str, extra_metrics: tuple[str, ...] = (), judge: str = "") -> str:
    page.fill("#dataset-text", DATASET)
    page.fill("#dataset-name", "capitals-ui")
    page.select_option("#run-model", model)
    page.select_option("#run-judge", judge)
    for metric in extra_metrics:
        page.check(f"#metric-checks input[value={metric}]")
    page.click("#start-button")
    status = page.locator("#start-status")
    expect(status).to_contain_text("started")
    run_id = status.inner_text().split()[1]
    row = page.locator(f"[data-testid=run][data-id='{run_id}']")
    expect(row).to_contain_text("done", timeout=30_000)
    return run_id


def test_start_runs_read_cases_and_compare_two(new_page: PageFactory, open_server: Server) -> None:
    page = new_page(open_server)
    open_page(page, open_server, "/evals")

    page.fill("#dataset-text", DATASET)
    page.check("#metric-checks input[value=rubric]")
    page.click("#start-button")  # a judge metric without a judge is refused on the page
    expect(page.locator("#error")).to_contain_text("need a judge model")
    page.uncheck("#metric-checks input[value=rubric]")

    echo = start_run(page, "echo")
    paris = start_run(page, "fake", ("rubric",), judge="judge")
    assert echo.startswith("capitals-ui-echo-") and paris.startswith("capitals-ui-fake-")

    page.locator(f"[data-testid=run][data-id='{paris}']").click()
    detail = page.locator("[data-testid=run-detail]")
    expect(detail.locator("[data-testid=metric]")).to_have_count(3)
    expect(detail.locator("[data-metric=exact_match] .tile-value")).to_have_text("0.333")
    cases = detail.locator("[data-testid=case]")
    expect(cases).to_have_count(3)
    expect(cases.first.locator("[data-testid=judge-reason]")).to_have_text(
        "The answer names the right city."
    )
    expect(detail.locator("[data-metric=rubric] .tile-value")).to_have_text("1.000")

    page.locator(f"[data-testid=run][data-id='{echo}'] [data-testid=select-run]").check()
    page.locator(f"[data-testid=run][data-id='{paris}'] [data-testid=select-run]").check()
    page.click("#compare")
    comparison = page.locator("[data-testid=comparison]")
    expect(comparison).to_contain_text(f"{paris} against {echo}")  # the newer run against the older
    deltas = comparison.locator("[data-testid=delta]")
    expect(deltas).to_have_count(2)  # the metrics both runs have
    exact = comparison.locator("[data-testid=delta][data-metric=exact_match]")
    expect(exact).to_contain_text("-0.333")  # echo got two (not Lima), Paris one
    expect(exact).to_contain_text("0 better · 1 worse · 2 tied")
    expect(exact).to_have_attribute("data-significant", "false")  # three cases prove nothing
    expect(comparison.locator("[data-testid=delta-chart] svg circle")).to_have_count(2)
    expect(comparison.locator("[data-testid=case-pair]")).to_have_count(3)
