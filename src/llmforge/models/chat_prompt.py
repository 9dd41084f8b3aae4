"""The prompt text a local chat model sees: its chat template applied to a conversation, with tools
and tool turns written so that the model can follow them.

The template is the GGUF's own (or the configured `chat_template`), rendered with llama-cpp-python's
Jinja formatter. What a template can render is found out once, when it is loaded, by rendering
probe conversations, never by recognising model names (`TemplateTraits`): a `tools` list, assistant
`tool_calls` with their `tool` results, a `system` turn. What it cannot render is written into the
messages instead:

- tool descriptions and the answer format (`tool_envelope.instructions`) go into the system turn;
  a template that renders `tools` itself gets them and the system turn only says the format;
- earlier calls become the assistant's own envelope text (`{"tool_calls": [...]}`), and their
  results one user turn holding one `{"tool_response": ...}` line each, so a multi-turn
  conversation reads the way the model is asked to answer;
- a system turn the template refuses is put at the head of the first user turn;
- `developer` messages are system messages (templates know only `system`).

Does not tokenize, count tokens or check the context window (the model backend does), and does
not build grammars.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmforge.core.errors import ConfigError, InvalidRequestError
from llmforge.core.types import Message, Sampling, Tool, ToolCall
from llmforge.models import tool_envelope

_PROBE = "llmforge_probe"


@dataclass(frozen=True)
class TemplateTraits:
    """What a chat template renders, as found by rendering probe conversations."""

    tools: bool  # a `tools` list passed to the template appears in the prompt
    tool_turns: bool  # assistant `tool_calls` (with their arguments) and `tool` results appear
    system: bool  # a `system` turn is accepted and appears


class ChatPrompt:
    """Renders conversations with one chat template. Safe to use from several threads (rendering
    reads the compiled template only)."""

    def __init__(self, template: str, *, bos_token: str, eos_token: str) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._format = Jinja2ChatFormatter(
            template=template, eos_token=eos_token, bos_token=bos_token
        )
        try:
            self._render([{"role": "user", "content": "hello"}], None)
        except Exception as e:  # Jinja raises anything a template does
            raise ConfigError(
                f"the chat template cannot render a one-message conversation: {e}; "
                "fix or replace it with `chat_template`"
            ) from None
        self.traits = self._probe()
        self.stop = [eos_token] if eos_token else []

    def render(self, messages: Sequence[Message], sampling: Sampling) -> str:
        """The prompt for `messages`, ending where the assistant's answer begins."""
        turns = self._turns(messages)
        tools = tool_envelope.callable_tools(sampling)
        if tools:
            section = tool_envelope.instructions(sampling, describe_tools=not self.traits.tools)
            if turns and turns[0]["role"] == "system":
                turns[0] = {**turns[0], "content": f"{turns[0]['content']}\n\n{section}"}
            else:
                turns.insert(0, {"role": "system", "content": section})
        if not self.traits.system:
            turns = _fold_system(turns)
        listed = [_tool_dict(t) for t in tools] if tools and self.traits.tools else None
        try:
            return self._render(turns, listed)
        except Exception as e:  # a template's raise_exception(), or a Jinja error
            raise InvalidRequestError(
                f"the model's chat template refused this conversation: {e}", param="messages"
            ) from None

    # -- internals ------------------------------------------------------------------------------

    def _render(self, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        format: Any = self._format  # llama-cpp-python types messages as TypedDicts
        return str(format(messages=turns, tools=tools).prompt)

    def _turns(self, messages: Sequence[Message]) -> list[dict[str, Any]]:
        native = self.traits.tool_turns
        names = {c.id: c.name for m in messages for c in m.tool_calls}
        turns: list[dict[str, Any]] = []
        results: list[tuple[str | None, str | None, str]] = []  # tool results not yet written
        for m in messages:
            if m.role == "tool" and not native:
                name = m.name or names.get(m.tool_call_id or "")
                results.append((name, m.tool_call_id, m.content))
                continue
            if results:
                turns.append({"role": "user", "content": tool_envelope.render_results(results)})
                results = []
            turn: dict[str, Any] = {
                "role": "system" if m.role == "developer" else m.role,
                "content": m.content,
            }
            if m.role == "assistant" and m.tool_calls:
                if native:
                    turn["tool_calls"] = [_call_dict(c) for c in m.tool_calls]
                else:
                    calls = tool_envelope.render_calls(m.tool_calls)
                    turn["content"] = f"{m.content}\n{calls}" if m.content else calls
            elif m.role == "tool":
                turn["tool_call_id"] = m.tool_call_id
                turn["name"] = m.name or names.get(m.tool_call_id or "")
            turns.append(turn)
        if results:
            turns.append({"role": "user", "content": tool_envelope.render_results(results)})
        return turns

    def _probe(self) -> TemplateTraits:
        user: dict[str, Any] = {"role": "user", "content": "hello"}
        call = ToolCall(id=f"call_{_PROBE}", name=f"{_PROBE}_fn", arguments='{"probe_arg": 1}')
        tool = Tool(name=f"{_PROBE}_tool", description="probe")
        turns = [
            user,
            {"role": "assistant", "content": "", "tool_calls": [_call_dict(call)]},
            {
                "role": "tool",
                "tool_call_id": call.id,
                "name": call.name,
                "content": f"{_PROBE}_result",
            },
        ]
        system = [{"role": "system", "content": f"{_PROBE}_system"}, user]
        return TemplateTraits(
            tools=self._shows([user], [_tool_dict(tool)], tool.name),
            tool_turns=self._shows(turns, None, call.name, "probe_arg", f"{_PROBE}_result"),
            system=self._shows(system, None, f"{_PROBE}_system"),
        )

    def _shows(
        self, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *marks: str
    ) -> bool:
        try:
            prompt = self._render(turns, tools)
        except Exception:  # a template may raise_exception() on what it does not support
            return False
        return all(mark in prompt for mark in marks)


def _fold_system(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """System turns put at the head of the first user turn, for templates without a system role."""
    system = [t["content"] for t in turns if t["role"] == "system"]
    rest = [t for t in turns if t["role"] != "system"]
    if not system:
        return rest
    head = "\n\n".join(system)
    for i, t in enumerate(rest):
        if t["role"] == "user":
            rest[i] = {**t, "content": f"{head}\n\n{t['content']}"}
            return rest
    return [{"role": "user", "content": head}, *rest]


def _tool_dict(tool: Tool) -> dict[str, Any]:
    """A tool as Hugging Face chat templates expect it (OpenAI's shape)."""
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _call_dict(call: ToolCall) -> dict[str, Any]:
    """A call as Hugging Face chat templates expect it: arguments as an object where they parse
    (templates apply `tojson` to them)."""
    try:
        arguments: Any = json.loads(call.arguments)
    except ValueError:
        arguments = call.arguments
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }
