"""A small OpenAI-compatible upstream for tests: chat (JSON and SSE), legacy text completions
(`/v1/completions`), embeddings, models.

It answers in OpenAI's wire format as the `openai` SDK reads it (tool calls as
`choices[].message.tool_calls`; streamed as `delta.tool_calls` pieces, the first of each call with
index, id, type and name and empty arguments, later ones more `function.arguments`; finish reason
`tool_calls`; n choices interleaved chunk by chunk; logprobs per token; a usage chunk when
`stream_options.include_usage`), and it refuses with OpenAI's 400 what OpenAI would refuse of the
things our client could get wrong (`check_chat`: roles, tool messages without `tool_call_id`,
malformed tool calls, content parts, tools, `tool_choice` / `parallel_tool_calls` without tools, a
tool_choice naming no tool, response_format, top_logprobs without logprobs).

Three ways to script it, so one server covers every case:

- by the `model` a request names: `echo` (or anything else) answers with the last user message's
  words (choice i of n rotated by i; `max_tokens` counts words); `tools` calls a tool when the
  request has tools (the one `tool_choice` names, else the first) with arguments valid for its
  schema, and once the last message is a tool result answers "The tool said: <results>";
  `parallel-tools` does the same but calls every tool (one unless `parallel_tool_calls` is false);
  `json` answers JSON valid for `response_format`'s schema (`{"answer": <user text>}` for
  json_object); `fail-<status>` answers that HTTP status with an OpenAI error; `slow-<ms>` waits
  before answering; `hang` never answers; `midstream-error` sends one token then an error event;
  `garbage` sends invalid JSON. Whatever the model, `tool_choice` `required` or a named function
  makes it call a tool, as OpenAI does.
- per instance, with `Reply`s (`tests/fakes/reply.py`): `respond(*replies)` answers the next chat
  requests with the text and tool calls given, whole or streamed; `respond_raw(*answers)` sends
  exact bodies (a vendor's odd or malformed answers).
- per instance, with `Fault`s: `script(*faults)` applies one fault to each of the next requests,
  `always` to every request after those (see `Fault` for what a fault can do: an error status with
  `Retry-After`, latency, a hang, slowly dripped tokens, an error event or a dropped connection
  after K tokens). Run two instances as two replicas and count what each one saw.

What it records: every request body (`requests`) and its headers, requests in flight now (`active`)
and at most (`peak`), and streams or waits the client abandoned (`abandoned`: the connection closed
before the fake was done). It does not check API keys.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.fakes.reply import Call, Reply, call_to, example_for, pieces

_WORDS = re.compile(r"\s*\S+")  # a reply's words, each with the whitespace before it
ROLES = ("system", "developer", "user", "assistant", "tool")
TOOL_MODELS = ("tools", "parallel-tools")
MIDSTREAM_ERROR = 'data: {"error": {"message": "scripted failure mid-stream"}}\n\n'


@dataclass(frozen=True)
class Fault:
    """What the fake does to one request; the defaults answer normally."""

    status: int | None = None  # answer this HTTP status with an OpenAI error body
    retry_after: str | None = None  # ... and this Retry-After header
    code: str | None = None  # ... and this error `code` (e.g. "context_length_exceeded")
    delay_s: float = 0.0  # wait before answering
    hang: bool = False  # never answer (until the client goes away)
    drop: bool = False  # drop the connection right after the status line, before any token
    drip_s: float = 0.0  # stream: pause before each token
    error_after: int | None = None  # stream: an error event after this many tokens
    drop_after: int | None = None  # stream: drop the connection after this many tokens


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.always: Fault | None = None
        self._script: deque[Fault] = deque()
        self._replies: deque[Reply] = deque()
        self._raw: deque[Any] = deque()
        self.active = 0
        self.peak = 0
        self.abandoned = 0
        self.app = Starlette(
            routes=[
                Route("/health", self.health),
                Route("/v1/models", self.models),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            ]
        )

    # -- scripting ------------------------------------------------------------------------------

    def script(self, *faults: Fault) -> None:
        """Apply `faults` to the next requests, one each, before `always`."""
        self._script.extend(faults)

    def respond(self, *replies: Reply) -> None:
        """Answer the next chat requests with `replies`, one each (every choice of a request
        gets the same reply), before deciding by model name again."""
        self._replies.extend(replies)

    def respond_raw(self, *answers: Any) -> None:
        """Answer the next requests (any route) with these exact bodies, one each: a dict is sent
        as JSON, a list as SSE (each item a `data:` event, a dict as JSON, then `[DONE]`). For
        vendors' odd or malformed answers."""
        self._raw.extend(answers)

    def fail_next(self, n: int, status: int, retry_after: str | None = None) -> None:
        self.script(*[Fault(status=status, retry_after=retry_after)] * n)

    def reset(self) -> None:
        self.requests.clear()
        self.headers.clear()
        self._script.clear()
        self._replies.clear()
        self._raw.clear()
        self.always = None
        self.active = self.peak = self.abandoned = 0

    @property
    def calls(self) -> int:
        return len(self.requests)

    def _next_fault(self) -> Fault:
        return self._script.popleft() if self._script else (self.always or Fault())

    # -- routes ---------------------------------------------------------------------------------

    async def health(self, _request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def models(self, _request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "echo", "object": "model"}]})

    async def _prelude(self, request: Request) -> tuple[dict[str, Any], Fault, Response | None]:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        fault = self._next_fault()
        model = str(body.get("model", ""))
        if fault.delay_s and await self._wait(request, fault.delay_s):
            return body, fault, Response(status_code=499)
        if fault.hang and await self._wait(request, 3600):
            return body, fault, Response(status_code=499)
        if fault.drop:
            return body, fault, Dropped([])
        if fault.status is not None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            error = {"message": f"scripted {fault.status}", "type": "x", "code": fault.code}
            return body, fault, JSONResponse({"error": error}, fault.status, headers)
        if model.startswith("fail-"):
            status = int(model.removeprefix("fail-"))
            return (
                body,
                fault,
                JSONResponse({"error": {"message": f"scripted {status}", "type": "x"}}, status),
            )
        if model.startswith("slow-"):
            await asyncio.sleep(int(model.removeprefix("slow-")) / 1000)
        if model == "hang":
            await asyncio.sleep(3600)
        if model == "garbage":
            return body, fault, Response(b"{not json", media_type="application/json")
        if self._raw:
            return body, fault, raw_response(self._raw.popleft())
        return body, fault, None

    async def _wait(self, request: Request, seconds: float) -> bool:
        """Sleep, or stop early when the client closes the connection (then True)."""
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            gone = asyncio.ensure_future(_disconnected(request))
            done, _ = await asyncio.wait({gone}, timeout=seconds)
            if not done:
                gone.cancel()
                return False
            self.abandoned += 1
            return True
        finally:
            self.active -= 1

    async def chat(self, request: Request) -> Response:
        body, fault, early = await self._prelude(request)
        if early is not None:
            return early
        problem = check_chat(body)
        if problem is not None:
            return invalid(*problem)
        n = int(body.get("n") or 1)
        scripted = self._replies.popleft() if self._replies else None
        replies = [scripted or self._decide(body, i) for i in range(n)]
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        top = int(body.get("top_logprobs") or 0) if body.get("logprobs") else None
        answers = [
            _Answer(r, limit, top, f"call_{len(self.requests)}_{i}") for i, r in enumerate(replies)
        ]
        usage = _usage(answers)
        created = int(time.time())
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": created,
                    "model": body["model"],
                    "choices": [a.choice(i) for i, a in enumerate(answers)],
                    "usage": usage,
                    "system_fingerprint": None,
                }
            )
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": created,
            "model": body["model"],
            "system_fingerprint": None,
        }
        steps = _interleave([a.chunks(i) for i, a in enumerate(answers)])
        return self._stream(body, fault, base, steps, usage)

    def _decide(self, body: dict[str, Any], i: int) -> Reply:
        """The answer of choice `i` to a chat request, by the model it names (see the module's
        docstring)."""
        model = str(body["model"])
        messages = body["messages"]
        tools = body.get("tools") or []
        choice = body.get("tool_choice", "auto")
        answered = messages[-1].get("role") == "tool"
        forced = choice == "required" or isinstance(choice, dict)
        if tools and (forced or (model in TOOL_MODELS and choice != "none" and not answered)):
            return Reply(calls=_calls(body, every=model == "parallel-tools"))
        if model in TOOL_MODELS and answered:
            results = [m for m in reversed(messages) if m.get("role") == "tool"]
            said = "; ".join(text_of(m.get("content")) for m in reversed(results))
            return Reply(text=f"The tool said: {said}")
        if model == "json":
            fmt = body.get("response_format") or {}
            schema = (fmt.get("json_schema") or {}).get("schema")
            if schema is not None:
                return Reply(text=json.dumps(example_for(schema)))
            return Reply(text=json.dumps({"answer": _last_user_text(messages)}))
        words = _last_user_text(messages).split()
        return Reply(text=" ".join(words[i:] + words[:i]))  # choice i: the words rotated by i

    async def completions(self, request: Request) -> Response:
        """The legacy text completion: the prompt echoed, word by word."""
        body, fault, early = await self._prelude(request)
        if early is not None:
            return early
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            return invalid("prompt: a string (or a list of one) is required here", "prompt")
        words = prompt.split()
        n = int(body.get("n") or 1)
        top = body.get("logprobs")
        limit = body.get("max_tokens", 16)  # the legacy API's default
        answers = [
            _Answer(Reply(text=" ".join(words[i:] + words[:i])), limit, top, "", legacy=True)
            for i in range(n)
        ]
        usage = _usage(answers)
        created = int(time.time())
        base = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": created,
            "model": body.get("model"),
        }
        if not body.get("stream"):
            choices = [a.text_choice(i) for i, a in enumerate(answers)]
            return JSONResponse({**base, "choices": choices, "usage": usage})
        steps = _interleave([a.text_chunks(i) for i, a in enumerate(answers)])
        return self._stream(body, fault, base, steps, usage)

    def _stream(
        self,
        body: dict[str, Any],
        fault: Fault,
        base: dict[str, Any],
        steps: list[tuple[str, dict[str, Any]]],
        usage: dict[str, int],
    ) -> Response:
        """SSE of `steps` ((kind, choice) pairs; kind `token` is a piece of the answer), with the
        fault's drips, error event or dropped connection, and the usage chunk when asked for."""

        def event(payload: dict[str, Any]) -> str:
            return "data: " + json.dumps({**base, **payload}) + "\n\n"

        if fault.drop_after is not None:
            sent, tokens = [], 0
            for kind, choice in steps:
                if kind == "token":
                    if tokens == fault.drop_after:
                        break
                    tokens += 1
                sent.append(event({"choices": [choice]}))
            return Dropped(sent)

        async def events() -> AsyncIterator[str]:
            self.active += 1
            self.peak = max(self.peak, self.active)
            completed = False
            tokens = 0
            try:
                for kind, choice in steps:
                    if kind == "token":
                        if tokens == fault.error_after:
                            yield MIDSTREAM_ERROR
                            completed = True
                            return
                        if fault.drip_s:
                            await asyncio.sleep(fault.drip_s)
                        tokens += 1
                    yield event({"choices": [choice]})
                    if kind == "token" and body["model"] == "midstream-error":
                        yield MIDSTREAM_ERROR
                        completed = True
                        return
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield event({"choices": [], "usage": usage})
                yield "data: [DONE]\n\n"
                completed = True
            finally:
                self.active -= 1
                if not completed:
                    self.abandoned += 1

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(self, request: Request) -> Response:
        body, _fault, early = await self._prelude(request)
        if early is not None:
            return early
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0, 0.0]}
            for i, t in enumerate(inputs)
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
            }
        )


class _Answer:
    """One choice's reply, cut into tokens (words, `max_tokens` honoured) and spelled as OpenAI
    spells it: a whole choice, or the chunks of a streamed one."""

    def __init__(
        self, reply: Reply, limit: int | None, top: int | None, call_id: str, legacy: bool = False
    ) -> None:
        self.reply = reply
        words = _WORDS.findall(reply.text)  # each word with the whitespace before it, kept
        self.finish = reply.finish_reason
        if limit and len(words) > limit:
            words, self.finish = words[:limit], self.finish or "length"
        self.finish = self.finish or ("tool_calls" if reply.calls else "stop")
        self.tokens = [w if i else w.lstrip() for i, w in enumerate(words)]
        self.text = "".join(self.tokens)
        self.top = top  # logprobs asked for: how many alternatives (None: no logprobs)
        self.ids = [f"{call_id}_{k}" for k in range(len(reply.calls))]
        self.legacy = legacy

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens) + sum(
            len(pieces(c.arguments, self.reply.piece)) for c in self.reply.calls
        )

    def _logprob(self, k: int, token: str) -> dict[str, Any]:
        logprob = round(-0.1 * (k + 1), 4)
        alternatives = [(token, logprob)] + [
            (f"alt{j}", logprob - j) for j in range(1, self.top or 0)
        ]
        return {
            "token": token,
            "logprob": logprob,
            "bytes": list(token.encode()),
            "top_logprobs": [
                {"token": t, "logprob": lp, "bytes": list(t.encode())}
                for t, lp in alternatives[: self.top]
            ],
        }

    def _logprobs(self, ks: range) -> dict[str, Any] | None:
        if self.top is None:
            return None
        return {"content": [self._logprob(k, self.tokens[k]) for k in ks], "refusal": None}

    def _legacy_logprobs(self, ks: range, offset: int = 0) -> dict[str, Any] | None:
        if self.top is None:
            return None
        entries = [self._logprob(k, self.tokens[k]) for k in ks]
        offsets = [offset + len("".join(self.tokens[:k])) for k in ks]
        return {
            "tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [
                {t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries
            ],
            "text_offset": offsets,
        }

    def _tool_calls(self) -> list[dict[str, Any]]:
        return [
            {"id": i, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for i, c in zip(self.ids, self.reply.calls, strict=True)
        ]

    def choice(self, index: int) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.text if self.text or not self.reply.calls else None,
            "refusal": None,
            "annotations": [],
        }
        if self.reply.calls:
            message["tool_calls"] = self._tool_calls()
        return {
            "index": index,
            "message": message,
            "logprobs": self._logprobs(range(len(self.tokens))),
            "finish_reason": self.finish,
        }

    def chunks(self, index: int) -> list[tuple[str, dict[str, Any]]]:
        """The choice's stream: a role chunk, content tokens, each call's first piece (id, name)
        and its arguments in pieces, the finish chunk."""

        def step(kind: str, delta: dict[str, Any], **more: Any) -> tuple[str, dict[str, Any]]:
            return kind, {"index": index, "delta": delta, "logprobs": None, **more}

        calls = self._tool_calls()
        out = []
        if self.tokens or not calls:
            out.append(step("head", {"role": "assistant", "content": "", "refusal": None}))
        for k, token in enumerate(self.tokens):
            out.append(step("token", {"content": token}, logprobs=self._logprobs(range(k, k + 1))))
        for n, call in enumerate(calls):
            first = {
                "index": n,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            head: dict[str, Any] = {"tool_calls": [first]}
            if n == 0 and not self.tokens:
                head = {"role": "assistant", "content": None, **head, "refusal": None}
            out.append(step("head", head))
            for piece in pieces(call["function"]["arguments"], self.reply.piece):
                args = {"index": n, "function": {"arguments": piece}}
                out.append(step("token", {"tool_calls": [args]}))
        out.append(step("finish", {}, finish_reason=self.finish))
        return out

    def text_choice(self, index: int) -> dict[str, Any]:
        return {
            "text": self.text,
            "index": index,
            "logprobs": self._legacy_logprobs(range(len(self.tokens))),
            "finish_reason": self.finish,
        }

    def text_chunks(self, index: int) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for k, token in enumerate(self.tokens):
            choice = {
                "text": token,
                "index": index,
                "logprobs": self._legacy_logprobs(range(k, k + 1)),
                "finish_reason": None,
            }
            out.append(("token", choice))
        finish = {"text": "", "index": index, "logprobs": None, "finish_reason": self.finish}
        out.append(("finish", finish))
        return out


def _interleave(
    streams: list[list[tuple[str, dict[str, Any]]]],
) -> list[tuple[str, dict[str, Any]]]:
    """The choices' chunks taken in turn, one each, as OpenAI streams n > 1 choices."""
    out: list[tuple[str, dict[str, Any]]] = []
    for k in range(max(len(s) for s in streams)):
        out.extend(s[k] for s in streams if k < len(s))
    return out


def _usage(answers: list[_Answer]) -> dict[str, int]:
    completion = sum(a.completion_tokens for a in answers)
    return {"prompt_tokens": 7, "completion_tokens": completion, "total_tokens": 7 + completion}


def _calls(body: dict[str, Any], every: bool) -> tuple[Call, ...]:
    """The calls a fake model makes: to the tool `tool_choice` names, else to every tool
    (`every`, unless `parallel_tool_calls` is false), else to the first."""
    tools = {t["function"]["name"]: t["function"].get("parameters") for t in body["tools"]}
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        return (call_to(name, tools[name]),)
    if every and body.get("parallel_tool_calls") is not False:
        return tuple(call_to(name, schema) for name, schema in tools.items())
    name, schema = next(iter(tools.items()))
    return (call_to(name, schema),)


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return content or ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    return next((text_of(m.get("content")) for m in reversed(messages) if m["role"] == "user"), "")


def raw_response(answer: Any) -> Response:
    """`answer` as it is: a list as SSE events, anything else as JSON."""
    if not isinstance(answer, list):
        return JSONResponse(answer)
    events = [e if isinstance(e, str) else json.dumps(e) for e in answer]
    body = "".join(f"data: {e}\n\n" for e in [*events, "[DONE]"])
    return Response(body, media_type="text/event-stream")


def invalid(message: str, param: str | None) -> JSONResponse:
    """A 400 in OpenAI's error shape."""
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    return JSONResponse({"error": error}, 400)


def check_chat(body: dict[str, Any]) -> tuple[str, str] | None:
    """What OpenAI would refuse in a chat request our client could get wrong, as (message,
    param); None when it would take it."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: a non-empty array is required", "messages"
    for i, m in enumerate(messages):
        problem = _check_message(m)
        if problem:
            return f"messages[{i}]: {problem}", f"messages[{i}]"
    tools = body.get("tools")
    names = set()
    for i, t in enumerate(tools or ()):
        fn = t.get("function") if isinstance(t, dict) else None
        if t.get("type") != "function" or not isinstance(fn, dict) or not fn.get("name"):
            return f"tools[{i}]: expected {{type: function, function: {{name, ...}}}}", "tools"
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            return f"tools[{i}].function.parameters: must be an object", "tools"
        names.add(fn["name"])
    for key in ("tool_choice", "parallel_tool_calls"):
        if key in body and not tools:
            return f"'{key}' is only allowed when 'tools' are specified.", key
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        if (
            choice.get("type") != "function"
            or (choice.get("function") or {}).get("name") not in names
        ):
            return "tool_choice: must name one of the tools", "tool_choice"
    elif choice not in (None, "none", "auto", "required"):
        return f"tool_choice: invalid value {choice!r}", "tool_choice"
    fmt = body.get("response_format")
    if fmt is not None:
        if fmt.get("type") not in ("text", "json_object", "json_schema"):
            return "response_format.type: invalid value", "response_format"
        spec = fmt.get("json_schema")
        if fmt["type"] == "json_schema" and (not isinstance(spec, dict) or not spec.get("name")):
            return "response_format.json_schema.name: required", "response_format"
    if body.get("top_logprobs") is not None and not body.get("logprobs"):
        return "top_logprobs: logprobs must be true when top_logprobs is set", "top_logprobs"
    return None


def _check_message(m: Any) -> str | None:
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        return "role: must be one of " + ", ".join(ROLES)
    content = m.get("content")
    if m["role"] == "tool" and not isinstance(m.get("tool_call_id"), str):
        return "tool_call_id: required for role 'tool'"
    if m["role"] == "tool" and "name" in m:
        return "name: Additional properties are not allowed for role 'tool'"
    calls = m.get("tool_calls")
    if calls is not None:
        if m["role"] != "assistant" or not isinstance(calls, list) or not calls:
            return "tool_calls: a non-empty array, on assistant messages only"
        for c in calls:
            fn = c.get("function") or {}
            if not (
                isinstance(c.get("id"), str)
                and c.get("type") == "function"
                and isinstance(fn.get("name"), str)
                and isinstance(fn.get("arguments"), str)
            ):
                return "tool_calls: each is {id, type: function, function: {name, arguments}}"
    if content is None:
        return None if calls else "content: required"
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return "content: a string or an array of parts"
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        url = (part.get("image_url") or {}).get("url") if kind == "image_url" else None
        if m["role"] == "user" and isinstance(url, str):
            continue
        return f"content: invalid part {part!r}"
    return None


class Dropped(Response):
    """A 200 whose connection drops after `chunks`: the status line and those body chunks are sent,
    then the app returns without finishing the response and the server closes the socket."""

    def __init__(self, chunks: list[str]) -> None:
        super().__init__(media_type="text/event-stream")
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for c in self.chunks:
            await send({"type": "http.response.body", "body": c.encode(), "more_body": True})


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
