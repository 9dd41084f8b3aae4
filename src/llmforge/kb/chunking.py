"""Chunking: a `LoadedDocument` -> `Chunk`s that follow its structure, sized in the embedder's
tokens.

Chunks never cross a section (heading or PDF page). Inside a section, paragraphs are packed
greedily up to `size` tokens; a paragraph too long for one chunk is split into sentences (Latin
`.!?` followed by a space, CJK `。！？；…` anywhere, and line breaks), and a sentence still too long
at token boundaries. Consecutive chunks share up to `overlap` tokens of whole sentences or
paragraphs. Pieces are always cut between characters, never inside one.

Tokens are counted with the embedding model's own fast tokenizer (`tokenizer.json` in its folder)
when there is one, else by a simple counter (a Latin word or one CJK character = one token). All
functions here are pure; nothing is read but the tokenizer file.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from llmforge.kb.types import Chunk, LoadedDocument

_CJK = "\u2e80-\u2fff\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_SIMPLE_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_SENTENCE_END = re.compile(
    r"[。！？；…]+[”’」』）)\"']*[ \t]*"  # CJK: no space needed after the mark
    r"|[.!?]+[”’\"')\]]*[ \t]+"  # Latin: the mark and then a space
    r"|\n"
)


class TokenCounter(Protocol):
    def count(self, text: str) -> int: ...

    def split(self, text: str, max_tokens: int) -> list[str]:
        """Consecutive pieces of `text` of at most `max_tokens` tokens, cut between tokens."""
        ...


class SimpleTokenCounter:
    """A Latin word, a run of punctuation or one CJK character counts as one token."""

    def count(self, text: str) -> int:
        return len(_SIMPLE_TOKEN.findall(text))

    def split(self, text: str, max_tokens: int) -> list[str]:
        spans = [m.start() for m in _SIMPLE_TOKEN.finditer(text)]
        return _cut(text, spans, max_tokens)


class HFTokenCounter:
    """The embedding model's fast tokenizer (special tokens are not counted)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    @classmethod
    def from_file(cls, path: Path) -> HFTokenCounter:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def split(self, text: str, max_tokens: int) -> list[str]:
        offsets = self._tokenizer.encode(text, add_special_tokens=False).offsets
        return _cut(text, [start for start, _ in offsets], max_tokens)


def _cut(text: str, starts: list[int], max_tokens: int) -> list[str]:
    """Cut before tokens, at most `max_tokens` apart, preferring tokens that start a word (after
    a space, or a CJK character) so a word is split into its pieces only when it alone is too
    long."""
    if len(starts) <= max_tokens:
        return [text]
    cuts = [0]
    first = 0
    while len(starts) - first > max_tokens:
        j = first + max_tokens
        while j > first + 1 and not _word_start(text, starts[j]):
            j -= 1
        if j == first + 1 and not _word_start(text, starts[j]):
            j = first + max_tokens
        cuts.append(starts[j])
        first = j
    cuts.append(len(text))
    pieces = [text[a:b] for a, b in itertools.pairwise(cuts)]
    return [p for p in pieces if p.strip()]


def _word_start(text: str, at: int) -> bool:
    return at == 0 or text[at - 1].isspace() or bool(re.match(rf"[{_CJK}]", text[at]))


def token_counter_for(model_folder: Path | None) -> TokenCounter:
    """The folder's `tokenizer.json` as a counter, else the simple one."""
    if model_folder is not None and (model_folder / "tokenizer.json").is_file():
        return HFTokenCounter.from_file(model_folder / "tokenizer.json")
    return SimpleTokenCounter()


def sentences(text: str) -> list[str]:
    """`text` cut after each sentence end; the pieces concatenate back to `text`."""
    out: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        if m.end() > start:
            out.append(text[start : m.end()])
            start = m.end()
    if start < len(text):
        out.append(text[start:])
    return [s for s in out if s.strip()]


@dataclass(frozen=True)
class _Unit:
    text: str
    tokens: int
    new_paragraph: bool


def _units(text: str, size: int, counter: TokenCounter) -> list[_Unit]:
    units: list[_Unit] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        tokens = counter.count(paragraph)
        if tokens <= size:
            units.append(_Unit(paragraph, tokens, True))
            continue
        first = True
        for sentence in sentences(paragraph):
            n = counter.count(sentence)
            pieces = [sentence] if n <= size else counter.split(sentence, size)
            for piece in pieces:
                count = n if len(pieces) == 1 else counter.count(piece)
                units.append(_Unit(piece, count, first))
                first = False
    return units


def _join(units: list[_Unit]) -> str:
    parts: list[str] = []
    for i, u in enumerate(units):
        if i and u.new_paragraph:
            parts.append("\n\n" + u.text.lstrip())
        elif i and parts and not parts[-1][-1:].isspace() and _needs_space(parts[-1], u.text):
            parts.append(" " + u.text)
        else:
            parts.append(u.text)
    return "".join(parts).strip()


def _needs_space(before: str, after: str) -> bool:
    """Latin pieces cut at a line break need a space; CJK ones do not."""
    return not (re.match(rf"[{_CJK}]", before[-1:]) or re.match(rf"[{_CJK}]", after[:1]))


def pack(text: str, size: int, overlap: int, counter: TokenCounter) -> list[str]:
    """The chunk texts of one section: at most `size` tokens each, `overlap` tokens shared."""
    return [chunk for chunk, _ in _pack_counted(text, size, overlap, counter)]


def _pack_counted(
    text: str, size: int, overlap: int, counter: TokenCounter
) -> list[tuple[str, int]]:
    """`pack`, with each chunk's token count. A section that fits in one chunk (most of them, in
    collections of short documents) is counted once, not once per paragraph and again whole."""
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(text)]
    whole = "\n\n".join(p for p in paragraphs if p)
    if not whole:
        return []
    if len(whole) <= size * 6:  # else surely too long: tokens are rarely over 6 characters
        tokens = counter.count(whole)
        if tokens <= size:
            return [(whole, tokens)]
    chunks: list[str] = []
    current: list[_Unit] = []
    tokens = 0
    for unit in _units(text, size, counter):
        if current and tokens + unit.tokens > size:
            chunks.append(_join(current))
            kept: list[_Unit] = []
            kept_tokens = 0
            for u in reversed(current):
                if kept_tokens + u.tokens > overlap or kept_tokens + u.tokens + unit.tokens > size:
                    break
                kept.insert(0, u)
                kept_tokens += u.tokens
            current, tokens = kept, kept_tokens
        current.append(unit)
        tokens += unit.tokens
    if current:
        chunks.append(_join(current))
    return [(c, counter.count(c)) for c in chunks if c]


def chunk_id(source: str, index: int, content_hash: str) -> str:
    return hashlib.sha256(f"{source}\0{index}\0{content_hash}".encode()).hexdigest()[:32]


def chunk_document(
    doc: LoadedDocument, *, size: int, overlap: int, counter: TokenCounter
) -> list[Chunk]:
    """Every chunk of `doc`, numbered in reading order, with its metadata."""
    if overlap >= size:
        raise ValueError("overlap must be smaller than size")
    chunks: list[Chunk] = []
    for section in doc.sections:
        for text, tokens in _pack_counted(section.text, size, overlap, counter):
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            index = len(chunks)
            chunks.append(
                Chunk(
                    id=chunk_id(doc.source, index, digest),
                    text=text,
                    source=doc.source,
                    title=doc.title,
                    heading_path=list(section.heading_path),
                    page=section.page,
                    file_type=doc.file_type,
                    chunk_index=index,
                    content_hash=digest,
                    tokens=tokens,
                )
            )
    return chunks
