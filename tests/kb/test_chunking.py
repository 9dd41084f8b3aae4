"""Chunking follows structure, respects the token budget and never cuts inside a character."""

from __future__ import annotations

from llmforge.kb.chunking import (
    HFTokenCounter,
    SimpleTokenCounter,
    chunk_document,
    pack,
    sentences,
    token_counter_for,
)
from llmforge.kb.types import LoadedDocument, Section
from llmforge.models.builtin import resolve

ZH = (
    "第一句话讲知识库。第二句话讲检索！第三句话讲向量？"
    "第四句话讲分块；第五句话讲重排…第六句话结束。"
)


def doc(*sections: Section, title: str = "Doc") -> LoadedDocument:
    return LoadedDocument(source="/d/doc.md", title=title, file_type="md", sections=list(sections))


def test_sentences_split_on_cjk_and_latin_punctuation_and_rejoin_exactly() -> None:
    text = "Hello there. How are you? 我很好。你呢！好的；然后…"
    parts = sentences(text)
    assert "".join(parts) == text
    assert parts == ["Hello there. ", "How are you? ", "我很好。", "你呢！", "好的；", "然后…"]


def test_decimal_numbers_and_abbreviation_dots_do_not_end_sentences() -> None:
    assert sentences("Version 3.5 is out. Next one") == ["Version 3.5 is out. ", "Next one"]


def test_chinese_chunks_end_at_sentence_marks_and_stay_within_budget() -> None:
    counter = SimpleTokenCounter()
    chunks = pack(ZH, size=20, overlap=0, counter=counter)
    assert len(chunks) > 1
    assert "".join(chunks) == ZH  # nothing lost, nothing cut inside a character
    for c in chunks:
        assert counter.count(c) <= 20
        assert c[-1] in "。！？；…"


def test_overlap_repeats_the_last_sentence_of_the_previous_chunk() -> None:
    counter = SimpleTokenCounter()
    text = "One two three four. Five six seven eight. Nine ten eleven twelve. Thirteen end."
    chunks = pack(text, size=10, overlap=5, counter=counter)
    assert chunks[0] == "One two three four. Five six seven eight."
    assert chunks[1].startswith("Five six seven eight.")
    for c in chunks:
        assert counter.count(c) <= 10


def test_a_sentence_longer_than_the_budget_is_cut_at_token_boundaries() -> None:
    counter = HFTokenCounter.from_file(resolve("builtin:all-minilm-l6-v2") / "tokenizer.json")
    text = " ".join(f"word{i}" for i in range(300))  # no sentence marks at all
    chunks = pack(text, size=50, overlap=0, counter=counter)
    assert len(chunks) > 1
    assert all(counter.count(c) <= 50 for c in chunks)
    assert " ".join(c.strip() for c in chunks) == text


def test_long_chinese_run_without_punctuation_is_never_cut_inside_a_character() -> None:
    counter = token_counter_for(resolve("builtin:all-minilm-l6-v2"))
    text = "知识库检索系统" * 40
    chunks = pack(text, size=32, overlap=0, counter=counter)
    assert "".join(chunks) == text
    assert all(counter.count(c) <= 32 for c in chunks)


def test_chunks_do_not_cross_sections_and_carry_their_metadata() -> None:
    counter = SimpleTokenCounter()
    d = doc(
        Section(heading_path=("Manual", "Install"), text="Unpack the box.\n\nPlug it in."),
        Section(heading_path=("Manual", "Use"), text="Press the green button."),
        Section(text="Page two text.", page=2),
    )
    chunks = chunk_document(d, size=100, overlap=10, counter=counter)
    assert [c.text for c in chunks] == [
        "Unpack the box.\n\nPlug it in.",
        "Press the green button.",
        "Page two text.",
    ]
    assert [c.heading_path for c in chunks] == [["Manual", "Install"], ["Manual", "Use"], []]
    assert [c.page for c in chunks] == [None, None, 2]
    assert [c.chunk_index for c in chunks] == [0, 1, 2]
    assert all(c.source == "/d/doc.md" and c.title == "Doc" for c in chunks)
    assert len({c.id for c in chunks}) == 3
    assert chunks[0].indexed_text().startswith("Doc > Manual > Install\n")


def test_chunk_ids_are_deterministic_and_change_with_content() -> None:
    counter = SimpleTokenCounter()
    a = chunk_document(doc(Section(text="Same text.")), size=50, overlap=0, counter=counter)
    b = chunk_document(doc(Section(text="Same text.")), size=50, overlap=0, counter=counter)
    c = chunk_document(doc(Section(text="Other text.")), size=50, overlap=0, counter=counter)
    assert a[0].id == b[0].id
    assert a[0].id != c[0].id
    assert a[0].content_hash != c[0].content_hash


def test_token_counts_use_the_embedders_tokenizer() -> None:
    counter = token_counter_for(resolve("builtin:all-minilm-l6-v2"))
    assert isinstance(counter, HFTokenCounter)
    assert counter.count("unbelievably") > 1  # word pieces, not words
    assert isinstance(token_counter_for(None), SimpleTokenCounter)
