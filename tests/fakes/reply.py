"""What a fake upstream answers, decided before it is spelled in a vendor's wire format.

A `Reply` is one answer: text, tool calls, or both. The fakes (`openai_upstream.py`,
`anthropic_upstream.py`) build one from the request (by the model it names) or take one scripted
per instance (`fake.respond(Reply(...))`), then write it as their vendor would, whole or streamed.
`example_for(schema)` makes a value valid for a JSON schema: the arguments of a tool call the fake
decides to make, or a structured answer.

This module knows no wire format and starts no server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Call:
    """A tool call in a reply: the function's name and its arguments as JSON text."""

    name: str
    arguments: str = "{}"


@dataclass(frozen=True)
class Reply:
    """One scripted answer. `finish_reason` (in the vendor's words) defaults to the tool-call
    reason when there are calls, else the plain stop; a stream sends tool-call arguments in
    pieces of `piece` characters."""

    text: str = ""
    calls: tuple[Call, ...] = ()
    finish_reason: str | None = None
    piece: int = 7


def pieces(text: str, size: int) -> list[str]:
    """`text` cut into pieces of `size` characters (at least one piece, maybe empty)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def call_to(name: str, schema: dict[str, Any] | None) -> Call:
    """A call to tool `name` with arguments valid for its parameter schema."""
    return Call(name, json.dumps(example_for(schema or {"type": "object"})))


def example_for(schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """A value valid for `schema` (the part of JSON Schema that tool and response schemas use:
    types, properties, items, enum, const, $ref into $defs, anyOf/oneOf/allOf, minimum, minLength,
    minItems)."""
    root = root if root is not None else schema
    if "$ref" in schema:
        *_, section, name = schema["$ref"].split("/")
        return example_for(root.get(section, {}).get(name, {}), root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_for(schema[key][0], root)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: example_for(sub, root) for name, sub in properties.items()}
    if kind == "array":
        item = example_for(schema.get("items") or {"type": "string"}, root)
        return [item] * max(1, schema.get("minItems", 1))
    if kind in ("integer", "number"):
        return schema.get("minimum", schema.get("maximum", 1 if kind == "integer" else 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "x" * max(1, schema.get("minLength", 1))
