"""Reference-based and retrieval metrics: pure scoring functions and the `Metric`s built on them.

Text metrics compare an output with the case's `expected` answer after the same tokenization:
lower-cased, punctuation dropped, words split on spaces, and Chinese/Japanese text split into
single characters (it has no spaces, so a word split would make every sentence one token).

| metric | value |
|---|---|
| exact_match | 1 if the token sequences are equal, else 0 |
| token_f1 | harmonic mean of token precision and recall (bag of tokens) |
| rouge_l | F1 of the longest common token subsequence |
| embedding_similarity | cosine of the two embeddings, clipped to [0, 1] |
| json_valid | 1 if the output is JSON (and matches the schema, when one is given) |
| recall_at_k / mrr / ndcg_at_k | ranked retrieved ids vs the case's `relevant` ids |

Judge metrics (a model grading an answer) are in `judge.py`.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from llmforge.evals.base import Metric, MetricOptions, Output, Score
from llmforge.evals.dataset import Case

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")


# -- pure functions ------------------------------------------------------------------------------


def tokens(text: str) -> list[str]:
    """Lower-cased words without punctuation; CJK characters one token each."""
    return _TOKEN.findall(text.casefold())


def exact_match(output: str, expected: str) -> float:
    return 1.0 if tokens(output) == tokens(expected) else 0.0


def token_f1(output: str, expected: str) -> float:
    out, ref = tokens(output), tokens(expected)
    if not out or not ref:
        return 1.0 if out == ref else 0.0
    common = sum((Counter(out) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(out), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(output: str, expected: str) -> float:
    out, ref = tokens(output), tokens(expected)
    if not out or not ref:
        return 1.0 if out == ref else 0.0
    lcs = lcs_length(out, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(out), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def parse_json(text: str) -> Any:
    """The JSON value in `text`, allowing surrounding whitespace and a ```json fence."""
    stripped = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", stripped, re.DOTALL)
    return json.loads(fenced.group(1) if fenced else stripped)


def json_errors(text: str, schema: dict[str, Any] | None = None) -> list[str]:
    """Why `text` is not valid JSON for `schema` (empty when it is)."""
    try:
        value = parse_json(text)
    except json.JSONDecodeError as e:
        return [f"not JSON: {e.msg} at character {e.pos}"]
    if schema is None:
        return []
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(str(p) for p in err.absolute_path) or '(root)'}: {err.message}"
        for err in validator.iter_errors(value)
    ]


def recall_at_k(retrieved: Sequence[str], relevant: Sequence[str], k: int) -> float:
    wanted = set(relevant)
    return len(wanted & set(retrieved[:k])) / len(wanted) if wanted else 0.0


def mrr(retrieved: Sequence[str], relevant: Sequence[str]) -> float:
    """Reciprocal rank of the first relevant item (0 when none was retrieved)."""
    wanted = set(relevant)
    return next((1 / rank for rank, r in enumerate(retrieved, start=1) if r in wanted), 0.0)


def ndcg_at_k(retrieved: Sequence[str], relevant: Sequence[str], k: int) -> float:
    """Binary-gain nDCG: each relevant item counts once, at its first rank."""
    wanted, seen = set(relevant), set()
    dcg = 0.0
    for rank, r in enumerate(retrieved[:k], start=1):
        if r in wanted and r not in seen:
            seen.add(r)
            dcg += 1 / math.log2(rank + 1)
    ideal = sum(1 / math.log2(rank + 1) for rank in range(1, min(len(wanted), k) + 1))
    return dcg / ideal if ideal else 0.0


# -- metrics -------------------------------------------------------------------------------------

NO_EXPECTED = "the case has no `expected` answer to compare with"


class _Reference:
    """A metric comparing the output with `expected` through a pure function."""

    def __init__(self, name: str, fn: Any) -> None:
        self.name = name
        self._fn = fn

    async def score(self, case: Case, output: Output) -> Score:
        if case.expected is None:
            return Score.failed(NO_EXPECTED)
        return Score.of(self._fn(output.text, case.expected))


class EmbeddingSimilarity:
    name = "embedding_similarity"

    def __init__(self, options: MetricOptions) -> None:
        self._embedder = options.need_embedder(self.name)

    async def score(self, case: Case, output: Output) -> Score:
        if case.expected is None:
            return Score.failed(NO_EXPECTED)
        vectors = (await self._embedder.embed([output.text, case.expected])).vectors
        return Score.of(max(0.0, min(1.0, cosine(vectors[0], vectors[1]))))


class JsonValid:
    """Valid JSON; with a schema (the case's `metadata.json_schema`, else the run's) also valid for
    it. The reasons are kept in the score's details."""

    name = "json_valid"

    def __init__(self, options: MetricOptions) -> None:
        self._schema: dict[str, Any] | None = options.extra.get("json_schema")

    async def score(self, case: Case, output: Output) -> Score:
        schema = case.metadata.get("json_schema", self._schema)
        errors = json_errors(output.text, schema if isinstance(schema, dict) else None)
        return Score.of(0.0 if errors else 1.0, errors=errors[:5])


class _Retrieval:
    def __init__(self, name: str, fn: Any, k: int | None) -> None:
        self.name = name
        self._fn = fn
        self._k = k

    async def score(self, case: Case, output: Output) -> Score:
        if not case.relevant:
            return Score.failed("the case lists no `relevant` ids to look for")
        if self._k is None:
            return Score.of(self._fn(output.retrieved, case.relevant))
        return Score.of(self._fn(output.retrieved, case.relevant, self._k), k=self._k)


def exact_match_metric(_options: MetricOptions) -> Metric:
    return _Reference("exact_match", exact_match)


def token_f1_metric(_options: MetricOptions) -> Metric:
    return _Reference("token_f1", token_f1)


def rouge_l_metric(_options: MetricOptions) -> Metric:
    return _Reference("rouge_l", rouge_l)


def embedding_similarity_metric(options: MetricOptions) -> Metric:
    return EmbeddingSimilarity(options)


def json_valid_metric(options: MetricOptions) -> Metric:
    return JsonValid(options)


def recall_at_k_metric(options: MetricOptions) -> Metric:
    return _Retrieval("recall_at_k", recall_at_k, options.k)


def mrr_metric(_options: MetricOptions) -> Metric:
    return _Retrieval("mrr", mrr, None)


def ndcg_at_k_metric(options: MetricOptions) -> Metric:
    return _Retrieval("ndcg_at_k", ndcg_at_k, options.k)
