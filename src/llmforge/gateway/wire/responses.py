"""OpenAI's Responses API wire format (`POST /v1/responses`), and its conversion to and from core
types. The only module that knows it.

Translated: `input` as a string or items — messages (user, system, developer, assistant; text and
image parts), `function_call` and `function_call_output` items —, `instructions` (a system message
of this turn only, as OpenAI does: not carried over by `previous_response_id`), `function` tools
with `tool_choice` and `parallel_tool_calls`, `text.format` (text, json_object, json_schema),
`max_output_tokens`, `temperature`, `top_p`, `metadata`, `store`, `stream`. Answers: a `message`
output item with one `output_text` part when there is text, and one `function_call` item per call;
the streamed events are the typed ones the SDKs read (`response.created`, `.in_progress`,
`.output_item.added`, `.content_part.added`, `.output_text.delta`, `.output_text.done`,
`.function_call_arguments.delta` / `.done`, `.output_item.done`, `.completed`), each with its
`sequence_number`. Refused with a 400 that says so: built-in tools (web search, file search,
computer use, code interpreter, ...), `item_reference` items, `background` runs. Ignored:
`reasoning`, `include`, `truncation`, `user`, `service_tier`, reasoning items sent back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from llmforge.core.db import sortable_id
from llmforge.core.types import (
    Completion,
    Delta,
    FinishReason,
    ImagePart,
    Message,
    ResponseFormat,
    Sampling,
    Tool,
    ToolCall,
    ToolChoice,
    Usage,
)
from llmforge.gateway.wire.openai import TOOL_NAME, WireModel

RESPONSES_PATH = "/v1/responses"
IGNORED_ITEMS = ("reasoning",)


def new_response_id() -> str:
    return "resp_" + sortable_id()


# -- the request --------------------------------------------------------------------------------


class InputText(WireModel):
    type: Literal["input_text", "output_text"]
    text: str


class InputImage(WireModel):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high"] | None = None

    @model_validator(mode="after")
    def _by_url(self) -> InputImage:
        if not self.image_url:
            raise ValueError("input_image needs `image_url` (file ids are not supported)")
        return self


class Refusal(WireModel):
    type: Literal["refusal"]
    refusal: str


MessagePart = Annotated[InputText | InputImage | Refusal, Field(discriminator="type")]


class MessageItem(WireModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[MessagePart]

    def to_core(self) -> Message:
        if isinstance(self.content, str):
            return Message(role=self.role, content=self.content)
        text = "".join(p.text for p in self.content if isinstance(p, InputText))
        images = tuple(
            ImagePart(url=p.image_url or "", detail=p.detail)
            for p in self.content
            if isinstance(p, InputImage)
        )
        return Message(role=self.role, content=text, images=images)


class FunctionCallItem(WireModel):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(WireModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[InputText]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        out = self.output
        return out if isinstance(out, str) else "".join(p.text for p in out)


def _known_items(items: Any) -> Any:
    """Messages without `type` are messages; reasoning items are dropped (we make none);
    anything else this gateway cannot translate is refused by name."""
    if not isinstance(items, list):
        return items
    kept = []
    for item in items:
        if not isinstance(item, dict):
            kept.append(item)
            continue
        kind = item.get("type", "message")
        if kind in IGNORED_ITEMS:
            continue
        if kind not in ("message", "function_call", "function_call_output"):
            raise ValueError(
                f"input items of type '{kind}' are not supported; send messages, function_call "
                "and function_call_output items"
            )
        kept.append({**item, "type": kind})
    return kept


InputItem = Annotated[
    MessageItem | FunctionCallItem | FunctionCallOutputItem, Field(discriminator="type")
]


class FunctionToolIn(WireModel):
    type: Literal["function"]
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _functions_only(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") != "function":
            raise ValueError(
                f"built-in tools ('{value.get('type')}') are not supported; send function tools"
            )
        return value

    def to_core(self) -> Tool:
        parameters = self.parameters if self.parameters is not None else {"type": "object"}
        return Tool(
            name=self.name, description=self.description, parameters=parameters, strict=self.strict
        )


class NamedFunctionChoice(WireModel):
    type: Literal["function"]
    name: str = Field(min_length=1)


class TextFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str = Field("answer", pattern=TOOL_NAME)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None

    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)

    def to_core(self) -> ResponseFormat | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return ResponseFormat(type="json_object")
        schema = self.schema_ if self.schema_ is not None else {"type": "object"}
        return ResponseFormat(
            type="json_schema", json_schema=schema, name=self.name, strict=self.strict
        )


class TextOptions(WireModel):
    format: TextFormat | None = None


class ResponseRequest(WireModel):
    model: str = Field(min_length=1)
    input: str | Annotated[list[InputItem], BeforeValidator(_known_items)]
    instructions: str | None = None
    tools: list[FunctionToolIn] | None = Field(None, max_length=128)
    tool_choice: Literal["auto", "none", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    background: bool | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ResponseRequest:
        if self.background:
            raise ValueError("background responses are not supported; stream instead")
        names = [t.name for t in self.tools or ()]
        if len(set(names)) != len(names):
            raise ValueError("tool names must be unique")
        choice = self.tool_choice
        if isinstance(choice, NamedFunctionChoice) and choice.name not in names:
            raise ValueError(f"tool_choice names '{choice.name}', which is not among `tools`")
        if choice in ("required",) and not names:
            raise ValueError("tool_choice 'required' needs `tools`")
        if isinstance(self.input, list) and not self.input:
            raise ValueError("input must not be empty")
        return self

    def input_messages(self) -> list[Message]:
        """This turn's input as core messages: consecutive function calls become one assistant
        message with several tool calls, each output a `tool` message."""
        if isinstance(self.input, str):
            return [Message(role="user", content=self.input)]
        out: list[Message] = []
        for item in self.input:
            if isinstance(item, MessageItem):
                out.append(item.to_core())
            elif isinstance(item, FunctionCallItem):
                call = ToolCall(id=item.call_id, name=item.name, arguments=item.arguments)
                last = out[-1] if out else None
                if last is not None and last.role == "assistant" and last.tool_calls:
                    out[-1] = last.model_copy(update={"tool_calls": (*last.tool_calls, call)})
                else:
                    out.append(Message(role="assistant", tool_calls=(call,)))
            else:
                out.append(Message(role="tool", content=item.text(), tool_call_id=item.call_id))
        return out

    def core_tool_choice(self) -> ToolChoice | None:
        choice = self.tool_choice
        if choice is None:
            return None
        if isinstance(choice, NamedFunctionChoice):
            return ToolChoice(mode="function", name=choice.name)
        return ToolChoice(mode=choice)

    def sampling(self) -> Sampling:
        fmt = self.text.format if self.text and self.text.format else None
        return Sampling(
            max_tokens=self.max_output_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            response_format=fmt.to_core() if fmt else None,
            tools=tuple(t.to_core() for t in self.tools or ()),
            tool_choice=self.core_tool_choice(),
            parallel_tool_calls=self.parallel_tool_calls,
        )


# -- the response object ------------------------------------------------------------------------


class StoredResponse(BaseModel):
    """A response as the gateway keeps it: its wire body, and the whole conversation it ended
    (so `previous_response_id` continues it without walking the chain)."""

    id: str
    key_id: str | None = None
    created_at: float
    body: dict[str, Any]
    conversation: list[Message]
    input_items: list[dict[str, Any]] = Field(default_factory=list)


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [text_part(text)],
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(item_id: str, call: ToolCall, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    }


def output_items(completion: Completion, rid: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if completion.text or not completion.tool_calls:
        items.append(message_item(item_id(rid, "msg", 0), completion.text))
    items += [
        function_call_item(item_id(rid, "fc", i), call)
        for i, call in enumerate(completion.tool_calls)
    ]
    return items


def item_id(rid: str, kind: str, index: int) -> str:
    return f"{kind}_{rid.removeprefix('resp_')}_{index}"


class ResponseShape:
    """What a response object repeats from its request (built once per call)."""

    def __init__(self, rid: str, req: ResponseRequest, previous: str | None) -> None:
        self.rid = rid
        self.created_at = int(time.time())
        self.req = req
        self.previous = previous

    def body(
        self,
        status: Literal["in_progress", "completed", "incomplete", "failed"],
        output: list[dict[str, Any]],
        usage: Usage | None = None,
        finish: FinishReason | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        req = self.req
        fmt = req.text.format if req.text and req.text.format else None
        tool_choice: Any = req.tool_choice or "auto"
        if isinstance(tool_choice, NamedFunctionChoice):
            tool_choice = tool_choice.model_dump()
        incomplete = (
            {"reason": "max_output_tokens"}
            if status == "incomplete" and finish == "length"
            else None
        )
        return {
            "id": self.rid,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "model": req.model,
            "output": output,
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": self.previous,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "tool_choice": tool_choice,
            "tools": [t.model_dump(by_alias=True) for t in req.tools or ()],
            "text": {"format": fmt.model_dump(by_alias=True) if fmt else {"type": "text"}},
            "truncation": "disabled",
            "usage": usage_body(usage) if usage is not None else None,
            "metadata": req.metadata or {},
            "store": req.store,
            "user": req.user,
        }

    def finished(self, completion: Completion) -> dict[str, Any]:
        status: Literal["completed", "incomplete"] = (
            "incomplete" if completion.finish_reason == "length" else "completed"
        )
        return self.body(
            status,
            output_items(completion, self.rid),
            completion.usage,
            completion.finish_reason,
        )


def event(name: str, seq: int, data: dict[str, Any]) -> bytes:
    """One Responses SSE event: named, its data repeating the name as `type` with its sequence
    number."""
    payload = {"type": name, "sequence_number": seq, **data}
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class StreamEvents:
    """A call's Deltas as the Responses API's typed stream events: an output item opens when its
    first piece arrives (text, or a tool call's id and name) and closes when the next opens or
    the answer ends."""

    def __init__(self, shape: ResponseShape) -> None:
        self.shape = shape
        self.seq = 0
        self._items: list[dict[str, Any]] = []  # output items so far, as they will be at the end
        self._open: dict[str, Any] | None = None  # the item being streamed
        self._open_key: str | None = None
        self._calls = 0
        self._messages = 0

    def _next(self, name: str, data: dict[str, Any]) -> bytes:
        out = event(name, self.seq, data)
        self.seq += 1
        return out

    def head(self) -> Iterator[bytes]:
        body = self.shape.body("in_progress", [])
        yield self._next("response.created", {"response": body})
        yield self._next("response.in_progress", {"response": body})

    def delta(self, delta: Delta) -> Iterator[bytes]:
        if delta.text:
            if self._open_key != "text":
                yield from self._close()
                item = message_item(
                    item_id(self.shape.rid, "msg", self._messages), "", "in_progress"
                )
                self._messages += 1
                yield from self._add(item, "text")
                yield self._next(
                    "response.content_part.added",
                    {**self._where(), "content_index": 0, "part": text_part("")},
                )
            assert self._open is not None
            self._open["content"][0]["text"] += delta.text
            yield self._next(
                "response.output_text.delta",
                {**self._where(), "content_index": 0, "delta": delta.text, "logprobs": []},
            )
        for piece in delta.tool_calls:
            key = f"tool:{piece.index}"
            if self._open_key != key:
                yield from self._close()
                call = ToolCall(id=piece.id or "", name=piece.name or "", arguments="")
                index = self._calls
                self._calls += 1
                yield from self._add(
                    function_call_item(item_id(self.shape.rid, "fc", index), call, "in_progress"),
                    key,
                )
            if piece.arguments:
                assert self._open is not None
                self._open["arguments"] += piece.arguments
                yield self._next(
                    "response.function_call_arguments.delta",
                    {**self._where(), "delta": piece.arguments},
                )

    def tail(self, completion: Completion) -> Iterator[bytes]:
        yield from self._close()
        body = self.shape.finished(completion)
        kind = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        yield self._next(kind, {"response": body})

    def failed(self, message: str, code: str | None) -> bytes:
        error = {"code": code or "server_error", "message": message}
        body = self.shape.body("failed", self._items, error=error)
        return self._next("response.failed", {"response": body})

    def _where(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self._items) - 1}

    def _add(self, item: dict[str, Any], key: str) -> Iterator[bytes]:
        self._items.append(item)
        self._open, self._open_key = item, key
        added = {**item, "content": []} if item["type"] == "message" else item
        yield self._next(
            "response.output_item.added", {"output_index": len(self._items) - 1, "item": added}
        )

    def _close(self) -> Iterator[bytes]:
        item = self._open
        if item is None:
            return
        where = self._where()
        if item["type"] == "message":
            part = item["content"][0]
            yield self._next(
                "response.output_text.done",
                {**where, "content_index": 0, "text": part["text"], "logprobs": []},
            )
            yield self._next(
                "response.content_part.done", {**where, "content_index": 0, "part": part}
            )
        else:
            yield self._next(
                "response.function_call_arguments.done",
                {**where, "arguments": item["arguments"], "name": item["name"]},
            )
        item["status"] = "completed"
        yield self._next(
            "response.output_item.done", {"output_index": where["output_index"], "item": item}
        )
        self._open = self._open_key = None


def input_items_body(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": list(items),
        "first_id": items[0].get("id") if items else None,
        "last_id": items[-1].get("id") if items else None,
        "has_more": False,
    }


def request_items(req: ResponseRequest, rid: str) -> list[dict[str, Any]]:
    """This turn's input as listed by `GET /v1/responses/{id}/input_items` (ids added)."""
    if isinstance(req.input, str):
        items: list[dict[str, Any]] = [
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": req.input}],
            }
        ]
    else:
        items = [i.model_dump(exclude_none=True) for i in req.input]
    for n, item in enumerate(items):
        item.setdefault("id", item_id(rid, "in", n))
        item.setdefault("status", "completed")
    return items
