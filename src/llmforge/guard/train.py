"""`llmforge guard train`: the recipe that builds the injection classifier's head (head.py).

Data: labelled JSONL files (`text`, `label` = `injection` | `benign`, optional `source`): by default
the deepset prompt-injection train split and guard-extra (both under `../shared/datasets/`), minus
the guard-extra sources held out for evaluation (`HOLDOUT_SOURCES`), plus any review-queue
decisions exported with `llmforge guard review export`. Rows of the first file (deepset) weigh
`primary_weight` times more: it is the closest to the traffic the dev figure measures, and the
thousands of guard-extra benign prompts would otherwise drown its 150 attacks.

Steps: embed every text with the built-in MiniLM (ONNX int8, the same encoder the guard runs),
build character n-gram TF-IDF features (scikit-learn), fit one class-balanced logistic regression
over both, choose the decision threshold from cross-validated scores on the training rows (never
the dev split), and write the head with its recipe and the data files' SHA-256. Deterministic for
the same files. It does not evaluate on dev: `bench/guard.py` does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from llmforge.core.errors import InvalidRequestError
from llmforge.guard.head import NGRAMS, HeadFile, Recipe
from llmforge.guard.injection import rule_hit
from llmforge.models.base import Embedder

HOLDOUT_SOURCES = (
    "self-instruct-user",
    "parapet-handwritten-benign",
    "parapet-handwritten-indirect",
)


class LabelledText(BaseModel):
    id: str | None = None
    text: str
    label: str
    source: str | None = None


@dataclass
class TrainingSet:
    texts: list[str] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    primary: list[bool] = field(default_factory=list)  # from the first file
    files: dict[str, str] = field(default_factory=dict)  # path -> SHA-256


def read_labelled(path: Path) -> list[LabelledText]:
    rows = []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise InvalidRequestError(f"{path}: cannot be read: {e}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = LabelledText.model_validate(orjson.loads(line))
        except (orjson.JSONDecodeError, ValidationError) as e:
            raise InvalidRequestError(
                f"{path}:{number}: not a labelled row ({e}); each line needs `text` and `label` "
                "(injection or benign)"
            ) from None
        if row.label not in ("injection", "benign"):
            raise InvalidRequestError(
                f"{path}:{number}: label '{row.label}' must be injection or benign"
            )
        rows.append(row)
    return rows


def load_training(
    paths: Sequence[Path], holdout_sources: Sequence[str] = HOLDOUT_SOURCES
) -> TrainingSet:
    data = TrainingSet()
    for i, path in enumerate(paths):
        name = f"{path.parent.name}/{path.name}"
        data.files[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        for row in read_labelled(path):
            if row.source in holdout_sources:
                continue
            data.texts.append(row.text)
            data.labels.append(row.label == "injection")
            data.primary.append(i == 0)
    if len(set(data.labels)) < 2:
        raise InvalidRequestError("training needs both injection and benign rows")
    return data


async def embed_texts(embedder: Embedder, texts: Sequence[str], batch: int = 256) -> np.ndarray:
    vectors: list[list[float]] = []
    for i in range(0, len(texts), batch):
        vectors.extend((await embedder.embed(list(texts[i : i + batch]))).vectors)
    return np.asarray(vectors, dtype=np.float32)


@dataclass(frozen=True)
class Options:
    c: float = 10.0
    primary_weight: float = 10.0
    max_ngrams: int = 20_000
    min_df: int = 2
    folds: int = 5
    max_benign_fpr: float = 0.02  # threshold: at most this share of training benign rows flagged
    band_tpr: float = 0.95  # second-stage band: its low end keeps this share of injections above

    def as_dict(self) -> dict[str, float | int]:
        return {
            "C": self.c,
            "primary_weight": self.primary_weight,
            "max_ngrams": self.max_ngrams,
            "min_df": self.min_df,
            "folds": self.folds,
            "max_benign_fpr": self.max_benign_fpr,
            "band_tpr": self.band_tpr,
        }


def fit_head(
    data: TrainingSet,
    embeddings: np.ndarray,
    options: Options = Options(),
    holdout_sources: Sequence[str] = HOLDOUT_SOURCES,
) -> HeadFile:
    """Fit the head; the threshold comes from `options.folds`-fold cross-validated scores."""
    y = np.asarray(data.labels)
    weights = np.where(np.asarray(data.primary), options.primary_weight, 1.0)
    scores = _cross_validated(data.texts, embeddings, y, weights, options)
    primary = np.asarray(data.primary)
    threshold, cv = _threshold(scores, y, primary, options.max_benign_fpr)
    band = _band(
        scores,
        y,
        primary,
        np.asarray([rule_hit(t) is not None for t in data.texts]),
        threshold,
        options.band_tpr,
    )
    vectorizer, model = _fit(data.texts, embeddings, y, weights, options)
    vocabulary: dict[str, int] = vectorizer.vocabulary_
    coef = model.coef_[0]
    idf = vectorizer.idf_
    ngrams = {
        gram: (round(float(idf[j]), 5), round(float(coef[j]), 5))
        for gram, j in vocabulary.items()
        if abs(coef[j]) >= 1e-5
    }
    dims = embeddings.shape[1]
    return HeadFile(
        recipe=Recipe(
            data=data.files,
            holdout_sources=list(holdout_sources),
            options=options.as_dict(),
            cv=cv,
            rows=len(data.texts),
        ),
        threshold=round(threshold, 5),
        band=band,
        intercept=float(model.intercept_[0]),
        embedding_weights=[round(float(w), 6) for w in coef[-dims:]],
        ngrams=ngrams,
    )


def _fit(
    texts: Sequence[str], emb: np.ndarray, y: np.ndarray, w: np.ndarray, options: Options
) -> tuple[Any, Any]:
    from scipy.sparse import csr_matrix, hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(
        analyzer="char_wb",
        ngram_range=NGRAMS,
        min_df=min(options.min_df, max(1, len(texts) // 10)),
        sublinear_tf=True,
        max_features=options.max_ngrams,
        dtype=np.float64,
    )
    x = hstack([vectorizer.fit_transform(texts), csr_matrix(emb)]).tocsr()
    model = LogisticRegression(C=options.c, class_weight="balanced", max_iter=5000)
    model.fit(x, y, sample_weight=w)
    return vectorizer, model


def _predict(vectorizer: Any, model: Any, texts: Sequence[str], emb: np.ndarray) -> np.ndarray:
    from scipy.sparse import csr_matrix, hstack

    x = hstack([vectorizer.transform(texts), csr_matrix(emb)]).tocsr()
    return np.asarray(model.predict_proba(x)[:, 1])


def _cross_validated(
    texts: Sequence[str], emb: np.ndarray, y: np.ndarray, w: np.ndarray, options: Options
) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(options.folds, shuffle=True, random_state=0)
    scores = np.zeros(len(texts))
    array = np.asarray(texts, dtype=object)
    for train, test in folds.split(array, y):
        vectorizer, model = _fit(list(array[train]), emb[train], y[train], w[train], options)
        scores[test] = _predict(vectorizer, model, list(array[test]), emb[test])
    return scores


def _band(
    scores: np.ndarray,
    y: np.ndarray,
    primary: np.ndarray,
    ruled: np.ndarray,
    threshold: float,
    tpr: float,
) -> tuple[float, float]:
    """The scores a second stage should decide: from the lowest that still keeps `tpr` of the
    primary file's injections the rules miss at or above it, up to just above the highest
    primary benign row (above it the head was never wrong on a benign training row)."""
    attacks = np.sort(scores[primary & y & ~ruled])
    low = float(attacks[int((1 - tpr) * len(attacks))]) if len(attacks) else threshold
    benign = scores[primary & ~y]
    high = float(benign.max()) + 0.005 if len(benign) else threshold
    low = min(low, threshold)
    high = min(max(high, threshold + 0.01), 0.995)
    return round(low, 5), round(high, 5)


def _threshold(
    scores: np.ndarray, y: np.ndarray, primary: np.ndarray, max_fpr: float
) -> tuple[float, dict[str, float]]:
    """The threshold with the best balanced accuracy on the primary rows among those that flag
    at most `max_fpr` of all benign rows."""
    best, best_t = -1.0, 0.5
    for t in np.linspace(0.05, 0.95, 91):
        flagged = scores >= t
        fpr = float(flagged[~y].mean())
        if fpr > max_fpr:
            continue
        p, py = flagged[primary], y[primary]
        balanced = (float(p[py].mean()) + float((~p[~py]).mean())) / 2
        if balanced > best:
            best, best_t = balanced, float(t)
    flagged = scores >= best_t
    p, py = flagged[primary], y[primary]
    return best_t, {
        "primary_tpr": round(float(p[py].mean()), 4),
        "primary_fpr": round(float(p[~py].mean()), 4),
        "benign_fpr": round(float(flagged[~y].mean()), 4),
        "tpr": round(float(flagged[y].mean()), 4),
    }
