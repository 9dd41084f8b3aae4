"""Tool calling and structured output through the gateway, driven by the clients people use: the
`openai` SDK (chat, streamed and not, `chat.completions.parse`), LangChain (`bind_tools`,
`with_structured_output`) and instructor — against the real local model (the gateway's promise:
well-formed calls that validate against the tool's schema, whatever the model chooses) and a
remote model behind a fake OpenAI upstream that answers with tool calls (passed through as sent).
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field

from tests.gateway.conftest import trace_of

pytestmark = pytest.mark.slow  # the real local model

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
}
ORDER = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                "required": ["sku", "qty"],
            },
            "maxItems": 3,
        },
        "express": {"type": "boolean"},
    },
    "required": ["items", "express"],
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "place_order", "description": "Order items",
                                      "parameters": ORDER}},
]  # fmt: skip
SCHEMAS = {"get_weather": WEATHER, "place_order": ORDER}
ASK = [{"role": "user", "content": "What is the weather in Paris in celsius?"}]


@pytest.fixture(scope="module")
def client(protocol: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=protocol + "/v1", api_key="unused", max_retries=0)


def valid_calls(calls: Any, allowed: set[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Every call names a given tool and its arguments parse and validate against its schema."""
    out = []
    assert calls, "no tool calls"
    for call in calls:
        name = call.function.name
        assert name in (allowed or SCHEMAS), name
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, SCHEMAS[name])
        assert call.id and call.type == "function"
        out.append((name, arguments))
    return out


def chat(client: openai.OpenAI, model: str, **params: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=params.pop("messages", ASK), temperature=0, **params
    )


def streamed_calls(client: openai.OpenAI, model: str, **params: Any) -> tuple[list[Any], str]:
    """The tool calls of a streamed answer, pieced together as OpenAI's docs show."""
    calls: dict[int, dict[str, str]] = {}
    finish = ""
    for chunk in chat(client, model, stream=True, **params):
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or ():
                call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                if piece.id:
                    assert not call["id"], "id sent twice"
                    call["id"], call["name"] = piece.id, piece.function.name
                call["arguments"] += piece.function.arguments or ""
            finish = choice.finish_reason or finish
    return [calls[i] for i in sorted(calls)], finish


# -- the local model: calls are well-formed whatever it chooses ----------------------------------


@pytest.mark.parametrize(
    ("tool_choice", "allowed"),
    [
        ("required", None),
        ({"type": "function", "function": {"name": "place_order"}}, {"place_order"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"get_weather"}),
    ],
    ids=["required", "named-nested-schema", "named"],
)
def test_local_model_calls_are_valid_for_their_schemas(
    client: openai.OpenAI, tool_choice: Any, allowed: set[str] | None
) -> None:
    r = chat(
        client, "local", tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False,
        max_tokens=200,
    )  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    valid_calls(choice.message.tool_calls, allowed)


def test_local_parallel_calls_are_each_valid(client: openai.OpenAI) -> None:
    """However many calls the model makes, each is complete and valid; one cut off by max_tokens
    is not returned as if it were whole."""
    r = chat(client, "local", tools=TOOLS, tool_choice="required", max_tokens=90)
    valid_calls(r.choices[0].message.tool_calls)


def test_local_model_without_parallel_calls_makes_exactly_one(client: openai.OpenAI) -> None:
    r = chat(
        client, "local", tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
        max_tokens=120,
    )  # fmt: skip
    assert r.choices[0].finish_reason == "tool_calls"
    assert len(valid_calls(r.choices[0].message.tool_calls)) == 1


def test_local_stream_pieces_make_the_same_calls_as_the_whole_answer(
    client: openai.OpenAI,
) -> None:
    params = {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False}
    whole = chat(client, "local", max_tokens=120, **params).choices[0].message.tool_calls
    calls, finish = streamed_calls(client, "local", max_tokens=120, **params)
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        (w.function.name, json.loads(w.function.arguments)) for w in whole
    ]
    assert all(c["id"].startswith("call_") for c in calls)


def test_local_model_with_tool_choice_none_answers_in_text(client: openai.OpenAI) -> None:
    r = chat(client, "local", tools=TOOLS, tool_choice="none", max_tokens=12)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


def test_local_model_on_auto_answers_text_or_valid_calls(client: openai.OpenAI) -> None:
    r = chat(client, "local", tools=TOOLS, tool_choice="auto", max_tokens=120)
    message = r.choices[0].message
    if message.tool_calls:
        valid_calls(message.tool_calls)
    else:
        assert message.content and not message.content.lstrip().startswith("{")


def test_local_model_reads_tool_results_in_a_multi_turn_conversation(
    client: openai.OpenAI,
) -> None:
    first = chat(
        client, "local", tools=TOOLS, tool_choice={"type": "function",
        "function": {"name": "get_weather"}}, max_tokens=80,
    )  # fmt: skip
    call = first.choices[0].message.tool_calls[0]
    history = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees"},
    ]
    r = chat(client, "local", messages=history, tools=TOOLS, tool_choice="none", max_tokens=24)
    assert r.choices[0].message.content  # an answer after the tool's result, no error


@pytest.mark.parametrize("response_format", ["json_object", "json_schema"])
def test_local_structured_output_always_parses(client: openai.OpenAI, response_format: str) -> None:
    fmt: Any = (
        {"type": "json_object"}
        if response_format == "json_object"
        else {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER}}
    )
    r = chat(client, "local", response_format=fmt, max_tokens=80)
    if r.choices[0].finish_reason == "length":
        pytest.skip("the answer ran out of tokens before closing its JSON")
    answer = json.loads(r.choices[0].message.content or "")
    assert isinstance(answer, dict)
    if response_format == "json_schema":
        jsonschema.validate(answer, ORDER)


class City(BaseModel):
    name: str
    country: str
    population_millions: float = Field(ge=0)
    kind: Literal["capital", "city"]


def test_sdk_parse_helper_returns_the_pydantic_model(client: openai.OpenAI) -> None:
    for model in ("local", "gpt-json"):
        r = client.chat.completions.parse(
            model=model,
            messages=[{"role": "user", "content": "Describe Paris."}],
            response_format=City,
            temperature=0,
            max_tokens=80,
        )
        assert isinstance(r.choices[0].message.parsed, City), model


# -- a remote model: passed through -----------------------------------------------------------


def test_remote_tool_calls_pass_through_whole_and_streamed(client: openai.OpenAI) -> None:
    r = chat(client, "gpt", tools=TOOLS)
    assert r.choices[0].finish_reason == "tool_calls"
    assert valid_calls(r.choices[0].message.tool_calls)[0][0] == "get_weather"
    calls, finish = streamed_calls(client, "gpt", tools=TOOLS)
    assert finish == "tool_calls" and [c["name"] for c in calls] == ["get_weather"]
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER)


def test_remote_parallel_calls_and_the_tool_result_turn(client: openai.OpenAI) -> None:
    r = chat(client, "gpt-parallel", tools=TOOLS)
    names = [name for name, _ in valid_calls(r.choices[0].message.tool_calls)]
    assert names == ["get_weather", "place_order"]
    history = [
        *ASK,
        r.choices[0].message.model_dump(exclude_none=True),
        *[
            {"role": "tool", "tool_call_id": c.id, "content": f"result of {c.function.name}"}
            for c in r.choices[0].message.tool_calls or ()
        ],
    ]
    answer = chat(client, "gpt-parallel", messages=history, tools=TOOLS)
    assert answer.choices[0].message.content == (
        "The tool said: result of get_weather; result of place_order"
    )


def test_anthropic_model_serves_openai_tool_calls(client: openai.OpenAI) -> None:
    """An OpenAI client's tools reach an Anthropic upstream translated, and come back."""
    r = chat(client, "claude", tools=TOOLS)
    assert r.choices[0].finish_reason == "tool_calls"
    assert valid_calls(r.choices[0].message.tool_calls)[0][0] == "get_weather"
    calls, finish = streamed_calls(client, "claude", tools=TOOLS)
    assert finish == "tool_calls" and json.loads(calls[0]["arguments"])


def test_tool_calls_are_traced(protocol_app: tuple[str, FastAPI]) -> None:
    protocol, app = protocol_app
    body = {"model": "gpt", "messages": ASK, "tools": TOOLS, "metadata": {"task": "weather"}}
    r = httpx.post(protocol + "/v1/chat/completions", json=body, timeout=30)
    calls = r.json()["choices"][0]["message"]["tool_calls"]
    trace = trace_of(app, r.headers["x-request-id"])
    assert trace.finish_reason == "tool_calls" and trace.metadata == {"task": "weather"}
    assert trace.tool_calls == [
        {"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in calls
    ]
    assert [t["name"] for t in trace.request["sampling"]["tools"]] == ["get_weather", "place_order"]


# -- the clients people already have -------------------------------------------------------------


def test_langchain_bind_tools_and_structured_output(protocol: str) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
        """Weather in a city."""
        return f"Sunny in {city}"

    def llm(model: str) -> ChatOpenAI:
        return ChatOpenAI(
            base_url=protocol + "/v1", api_key="unused", model=model, temperature=0,
            max_tokens=100, max_retries=0,
        )  # fmt: skip

    for model in ("gpt", "local"):
        message = (
            llm(model)
            .bind_tools([get_weather], tool_choice="get_weather")
            .invoke("Weather in Paris?")
        )
        assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather", model
        assert message.tool_calls[0]["args"]["unit"] in ("celsius", "fahrenheit")
    for model in ("gpt-json", "local"):
        structured = llm(model).with_structured_output(City, method="json_schema")
        assert isinstance(structured.invoke("Describe Paris."), City), model


def test_instructor_gets_validated_objects(protocol: str) -> None:
    import instructor

    raw = openai.OpenAI(base_url=protocol + "/v1", api_key="unused", max_retries=0)
    for model, mode in (("gpt", instructor.Mode.TOOLS), ("local", instructor.Mode.JSON_SCHEMA)):
        structured = instructor.from_openai(raw, mode=mode)
        city = structured.chat.completions.create(
            model=model,
            response_model=City,
            messages=[{"role": "user", "content": "Describe Paris."}],
            max_tokens=80,
            temperature=0,
            max_retries=1,
        )
        assert isinstance(city, City), model


def test_refused_tool_requests_say_why(client: openai.OpenAI) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tool names must be unique"),
        ({"response_format": {"type": "json_schema"}}, "json_schema"),
    ]  # fmt: skip
    for params, said in cases:
        with pytest.raises(openai.BadRequestError) as e:
            chat(client, "gpt", **params)
        assert said in str(e.value), params
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError):  # a local model refuses images at once
        chat(
            client,
            "local",
            messages=[{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ]}],
        )  # fmt: skip
    assert time.monotonic() - started < 5
