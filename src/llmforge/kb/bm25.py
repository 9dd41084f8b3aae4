"""BM25 over a knowledge base's chunks (bm25s), with its own analyser for mixed Latin/CJK text.

`terms()` lower-cases Latin words, drops English stop words and stems them (PyStemmer's English
Snowball), and turns each run of CJK characters into overlapping character bigrams (a lone
character stays a unigram), so Chinese needs no word segmenter and mixed text works. The index is
rebuilt whole from the vector store after each ingest (`Bm25Index.build`) and saved next to the
vectors; saving writes a new folder and swaps it in, so a crash never leaves a half-written index.
It knows nothing of vectors or fusion.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from llmforge.kb.types import SearchFilters

_CJK = "\u2e80-\u2fff\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+")
_CJK_RUN = re.compile(rf"[{_CJK}]")


@lru_cache(maxsize=1)
def _quiet_bm25s() -> None:
    """bm25s sets its logger to DEBUG; its progress notes should not reach our logs."""
    logging.getLogger("bm25s").setLevel(logging.WARNING)


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def terms(text: str) -> list[str]:
    """The BM25 terms of `text`."""
    out: list[str] = []
    latin: list[str] = []
    stop = _stopwords()
    for match in _TOKEN.finditer(text.lower()):
        token = match.group()
        if _CJK_RUN.match(token):
            if len(token) == 1:
                out.append(token)
            else:
                out.extend(token[i : i + 2] for i in range(len(token) - 1))
        elif token not in stop:
            latin.append(token)
            out.append(token)
    if latin:
        stems = iter(_stemmer().stemWords(latin))
        out = [next(stems) if not _CJK_RUN.match(t) and t not in stop else t for t in out]
    return out


class Bm25Index:
    """A BM25 index of chunk ids, searchable with metadata filters."""

    def __init__(self, model: Any, ids: list[str], sources: list[str], types: list[str]) -> None:
        self._model = model
        self.ids = ids
        self._sources = sources
        self._types = types

    @classmethod
    def build(cls, rows: Iterable[tuple[str, str, str, str]]) -> Bm25Index | None:
        """From (chunk id, indexed text, source, file type) rows; None when there are none."""
        import bm25s

        _quiet_bm25s()
        ids: list[str] = []
        sources: list[str] = []
        types: list[str] = []
        corpus: list[list[str]] = []
        for chunk_id, text, source, file_type in rows:
            ids.append(chunk_id)
            sources.append(source)
            types.append(file_type)
            corpus.append(terms(text))
        if not ids:
            return None
        model = bm25s.BM25()
        model.index(corpus, show_progress=False)
        return cls(model, ids, sources, types)

    def search(
        self, query: str, k: int, filters: SearchFilters | None = None
    ) -> list[tuple[str, float]]:
        """Up to k (chunk id, score) pairs with a positive score, best first."""
        query_terms = [t for t in terms(query) if t in self._model.vocab_dict]
        if not query_terms or k <= 0:
            return []
        scores = np.asarray(self._model.get_scores(query_terms), dtype=np.float32)
        if filters is not None and not filters.is_empty():
            mask = np.fromiter(
                (filters.matches(s, t) for s, t in zip(self._sources, self._types, strict=True)),
                dtype=bool,
                count=len(self.ids),
            )
            scores = np.where(mask, scores, 0.0)
        n = min(k, int((scores > 0).sum()))
        if n == 0:
            return []
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.ids[i], float(scores[i])) for i in top]

    def save(self, folder: Path) -> None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self._model.save(str(tmp), show_progress=False)
        meta = {"ids": self.ids, "sources": self._sources, "types": self._types}
        (tmp / "chunks.json").write_text(json.dumps(meta), encoding="utf-8")
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> Bm25Index | None:
        """The saved index, or None when there is none."""
        import bm25s

        _quiet_bm25s()
        for candidate in (folder, folder.with_name(folder.name + ".old")):  # a swap cut short
            meta_file = candidate / "chunks.json"
            if meta_file.is_file():
                meta = json.loads(meta_file.read_text(encoding="utf-8"))
                model = bm25s.BM25.load(str(candidate), show_progress=False)
                return cls(model, meta["ids"], meta["sources"], meta["types"])
        return None

    @staticmethod
    def remove(folder: Path) -> None:
        for candidate in (folder, folder.with_name(folder.name + ".old")):
            shutil.rmtree(candidate, ignore_errors=True)
