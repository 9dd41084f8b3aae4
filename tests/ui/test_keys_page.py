"""The keys and budgets page in headless Chromium against a real server with a master key: create a
scoped, budgeted key (shown once), see its spend as a bar after it is used, revoke it; without the
master key the page says what it needs."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import expect

from tests.ui.conftest import MASTER, PageFactory, Server, open_page, require_chromium

require_chromium()

pytestmark = pytest.mark.slow


def test_create_a_scoped_budgeted_key_see_its_spend_and_revoke_it(
    new_page: PageFactory, keyed_server: Server
) -> None:
    page = new_page(keyed_server)
    open_page(page, keyed_server, "/keys")
    expect(page.locator("#error")).to_contain_text("Set your API key")
    page.click("#api-key")
    page.fill("#key-input", MASTER)
    page.click("#key-save")
    expect(page.locator("[data-testid=key][data-name=search-team]")).to_be_visible()
    expect(page.locator("#api-key")).to_have_class(re.compile("set"))

    page.fill("#key-name", "ui-made")
    page.check("#key-models input[value=fake]")
    page.fill("#key-rpm", "30")
    page.fill("#key-budget", "0.5")
    page.click("#create-button")
    secret = page.locator("#key-secret")
    expect(secret).to_have_text(re.compile(r"^sk-lf-"))
    row = page.locator("[data-testid=key][data-name=ui-made]")
    expect(row).to_contain_text("fake")
    expect(row).to_contain_text("Requests / minute: 30")
    expect(row.locator("[data-testid=spend]")).to_contain_text("$0 of $0.50")

    user = Server(keyed_server.base, secret.inner_text())
    assert user.chat("fake", "spend a little").status_code == 200
    assert user.chat("echo", "not in my scope").status_code == 403
    page.click("#refresh")
    fill = row.locator(".bar-fill").first
    expect(row.locator("[data-testid=spend]")).not_to_contain_text("$0 of")
    width = fill.evaluate("e => parseFloat(e.style.width)")
    assert 0 < width < 100

    row.locator("[data-testid=revoke]").click()
    page.click("#confirm-ok")
    expect(row).to_contain_text("revoked")
    expect(row.locator("[data-testid=revoke]")).to_be_disabled()
    assert user.chat("fake", "still there?").status_code == 401


def test_other_keys_and_servers_without_keys_are_told_what_is_needed(
    new_page: PageFactory, keyed_server: Server, open_server: Server
) -> None:
    plain = keyed_server.made["keys"][2]["key"]
    page = new_page(keyed_server, key=plain)
    open_page(page, keyed_server, "/keys")
    expect(page.locator("[data-testid=keys-off]")).to_have_text("This page needs the master key.")
    expect(page.locator("#keys-main")).to_be_hidden()

    page = new_page(open_server)
    open_page(page, open_server, "/keys")
    expect(page.locator("[data-testid=keys-off]")).to_contain_text("Keys are off")
    assert httpx.get(open_server.base + "/admin/keys").status_code == 403
