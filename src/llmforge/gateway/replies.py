"""How calls and errors leave the gateway as HTTP: JSON responses, the headers that tell a client
how its call was served, and error bodies in the shape of the API the request spoke.

Shared by every route module (the OpenAI lane, the Anthropic route, the FastAPI routes and their
exception handlers), so a given error reads the same whichever way the request came in. It builds
responses; it does not decide status codes (each `LLMForgeError` carries its own).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Mapping
from typing import Any

import orjson
from starlette.responses import Response, StreamingResponse

from llmforge.core.errors import (
    BudgetExceededError,
    LLMForgeError,
    OverloadedError,
    RateLimitError,
)
from llmforge.core.types import Delta
from llmforge.gateway.call import Call
from llmforge.gateway.service import Gateway
from llmforge.gateway.wire.anthropic import anthropic_error_body, speaks_anthropic
from llmforge.gateway.wire.openai import error_body

CACHE_HEADER = "x-llmforge-cache"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def sse_data(body: Any) -> bytes:
    """One unnamed SSE event (OpenAI's streams): `data: <json>` and a blank line."""
    return b"data: " + orjson.dumps(body) + b"\n\n"


def stream_response(events: AsyncIterable[bytes], call: Call) -> StreamingResponse:
    """A call's SSE stream, with the call's headers."""
    headers = {**call_headers(call), **STREAM_HEADERS}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def wants_cache(headers: Mapping[str, str]) -> bool:
    """False when the client sends `x-llmforge-cache: no` (or `no-cache`, `0`)."""
    return headers.get(CACHE_HEADER, "").lower() not in ("no", "no-cache", "0")


def call_headers(call: Call) -> dict[str, str]:
    """What the gateway tells the client about how the call was served."""
    headers = {
        "x-request-id": call.id,
        "x-llmforge-overhead-ms": f"{call.overhead_ms():.2f}",
    }
    if call.deployment:
        headers["x-llmforge-deployment"] = call.deployment
    if call.served_by and call.served_by != call.model:
        headers["x-llmforge-served-by"] = call.served_by
    if call.cache != "off":
        headers[CACHE_HEADER] = call.cache
    return headers


async def open_stream(gateway: Gateway, call: Call) -> tuple[Delta, AsyncGenerator[Delta, None]]:
    """The first delta and the rest of the call's stream. A failure before the first token closes
    the stream and is raised, so it leaves as a plain HTTP error."""
    stream = gateway.stream(call)
    try:
        return await anext(stream), stream
    except BaseException:
        await stream.aclose()
        raise


def error_response(
    path: str,
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error in the shape of the API the request spoke: Anthropic's on its routes, else
    OpenAI's."""
    if speaks_anthropic(path):
        return json_response(anthropic_error_body(status, message), status, headers)
    return json_response(error_body(message, type_, param, code), status, headers)


def forge_error_response(path: str, e: LLMForgeError) -> Response:
    """The response for one of our errors; those that ask the client to come back later (limits,
    overload; not a spent budget) say when in `Retry-After`."""
    headers = {}
    if isinstance(e, OverloadedError | RateLimitError) and not isinstance(e, BudgetExceededError):
        headers["Retry-After"] = str(max(1, round(e.retry_after_s)))
    return error_response(path, e.http_status, e.message, e.error_type, e.param, e.code, headers)


def validation_error_response(path: str, errors: Any) -> Response:
    """400 naming the first field pydantic refused (`errors` as from `ValidationError.errors()`)."""
    message, param = describe_validation_error(errors)
    return error_response(path, 400, message, "invalid_request_error", param, "invalid_request")


def describe_validation_error(errors: Any) -> tuple[str, str | None]:
    """The most telling problem as (message, param), e.g. ("messages.0.role: Input should be ...",
    "messages.0.role"): one of our own checks (a value error, which says what to do) before a
    type mismatch, since a union reports a mismatch with each of its members."""
    if not errors:
        return "Invalid request.", None
    err = next((e for e in errors if e.get("type") == "value_error"), errors[0])
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        return f"Malformed JSON body: {err.get('ctx', {}).get('error', err.get('msg'))}", None
    if not loc and err.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        return "The request body must be a JSON object.", None
    # strip the union-member suffixes pydantic adds (e.g. "content.str")
    param = ".".join(
        p
        for p in loc
        if not p.startswith(("list[", "function-")) and p not in ("str", "int", "float", "bool")
    )
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err.get("type") == "missing":
        msg = "required field is missing"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{param}: {msg}{more}" if param else msg + more, param or None
