"""Fixtures for the knowledge-base tests: settings on a tmp database and folder, and real files of
every supported type written by the tests themselves."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmforge.core.settings import Settings, load_settings
from llmforge.kb import KnowledgeBases
from llmforge.models.builtin import resolve

HASH_EMBEDDING = {"name": "hash", "provider": "fake", "dimensions": 64}


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export of MiniLM shared by every test of the session."""
    return tmp_path_factory.mktemp("onnx")


def make_settings(
    tmp_path: Path, *, embedding: dict[str, Any] | None = None, **kb: Any
) -> Settings:
    return load_settings(
        None,
        database=f"sqlite:///{tmp_path / 'kb-test.db'}",
        embeddings=[embedding or HASH_EMBEDDING],
        kb={"path": str(tmp_path / "kbs"), **kb},
    )


def minilm(onnx_cache: Path) -> dict[str, Any]:
    return {
        "name": "minilm",
        "provider": "sentence-transformers",
        "path": "builtin:all-minilm-l6-v2",
        "onnx_dir": str(onnx_cache),
    }


@pytest.fixture
async def kbs(tmp_path: Path) -> AsyncIterator[KnowledgeBases]:
    bases = KnowledgeBases(make_settings(tmp_path))
    yield bases
    await bases.aclose()


def write_markdown(path: Path) -> Path:
    path.write_text(
        "# Pump Manual\n\nThis manual covers the water pump.\n\n"
        "## Maintenance\n\n### Seals\n\nReplace the impeller seals every 2000 hours of running.\n\n"
        "## Safety\n\nAlways disconnect power before opening the housing.\n",
        encoding="utf-8",
    )
    return path


def write_html(path: Path) -> Path:
    path.write_text(
        "<html><head><title>Garden Guide</title><style>p{color:red}</style>"
        "<script>var tracking = 'zebra';</script></head><body>"
        "<nav><a href='/'>Home menu</a></nav>"
        "<h1>Garden Guide</h1><p>Tomatoes need full sun.</p>"
        "<h2>Watering</h2><p>Water the orchids twice a week with rainwater.</p>"
        "<ul><li>Use a soaker hose</li></ul></body></html>",
        encoding="utf-8",
    )
    return path


def write_pdf(path: Path, pages: list[str]) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title("Warranty Terms")
    for text in pages:
        pdf.add_page()
        pdf.set_font("Helvetica", size=12)
        pdf.multi_cell(0, 10, text)
    pdf.output(str(path))
    return path


def write_docx(path: Path) -> Path:
    import docx

    document = docx.Document()
    document.add_heading("Lease Contract", level=0)
    document.add_heading("Rent", level=1)
    document.add_paragraph("The tenant pays the rent on the first day of each month.")
    document.add_heading("Deposit", level=2)
    document.add_paragraph("The landlord returns the security deposit within thirty days.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "Parking"
    table.rows[0].cells[1].text = "one garage space"
    document.save(str(path))
    return path


CHINESE = (
    "知识库支持中文检索。用户可以把笔记、手册和合同放进一个文件夹。"
    "系统会自动切分文档并建立索引！向量数据库和全文检索一起工作；结果更加准确。"
)


def write_gbk_text(path: Path) -> Path:
    path.write_bytes(CHINESE.encode("gbk"))
    return path


def write_corpus(folder: Path) -> dict[str, Path]:
    """One file of every supported type, plus an unsupported one."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "md": write_markdown(folder / "pump.md"),
        "html": write_html(folder / "garden.html"),
        "pdf": write_pdf(
            folder / "warranty.pdf",
            [
                "The warranty covers manufacturing defects for two years.",
                "Claims must include the original receipt and the serial number.",
            ],
        ),
        "docx": write_docx(folder / "lease.docx"),
        "txt": write_gbk_text(folder / "zh-notes.txt"),
    }
    plain = folder / "notes.txt"
    plain.write_text("Bicycle chains need oil after riding in the rain.\n", encoding="utf-8")
    files["plain"] = plain
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return files


def tiny_cross_encoder(folder: Path) -> Path:
    """A randomly initialised one-layer BERT cross-encoder with MiniLM's tokenizer: the real
    loading and scoring code path, random weights (no reranker weights ship in any package)."""
    from transformers import BertConfig, BertForSequenceClassification

    source = resolve("builtin:all-minilm-l6-v2")
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    return folder
