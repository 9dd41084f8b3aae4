"""Numeric bounds the local grammar must enforce: llama-cpp-python's schema converter ignores
`minimum`/`maximum`, so small integer ranges are written as enums before the grammar is built."""

from __future__ import annotations

from typing import Any

import pytest

from llmforge.models.llamacpp import ENUMERATED_INT_RANGE, _bounded_integers_as_enums


@pytest.mark.parametrize(
    ("schema", "enum"),
    [
        ({"type": "integer", "minimum": 1, "maximum": 7}, [1, 2, 3, 4, 5, 6, 7]),
        ({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 4}, [1, 2, 3]),
        ({"type": "integer", "minimum": 0, "maximum": 20, "multipleOf": 5}, [0, 5, 10, 15, 20]),
        ({"type": "integer", "minimum": 1.5, "maximum": 3.5}, [2, 3]),
    ],
)
def test_small_integer_ranges_become_enums(schema: dict[str, Any], enum: list[int]) -> None:
    nested = {"type": "object", "properties": {"n": schema, "list": {"items": [schema]}}}
    out = _bounded_integers_as_enums(nested)
    assert out["properties"]["n"] == {"enum": enum}
    assert out["properties"]["list"]["items"] == [{"enum": enum}]


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 1},  # open range
        {"type": "integer", "minimum": 0, "maximum": ENUMERATED_INT_RANGE},  # too wide to list
        {"type": "integer", "minimum": 5, "maximum": 1},  # empty: left for the caller to see
        {"type": "number", "minimum": 0, "maximum": 1},  # not an integer
        {"type": "integer", "enum": [3, 9], "minimum": 0, "maximum": 10},  # already an enum
    ],
)
def test_other_schemas_are_left_as_they_are(schema: dict[str, Any]) -> None:
    assert _bounded_integers_as_enums(schema) == schema
