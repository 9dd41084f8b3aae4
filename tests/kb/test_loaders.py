"""Each supported file type loads with its title and structure; bad files fail by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmforge.kb.loaders import LoadError, decode, load
from llmforge.kb.types import Chunk
from tests.kb.conftest import (
    CHINESE,
    write_docx,
    write_gbk_text,
    write_html,
    write_markdown,
    write_pdf,
)


def test_markdown_headings_become_heading_paths(tmp_path: Path) -> None:
    doc = load(write_markdown(tmp_path / "pump.md"))
    assert doc.title == "Pump Manual"
    paths = {s.heading_path: s.text for s in doc.sections}
    assert paths[("Pump Manual", "Maintenance", "Seals")].startswith("Replace the impeller")
    assert ("Pump Manual", "Safety") in paths


def test_markdown_hashes_inside_code_fences_are_not_headings(tmp_path: Path) -> None:
    path = tmp_path / "code.md"
    path.write_text("# Title\n\n```sh\n# not a heading\n```\n", encoding="utf-8")
    doc = load(path)
    assert [s.heading_path for s in doc.sections] == [("Title",)]
    assert "# not a heading" in doc.sections[0].text


def test_html_headings_and_text_without_scripts_or_navigation(tmp_path: Path) -> None:
    doc = load(write_html(tmp_path / "garden.html"))
    assert doc.title == "Garden Guide"
    text = " ".join(s.text for s in doc.sections)
    assert "Tomatoes need full sun." in text
    assert "soaker hose" in text
    assert "zebra" not in text and "color:red" not in text and "Home menu" not in text
    watering = next(s for s in doc.sections if s.heading_path == ("Garden Guide", "Watering"))
    assert "orchids" in watering.text


def test_pdf_pages_are_numbered(tmp_path: Path) -> None:
    doc = load(write_pdf(tmp_path / "w.pdf", ["First page about apples.", "Second about pears."]))
    assert doc.title == "Warranty Terms"
    assert [(s.page, "apples" in s.text, "pears" in s.text) for s in doc.sections] == [
        (1, True, False),
        (2, False, True),
    ]


def test_docx_heading_styles_and_tables(tmp_path: Path) -> None:
    doc = load(write_docx(tmp_path / "lease.docx"))
    assert doc.title == "Lease Contract"
    deposit = next(s for s in doc.sections if s.heading_path == ("Rent", "Deposit"))
    assert "security deposit" in deposit.text
    assert any("Parking | one garage space" in s.text for s in doc.sections)


def test_gbk_encoded_chinese_text_is_decoded_to_utf8(tmp_path: Path) -> None:
    doc = load(write_gbk_text(tmp_path / "zh.txt"))
    assert doc.sections[0].text == CHINESE
    assert doc.title == "zh"


def test_a_text_files_standalone_first_line_is_its_title(tmp_path: Path) -> None:
    titled = tmp_path / "note-17.txt"
    titled.write_text("Boiler service\n\nBleed the radiators every autumn.\n", encoding="utf-8")
    plain = tmp_path / "note-18.txt"
    plain.write_text("Bleed the radiators every autumn.\nCheck the pressure.\n", encoding="utf-8")
    doc = load(titled)
    assert doc.title == "Boiler service"
    assert load(plain).title == "note-18"
    text = doc.sections[0].text
    chunk = Chunk(
        id="c",
        text=text,
        source=str(titled),
        title=doc.title,
        file_type="txt",
        chunk_index=0,
        content_hash="h",
    )
    assert chunk.indexed_text() == text  # the title line is not embedded twice


def test_decode_handles_bom_and_latin1() -> None:
    assert decode("\ufeffhello".encode()) == "hello"
    assert decode("café".encode()) == "café"
    assert "caf" in decode("café au lait, crème brûlée".encode("latin-1"))


def test_control_characters_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "ctl.txt"
    path.write_bytes(b"a\x00b\x07c\r\nnext line")
    assert load(path).sections[0].text == "abc\nnext line"


def test_a_corrupt_pdf_fails_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.4 this is not really a pdf")
    with pytest.raises(LoadError, match=r"broken\.pdf"):
        load(path)


def test_an_unsupported_type_is_refused_with_the_supported_list(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(LoadError, match=r"unsupported file type '\.png'.*\.docx"):
        load(path)
