"""The JSON envelope local models answer in when they may call tools: its schema for every
tool_choice, the prompt text in its dialect, and reading it back while it is generated."""

from __future__ import annotations

import itertools
import json
from typing import Any

import jsonschema
import pytest

from llmforge.core.errors import InvalidRequestError
from llmforge.core.types import Delta, ResponseFormat, Sampling, Tool, ToolCall, ToolChoice
from llmforge.models.base import CompletionBuilder
from llmforge.models.tool_envelope import (
    EnvelopeReader,
    envelope_schema,
    instructions,
    render_calls,
    render_results,
)

WEATHER = Tool(
    name="get_weather",
    description="Current weather in a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
    },
)
TIME = Tool(
    name="get_time",
    parameters={
        "type": "object",
        "properties": {"timezone": {"type": "string"}},
        "required": ["timezone"],
    },
)
PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}
UTC = {"name": "get_time", "arguments": {"timezone": "UTC"}}


def sampling(mode: str | None = None, name: str | None = None, **kw: Any) -> Sampling:
    choice = ToolChoice(mode=mode, name=name) if mode else None  # type: ignore[arg-type]
    return Sampling(tools=(WEATHER, TIME), tool_choice=choice, **kw)


def valid(schema: dict[str, Any], doc: Any) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(doc)


def test_auto_allows_calls_or_a_text_response_and_nothing_else() -> None:
    schema = envelope_schema(sampling())
    assert schema is not None
    assert valid(schema, {"tool_calls": [PARIS]})
    assert valid(schema, {"tool_calls": [PARIS, UTC]})
    assert valid(schema, {"response": "It is sunny."})
    assert not valid(schema, {"tool_calls": []})
    assert not valid(schema, {"tool_calls": [{"name": "get_weather", "arguments": {}}]})
    assert not valid(schema, {"tool_calls": [{"name": "delete_all", "arguments": {}}]})
    assert not valid(schema, {"response": 42})


def test_required_allows_only_calls() -> None:
    schema = envelope_schema(sampling("required"))
    assert schema is not None
    assert valid(schema, {"tool_calls": [UTC]})
    assert not valid(schema, {"response": "no"})


def test_a_named_tool_choice_allows_exactly_one_call_of_that_tool() -> None:
    schema = envelope_schema(sampling("function", "get_time"))
    assert schema is not None
    assert valid(schema, {"tool_calls": [UTC]})
    assert not valid(schema, {"tool_calls": [PARIS]})
    assert not valid(schema, {"tool_calls": [UTC, UTC]})
    assert not valid(schema, {"response": "no"})


def test_parallel_tool_calls_false_allows_one_call() -> None:
    schema = envelope_schema(sampling(parallel_tool_calls=False))
    assert schema is not None
    assert valid(schema, {"tool_calls": [PARIS]})
    assert not valid(schema, {"tool_calls": [PARIS, UTC]})


def test_no_tools_or_tool_choice_none_is_a_plain_answer() -> None:
    assert envelope_schema(Sampling()) is None
    assert envelope_schema(sampling("none")) is None
    assert not sampling("none").calls_tools


def test_naming_a_tool_that_is_not_offered_is_a_400() -> None:
    with pytest.raises(InvalidRequestError, match=r"'get_stock'.*get_weather, get_time") as err:
        envelope_schema(sampling("function", "get_stock"))
    assert err.value.http_status == 400 and err.value.param == "tool_choice"


def test_with_response_format_an_auto_text_answer_follows_its_schema() -> None:
    fmt = ResponseFormat.for_schema(
        {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    )
    schema = envelope_schema(sampling(response_format=fmt))
    assert schema is not None
    assert valid(schema, {"response": {"n": 3}})
    assert not valid(schema, {"response": "3"})


def test_tools_defining_the_same_names_keep_their_own_definitions() -> None:
    def tool(name: str, item: dict[str, Any]) -> Tool:
        return Tool(
            name=name,
            parameters={
                "type": "object",
                "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
                "required": ["items"],
                "$defs": {"Item": item},
            },
        )

    a = tool("a", {"type": "integer"})
    b = tool("b", {"type": "string"})
    schema = envelope_schema(Sampling(tools=(a, b)))
    assert schema is not None
    assert valid(schema, {"tool_calls": [{"name": "a", "arguments": {"items": [1, 2]}}]})
    assert valid(schema, {"tool_calls": [{"name": "b", "arguments": {"items": ["x"]}}]})
    assert not valid(schema, {"tool_calls": [{"name": "a", "arguments": {"items": ["x"]}}]})


def test_the_envelope_schema_becomes_a_grammar_with_the_name_before_the_arguments() -> None:
    from llama_cpp import LlamaGrammar

    schema = envelope_schema(sampling(parallel_tool_calls=False))
    gbnf = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)._grammar
    calls = [line for line in gbnf.splitlines() if "name-kv" in line and "arguments-kv" in line]
    assert len(calls) == 2  # one rule per tool
    assert all(line.index("name-kv") < line.index("arguments-kv") for line in calls)


def test_instructions_describe_the_tools_only_when_the_template_does_not() -> None:
    text = instructions(sampling(), describe_tools=True)
    assert '"name": "get_weather"' in text and '"timezone"' in text
    assert '{"tool_calls": [' in text and '{"response": ' in text
    bare = instructions(sampling(), describe_tools=False)
    assert "get_weather" not in bare and '{"tool_calls": [' in bare
    named = instructions(sampling("function", "get_time"), describe_tools=True)
    assert "You must call the tool `get_time`" in named and "get_weather" not in named
    assert '{"response"' not in instructions(sampling("required"), describe_tools=False)


def test_earlier_calls_are_written_as_the_model_would_answer() -> None:
    calls = (
        ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}'),
        ToolCall(id="call_2", name="get_time", arguments='{"timezone": "UTC"}'),
    )
    written = json.loads(render_calls(calls))
    schema = envelope_schema(sampling())
    assert schema is not None and valid(schema, written)
    assert written == {"tool_calls": [PARIS, UTC]}
    results = render_results([("get_weather", "call_1", "sunny"), (None, "call_2", "12:00")])
    lines = [json.loads(line) for line in results.splitlines()]
    assert lines[0] == {
        "tool_response": {"name": "get_weather", "tool_call_id": "call_1", "content": "sunny"}
    }
    assert lines[1]["tool_response"]["content"] == "12:00"


# -- reading -----------------------------------------------------------------------------------

CALLS_DOC = (
    '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Par\\u00eds \\"x\\"", '
    '"n": [1, -2.5e3, {"a": null, "b": true}]}}, {"name":"get_time","arguments":{"tz":7}}]}'
)


def read(doc: str, cuts: tuple[int, ...]) -> tuple[CompletionBuilder, list[Delta]]:
    counter = itertools.count()
    reader = EnvelopeReader(lambda: f"call_{next(counter)}")
    builder, deltas = CompletionBuilder(), []
    bounds = [0, *cuts, len(doc)]
    for start, end in itertools.pairwise(bounds):
        for piece in reader.feed(doc[start:end]):
            delta = Delta(text=piece) if isinstance(piece, str) else Delta(tool_calls=(piece,))
            deltas.append(delta)
            builder.add(delta)
    return builder, deltas


def splits(doc: str) -> list[tuple[int, ...]]:
    """Every cut into two pieces, one character at a time, and a few uneven cuts."""
    return [(), tuple(range(1, len(doc))), *((i,) for i in range(1, len(doc))), (3, 17, 40)]


def test_calls_read_back_the_same_however_the_text_is_split() -> None:
    expected = json.loads(CALLS_DOC)["tool_calls"]
    for cuts in splits(CALLS_DOC):
        builder, _ = read(CALLS_DOC, cuts)
        calls = builder.tool_calls()
        assert [c.name for c in calls] == [e["name"] for e in expected]
        assert [json.loads(c.arguments) for c in calls] == [e["arguments"] for e in expected]
        assert [c.id for c in calls] == ["call_0", "call_1"]
        # the arguments are the model's own text, not re-serialised
        assert calls[1].arguments == '{"tz":7}'
        assert builder.text() == ""


def test_a_calls_first_piece_carries_id_and_name_then_only_arguments() -> None:
    _, deltas = read(CALLS_DOC, tuple(range(1, len(CALLS_DOC))))
    pieces = [p for d in deltas for p in d.tool_calls]
    for index in (0, 1):
        mine = [p for p in pieces if p.index == index]
        assert mine[0].id == f"call_{index}" and mine[0].name and mine[0].arguments == ""
        assert all(p.id is None and p.name is None and p.arguments for p in mine[1:])
        assert len(mine) > 3  # streamed in pieces, not at the end


RESPONSE_DOC = '{"response": "Hello\\n w\\u00f6rld \\ud83d\\ude00 \\"q\\" \\\\ end"}'


def test_a_text_response_is_unescaped_as_it_arrives() -> None:
    for cuts in splits(RESPONSE_DOC):
        builder, _ = read(RESPONSE_DOC, cuts)
        assert builder.text() == 'Hello\n wörld 😀 "q" \\ end'
        assert not builder.tool_calls()
    _, deltas = read(RESPONSE_DOC, tuple(range(1, len(RESPONSE_DOC))))
    assert [d.text for d in deltas[:5]] == ["H", "e", "l", "l", "o"]  # as it arrives


@pytest.mark.parametrize(
    ("doc", "text"),
    [
        ('{"response": {"a": 1, "b": [true, "x}"]}}', '{"a": 1, "b": [true, "x}"]}'),
        ('{"response": 42 }', "42"),
        ('{"response": "\\ud83d"}', "\ufffd"),
    ],
)
def test_a_structured_response_is_its_json_text(doc: str, text: str) -> None:
    for cuts in splits(doc):
        assert read(doc, cuts)[0].text() == text


def test_arguments_written_before_the_name_wait_for_it() -> None:
    doc = '{ "tool_calls" : [ { "arguments" : { "x" : 1 } , "name" : "late" } ] }'
    for cuts in splits(doc):
        builder, deltas = read(doc, cuts)
        (call,) = builder.tool_calls()
        assert (call.name, call.arguments) == ("late", '{ "x" : 1 }')
        assert deltas[0].tool_calls[0].name == "late"
