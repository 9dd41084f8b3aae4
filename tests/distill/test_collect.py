"""Collecting a dataset: deduplication, a split that never moves a prompt, JSONL and flywheel
file errors that say how to fix them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmforge.core.errors import ConfigError, InvalidRequestError
from llmforge.core.types import Message
from llmforge.distill.collect import Example, build_dataset, from_jsonl, read_split, split_of
from llmforge.distill.config import CollectSpec, load_flywheel


def ex(i: int, text: str | None = None) -> Example:
    return Example(id=f"e{i}", messages=[Message(role="user", content=text or f"prompt {i}")])


def test_a_prompt_keeps_its_split_when_the_dataset_grows(tmp_path: Path) -> None:
    spec = CollectSpec(source="traces", test_share=0.3, val_share=0.1)
    small = build_dataset([ex(i) for i in range(40)], spec, tmp_path, "t")
    big = build_dataset([ex(i) for i in range(200)], spec, tmp_path, "t")
    assert small.sha256 != big.sha256
    for split in ("train", "val", "test"):
        before = {e.id for e in read_split(Path(small.folder), split)}
        after = {e.id for e in read_split(Path(big.folder), split)}
        assert before <= after
    test = {e.id for e in read_split(Path(big.folder), "test")}
    train = {e.id for e in read_split(Path(big.folder), "train")}
    assert not test & train
    assert 0.15 < len(test) / 200 < 0.45


def test_duplicates_are_collected_once_and_the_same_content_hashes_the_same(
    tmp_path: Path,
) -> None:
    spec = CollectSpec(source="traces")
    rows = [ex(i) for i in range(30)] + [ex(99, "prompt 3"), ex(98, "prompt 4")]
    info = build_dataset(rows, spec, tmp_path, "t")
    assert info.duplicates == 2 and sum(info.counts.values()) == 30
    assert build_dataset(rows, spec, tmp_path, "t").sha256 == info.sha256


def test_the_split_salt_decides_the_split() -> None:
    a, b = CollectSpec(split_seed="a"), CollectSpec(split_seed="b")
    assert [split_of(ex(i), a) for i in range(50)] != [split_of(ex(i), b) for i in range(50)]


def test_too_few_examples_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="Nothing to collect"):
        build_dataset([], CollectSpec(), tmp_path, "traces")
    with pytest.raises(InvalidRequestError, match="empty train or test split"):
        build_dataset([ex(1)], CollectSpec(), tmp_path, "traces")


def test_jsonl_rows_become_prompts_with_their_gold_label(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"id": "a", "text": "hello", "label": "benign"}) + "\n\n", encoding="utf-8"
    )
    spec = CollectSpec(source="jsonl", path=str(path), system="Classify.")
    [row] = from_jsonl(path, spec)
    assert [m.role for m in row.messages] == ["system", "user"]
    assert (row.id, row.messages[1].content, row.reference) == ("a", "hello", "benign")
    path.write_text('{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(InvalidRequestError, match="line 1: needs a text field 'text'"):
        from_jsonl(path, spec)


def test_flywheel_file_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("name: t\nteacher: gpt\ntrain: {stepz: 3}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"train\.stepz: unknown key \(allowed: steps"):
        load_flywheel(path)
    path.write_text("name: t\nteacher: gpt\ncollect: {source: jsonl}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="source jsonl needs `path`"):
        load_flywheel(path)
    with pytest.raises(ConfigError, match="not found"):
        load_flywheel(tmp_path / "missing.yaml")
    path.write_text("name: t\nteacher: gpt\n", encoding="utf-8")
    spec = load_flywheel(path)
    assert (spec.student_name, spec.routed_model, spec.student) == (
        "t-student",
        "gpt",
        "builtin:smollm2",
    )


def test_a_fixed_test_split_is_kept_whole_and_out_of_training(tmp_path: Path) -> None:
    test = [ex(i) for i in range(5)]
    info = build_dataset(
        [ex(i) for i in range(40)], CollectSpec(val_share=0.0), tmp_path, "t", test
    )
    assert [e.id for e in read_split(Path(info.folder), "test")] == [e.id for e in test]
    assert (info.counts["train"], info.counts["val"]) == (35, 0)  # all the rest trains
