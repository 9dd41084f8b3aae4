"""The chat page in a real headless Chromium against a real uvicorn server on 127.0.0.1.

Models are scripted fakes (fast, deterministic) plus an OpenAI-compatible model pointed at a closed
local port, so every answer and every failure is reproducible without the network. Requests the page
makes to any other origin are blocked and recorded, and each test asserts there were none.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect

from llmforge.core.config import ModelConfig
from llmforge.core.errors import ModelError
from llmforge.core.settings import load_settings
from llmforge.core.types import Completion, Delta, Message, Sampling
from llmforge.models.base import ModelContext, chat_models
from llmforge.ui import create_web_app
from tests.fakes.server import serve
from tests.ui.conftest import PageFactory, Server, ensure_manual, require_chromium
from tests.ui.conftest import open_page as open_at

pytestmark = pytest.mark.slow

SLOW_WORDS = " ".join(f"word{i}" for i in range(1, 201))
MODELS = [
    {
        "name": "fake",
        "provider": "fake",
        "responses": ["**Hello** from the fake model"],
        "delay_s": 0.02,
    },
    {"name": "slow", "provider": "fake", "responses": [SLOW_WORDS], "delay_s": 0.1},
    {"name": "broken", "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "timeout_s": 5},
    {"name": "flaky", "provider": "ui-test-flaky"},
]
EMBEDDINGS = [{"name": "hash", "provider": "fake", "dimensions": 8}]

require_chromium()


class FlakyChatModel:
    """Streams two words, then fails: the status is sent, so the stream ends in an error event."""

    async def complete(self, messages: Sequence[Message], sampling: Sampling) -> Completion:
        raise ModelError("model 'flaky': the backend crashed")

    async def stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        for word in ("Partial ", "answer "):
            await asyncio.sleep(0.02)
            yield Delta(text=word)
        raise ModelError("model 'flaky': the backend crashed mid-answer")

    async def aclose(self) -> None:
        return None


def flaky(_config: ModelConfig, _context: ModelContext) -> FlakyChatModel:
    return FlakyChatModel()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("ui") / "t.db"
    chat_models.register("ui-test-flaky", flaky)
    settings = load_settings(
        None,
        database=f"sqlite:///{db}",
        models=MODELS,
        embeddings=EMBEDDINGS,
        server={"preload": False},
    )
    with serve(create_web_app(settings)) as base:
        yield base


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    """A fresh browser context (empty localStorage); fails on script errors or outside requests."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    script_errors: list[str] = []
    outside_requests: list[str] = []

    def only_local(route: Route) -> None:
        if route.request.url.startswith(base_url + "/"):
            route.continue_()
        else:
            outside_requests.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on("pageerror", lambda e: script_errors.append(str(e)))
    try:
        yield page
        assert script_errors == []
        assert outside_requests == []
    finally:
        context.close()


def open_page(page: Page, base_url: str) -> None:
    page.goto(base_url + "/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")


def send(page: Page, model: str, text: str) -> None:
    page.select_option("#model-select", model)
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def conversation_item(page: Page, title: str) -> Any:
    return page.locator("#conversations .conversation").filter(has_text=title)


def test_answer_streams_as_markdown_and_comes_back_after_reload(page: Page, base_url: str) -> None:
    open_page(page, base_url)
    options = page.locator("#model-select option").all_inner_texts()
    assert options == [
        "fake",
        "slow",
        "broken",
        "flaky",
    ]  # chat models only; the embedder is not offered

    prompt = "你好 — please say hello"
    send(page, "fake", prompt)
    expect(page.locator("#stop")).to_be_hidden()
    answer = page.locator(".message.assistant")
    expect(answer.locator("strong")).to_have_text("Hello")
    expect(answer).to_contain_text("Hello from the fake model")
    expect(page.locator(".message.user .content")).to_have_text(prompt)
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#prompt")).to_have_value("")
    item = conversation_item(page, prompt)
    expect(item).to_contain_text("2 messages")
    expect(item).to_have_class("conversation active")

    page.goto(base_url + "/")  # a fresh load with nothing open
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator(".message")).to_have_count(0)
    item = conversation_item(page, prompt)
    item.locator(".conversation-open").click()
    expect(item).to_have_class("conversation active")
    expect(page.locator(".message.user .content")).to_have_text(prompt)
    expect(page.locator(".message.assistant strong")).to_have_text("Hello")
    expect(page.locator("#chat-title")).to_have_text(prompt)


def test_model_choice_is_remembered(page: Page, base_url: str) -> None:
    open_page(page, base_url)
    page.select_option("#model-select", "slow")
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#model-select")).to_have_value("slow")


def test_shift_enter_is_a_new_line_not_a_send(page: Page, base_url: str) -> None:
    open_page(page, base_url)
    page.fill("#prompt", "line one")
    page.press("#prompt", "Shift+Enter")
    page.type("#prompt", "line two")
    expect(page.locator("#prompt")).to_have_value("line one\nline two")
    expect(page.locator(".message")).to_have_count(0)


def test_stop_ends_the_stream_and_keeps_the_partial_answer(page: Page, base_url: str) -> None:
    open_page(page, base_url)
    send(page, "slow", "count slowly")
    answer = page.locator(".message.assistant")
    expect(answer).to_contain_text("word3")  # text arrives while the answer is still streaming
    expect(page.locator("#stop")).to_be_visible()
    page.click("#stop")
    expect(answer).to_have_class("message assistant stopped")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#error")).to_be_hidden()
    expect(conversation_item(page, "count slowly")).to_contain_text("2 messages")

    cid = conversation_item(page, "count slowly").get_attribute("data-id")
    saved = httpx.get(f"{base_url}/api/conversations/{cid}").json()["messages"]
    assert [m["role"] for m in saved] == ["user", "assistant"]
    assert saved[1]["content"].startswith("word1 word2 word3")
    assert "word200" not in saved[1]["content"]


def test_unreachable_model_shows_the_servers_error(page: Page, base_url: str) -> None:
    open_page(page, base_url)
    send(page, "broken", "are you there?")
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("broken")
    expect(error).to_contain_text("upstream")
    expect(page.locator(".message.assistant")).to_have_count(0)
    expect(page.locator(".message.user")).to_contain_text("are you there?")
    expect(page.locator("#send")).to_be_visible()

    page.click("#error-close")
    expect(error).to_be_hidden()


def test_error_in_the_middle_of_the_stream_is_shown(page: Page, base_url: str) -> None:
    open_page(page, base_url)
    send(page, "flaky", "try it")
    error = page.locator("#error")
    expect(error).to_contain_text("crashed mid-answer")
    answer = page.locator(".message.assistant")
    expect(answer).to_have_class("message assistant error")
    expect(answer.locator(".content")).to_have_text("Partial answer")
    expect(answer.locator(".meta")).to_contain_text("Incomplete")
    expect(page.locator("#send")).to_be_visible()
    # the broken answer is not saved as if it were complete
    expect(conversation_item(page, "try it")).to_contain_text("1 message")


def test_network_failure_is_shown(page: Page, base_url: str) -> None:
    open_page(page, base_url)
    page.route("**/v1/chat/completions", lambda route: route.abort("connectionrefused"))
    send(page, "fake", "anyone there?")
    expect(page.locator("#error")).to_contain_text("Network error")
    expect(page.locator(".message.assistant")).to_have_count(0)
    expect(page.locator("#send")).to_be_visible()


def test_new_chat_and_delete(page: Page, base_url: str) -> None:
    cid = httpx.post(f"{base_url}/api/conversations", json={"title": "throwaway"}).json()["id"]
    open_page(page, base_url)
    item = conversation_item(page, "throwaway")
    item.locator(".conversation-open").click()
    expect(item).to_have_class("conversation active")

    page.click("#new-chat")
    expect(item).to_have_class("conversation")
    expect(page.locator("#chat-title")).to_have_text("New chat")

    item.locator(".conversation-delete").click()  # the first click asks, the second deletes
    expect(item.locator(".conversation-delete")).to_have_text("Delete?")
    item.locator(".conversation-delete").click()
    expect(item).to_have_count(0)
    assert httpx.get(f"{base_url}/api/conversations/{cid}").status_code == 404


def test_with_api_keys_on_the_page_asks_for_a_key_and_then_works(
    browser: Browser, tmp_path: Path
) -> None:
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp_path / 'keys.db'}",
        models=MODELS[:1],
        embeddings=[],
        server={"preload": False},
        master_key="sk-test-master",
    )
    with serve(create_web_app(settings)) as base:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(15_000)
        try:
            page.goto(base + "/")
            expect(page.locator("#error")).to_contain_text("Set your API key")
            page.click("#api-key")
            page.fill("#key-input", "sk-test-master")
            page.click("#key-save")
            expect(page.locator("#model-select option")).to_have_count(1)
            expect(page.locator("#error")).to_be_hidden()
            send(page, "fake", "hello with a key")
            expect(page.locator(".message.assistant")).to_contain_text("Hello from the fake model")
            assert httpx.get(base + "/api/conversations").status_code == 401
        finally:
            context.close()


# -- the workbench's chat: knowledge-base sources, copy, regenerate, the key icon ------------------


def test_kb_model_answers_with_sources_its_markers_link_to(
    new_page: PageFactory, open_server: Server
) -> None:
    ensure_manual(open_server)
    page = new_page(open_server)
    open_at(page, open_server, "/")
    groups = page.locator("#model-select optgroup")
    expect(groups).to_have_count(2)
    expect(groups.nth(1).locator("option")).to_have_text(["docs"])  # provider rag

    send(page, "docs", "How often do I replace the seals?")
    answer = page.locator(".message.assistant")
    cite = answer.locator("a.cite")
    expect(cite).to_have_text("[1]")
    source = answer.locator("[data-testid=source]").first
    expect(source).to_contain_text("Pump Manual")
    expect(source).to_contain_text("Seals")
    expect(source).to_have_class("source cited")
    target = cite.get_attribute("href")
    assert target and target == "#" + (source.get_attribute("id") or "")
    cite.click()
    expect(source).to_have_class("source cited flash")
    link = source.locator("a.source-open").get_attribute("href")
    assert link and link.startswith("/kb#kb=manuals&chunk=")

    page.reload()  # sources are kept with the answer
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.locator("#conversations .conversation-open").first.click()
    expect(page.locator(".message.assistant a.cite")).to_have_text("[1]")
    expect(page.locator(".message.assistant [data-testid=source]").first).to_contain_text("Seals")


def test_copy_and_regenerate_the_last_answer(new_page: PageFactory, open_server: Server) -> None:
    page = new_page(open_server, permissions=["clipboard-read", "clipboard-write"])
    open_at(page, open_server, "/")
    send(page, "echo", "say this back")
    answer = page.locator(".message.assistant")
    expect(answer.locator(".content")).to_have_text("say this back")
    answer.locator("[data-testid=copy-answer]").click()
    expect(answer.locator("[data-testid=copy-answer]")).to_contain_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "say this back"

    page.select_option("#model-select", "fake")  # regenerate with another model
    answer.locator("[data-testid=regenerate]").click()
    expect(page.locator(".message.assistant .content")).to_have_text("Paris")
    expect(page.locator(".message")).to_have_count(2)
    cid = page.evaluate("decodeURIComponent(location.hash.slice(1))")
    saved = open_server.call("GET", f"/api/conversations/{cid}").json()["messages"]
    assert [(m["role"], m["content"]) for m in saved] == [
        ("user", "say this back"),
        ("assistant", "Paris"),
    ]

    send(page, "echo", "second question")  # only the last answer can be regenerated
    expect(page.locator(".message.assistant")).to_have_count(2)
    expect(page.locator("[data-testid=regenerate]")).to_have_count(1)
    expect(
        page.locator(".message.assistant").last.locator("[data-testid=regenerate]")
    ).to_be_visible()


def test_key_button_is_an_svg_icon_not_a_glyph(new_page: PageFactory, open_server: Server) -> None:
    page = new_page(open_server)
    open_at(page, open_server, "/")
    button = page.locator("#api-key")
    expect(button.locator("svg path")).to_have_count(1)
    assert button.inner_text().strip() == ""  # nothing a font has to draw
    box = button.locator("svg").bounding_box()
    assert box and box["width"] >= 16 and box["height"] >= 16
    expect(button).to_have_attribute("aria-label", "API key")
