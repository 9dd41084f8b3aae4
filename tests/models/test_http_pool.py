"""`HttpPool`, the HTTP/1.1 client of upstream model calls, against a raw asyncio TCP server on
127.0.0.1 whose every answer is scripted byte for byte: lengths, chunks, closes, silences."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from llmforge.models.http_pool import (
    MAX_BUFFERED,
    ConnectFailed,
    HttpPool,
    Response,
    UpstreamClosed,
)

READ_TIMEOUT = 0.2

# One answer to one request: it writes what it likes, may pause, and may close the connection.
Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def head(status: int = 200, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever\r\n"] + [f"{k}: {v}\r\n" for k, v in headers]
    return ("".join(lines) + "\r\n").encode("latin-1")


def fixed(body: bytes, headers: Sequence[tuple[str, str]] = ()) -> Answer:
    """A `Content-Length` answer."""

    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, [("Content-Length", str(len(body))), *headers]) + body)
        await writer.drain()

    return answer


def chunked(
    parts: Sequence[bytes], pause_s: float = 0.0, gate: asyncio.Event | None = None
) -> Answer:
    """A chunked answer, `pause_s` between chunks; with `gate`, the last chunk waits for it."""

    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, [("Transfer-Encoding", "chunked")]))
        for i, part in enumerate(parts):
            if i == len(parts) - 1 and gate is not None:
                await gate.wait()
            await asyncio.sleep(pause_s)
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    return answer


def until_close(body: bytes) -> Answer:
    """No length: the body ends when the connection does."""

    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, [("Content-Type", "text/plain")]) + body)
        await writer.drain()
        writer.close()

    return answer


def cut_short(raw: bytes) -> Answer:
    """`raw` (a head promising more than follows, or less than a head), then close."""

    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
        writer.close()

    return answer


def silence(raw: bytes = b"") -> Answer:
    """`raw`, then nothing until the client hangs up."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
        await reader.read()  # returns at the client's EOF
        writer.close()

    return answer


class RawServer:
    """Reads each request whole (head, then a `Content-Length` body) and answers it with the next
    scripted `Answer`. Counts the connections it accepted and the ones the client hung up."""

    def __init__(self) -> None:
        self.answers: deque[Answer] = deque()
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)
        self.connections = 0
        self.hangups = 0  # connections the client closed while the server waited for a request
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[object]] = set()

    def script(self, *answers: Answer) -> None:
        self.answers.extend(answers)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while not writer.is_closing():
                try:
                    request_head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.hangups += 1
                    return
                length = 0
                for line in request_head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                self.requests.append((request_head, await reader.readexactly(length)))
                await self.answers.popleft()(reader, writer)
                if reader.at_eof():  # the answer waited for the client to hang up
                    self.hangups += 1
        except asyncio.CancelledError:
            pass  # stopped at teardown; a cancelled handler upsets asyncio's stream callback
        finally:
            writer.close()
            self._tasks.discard(task)


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    raw = RawServer()
    await raw.start()
    yield raw
    await raw.stop()


@pytest.fixture
async def pool(server: RawServer) -> AsyncIterator[HttpPool]:
    p = HttpPool(server.url, connect_timeout=1.0, read_timeout=READ_TIMEOUT)
    yield p
    await p.aclose()


async def get(pool: HttpPool, target: str = "/") -> Response:
    return await pool.request("GET", target, [])


async def read_and_close(response: Response) -> bytes:
    try:
        return await response.read()
    finally:
        response.close()


async def eventually(condition: Callable[[], bool], timeout_s: float = 1.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


# -- what is sent --------------------------------------------------------------------------------


async def test_request_sends_method_target_host_headers_and_body(
    server: RawServer, pool: HttpPool
) -> None:
    server.script(fixed(b"ok"))
    response = await pool.request("POST", "/v1/x?y=1", [("X-Api", "k")], b'{"a": 1}')
    assert await read_and_close(response) == b"ok"
    sent_head, sent_body = server.requests[0]
    lines = sent_head.decode("latin-1").split("\r\n")
    assert lines[0] == "POST /v1/x?y=1 HTTP/1.1"
    port = server.url.rsplit(":", 1)[1]
    assert {"Host: 127.0.0.1:" + port, "X-Api: k", "Content-Length: 8"} <= set(lines)
    assert sent_body == b'{"a": 1}'


async def test_header_with_a_line_break_is_refused_before_anything_is_sent(
    server: RawServer, pool: HttpPool
) -> None:
    with pytest.raises(ValueError, match="line break"):
        await pool.request("GET", "/", [("X-Evil", "a\r\nInjected: yes")])
    assert server.connections == 0


# -- how an answer is framed ---------------------------------------------------------------------


async def test_content_length_body_is_read_whole_with_lower_cased_header_names(
    server: RawServer, pool: HttpPool
) -> None:
    server.script(fixed(b"hello world", [("X-Upstream-Thing", "Yes")]))
    response = await get(pool)
    assert response.status == 200
    assert response.headers["x-upstream-thing"] == "Yes"
    assert response.headers["content-length"] == "11"
    assert await read_and_close(response) == b"hello world"


async def test_chunked_body_is_delivered_as_it_arrives_not_when_it_ends(
    server: RawServer, pool: HttpPool
) -> None:
    gate = asyncio.Event()  # the server holds the last chunk until the first two were received
    server.script(chunked([b"one ", b"two ", b"three"], pause_s=0.02, gate=gate))
    response = await get(pool)
    assert response.headers["transfer-encoding"] == "chunked"
    got: list[bytes] = []
    async with asyncio.timeout(1):
        async for chunk in response.iter_chunks():
            got.append(chunk)
            if b"".join(got) == b"one two ":
                gate.set()
    response.close()
    assert b"".join(got) == b"one two three" and len(got) >= 2


async def test_stream_that_keeps_talking_outlives_the_read_timeout(
    server: RawServer, pool: HttpPool
) -> None:
    # five pauses of 0.08 s: 0.4 s in all, twice the read timeout, never silent for 0.2 s
    server.script(chunked([b"a", b"b", b"c", b"d", b"e"], pause_s=0.08))
    started = time.monotonic()
    assert await read_and_close(await get(pool)) == b"abcde"
    assert time.monotonic() - started > READ_TIMEOUT


async def test_body_bigger_than_the_buffer_bound_is_read_whole(
    server: RawServer, pool: HttpPool
) -> None:
    body = bytes(range(256)) * (3 * MAX_BUFFERED // 256)  # reading pauses and resumes on the way
    server.script(fixed(body), fixed(b"after"))
    response = await get(pool)
    await asyncio.sleep(0.05)  # let the buffer fill before the consumer starts
    assert await read_and_close(response) == body
    assert await read_and_close(await get(pool)) == b"after"
    assert server.connections == 1


async def test_body_without_a_length_ends_when_the_server_closes(
    server: RawServer, pool: HttpPool
) -> None:
    server.script(until_close(b"all of it"), fixed(b"next"))
    response = await get(pool)
    assert "content-length" not in response.headers
    assert await read_and_close(response) == b"all of it"
    assert await read_and_close(await get(pool)) == b"next"
    assert server.connections == 2  # the closed connection was not reused


# -- failures ------------------------------------------------------------------------------------


async def test_silence_after_the_headers_is_a_read_timeout_and_the_connection_is_dropped(
    server: RawServer, pool: HttpPool
) -> None:
    server.script(silence(head(200, [("Content-Length", "10")]) + b"0123"))
    response = await get(pool)
    assert response.status == 200
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await response.read()
    assert READ_TIMEOUT * 0.9 < time.monotonic() - started < READ_TIMEOUT + 0.5
    response.close()
    await eventually(lambda: server.hangups == 1)  # the connection is gone, not pooled


async def test_silence_before_the_headers_is_a_read_timeout(
    server: RawServer, pool: HttpPool
) -> None:
    server.script(silence())
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await get(pool)
    assert time.monotonic() - started < READ_TIMEOUT + 0.5


@pytest.mark.parametrize(
    "raw",
    [
        head(200, [("Content-Length", "100")]) + b"only ten b",
        head(200, [("Transfer-Encoding", "chunked")]) + b"5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"",
    ],
    ids=["content-length", "chunked", "mid-headers", "nothing"],
)
async def test_answer_cut_short_raises_upstream_closed_never_a_short_body(
    server: RawServer, pool: HttpPool, raw: bytes
) -> None:
    server.script(cut_short(raw))
    with pytest.raises(UpstreamClosed):
        response = await get(pool)
        try:
            await response.read()
        finally:
            response.close()


async def test_garbage_instead_of_http_raises_upstream_closed(
    server: RawServer, pool: HttpPool
) -> None:
    server.script(silence(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"))
    with pytest.raises(UpstreamClosed, match="malformed"):
        await get(pool)


async def test_refused_port_is_connect_failed_at_once() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = HttpPool(f"http://127.0.0.1:{port}", connect_timeout=5.0, read_timeout=5.0)
    started = time.monotonic()
    with pytest.raises(ConnectFailed):
        await get(refused)
    assert time.monotonic() - started < 0.5  # not the connect timeout
    await refused.aclose()


# -- keep-alive and the limit --------------------------------------------------------------------


async def test_sequential_requests_reuse_one_keep_alive_connection(
    server: RawServer, pool: HttpPool
) -> None:
    server.script(fixed(b"first"), chunked([b"sec", b"ond"]), fixed(b"third"))
    for expected in (b"first", b"second", b"third"):
        assert await read_and_close(await get(pool)) == expected
    assert server.connections == 1 and len(server.requests) == 3


async def test_response_closed_before_its_body_arrived_gives_no_connection_back(
    server: RawServer, pool: HttpPool
) -> None:
    server.script(silence(head(200, [("Content-Length", "1000")]) + b"x" * 10), fixed(b"fresh"))
    (await get(pool)).close()  # unread: the rest of the body would garble the next answer
    await eventually(lambda: server.hangups == 1)
    assert await read_and_close(await get(pool)) == b"fresh"
    assert server.connections == 2


async def test_response_closed_unread_after_it_fully_arrived_is_reused_cleanly(
    server: RawServer, pool: HttpPool
) -> None:
    server.script(fixed(b"x" * 1000), fixed(b"fresh"))
    response = await get(pool)
    await asyncio.sleep(0.05)  # the whole body is in: nothing of it is left on the wire
    response.close()
    assert await read_and_close(await get(pool)) == b"fresh"  # not the stale x's
    assert server.connections == 1


async def test_big_answer_closed_unread_does_not_stall_the_next_request(
    server: RawServer, pool: HttpPool
) -> None:
    # one byte over the buffer bound: reading pauses exactly when the last byte is in
    server.script(fixed(b"x" * (MAX_BUFFERED + 1)), fixed(b"next"))
    response = await get(pool)
    await asyncio.sleep(0.1)  # all of it arrives; the consumer reads none of it
    response.close()
    assert await read_and_close(await get(pool)) == b"next"


async def test_connection_close_from_the_server_is_honoured(
    server: RawServer, pool: HttpPool
) -> None:
    server.script(fixed(b"bye", [("Connection", "close")]), fixed(b"hello again"))
    assert await read_and_close(await get(pool)) == b"bye"
    assert await read_and_close(await get(pool)) == b"hello again"
    assert server.connections == 2


async def test_idle_connection_the_server_closed_is_replaced_not_used(
    server: RawServer, pool: HttpPool
) -> None:
    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await fixed(b"one")(reader, writer)
        writer.close()  # a keep-alive answer, then the server's idle timeout closes it

    server.script(answer_then_close, fixed(b"two"))
    assert await read_and_close(await get(pool)) == b"one"
    await asyncio.sleep(0.05)  # the close reaches the client while the connection is idle
    assert await read_and_close(await get(pool)) == b"two"
    assert server.connections == 2


async def test_limit_makes_a_request_wait_until_a_response_is_closed(server: RawServer) -> None:
    one = HttpPool(server.url, limit=1, connect_timeout=1.0, read_timeout=READ_TIMEOUT)
    server.script(fixed(b"first"), fixed(b"second"))
    first = await get(one)
    second = asyncio.create_task(get(one))
    await asyncio.sleep(0.1)
    assert not second.done() and len(server.requests) == 1  # waiting, nothing sent
    assert await first.read() == b"first"
    await asyncio.sleep(0.05)
    assert not second.done()  # read is not enough: the slot is freed by close()
    first.close()
    async with asyncio.timeout(1):
        assert await read_and_close(await second) == b"second"
    assert server.connections == 1  # the waiter got the connection the first gave back
    await one.aclose()


async def test_failed_request_gives_its_slot_back(server: RawServer) -> None:
    one = HttpPool(server.url, limit=1, connect_timeout=1.0, read_timeout=READ_TIMEOUT)
    server.script(silence(), cut_short(b""), fixed(b"still served"))
    with pytest.raises(TimeoutError):
        await get(one)
    with pytest.raises(UpstreamClosed):
        await get(one)
    async with asyncio.timeout(1):
        assert await read_and_close(await get(one)) == b"still served"
    await one.aclose()
