"""The prompt a local model sees: what its chat template can render decides how tools, tool calls
and their results are written. Templates here are real shapes: ChatML as SmolLM2 ships it, a
Hermes-style one that renders tools itself (Qwen 2.5's shape), one without a system role (Gemma's).
"""

from __future__ import annotations

import json

import pytest

from llmforge.core.errors import ConfigError, InvalidRequestError
from llmforge.core.types import Message, Sampling, Tool, ToolCall, ToolChoice
from llmforge.models.chat_prompt import ChatPrompt, TemplateTraits

CHATML = (  # SmolLM2-135M-Instruct's template, as in its GGUF
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
HERMES = (
    "{%- if tools %}<|im_start|>system\n{% if messages[0].role == 'system' %}"
    "{{ messages[0].content }}\n{% endif %}# Tools\n<tools>{% for t in tools %}"
    "{{ t | tojson }}{% endfor %}</tools><|im_end|>\n"
    "{%- elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}"
    "<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}{%- if m.role == 'system' %}"
    "{%- elif m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant\n"
    '{% for c in m.tool_calls %}<tool_call>{"name": "{{ c.function.name }}", '
    '"arguments": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}<|im_end|>\n'
    "{%- elif m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.content }}"
    "</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
NO_SYSTEM = (
    "{% for m in messages %}{% if m.role == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}"
    "<start_of_turn>model\n"
)
ALTERNATING = (
    "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
    "[{{ m.role }}] {{ m.content }}\n{% endfor %}"
)

WEATHER = Tool(
    name="get_weather",
    description="Current weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
TOOLS = Sampling(tools=(WEATHER,))
CALL = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
TURNS = [
    Message(role="user", content="Weather in Paris and Rome?"),
    Message(
        role="assistant",
        tool_calls=(CALL, ToolCall(id="call_2", name="get_weather", arguments='{"city":"Rome"}')),
    ),
    Message(role="tool", tool_call_id="call_1", content="sunny"),
    Message(role="tool", tool_call_id="call_2", content="rainy"),
]


def prompt(template: str) -> ChatPrompt:
    return ChatPrompt(template, bos_token="<s>", eos_token="<|im_end|>")


def test_what_each_template_renders_is_found_by_probing() -> None:
    assert prompt(CHATML).traits == TemplateTraits(tools=False, tool_turns=False, system=True)
    assert prompt(HERMES).traits == TemplateTraits(tools=True, tool_turns=True, system=True)
    assert prompt(NO_SYSTEM).traits == TemplateTraits(tools=False, tool_turns=False, system=False)


def test_without_tools_the_prompt_is_the_templates_own() -> None:
    text = prompt(CHATML).render([Message(role="user", content="Hi")], Sampling())
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tools_and_the_answer_format_go_into_the_system_turn() -> None:
    ask = [Message(role="system", content="Be brief."), Message(role="user", content="Hi")]
    text = prompt(CHATML).render(ask, TOOLS)
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert json.dumps(WEATHER.parameters) in system and "Current weather in a city" in system
    assert '{"tool_calls": [' in system and '{"response": ' in system
    # without a system message of its own, one is added (in place of the template's default)
    text = prompt(CHATML).render(ask[1:], TOOLS)
    assert text.startswith("<|im_start|>system\n# Tools") and "SmolLM" not in text


def test_tool_choice_none_shows_no_tools() -> None:
    none = Sampling(tools=(WEATHER,), tool_choice=ToolChoice(mode="none"))
    text = prompt(CHATML).render([Message(role="user", content="Hi")], none)
    assert "get_weather" not in text and "tool_calls" not in text


def test_calls_and_results_are_written_in_the_envelope_when_the_template_cannot() -> None:
    text = prompt(CHATML).render(TURNS, TOOLS)
    turns = text.split("<|im_start|>")
    assistant = next(t for t in turns if t.startswith("assistant\n{"))
    assert json.loads(assistant.removeprefix("assistant\n").removesuffix("<|im_end|>\n")) == {
        "tool_calls": [
            {"name": "get_weather", "arguments": {"city": "Paris"}},
            {"name": "get_weather", "arguments": {"city": "Rome"}},
        ]
    }
    # both results in one user turn, each naming its tool (found from the call's id)
    results = turns[-2].removeprefix("user\n").removesuffix("<|im_end|>\n").splitlines()
    assert [json.loads(line)["tool_response"] for line in results] == [
        {"name": "get_weather", "tool_call_id": "call_1", "content": "sunny"},
        {"name": "get_weather", "tool_call_id": "call_2", "content": "rainy"},
    ]
    assert turns[-1] == "assistant\n" and "<|im_start|>tool" not in text


def test_a_template_that_knows_tools_gets_them_natively() -> None:
    text = prompt(HERMES).render(TURNS, TOOLS)
    assert "<tools>" in text and '"name": "get_weather"' in text.split("</tools>")[0]
    assert "# Tools\n\nYou can call" not in text  # not described twice
    assert '{"tool_calls": [' in text  # the answer format still is
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}' in text
    assert "<tool_response>sunny</tool_response>" in text


def test_a_system_turn_the_template_refuses_heads_the_first_user_turn() -> None:
    ask = [Message(role="developer", content="Be brief."), Message(role="user", content="Hi")]
    text = prompt(NO_SYSTEM).render(ask, TOOLS)
    assert text.startswith("<start_of_turn>user\nBe brief.\n\n# Tools")
    assert text.endswith("Hi<end_of_turn>\n<start_of_turn>model")


def test_developer_messages_are_system_messages() -> None:
    ask = [Message(role="developer", content="Be brief."), Message(role="user", content="Hi")]
    assert prompt(CHATML).render(ask, Sampling()).startswith("<|im_start|>system\nBe brief.")


def test_a_conversation_the_template_refuses_is_a_400() -> None:
    two_users = [Message(role="user", content="a"), Message(role="user", content="b")]
    with pytest.raises(InvalidRequestError, match=r"refused this conversation.*alternate") as err:
        prompt(ALTERNATING).render(two_users, Sampling())
    assert err.value.http_status == 400 and err.value.param == "messages"


def test_a_template_that_cannot_render_one_message_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot render"):
        prompt("{{ messages[0]['missing']['key'] }}")
