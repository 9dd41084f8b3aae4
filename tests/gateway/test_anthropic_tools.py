"""Tool use on `/v1/messages` with the `anthropic` SDK, whatever serves the model: the local model
(calls held to the schema by a grammar), an OpenAI-compatible upstream (translated both ways) or
an Anthropic upstream; whole answers and streams of `input_json_delta` pieces; a conversation
that carries the tool's result back."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import jsonschema
import pytest

pytestmark = pytest.mark.slow  # the real local model

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city", "unit"],
}
TOOLS: Any = [{"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER}]
ASK: Any = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def client(protocol: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=protocol, api_key="unused", max_retries=0)


@pytest.mark.parametrize("model", ["local", "gpt", "claude"])
def test_tool_use_blocks_come_back_valid(client: anthropic.Anthropic, model: str) -> None:
    m = client.messages.create(
        model=model, max_tokens=100, messages=ASK, tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    )  # fmt: skip
    assert m.stop_reason == "tool_use"
    [use] = [b for b in m.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.id
    jsonschema.validate(use.input, WEATHER)


@pytest.mark.parametrize("model", ["local", "gpt", "claude"])
def test_streamed_tool_input_arrives_as_json_pieces(
    client: anthropic.Anthropic, model: str
) -> None:
    with client.messages.stream(
        model=model, max_tokens=100, messages=ASK, tools=TOOLS,
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    ) as stream:  # fmt: skip
        events = list(stream)
        final = stream.get_final_message()
    pieces = "".join(
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    )
    [use] = [b for b in final.content if b.type == "tool_use"]
    assert json.loads(pieces) == use.input
    jsonschema.validate(use.input, WEATHER)
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_tool_result_turn_reaches_the_model(client: anthropic.Anthropic, model: str) -> None:
    first = client.messages.create(model=model, max_tokens=100, messages=ASK, tools=TOOLS)
    [use] = [b for b in first.content if b.type == "tool_use"]
    history: Any = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny"},
        ]},
    ]  # fmt: skip
    m = client.messages.create(model=model, max_tokens=100, messages=history, tools=TOOLS)
    assert m.content[0].type == "text" and m.content[0].text == "The tool said: Sunny"
    assert m.stop_reason == "end_turn"


def test_server_tools_and_documents_are_refused(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(
            model="gpt", max_tokens=10, messages=ASK,
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
        )  # fmt: skip
    assert "server tools" in str(e.value)
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(
            model="gpt", max_tokens=10,
            messages=[{"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                "data": "x"}},
            ]}],
        )  # fmt: skip
    assert "document" in str(e.value)
