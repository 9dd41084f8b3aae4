"""The audit log page in headless Chromium against a real server with a master key and every call
audited: the chain verifies, entries are filtered by kind, the log is exported with its head; then a
row is edited behind the log's back in the database and the page names that row."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from playwright.sync_api import ViewportSize, expect

from llmforge.core.db import open_engine
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


@pytest.fixture(scope="module")
def server(ops_server: OpsServer) -> Iterator[OpsServer]:
    for name in ("audit-a", "audit-b"):
        assert server_call_ok(ops_server, "POST", "/admin/keys", {"name": name})
    for i in range(3):
        body = {"model": "fake", "messages": [{"role": "user", "content": f"hello {i}"}]}
        assert server_call_ok(ops_server, "POST", "/v1/chat/completions", body)
    deadline = 50
    while len(entries(ops_server)) < 5 and deadline:  # request rows are written after the answer
        deadline -= 1
        ops_server.call("GET", "/health")
    yield ops_server


def server_call_ok(server: OpsServer, method: str, path: str, body: object) -> bool:
    return server.call(method, path, json=body).status_code in (200, 201)


def entries(server: OpsServer) -> list[dict[str, object]]:
    data: list[dict[str, object]] = server.call("GET", "/v1/audit/entries").json()["data"]
    return data


def test_the_log_verifies_filters_and_exports(
    new_page: PageFactory, server: OpsServer, tmp_path: Path
) -> None:
    page = new_page(server, key=MASTER)
    open_page(page, server, "/audit")
    verify = page.locator("[data-testid=verify]")
    expect(verify).to_have_attribute("data-ok", "true")
    expect(verify.locator("[data-testid=verify-status]")).to_contain_text("The chain holds")
    rows = len(entries(server))
    expect(page.locator("[data-testid=entry]")).to_have_count(rows)
    expect(page.locator("[data-testid=entry][data-kind=request]")).to_have_count(3)

    page.fill("#f-kind", "key.created")
    page.click("#apply")
    expect(page.locator("[data-testid=entry]")).to_have_count(2)
    expect(page.locator("[data-testid=entry]").first).to_contain_text("audit-a")
    page.fill("#f-kind", "")
    page.fill("#f-after", str(rows - 1))
    page.click("#apply")
    expect(page.locator("[data-testid=entry]")).to_have_count(1)

    with page.expect_download() as got:
        page.click("#export")
    saved = tmp_path / "audit.jsonl"
    got.value.save_as(saved)
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert len(lines) == rows + 1  # every row, then the head
    head = verify.locator("[data-testid=head-hash]").inner_text()
    assert head in saved.read_text()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_it_fits_the_screen_in_both_languages(
    new_page: PageFactory, server: OpsServer, viewport: ViewportSize, tmp_path: Path
) -> None:
    phone = viewport == PHONE
    page = new_page(server, key=MASTER, viewport=viewport, locale="zh-CN" if phone else "en-US")
    open_page(page, server, "/audit")
    expect(page.locator("[data-testid=entry]").first).to_be_visible()
    expect(page.locator(".rail-link[data-page=audit]")).to_have_attribute("aria-current", "page")
    if phone:
        expect(page.locator("h1")).to_have_text("审计日志")
    fits(page)
    assert page.evaluate(CHECK_I18N) == {"onlyEn": [], "onlyZh": [], "missing": []}
    screenshot(page, "audit-phone-zh" if phone else "audit", tmp_path)


def test_a_row_edited_in_the_database_is_named(
    new_page: PageFactory, server: OpsServer, tmp_path: Path
) -> None:
    page = new_page(server, key=MASTER)
    open_page(page, server, "/audit")
    expect(page.locator("[data-testid=verify]")).to_have_attribute("data-ok", "true")
    kept = page.locator("[data-testid=head-hash]").inner_text()
    engine = open_engine(server.database)
    with engine.begin() as conn:  # someone with write access to the database rewrites row 2
        conn.execute(
            sa.text("UPDATE audit_log SET actor = 'nobody' WHERE seq = 2"),
        )
    page.fill("#expect-head", kept)
    page.click("#verify-button")
    verify = page.locator("[data-testid=verify]")
    expect(verify).to_have_attribute("data-ok", "false")
    expect(verify.locator("[data-testid=verify-status]")).to_contain_text("The chain is broken")
    problem = page.locator("[data-testid=problem]").first
    expect(problem).to_have_attribute("data-seq", "2")
    expect(problem).to_contain_text("Row 2: edited.")
    expect(page.locator("[data-testid=entry][data-seq='2']")).to_have_class("broken")
    expect(page.locator("[data-testid=entry].broken")).to_have_count(1)
    assert server.call("GET", "/v1/audit/verify").json()["ok"] is False
    screenshot(page, "audit-broken", tmp_path)


def test_without_the_master_key_it_says_so(new_page: PageFactory, server: OpsServer) -> None:
    page = new_page(server)
    open_page(page, server, "/audit")
    expect(page.locator("#error")).to_contain_text("Set your API key")
