"""`llmforge kb ...` as a user runs it: a real process, a real config file, real exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_process import llmforge
from tests.kb.conftest import tiny_cross_encoder, write_corpus

CONFIG = """
database: sqlite:///{db}
embeddings:
  - name: hash
    provider: fake
kb:
  path: {kb}
{extra}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "llmforge.yaml"
    path.write_text(
        CONFIG.format(db=tmp_path / "cli.db", kb=tmp_path / "kbs", extra=""), encoding="utf-8"
    )
    return path


def test_ingest_search_list_delete(config: Path, tmp_path: Path) -> None:
    files = write_corpus(tmp_path / "docs")
    out = llmforge(
        "-c", str(config), "kb", "ingest", str(tmp_path / "docs"), "--kb", "notes", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert f"{len(files)} added" in out.stdout
    assert "skipped (unsupported type)" in out.stdout and "image.png" in out.stdout

    out = llmforge(
        "-c",
        str(config),
        "kb",
        "search",
        "impeller seals",
        "--kb",
        "notes",
        "--k",
        "2",
        "--json",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)
    assert len(hits) == 2
    assert hits[0]["source"] == str(files["md"])
    assert hits[0]["heading_path"] == ["Pump Manual", "Maintenance", "Seals"]

    out = llmforge(
        "-c",
        str(config),
        "kb",
        "search",
        "中文检索",
        "--kb",
        "notes",
        "--k",
        "1",
        "--type",
        "txt",
        "--json",
        cwd=tmp_path,
    )
    assert json.loads(out.stdout)[0]["source"] == str(files["txt"])

    out = llmforge("-c", str(config), "kb", "list", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)
    assert (row["name"], row["documents"], row["embedding"], row["store"]) == (
        "notes",
        len(files),
        "hash",
        "lancedb",
    )

    out = llmforge("-c", str(config), "kb", "delete", "notes", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (
        json.loads(llmforge("-c", str(config), "kb", "list", "--json", cwd=tmp_path).stdout) == []
    )


def test_errors_are_one_line_with_exit_code_1(config: Path, tmp_path: Path) -> None:
    cases = [
        (["kb", "ingest", str(tmp_path / "missing"), "--kb", "x"], "No such file or folder"),
        (["kb", "search", "q", "--kb", "nope"], "Unknown knowledge base 'nope'"),
        (["kb", "delete", "nope"], "Unknown knowledge base 'nope'"),
    ]
    for args, message in cases:
        out = llmforge("-c", str(config), *args, cwd=tmp_path)
        assert out.returncode == 1
        assert out.stderr.startswith("error: ") and message in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    (tmp_path / "a.txt").write_text("text", "utf-8")
    llmforge("-c", str(config), "kb", "ingest", str(tmp_path / "a.txt"), "--kb", "x", cwd=tmp_path)
    out = llmforge("-c", str(config), "kb", "search", "  ", "--kb", "x", cwd=tmp_path)
    assert out.returncode == 1 and "query is empty" in out.stderr


def test_explain_shows_the_rerank_stage_and_stage_scores(tmp_path: Path) -> None:
    model = tiny_cross_encoder(tmp_path / "ce")
    config = tmp_path / "llmforge.yaml"
    config.write_text(
        CONFIG.format(
            db=tmp_path / "cli.db", kb=tmp_path / "kbs", extra=f"  reranker:\n    path: {model}\n"
        ),
        encoding="utf-8",
    )
    write_corpus(tmp_path / "docs")
    llmforge("-c", str(config), "kb", "ingest", str(tmp_path / "docs"), "--kb", "r", cwd=tmp_path)
    out = llmforge(
        "-c", str(config), "kb", "search", "warranty", "--kb", "r", "--explain", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "stage rerank:" in out.stdout
    assert "rerank=" in out.stdout and "rerank=-" not in out.stdout
