"""The lane: the routes that run models (`POST /v1/chat/completions`, `/v1/completions`,
`/v1/embeddings`, `/v1/messages`, `/v1/responses`), served as plain ASGI ahead of FastAPI.

Nearly every request a deployed gateway sees comes through these routes, so they skip what FastAPI
does per request (its middleware layers, route matching, dependency solving, the standard library's
JSON parser before validation): the body is read once (under `server.max_body_bytes`, by the same
middleware as the other routes) and validated by pydantic straight from the JSON bytes into the
wire models (`parse`): about 45% less framework time per call, measured in-process. pydantic's JSON
parser also refuses what the standard library lets through (lone surrogates, NaN), so such text is a
400 here and never reaches a model or a trace. The rest of the API stays ordinary FastAPI routes,
and both answer alike: error bodies from `replies.py` in the shape of the API spoken, 405 with
`Allow`, 413 for a body over the limit, the same call headers, the in-flight gauge. The lane's
routes are published in `/openapi.json` too (`openapi_paths`).

A client that hangs up stops its call: a stream as soon as a chunk cannot be sent, and a call not
yet answered (a non-streamed one, or a stream before its first token) is cancelled when the server
reports the disconnect (`unless_client_leaves`), so an abandoned request does not keep a model busy.
The call is traced as `cancelled` either way.

A route is a module-level function `(ctx, request, body) -> Response` in its API's module under
`routes/`, listed there as a `LaneRoute`; this module knows none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llmforge.core.errors import InvalidRequestError, LLMForgeError
from llmforge.gateway.outage import database_unavailable
from llmforge.gateway.replies import (
    describe_validation_error,
    error_response,
    forge_error_response,
)

if TYPE_CHECKING:
    from llmforge.gateway.context import AppContext

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Handler = Callable[["AppContext", Request, bytes], Awaitable[Response]]


class ClientGone(Exception):
    """The client hung up before it was answered; nobody is left to answer."""


@dataclass(frozen=True)
class LaneRoute:
    """A `POST` route of the lane, and what `/openapi.json` says of it."""

    path: str
    handler: Handler
    body: type[BaseModel]
    summary: str
    tag: str
    error_schema: type[BaseModel]
    streams: bool = True  # may answer `text/event-stream`


class Lane:
    """An ASGI app serving its routes' paths; anything else is not its business (see
    `GatewayApp`, which also puts the size limit and the in-flight gauge in front of it)."""

    def __init__(self, ctx: AppContext, routes: Sequence[LaneRoute]) -> None:
        self.ctx = ctx
        self.routes = {r.path: r for r in routes}

    @property
    def paths(self) -> frozenset[str]:
        return frozenset(self.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if scope["method"] != "POST":
            response = error_response(
                path, 405, "Method Not Allowed", "invalid_request_error", None,
                "method_not_allowed", {"Allow": "POST"},
            )  # fmt: skip
            await response(scope, receive, send)
            return
        try:
            body = await read_body(receive)
            response = await self.routes[path].handler(self.ctx, Request(scope, receive), body)
        except ClientGone:
            return
        except LLMForgeError as e:
            response = forge_error_response(path, e)
        except Exception as e:
            if (outage := database_unavailable(e)) is not None:
                response = forge_error_response(path, outage)
            else:
                log.exception("unhandled error")
                response = error_response(
                    path, 500, "Internal server error; see the server log.", "server_error", None,
                    "internal_error",
                )  # fmt: skip
        # Servers on ASGI 2.4 report a hang-up mid-stream as a failed send (Starlette raises
        # ClientDisconnect); it is not an error: the stream's generator is closed either way.
        with contextlib.suppress(ClientDisconnect):
            await response(scope, receive, send)


def parse(model: type[M], body: bytes) -> M:
    """The request body as `model`, validated straight from JSON; a 400 naming the first bad
    field otherwise."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        message, param = describe_validation_error(e.errors(include_url=False))
        raise InvalidRequestError(message, param=param) from None


async def read_body(receive: Receive) -> bytes:
    """The whole request body (its size is bounded by `BodyLimitMiddleware` in front, which
    answers 413 and reports a disconnect instead of the rest of a body over the limit)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def unless_client_leaves(work: Awaitable[T], receive: Receive) -> T:
    """`await work`; if the client disconnects first, `work` is cancelled (it sees a
    CancelledError, as on any cancellation) and `ClientGone` is raised."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled from elsewhere (shutdown): not ours to swallow
        task.uncancel()
        raise ClientGone from None
    finally:
        watcher.cancel()


# -- /openapi.json ------------------------------------------------------------------------------

ERROR_STATUSES = {
    "400": "The request is invalid (malformed JSON, a wrong field, a model that refuses it).",
    "401": "Missing or unknown API key (when keys are on).",
    "403": "The key may not use this model.",
    "404": "Unknown model.",
    "405": "Only POST.",
    "413": "The body is over `server.max_body_bytes`, or the input over a model's limit.",
    "429": "Rate limit or budget; `Retry-After` says when to come back (not for a spent budget).",
    "500": "A server fault (configuration); see the server log.",
    "502": "The model backend failed.",
    "503": "The model is overloaded or out (circuit open); `Retry-After` says when to retry.",
    "504": "The upstream model did not answer in time.",
}


def openapi_paths(routes: Sequence[LaneRoute]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The lane's routes as OpenAPI path items, and the component schemas they refer to."""
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    ref = "#/components/schemas/{model}"
    for route in routes:
        for model in (route.body, route.error_schema):
            schema = model.model_json_schema(ref_template=ref)
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        error = {"$ref": ref.format(model=route.error_schema.__name__)}
        ok: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
        if route.streams:
            ok["text/event-stream"] = {"schema": {"type": "string"}}
        responses: dict[str, Any] = {"200": {"description": "The answer.", "content": ok}}
        for status, text in ERROR_STATUSES.items():
            responses[status] = {
                "description": text,
                "content": {"application/json": {"schema": error}},
            }
        paths[route.path] = {
            "post": {
                "tags": [route.tag],
                "summary": route.summary,
                "operationId": route.handler.__name__,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": ref.format(model=route.body.__name__)}
                        }
                    },
                },
                "responses": responses,
            }
        }
    return paths, schemas
