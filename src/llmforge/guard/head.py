"""The injection classifier's trained head: a logistic regression over two views of a text.

The features are (1) the text's sentence embedding (MiniLM, 384 numbers) and (2) its character
n-grams (2-5 characters inside word boundaries, lowercased: scikit-learn's `char_wb` analyzer,
TF-IDF weighted with sublinear counts, L2-normalised), which catch what an English embedding
misses (German and other languages, odd spellings, shouting). The head file (JSON) holds the
n-gram vocabulary with each n-gram's IDF and weight, the embedding weights, the bias, the decision
threshold, and the recipe that made it (data files and their SHA-256, options, cross-validated
figures), so it can be rebuilt and checked: `llmforge guard train` writes it (train.py).

Scoring is plain Python and NumPy (about 0.1 ms for a prompt), the same arithmetic as
scikit-learn's pipeline at training time (`tests/guard/test_head.py` checks they agree). It does
not embed: the caller hands in the vector.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, Field

from llmforge.core.errors import ConfigError

BUILTIN_HEAD = "builtin"
NGRAMS = (2, 5)
_SPACES = re.compile(r"\s\s+")


class Recipe(BaseModel):
    """How a head was made; enough to make it again."""

    data: dict[str, str] = Field(default_factory=dict, description="file -> SHA-256")
    holdout_sources: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    embedding: str = "builtin:all-minilm-l6-v2 (onnx int8)"
    cv: dict[str, float] = Field(default_factory=dict, description="cross-validated figures")
    rows: int = 0


class HeadFile(BaseModel):
    version: int = 1
    recipe: Recipe
    threshold: float
    band: tuple[float, float] | None = Field(
        None,
        description="scores [low, high) a second stage decides, when one is configured "
        "(from the recipe's cross-validated scores; train.py)",
    )
    intercept: float
    embedding_weights: list[float]
    ngrams: dict[str, tuple[float, float]] = Field(description="n-gram -> (idf, weight)")


def char_wb_ngrams(text: str, ngram_range: tuple[int, int] = NGRAMS) -> list[str]:
    """scikit-learn's `char_wb` analyzer (lowercased): n-grams inside ' word ' windows."""
    text = _SPACES.sub(" ", text.lower())
    low, high = ngram_range
    out: list[str] = []
    for word in text.split():
        w = f" {word} "
        size = len(w)
        for n in range(low, high + 1):
            offset = 0
            out.append(w[offset : offset + n])
            while offset + n < size:
                offset += 1
                out.append(w[offset : offset + n])
            if offset == 0:
                break
    return out


class InjectionHead:
    def __init__(self, head: HeadFile, digest: str) -> None:
        self.file = head
        self.digest = digest
        self.threshold = head.threshold
        self.band = head.band
        self.dimensions = len(head.embedding_weights)
        self._emb = np.asarray(head.embedding_weights, dtype=np.float32)
        self._ngrams = head.ngrams
        self._bias = head.intercept

    @classmethod
    def load(cls, path: str | None = None) -> InjectionHead:
        """The head at `path`, or the built-in one (trained on the deepset and guard-extra
        sets, see the recipe inside it)."""
        try:
            if path is None or path == BUILTIN_HEAD:
                raw = files("llmforge.guard").joinpath("data/injection_head.json").read_bytes()
            else:
                raw = Path(path).expanduser().read_bytes()
            head = HeadFile.model_validate_json(raw)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"injection head '{path or BUILTIN_HEAD}' cannot be read: {e}. Make one with "
                "`llmforge guard train --out FILE` or leave `head` unset for the built-in one."
            ) from None
        return cls(head, hashlib.sha256(raw).hexdigest())

    def score(self, text: str, embedding: np.ndarray | None) -> float:
        """Probability that `text` is an injection (embedding: the text's unit vector)."""
        z = self._bias + self.ngram_logit(text)
        if embedding is not None:
            z += float(self._emb @ embedding)
        return 1.0 / (1.0 + math.exp(-z))

    def ngram_logit(self, text: str) -> float:
        counts = Counter(char_wb_ngrams(text))
        total, norm = 0.0, 0.0
        for gram, count in counts.items():
            entry = self._ngrams.get(gram)
            if entry is None:
                continue
            idf, weight = entry
            value = (1.0 + math.log(count)) * idf
            norm += value * value
            total += value * weight
        return total / math.sqrt(norm) if norm else 0.0


def write_head(head: HeadFile, path: Path) -> str:
    """Write a head file (compact JSON, n-grams sorted, so the same head gives the same bytes);
    returns its SHA-256."""
    body = head.model_dump()
    body["ngrams"] = dict(sorted(head.ngrams.items()))
    raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return hashlib.sha256(raw).hexdigest()
