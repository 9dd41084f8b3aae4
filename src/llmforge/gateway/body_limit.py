"""ASGI middleware that refuses request bodies over a size limit with 413, before they are buffered.

It checks `Content-Length` up front (a body that declares its length is passed through untouched:
the server reads no more than that) and counts bytes of chunked bodies as they arrive.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmforge.core.errors import RequestTooLargeError
from llmforge.gateway.replies import forge_error_response


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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

        async def limited_receive() -> Message:
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

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        """413 in the shape of the API the request spoke (Anthropic's on /v1/messages)."""
        error = RequestTooLargeError(
            f"Request body is larger than {self.max_bytes} bytes (server.max_body_bytes)."
        )
        await forge_error_response(scope.get("path", ""), error)(scope, receive, send)
