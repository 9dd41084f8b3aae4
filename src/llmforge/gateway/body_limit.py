"""ASGI middleware that refuses request bodies over a size limit with 413, before they are buffered.

It checks `Content-Length` up front (a body that declares its length is passed through untouched:
the server reads no more than that) and counts bytes of chunked bodies as they arrive.
"""

from __future__ import annotations

from typing import Any

from llmforge.core.errors import RequestTooLargeError
from llmforge.gateway.responses import forge_error_response

Scope = dict[str, Any]


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                if int(value) > self.max_bytes:
                    await self._refuse(scope, receive, send)
                    return
                declared = True
            elif name == b"transfer-encoding":
                chunked = True
        if declared and not chunked:  # the server reads no more than Content-Length bytes
            await self.app(scope, receive, send)
            return
        seen = 0
        started = refused = False

        async def limited_receive() -> Any:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not refused:
                    refused = True
                    if not started:
                        await self._refuse(scope, receive, send)
                    return {
                        "type": "http.disconnect"
                    }  # the app stops reading; its answer is dropped
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, scope: Scope, receive: Any, send: Any) -> None:
        """413 in the shape of the API the request spoke (Anthropic's on /v1/messages)."""
        response = forge_error_response(scope.get("path", ""), too_large(self.max_bytes))
        await response(scope, receive, send)


def too_large(max_bytes: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"Request body is larger than {max_bytes} bytes (server.max_body_bytes)."
    )
