"""The knowledge-base page in headless Chromium against a real server: create a knowledge base,
upload files and a folder (progress and a result per file), find an uploaded file by searching,
with each stage's scores shown, open a hit inside its document, sync and delete."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.ui.conftest import MANUAL, PageFactory, Server, open_page, require_chromium

require_chromium()

pytestmark = pytest.mark.slow

GARDEN = (
    "# Garden Guide\n\n## Watering\n\nWater the orchids twice a week with rainwater.\n\n"
    "## Light\n\nTomatoes need full sun for most of the day.\n"
)


def create_kb(page: Page, name: str) -> None:
    page.fill("#kb-name", name)
    page.click("#kb-create-button")
    expect(page.locator("#kb-title")).to_have_text(name)
    expect(page.locator(f"[data-testid=kb-item][data-name='{name}']")).to_have_class(
        "kb-item active"
    )


def test_upload_a_file_and_find_it_with_every_stage_explained(
    new_page: PageFactory, open_server: Server, tmp_path: Path
) -> None:
    manual = tmp_path / "pump.md"
    manual.write_text(MANUAL, encoding="utf-8")
    page = new_page(open_server)
    open_page(page, open_server, "/kb")
    create_kb(page, "plant-room")

    page.set_input_files("#kb-files", str(manual))
    progress = page.locator("[data-testid=upload-progress]")
    expect(progress).to_contain_text("Done: 1 added")
    expect(page.locator("#kb-progress-bar")).to_have_attribute("style", "width: 100%;")
    expect(page.locator("[data-testid=file-result]")).to_contain_text("pump.md")
    expect(page.locator("#kb-meta")).to_contain_text("1 documents")

    page.fill("#kb-query", "how often are impeller seals replaced")
    page.click("#kb-search-button")
    stages = page.locator("[data-testid=stages] .stage")
    expect(stages).to_have_count(3)  # dense, BM25, fused (no reranker configured)
    expect(stages.nth(0)).to_contain_text("Cosine similarity")
    expect(stages.nth(1)).to_contain_text("Keyword relevance")
    top = page.locator("[data-testid=hit]").first
    expect(top).to_contain_text("Maintenance › Seals")
    expect(top.locator("mark").first).to_be_visible()  # the query's words are marked
    for stage in ("dense", "bm25", "fusion"):
        value = top.locator(f"[data-score={stage}] .score-value").inner_text()
        assert value != "–" and float(value) > 0, stage

    top.locator("[data-testid=open-chunk]").click()
    dialog = page.locator("#chunk-dialog")
    expect(dialog.locator("[data-testid=heading-path] li")).to_have_text(
        ["Pump Manual", "Maintenance", "Seals"]
    )
    expect(dialog).to_contain_text("pump.md")
    target = dialog.locator(".doc-chunk.target")
    expect(target).to_contain_text("Replace the impeller seals every 2000 hours")
    expect(dialog.locator(".doc-chunk")).to_have_count(3)  # the whole document, in order
    expect(dialog.locator(".doc-chunk").last).to_contain_text("disconnect power")

    page.keyboard.press("Escape")
    page.click("#tab-documents")
    expect(page.locator("[data-testid=document]")).to_contain_text(["pump.md"])


def test_folder_upload_reports_each_file_then_sync_and_delete(
    new_page: PageFactory, open_server: Server, tmp_path: Path
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "garden.md").write_text(GARDEN, encoding="utf-8")
    (folder / "notes.txt").write_text("Orchids like rainwater.", encoding="utf-8")
    (folder / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    page = new_page(open_server)
    open_page(page, open_server, "/kb")
    create_kb(page, "greenhouse")

    page.set_input_files("#kb-folder", str(folder))
    expect(page.locator("[data-testid=upload-progress]")).to_contain_text(
        "Done: 2 added, 0 updated, 0 unchanged, 1 not ingested"
    )
    png = page.locator("[data-testid=file-result]").filter(has_text="photo.png")
    expect(png).to_contain_text("unsupported file type")

    page.click("#kb-sync")
    expect(page.locator("[data-testid=upload-progress]")).to_contain_text(
        "Synced: 0 added, 0 updated, 2 unchanged, 0 removed"
    )

    page.fill("#kb-query", "orchids rainwater")
    page.click("#kb-search-button")
    expect(page.locator("[data-testid=hit]")).to_have_count(3)

    page.click("#kb-delete")
    page.click("#confirm-cancel")  # asked first; cancelling keeps it
    expect(page.locator("[data-testid=kb-item][data-name=greenhouse]")).to_have_count(1)
    page.click("#kb-delete")
    page.click("#confirm-ok")
    expect(page.locator("[data-testid=kb-item][data-name=greenhouse]")).to_have_count(0)
    expect(page.locator("#kb-pick")).to_be_visible()
    assert open_server.call("GET", "/v1/kb/greenhouse").status_code == 404


def test_a_source_link_opens_its_chunk(new_page: PageFactory, open_server: Server) -> None:
    from tests.ui.conftest import ensure_manual

    ensure_manual(open_server)
    hit = open_server.call(
        "POST", "/v1/kb/manuals/search", json={"query": "disconnect power", "k": 1}
    ).json()["data"][0]
    page = new_page(open_server)
    page.goto(f"{open_server.base}/kb#kb=manuals&chunk={hit['chunk_id']}")
    dialog = page.locator("#chunk-dialog")
    expect(dialog.locator("[data-testid=heading-path] li")).to_have_text(["Pump Manual", "Safety"])
    expect(dialog.locator(".doc-chunk.target")).to_contain_text("disconnect power")


def test_bad_names_and_errors_are_shown(new_page: PageFactory, open_server: Server) -> None:
    page = new_page(open_server)
    open_page(page, open_server, "/kb")
    page.fill("#kb-name", "no spaces allowed")
    page.click("#kb-create-button")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-text")).not_to_be_empty()
