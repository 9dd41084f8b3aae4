"""The JSON envelope a local model answers in when it may call tools.

A model may call tools (`Sampling.calls_tools`) is asked to answer with one JSON object of one of
two shapes, and a grammar built from `envelope_schema` makes any other output impossible:

    {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, ...]}
    {"response": "the answer to the user"}

This is llama.cpp's own "generic" tool format, which its server uses for models without a native
one. It is used for every GGUF model, not only those without a native format, because it is the
one format where a grammar can promise everything the gateway promises: the tool's name is one of
the tools offered, the arguments are JSON valid for that tool's schema, `required` and a named
`tool_choice` leave no room for a text answer, `parallel_tool_calls: false` allows one call, and
`auto` still lets the model answer in text. A native format (Hermes' `<tool_call>` tags, Llama 3's
bare JSON, ...) would need a per-family parser and a lazy grammar that wakes on a trigger word,
while leaving free text around the calls. With `response_format`, the `response` of an `auto`
answer is itself the JSON the schema describes.

`EnvelopeReader` reads an envelope while it is being generated and says what it holds so far:
the text of a `response` (its JSON string un-escaped as it arrives; a structured response as its
JSON text), the start of each call (name, with a fresh id) and each call's arguments as pieces of
their JSON text, exactly as the model wrote them, so a stream carries them as OpenAI streams
them. `instructions`, `render_calls` and `render_results` write the same dialect into the prompt:
what the model must answer, and earlier calls and their results for a model whose chat template
does not know tool turns.

Does not build grammars (llama.cpp does, from the schema), run a model or decide which template
features exist (`chat_prompt`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmforge.core.errors import InvalidRequestError
from llmforge.core.types import Sampling, Tool, ToolCall, ToolCallDelta

CALLS = "tool_calls"
RESPONSE = "response"
RESULT = "tool_response"
_DEFS = "$defs"


def single_call(sampling: Sampling) -> bool:
    """Whether an answer may hold only one call (a named tool_choice, or no parallel calls)."""
    choice = sampling.tool_choice
    return (choice is not None and choice.mode == "function") or (
        sampling.parallel_tool_calls is False
    )


def callable_tools(sampling: Sampling) -> tuple[Tool, ...]:
    """The tools this answer may call: all of them, the one a named tool_choice names, or none.
    Raises InvalidRequestError for a tool_choice naming a tool that is not offered."""
    if not sampling.calls_tools:
        return ()
    choice = sampling.tool_choice
    if choice is None or choice.mode != "function":
        return sampling.tools
    named = [t for t in sampling.tools if t.name == choice.name]
    if not named:
        offered = ", ".join(t.name for t in sampling.tools)
        raise InvalidRequestError(
            f"tool_choice names the function '{choice.name}', which is not among the tools "
            f"offered ({offered}); name one of them or add it to `tools`",
            param="tool_choice",
        )
    return (named[0],)


def envelope_schema(sampling: Sampling) -> dict[str, Any] | None:
    """The JSON schema of the whole answer when the model may call tools; None when it answers in
    plain text (no tools, or tool_choice `none`)."""
    tools = callable_tools(sampling)
    if not tools:
        return None
    defs: dict[str, Any] = {}
    alternatives = []
    for i, tool in enumerate(tools):
        key = f"tool{i}"
        defs.update(_hoist(tool.parameters, key))
        alternatives.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": tool.name},
                    "arguments": {"$ref": f"#/{_DEFS}/{key}"},
                },
                "required": ["name", "arguments"],
            }
        )
    calls: dict[str, Any] = {
        "type": "array",
        "items": alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives},
        "minItems": 1,
    }
    if single_call(sampling):
        calls["maxItems"] = 1
    call_answer = {"type": "object", "properties": {CALLS: calls}, "required": [CALLS]}
    choice = sampling.tool_choice
    if choice is not None and choice.mode in ("required", "function"):
        body: dict[str, Any] = call_answer
    else:
        response = sampling.json_schema or {"type": "string"}
        text_answer = {"type": "object", "properties": {RESPONSE: response}, "required": [RESPONSE]}
        body = {"anyOf": [call_answer, text_answer]}
    return {**body, _DEFS: defs}


def _hoist(schema: dict[str, Any], key: str) -> dict[str, Any]:
    """`schema` and its own definitions as entries of the envelope's `$defs`, under names unique
    to this tool, with its local `$ref`s rewritten to match (two tools may both define `Item`)."""
    local = {**schema.get(_DEFS, {}), **schema.get("definitions", {})}
    renamed = {name: f"{key}-{name}" for name in local}

    def rewrite(node: Any) -> Any:
        if isinstance(node, list):
            return [rewrite(x) for x in node]
        if not isinstance(node, dict):
            return node
        out = {k: rewrite(v) for k, v in node.items() if k not in (_DEFS, "definitions")}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            out["$ref"] = _rewrite_ref(ref, key, renamed)
        return out

    hoisted = {key: rewrite(schema)}
    hoisted.update({renamed[name]: rewrite(sub) for name, sub in local.items()})
    return hoisted


def _rewrite_ref(ref: str, key: str, renamed: dict[str, str]) -> str:
    parts = ref.removeprefix("#").strip("/").split("/") if ref != "#" else []
    if len(parts) >= 2 and parts[0] in (_DEFS, "definitions") and parts[1] in renamed:
        return "/".join(["#", _DEFS, renamed[parts[1]], *parts[2:]])
    return "/".join(["#", _DEFS, key, *parts])


# -- what the prompt says ---------------------------------------------------------------------


def instructions(sampling: Sampling, *, describe_tools: bool) -> str:
    """The system-prompt section telling the model how to answer (and, with `describe_tools`,
    which tools exist: for templates that do not render a `tools` list themselves)."""
    tools = callable_tools(sampling)
    parts: list[str] = []
    if describe_tools:
        lines = "\n".join(
            json.dumps(
                {"name": t.name, "description": t.description or "", "parameters": t.parameters},
                ensure_ascii=False,
            )
            for t in tools
        )
        parts.append(
            "# Tools\n\nYou can call these tools. Each line is one tool: its name, what it does "
            f"and the JSON schema of its arguments.\n{lines}"
        )
    example = f'{{"{CALLS}": [{{"name": "<tool name>", "arguments": {{<arguments>}}}}]}}'
    choice = sampling.tool_choice
    many = (
        "Call one tool at most."
        if single_call(sampling)
        else f"To call several tools at once, list several calls in `{CALLS}`."
    )
    if choice is not None and choice.mode == "function":
        named = f'{{"{CALLS}": [{{"name": "{tools[0].name}", "arguments": {{<arguments>}}}}]}}'
        rule = (
            f"You must call the tool `{tools[0].name}`. Answer with this JSON object only:\n{named}"
        )
    elif choice is not None and choice.mode == "required":
        rule = f"You must call a tool. Answer with this JSON object only:\n{example}\n{many}"
    else:
        response = (
            f'{{"{RESPONSE}": <a JSON value following this schema: '
            f"{json.dumps(sampling.json_schema, ensure_ascii=False)}>}}"
            if sampling.json_schema is not None
            else f'{{"{RESPONSE}": "<your answer>"}}'
        )
        rule = (
            "Answer with one JSON object only, in one of two forms:\n"
            f"- to call tools: {example}\n- to answer the user directly: {response}\n{many}"
        )
    results = (
        f'Results of calls come back in a user turn, one per line: {{"{RESULT}": '
        '{"name": ..., "tool_call_id": ..., "content": ...}}.'
    )
    parts.append(f"# Answer format\n\n{rule}\n{results}")
    return "\n\n".join(parts)


def render_calls(calls: Sequence[ToolCall]) -> str:
    """Earlier calls of the assistant, written as it would have answered them."""
    return json.dumps(
        {CALLS: [{"name": c.name, "arguments": _json_or_text(c.arguments)} for c in calls]},
        ensure_ascii=False,
    )


def render_results(results: Sequence[tuple[str | None, str | None, str]]) -> str:
    """Results of calls as the user turn that carries them: (name, call id, content) each."""
    return "\n".join(
        json.dumps(
            {RESULT: {"name": name, "tool_call_id": call_id, "content": content}},
            ensure_ascii=False,
        )
        for name, call_id, content in results
    )


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- reading an envelope as it is generated ---------------------------------------------------

Piece = str | ToolCallDelta  # text of the answer, or a piece of a call
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
_WHITESPACE = " \t\n\r"


@dataclass
class _Frame:
    """An open object or array, and where the scan is inside it."""

    array: bool
    state: str  # "first" | "key" | "colon" | "value" | "next"
    key: str = ""
    index: int = 0


@dataclass
class _String:
    """A JSON string being read: where its decoded characters go."""

    target: str  # "key" | "name" | "text" | "skip"
    chars: list[str] = field(default_factory=list)
    escape: bool = False
    hex: str | None = None
    high: int | None = None  # a high surrogate waiting for its low half


class EnvelopeReader:
    """Turns the envelope's text, fed in pieces as generated, into answer text and call pieces.

    `feed` returns, in order, text of a `response` and `ToolCallDelta`s: for call i, first one
    with its id and name, then its arguments' JSON text in pieces as they were written (never
    re-serialised, so the pieces join to exactly what the model wrote). Pieces from one `feed`
    are merged where they can be. Robust to any split of the text into pieces."""

    def __init__(self, new_id: Callable[[], str]) -> None:
        self._new_id = new_id
        self._stack: list[_Frame] = []
        self._done = False
        self._string: _String | None = None
        self._scalar = False
        self._capture: tuple[str, int, int] | None = None  # (kind, call index, depth)
        self._started: set[int] = set()
        self._waiting: dict[int, list[str]] = {}  # arguments seen before the call's name
        self._out: list[Piece] = []
        self.calls = 0

    def feed(self, text: str) -> list[Piece]:
        for c in text:
            self._char(c)
        out, self._out = self._out, []
        return [p for p in out if (p if isinstance(p, str) else p.id or p.arguments)]

    # -- the scan -------------------------------------------------------------------------------

    def _char(self, c: str) -> None:
        if self._capture is not None:
            self._raw(c)
        if self._string is not None:
            self._string_char(c)
            return
        if self._scalar:
            if c not in ",}]" and c not in _WHITESPACE:
                return
            self._scalar = False
            self._unraw(c)  # the delimiter is not part of the value
            self._value_done()
        if c in _WHITESPACE or self._done:
            return
        frame = self._stack[-1] if self._stack else None
        if frame is None or frame.state == "value" or (frame.array and frame.state == "first"):
            if frame is not None and c == "]":
                self._close()
            else:
                self._value_start(c)
        elif frame.state in ("first", "key"):
            if c == '"':
                self._string = _String("key")
            elif c == "}":
                self._close()
        elif frame.state == "colon":
            if c == ":":
                frame.state = "value"
        elif c == ",":
            if frame.array:
                frame.index += 1
                frame.state = "value"
            else:
                frame.state = "key"
        elif c in "}]":
            self._close()

    def _value_start(self, c: str) -> None:
        path = [f.index if f.array else f.key for f in self._stack]
        is_call_field = len(path) == 3 and path[0] == CALLS and isinstance(path[1], int)
        target = "skip"
        if is_call_field and path[2] == "arguments":
            self._begin_capture("arguments", int(path[1]), c)
        elif path == [RESPONSE]:
            if c == '"':
                target = "text"
            else:
                self._begin_capture("text", 0, c)
        elif is_call_field and path[2] == "name" and c == '"':
            target = f"name:{path[1]}"
        if c == "{":
            self._stack.append(_Frame(array=False, state="first"))
        elif c == "[":
            self._stack.append(_Frame(array=True, state="first"))
        elif c == '"':
            self._string = _String(target)
        else:
            self._scalar = True

    def _close(self) -> None:
        self._stack.pop()
        self._value_done()

    def _value_done(self) -> None:
        if self._capture is not None and self._capture[2] == len(self._stack):
            self._capture = None
        if self._stack:
            self._stack[-1].state = "next"
        else:
            self._done = True

    def _string_char(self, c: str) -> None:
        s = self._string
        assert s is not None
        if s.hex is not None:
            s.hex += c
            if len(s.hex) == 4:
                code, s.hex = int(s.hex, 16), None
                self._code_point(s, code)
            return
        if s.escape:
            s.escape = False
            if c == "u":
                s.hex = ""
            else:
                self._decoded(s, _ESCAPES.get(c, c))
            return
        if c == "\\":
            s.escape = True
        elif c == '"':
            self._string_end(s)
        else:
            self._decoded(s, c)

    def _code_point(self, s: _String, code: int) -> None:
        if 0xD800 <= code < 0xDC00:  # a high surrogate: wait for its low half
            if s.high is not None:
                self._put(s, "\ufffd")
            s.high = code
        elif 0xDC00 <= code < 0xE000:
            if s.high is None:
                self._put(s, "\ufffd")
            else:
                high, s.high = s.high, None
                self._put(s, chr(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00)))
        else:
            self._decoded(s, chr(code))

    def _decoded(self, s: _String, text: str) -> None:
        if s.high is not None:  # a high surrogate without its low half
            s.high = None
            self._put(s, "\ufffd")
        self._put(s, text)

    def _put(self, s: _String, text: str) -> None:
        if s.target == "text":
            self._emit(text)
        elif s.target != "skip":
            s.chars.append(text)

    def _string_end(self, s: _String) -> None:
        if s.high is not None:
            s.high = None
            self._put(s, "\ufffd")
        self._string = None
        text = "".join(s.chars)
        if s.target == "key":
            frame = self._stack[-1]
            frame.key, frame.state = text, "colon"
            return
        if s.target.startswith("name:"):
            self._call_named(int(s.target.removeprefix("name:")), text)
        self._value_done()

    # -- what comes out -------------------------------------------------------------------------

    def _begin_capture(self, kind: str, index: int, first: str) -> None:
        self._capture = (kind, index, len(self._stack))
        self._raw(first)

    def _raw(self, c: str) -> None:
        assert self._capture is not None
        kind, index, _ = self._capture
        if kind == "text":
            self._emit(c)
        elif index in self._started:
            self._emit(ToolCallDelta(index=index, arguments=c))
        else:
            self._waiting.setdefault(index, []).append(c)

    def _unraw(self, c: str) -> None:
        """Take back what `_raw` just passed on: the delimiter ending a captured scalar."""
        if self._capture is None or self._capture[2] != len(self._stack):
            return  # no capture, or the scalar is inside the captured value
        kind, index, _ = self._capture
        if kind == "arguments" and index not in self._started:
            self._waiting[index].pop()
            return
        last = self._out[-1]
        if isinstance(last, str):
            self._out[-1] = last[:-1]
        else:
            self._out[-1] = last.model_copy(update={"arguments": last.arguments[:-1]})

    def _call_named(self, index: int, name: str) -> None:
        self._started.add(index)
        self.calls = max(self.calls, index + 1)
        self._out.append(ToolCallDelta(index=index, id=self._new_id(), name=name))
        if waiting := self._waiting.pop(index, None):
            self._emit(ToolCallDelta(index=index, arguments="".join(waiting)))

    def _emit(self, piece: Piece) -> None:
        last = self._out[-1] if self._out else None
        if isinstance(piece, str) and isinstance(last, str):
            self._out[-1] = last + piece
        elif (
            isinstance(piece, ToolCallDelta)
            and isinstance(last, ToolCallDelta)
            and last.index == piece.index
            and last.id is None
        ):
            self._out[-1] = last.model_copy(update={"arguments": last.arguments + piece.arguments})
        else:
            self._out.append(piece)
