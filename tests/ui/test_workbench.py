"""The workbench as a whole, in headless Chromium: every page works with keys on, fits a 1280x800
screen and a phone's width without sideways scrolling, speaks Chinese when the browser asks for it
or the switch is used, and has every text in both languages. Screenshots of each page are taken;
with LLMFORGE_UI_SCREENSHOTS=docs/img they are kept there (how docs/img/ is made)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page, ViewportSize, expect

from tests.ui.conftest import (
    DESKTOP,
    MASTER,
    PHONE,
    PageFactory,
    Server,
    open_page,
    require_chromium,
)

require_chromium()

pytestmark = pytest.mark.slow

PAGES = {
    "chat": "/",
    "kb": "/kb#kb=manuals",
    "traces": "/traces",
    "evals": "/evals",
    "keys": "/keys",
    "distill": "/distill",
    "agents": "/agents",
    "review": "/review",
    "audit": "/audit",
}
HEADINGS = {
    "kb": "Knowledge bases",
    "traces": "Traces",
    "evals": "Evaluations",
    "keys": "Keys",
    "distill": "Distillation",
    "agents": "Agents",
    "review": "Review queue",
    "audit": "Audit log",
}
CONTENT = {  # what each page shows once it read its data through the key
    "chat": "#model-select option",
    "kb": "[data-testid=document]",
    "traces": "[data-testid=call]",
    "evals": "[data-testid=run]",
    "keys": "[data-testid=key]",
    "distill": "#no-routes:visible",  # no routes on this server: the note shown after reading
    "agents": "[data-testid=agent][data-name=assistant]",
    "review": "#no-items:visible",
    "audit": "[data-testid=entry]",
}
NO_SIDEWAYS_SCROLL = """() => [document.documentElement, document.body,
    ...document.querySelectorAll('.page, .page-body, .panel, .chat, .messages')]
    .filter(e => e.clientWidth > 0)
    .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.className || e.tagName)"""


def fits(page: Page) -> None:
    assert page.evaluate(NO_SIDEWAYS_SCROLL) == []
    for selector in ("#api-key", "#lang-select", ".rail-link.active"):
        box = page.locator(selector).bounding_box()
        width = page.viewport_size["width"] if page.viewport_size else 0
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, selector


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_works_with_keys_on_and_fits_the_screen(
    new_page: PageFactory, keyed_server: Server, name: str, viewport: ViewportSize
) -> None:
    page = new_page(keyed_server, viewport=viewport, key=MASTER)
    open_page(page, keyed_server, PAGES[name])
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator(f".rail-link[data-page={name}]")).to_have_attribute("aria-current", "page")
    if name in HEADINGS:
        expect(page.locator("h1")).to_contain_text(HEADINGS[name])
    expect(page.locator(CONTENT[name]).first).to_be_attached()  # data read through the key
    fits(page)
    if name == "chat" and viewport == PHONE:  # the conversations slide in over the chat
        expect(page.locator("#toggle-sidebar")).to_be_visible()
        page.click("#toggle-sidebar")
        expect(page.locator("#new-chat")).to_be_in_viewport()


def test_without_a_key_every_page_asks_for_one(new_page: PageFactory, keyed_server: Server) -> None:
    page = new_page(keyed_server)
    for name in PAGES:
        open_page(page, keyed_server, PAGES[name])
        expect(page.locator("#error")).to_contain_text("Set your API key")


def test_chinese_from_the_browser_or_the_switch(
    new_page: PageFactory, keyed_server: Server
) -> None:
    page = new_page(keyed_server, locale="zh-CN", key=MASTER)
    open_page(page, keyed_server, "/traces")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator("h1")).to_have_text("调用记录")
    expect(page.locator(".rail-link[data-page=kb]")).to_contain_text("知识库")
    expect(page.locator("[data-testid=tile-requests] .tile-label")).to_have_text("请求数")
    expect(page.locator("#f-status option[value=error]")).to_have_text("错误")

    page.select_option("#lang-select", "en")
    expect(page.locator("h1")).to_have_text("Traces")
    expect(page.locator("[data-testid=tile-requests] .tile-label")).to_have_text("Requests")
    page.reload()  # the choice is kept
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator(".rail-link[data-page=chat]")).to_contain_text("Chat")

    english = new_page(keyed_server, locale="en-US", key=MASTER)
    open_page(english, keyed_server, "/")
    english.select_option("#lang-select", "zh-CN")
    expect(english.locator("#send")).to_have_text("发送")
    expect(english.locator("#prompt")).to_have_attribute(
        "placeholder", "输入消息…（Enter 发送，Shift+Enter 换行）"
    )


CHECK_I18N = """() => {
  const m = window.ForgeMessages, en = Object.keys(m.en), zh = Object.keys(m['zh-CN']);
  const used = new Set();
  for (const el of document.querySelectorAll('[data-i18n],[data-i18n-placeholder],' +
      '[data-i18n-title],[data-i18n-aria-label]'))
    for (const k of ['i18n', 'i18nPlaceholder', 'i18nTitle', 'i18nAriaLabel'])
      if (el.dataset[k]) used.add(el.dataset[k]);
  return {
    onlyEn: en.filter(k => !zh.includes(k)), onlyZh: zh.filter(k => !en.includes(k)),
    missing: [...used].filter(k => !en.includes(k)),
  };
}"""


def test_every_text_on_every_page_has_both_languages(
    new_page: PageFactory, keyed_server: Server
) -> None:
    page = new_page(keyed_server, key=MASTER)
    for path in PAGES.values():
        open_page(page, keyed_server, path)
        assert page.evaluate(CHECK_I18N) == {"onlyEn": [], "onlyZh": [], "missing": []}, path


def test_screenshots_of_every_page(
    new_page: PageFactory, keyed_server: Server, tmp_path: Path
) -> None:
    """Each page with work on it, at 1280x800 and at a phone's width."""
    shots: list[Path] = []

    def shoot(page: Page, name: str) -> None:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path))
        assert path.stat().st_size > 10_000
        shots.append(path)

    page = new_page(keyed_server, key=MASTER, permissions=["clipboard-write"])
    open_page(page, keyed_server, "/")
    page.select_option("#model-select", "docs")
    page.fill("#prompt", "How often do I replace the impeller seals?")
    page.press("#prompt", "Enter")
    expect(page.locator(".message.assistant a.cite")).to_have_count(1)
    shoot(page, "chat")

    open_page(page, keyed_server, "/kb#kb=manuals")
    page.fill("#kb-query", "impeller seals")
    page.click("#kb-search-button")
    expect(page.locator("[data-testid=hit]").first).to_be_visible()
    shoot(page, "knowledge-bases")

    open_page(page, keyed_server, "/traces")
    expect(page.locator("[data-testid=drift-model]").first).to_be_visible()
    shoot(page, "traces")
    page.locator("[data-testid=drift]").scroll_into_view_if_needed()
    shoot(page, "traces-drift")
    page.locator("[data-testid=call]").first.click()
    expect(page.locator("[data-testid=call-details]")).to_be_visible()
    shoot(page, "trace-details")
    page.keyboard.press("Escape")

    open_page(page, keyed_server, "/evals")
    for run_id in keyed_server.made["runs"]:
        page.locator(f"[data-testid=run][data-id='{run_id}'] [data-testid=select-run]").check()
    page.click("#compare")
    expect(page.locator("[data-testid=delta-chart] svg")).to_be_visible()
    page.locator("[data-testid=comparison]").scroll_into_view_if_needed()
    shoot(page, "evaluations")

    open_page(page, keyed_server, "/keys")
    shoot(page, "keys")

    phone = new_page(keyed_server, viewport=PHONE, key=MASTER, locale="zh-CN")
    open_page(phone, keyed_server, "/traces")
    shoot(phone, "traces-phone-zh")
    open_page(phone, keyed_server, "/kb#kb=manuals")
    shoot(phone, "knowledge-bases-phone-zh")

    keep = os.environ.get("LLMFORGE_UI_SCREENSHOTS")
    if keep:
        target = Path(keep)
        target.mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, target / shot.name)
