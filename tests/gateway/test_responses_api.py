"""The Responses API (`/v1/responses`) as the `openai` SDK and the OpenAI Agents SDK use it: text
and function tools, `instructions`, string or item input, streamed typed events, conversations
continued by `previous_response_id`, `store: false`, get / delete, and the keys that own them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import SecretStr

from llmforge.core.settings import load_settings
from llmforge.gateway import create_app
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.server import serve

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOL: Any = {"type": "function", "name": "get_weather", "description": "Weather in a city",
             "parameters": WEATHER, "strict": True}  # fmt: skip


@pytest.fixture(scope="module")
def client(protocol: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=protocol + "/v1", api_key="unused", max_retries=0)


def test_text_answer_from_a_string_input(client: openai.OpenAI) -> None:
    r = client.responses.create(model="echo", input="hello over there", instructions="Be brief.")
    assert r.status == "completed" and r.object == "response"
    assert r.output_text == "hello over there"
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens == 3
    assert r.instructions == "Be brief."


def test_function_call_then_its_output_continues_the_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(model="gpt", input="Weather in Paris?", tools=[TOOL])
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    second = client.responses.create(
        model="gpt",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
        tools=[TOOL],
    )
    assert second.output_text == "The tool said: Sunny"
    assert second.previous_response_id == first.id


def test_local_model_makes_schema_valid_calls(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model="local", input="Weather in Paris?", tools=[TOOL], tool_choice="required",
        parallel_tool_calls=False, max_output_tokens=80, temperature=0,
    )  # fmt: skip
    [call] = [item for item in r.output if item.type == "function_call"]
    jsonschema.validate(json.loads(call.arguments), WEATHER)


def test_structured_output_through_text_format(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model="local",
        input="Weather in Paris?",
        text={"format": {"type": "json_schema", "name": "weather", "schema": WEATHER}},
        max_output_tokens=60,
        temperature=0,
    )
    jsonschema.validate(json.loads(r.output_text), WEATHER)


def test_stream_sends_the_typed_events_in_order(client: openai.OpenAI) -> None:
    with client.responses.stream(model="gpt", input="Weather in Paris?", tools=[TOOL]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    pieces = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [call] = [item for item in final.output if item.type == "function_call"]
    assert pieces == call.arguments and json.loads(pieces)


def test_streamed_text_deltas_add_up_to_the_answer(client: openai.OpenAI) -> None:
    with client.responses.stream(model="echo", input="one two three four") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == "one two three four"


def test_stored_responses_can_be_read_listed_and_deleted(client: openai.OpenAI) -> None:
    r = client.responses.create(model="echo", input="keep me")
    assert client.responses.retrieve(r.id).output_text == "keep me"
    items = client.responses.input_items.list(r.id)
    assert items.data[0].type == "message"
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):  # nothing to continue from either
        client.responses.create(model="echo", input="more", previous_response_id=r.id)


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    r = client.responses.create(model="echo", input="forget me", store=False)
    assert r.output_text == "forget me"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_refused_inputs_say_why(client: openai.OpenAI) -> None:
    for params, said in (
        ({"tools": [{"type": "web_search"}]}, "built-in tools"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "item_reference"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [TOOL]}, "nope"),
        ({"background": True}, "background"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model="echo", **{"input": "x", **params})
        assert said in str(e.value), params


def test_a_key_sees_only_its_own_responses(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp_path / 'gw.db'}",
        models=[{"name": "fake", "provider": "fake", "responses": ["ok"]}],
        embeddings=[],
        master_key=SecretStr("sk-master"),
        server={"preload": False},
    )
    with serve(create_app(settings)) as base:

        def key(name: str) -> str:
            r = httpx.post(
                base + "/admin/keys", json={"name": name},
                headers={"Authorization": "Bearer sk-master"}, timeout=10,
            )  # fmt: skip
            return str(r.json()["key"])

        alice = openai.OpenAI(base_url=base + "/v1", api_key=key("alice"), max_retries=0)
        bob = openai.OpenAI(base_url=base + "/v1", api_key=key("bob"), max_retries=0)
        master = openai.OpenAI(base_url=base + "/v1", api_key="sk-master", max_retries=0)
        r = alice.responses.create(model="fake", input="mine")
        assert alice.responses.retrieve(r.id).id == r.id
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve(r.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.create(model="fake", input="yours?", previous_response_id=r.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.delete(r.id)
        assert master.responses.retrieve(r.id).id == r.id


# -- the OpenAI Agents SDK ----------------------------------------------------------------------


@pytest.fixture
def agents_sdk() -> Iterator[Any]:
    import agents

    agents.set_tracing_disabled(True)  # the SDK would export its traces to OpenAI
    yield agents


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
def test_agents_sdk_runs_an_agent_with_a_function_tool(
    protocol: str, agents_sdk: Any, api: str
) -> None:
    agents = agents_sdk
    called: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        called.append(city)
        return f"Sunny in {city}"

    client = openai.AsyncOpenAI(base_url=protocol + "/v1", api_key="unused", max_retries=0)
    model = (
        agents.OpenAIResponsesModel(model="gpt", openai_client=client)
        if api == "responses"
        else agents.OpenAIChatCompletionsModel(model="gpt", openai_client=client)
    )
    agent = agents.Agent(
        name="weather", instructions="Answer with the tool.", tools=[get_weather], model=model
    )

    async def run() -> Any:
        try:
            return await agents.Runner.run(agent, "What is the weather in Paris?")
        finally:
            await client.close()

    result = asyncio.run(run())
    assert called, "the tool was never called"
    assert result.final_output == f"The tool said: Sunny in {called[0]}"


def test_agents_sdk_streams_through_the_responses_api(protocol: str, agents_sdk: Any) -> None:
    agents = agents_sdk

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "Rainy"

    client = openai.AsyncOpenAI(base_url=protocol + "/v1", api_key="unused", max_retries=0)
    agent = agents.Agent(
        name="weather",
        tools=[get_weather],
        model=agents.OpenAIResponsesModel(model="gpt", openai_client=client),
    )

    async def run() -> tuple[list[str], Any]:
        try:
            result = agents.Runner.run_streamed(agent, "Weather in Oslo?")
            kinds = [event.type async for event in result.stream_events()]
            return kinds, result.final_output
        finally:
            await client.close()

    kinds, final = asyncio.run(run())
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    assert final == "The tool said: Rainy"


def test_responses_of_a_remote_model_reach_the_upstream_as_chat(tmp_path: Path) -> None:
    """Any model answers the Responses API: the gateway speaks chat completions upstream."""
    fake = FakeOpenAI()
    with serve(fake.app) as up:
        settings = load_settings(
            None,
            database=f"sqlite:///{tmp_path / 'gw.db'}",
            models=[
                {"name": "gpt", "provider": "openai", "base_url": up + "/v1", "model_id": "tools"}
            ],
            embeddings=[],
            server={"preload": False},
        )
        with serve(create_app(settings)) as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
            client.responses.create(
                model="gpt", input="Weather?", instructions="Use tools.", tools=[TOOL]
            )
    sent = fake.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Use tools."}
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tools"][0]["function"]["strict"] is True
