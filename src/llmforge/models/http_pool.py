"""A lean HTTP/1.1 client for calls to model servers: keep-alive connections pooled per origin,
asyncio transports, and httptools' parser (the one uvicorn parses requests with).

It does what an upstream model call needs and no more: one request at a time per connection with a
bytes body, `Content-Length`, chunked or close-delimited responses read whole or as they arrive,
TLS, a bound on connections, a connect timeout and a read timeout that bounds silence (not a whole
answer, so long streams are fine). Not here: redirects, cookies, compression (it asks for
`identity`), proxies (`HttpUpstream` uses aiohttp for an upstream the environment sends through a
proxy) and HTTP/2.

Why not aiohttp on this path: with a fast upstream the HTTP client was the largest part of the
gateway's own CPU per call; aiohttp's request and response machinery costs several times this
module's (see docs/decisions.md §15). Failures surface as `OSError` subclasses (refused,
reset, closed early: `UpstreamClosed`) and `TimeoutError`; callers translate them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import cast
from urllib.parse import urlsplit

import httptools

MAX_BUFFERED = 1 << 20  # stop reading a stream whose consumer is this far behind


class UpstreamClosed(ConnectionError):
    """The server closed the connection before its answer was complete."""


class ConnectFailed(ConnectionError):
    """No connection could be made (refused, unknown host, TLS handshake failed)."""


class HttpPool:
    """Connections to one origin (`scheme://host:port`), at most `limit` at once."""

    def __init__(
        self, base_url: str, *, limit: int = 256, connect_timeout: float, read_timeout: float
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.authority = parts.netloc.rsplit("@", 1)[-1]  # the Host header: [v6] and port kept
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: deque[_Connection] = deque()
        self._slots = asyncio.Semaphore(limit)
        self._closed = False

    async def request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes = b""
    ) -> Response:
        """Send a request (`target`: the path and query) and return once the response's status
        and headers have arrived. The caller must `close()` the response (after reading it)."""
        head = [f"{method} {target} HTTP/1.1\r\nHost: {self.authority}\r\n"]
        for name, value in headers:
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} has a line break")
            head.append(f"{name}: {value}\r\n")
        head.append(f"Content-Length: {len(body)}\r\nAccept-Encoding: identity\r\n\r\n")
        data = "".join(head).encode("latin-1") + body
        await self._slots.acquire()
        conn: _Connection | None = None
        try:
            conn = await self._connection()
            response = Response(self, conn)
            conn.start(response, data)
            await conn.wait_headers()
        except BaseException:
            if conn is not None:
                conn.close()
            self._slots.release()
            raise
        return response

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.popleft().close()

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: least likely to have timed out
            if conn.usable():
                return conn
            conn.close()
        loop = asyncio.get_running_loop()
        connect = loop.create_connection(
            lambda: _Connection(self), self.host, self.port, ssl=self.ssl
        )
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await connect
        except TimeoutError:
            raise
        except OSError as e:  # refused, unknown host, TLS: a subclass the caller can tell apart
            raise ConnectFailed(f"{type(e).__name__}: {e}") from e
        return protocol

    def _release(self, conn: _Connection, reusable: bool) -> None:
        self._slots.release()
        if reusable and not self._closed and conn.usable():
            self._idle.append(conn)
        else:
            conn.close()


class Response:
    """Status, headers (names lower-cased) and the body, read whole or as it arrives."""

    def __init__(self, pool: HttpPool, conn: _Connection) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._pool = pool
        self._conn: _Connection | None = conn

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_chunks()])

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        while True:
            chunk = await conn.next_chunk()
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        """Give the connection back (kept for the next request when this answer was read to its
        end and the server allows it; else closed)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._release(conn, conn.finished and conn.keep_alive)


class _Connection(asyncio.Protocol):
    """One connection; the httptools callbacks fill in the current `Response`."""

    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.finished = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.loop = asyncio.get_running_loop()
        self.last_read = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.paused = False
        self.headers_done = False

    # -- used by the pool and the response -------------------------------------------------------

    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def start(self, response: Response, data: bytes) -> None:
        assert self.transport is not None
        self.response = response
        self.chunks.clear()
        self.buffered = 0
        self.finished = self.keep_alive = False
        self.error = None
        self.headers_done = False
        self.parser = httptools.HttpResponseParser(self)
        self.last_read = self.loop.time()
        if self.paused:  # the last answer filled the buffer and was closed unread
            self.paused = False
            self.transport.resume_reading()
        self.transport.write(data)

    async def wait_headers(self) -> None:
        while not self.headers_done:
            await self._wait()

    async def next_chunk(self) -> bytes | None:
        while not self.chunks:
            if self.finished:
                return None
            await self._wait()
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.paused and self.buffered < MAX_BUFFERED // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    async def _wait(self) -> None:
        if self.error is not None:
            raise self.error
        self.waiter = self.loop.create_future()
        if self.timer is None:
            self.timer = self.loop.call_at(self.last_read + self.pool.read_timeout, self._check)
        try:
            await self.waiter
        finally:
            self.waiter = None
        if self.error is not None:
            raise self.error

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.error is None and not self.finished:
            self.error = error
        self._wake()

    def _check(self) -> None:
        """The read timeout: silence for `read_timeout` while someone waits fails the wait."""
        self.timer = None
        if self.waiter is None or self.waiter.done():
            return
        due = self.last_read + self.pool.read_timeout
        if self.loop.time() >= due:
            self._fail(TimeoutError("upstream sent nothing within the read timeout"))
            self.close()
        else:
            self.timer = self.loop.call_at(due, self._check)

    # -- asyncio protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        response = self.response
        if response is None or self.finished:
            return
        framed = "content-length" in response.headers or "transfer-encoding" in response.headers
        if self.headers_done and exc is None and not framed:
            self.finished = True  # a body without a length ends when the connection does
            self._wake()
        else:
            self._fail(exc or UpstreamClosed("upstream closed the connection early"))

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(UpstreamClosed(f"malformed HTTP response from upstream: {e}"))
            self.close()
            return
        if self.buffered > MAX_BUFFERED and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response.status = self.parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.finished = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._wake()
