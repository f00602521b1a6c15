"""Client tests: ``websocket_connect`` against real servers on 127.0.0.1.

Our own server (``tornado_websocket.WebSocketHandler``), raw asyncio servers
that speak the handshake and the framing by hand (to check what the client
puts on the wire and how it judges the server's answer), and TLS with a
``trustme`` CA. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import socket
import ssl
import struct
import time
import tracemalloc
import zlib
from typing import Any, Awaitable, Callable, NamedTuple, Optional

import pytest
import pytest_asyncio
import tornado.httpclient
import tornado.httpserver
import tornado.iostream
import tornado.testing
import tornado.web
import trustme
from conftest import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    TIMEOUT,
    bounded,
    build_frame,
    close_payload,
    xor_mask,
)
from tornado.httputil import HTTPHeaders

import tornado_websocket
from tornado_websocket import (
    WebSocketClosedError,
    WebSocketConnectError,
    WebSocketHandshakeError,
    WebSocketTimeoutError,
    websocket_connect,
)
from tornado_websocket.handshake import accept_key

pytestmark = pytest.mark.asyncio

MiB = 1024 * 1024
TAIL = b"\x00\x00\xff\xff"
DEFLATE_ANSWER = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=13"


# -- servers of our own --------------------------------------------------------------


class Echo(tornado_websocket.WebSocketHandler):
    """Echoes every message; a few text commands make it do something else."""

    def initialize(self, signal: Any) -> None:
        self.signal = signal

    def open(self) -> None:
        self.signal.fire("open", self)

    def select_subprotocol(self, subprotocols: list[str]) -> Optional[str]:
        return "chat" if "chat" in subprotocols else None

    def on_message(self, message: Any) -> None:
        self.signal.fire("message", message)
        if message == "close me":
            self.close(4001, "server says bye")
        elif message == "three then close":
            for i in range(3):
                self.write_message(f"item {i}")
            self.close(1000, "done")
        elif message == "too big":
            self.write_message(b"x" * 2000, binary=True)
        else:
            self.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        self.signal.fire("close", (self.close_code, self.close_reason))


class CompressedEcho(Echo):
    def get_compression_options(self) -> Optional[dict[str, Any]]:
        return {}


class Conversation(CompressedEcho):
    """Answers message ``i`` with its own (similar) reply ``i``: both directions keep their context."""

    def on_message(self, message: Any) -> None:
        self.signal.fire("message", message)
        number = json.loads(message)["n"]
        self.write_message(json.dumps({"reply": number, "text": f"server reply number {number} " + COMMON}))


COMMON = "the quick brown fox jumps over the lazy dog; " * 8


@pytest_asyncio.fixture
async def clients(harness):
    """Client connections opened by a test; closed (bounded) before the harness stops the servers."""
    opened: list[tornado_websocket.WebSocketClientConnection] = []
    yield opened
    for conn in opened:
        with contextlib.suppress(Exception):
            conn.close()
    for conn in opened:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.wait_closed(), 2)


async def connect(clients: list, url: Any, **kwargs: Any) -> tornado_websocket.WebSocketClientConnection:
    conn = await bounded(websocket_connect(url, **kwargs))
    clients.append(conn)
    return conn


@pytest.fixture
def echo_url(harness, signal):
    harness.serve([(r"/ws", Echo, {"signal": signal})])
    return harness.url()


# -- against our own server ----------------------------------------------------------


async def test_text_message_round_trip(echo_url, clients):
    conn = await connect(clients, echo_url)
    await bounded(conn.write_message("hello, wörld ☃"))
    assert await bounded(conn.read_message()) == "hello, wörld ☃"


async def test_binary_message_round_trip(echo_url, clients, signal):
    conn = await connect(clients, echo_url)
    payload = bytes(range(256)) * 3
    await bounded(conn.write_message(payload, binary=True))
    assert await bounded(conn.read_message()) == payload
    assert signal.values["message"] == [payload]


async def test_bytes_without_binary_flag_go_as_text(echo_url, clients, signal):
    conn = await connect(clients, echo_url)
    await bounded(conn.write_message(b"plain"))
    assert await bounded(conn.read_message()) == "plain"
    assert signal.values["message"] == ["plain"]


async def test_dict_is_sent_as_json_text(echo_url, clients, signal):
    conn = await connect(clients, echo_url)
    message = {"a": 1, "b": [True, None, "ü"], "c": {"d": 2.5}}
    await bounded(conn.write_message(message))
    received = await bounded(conn.read_message())
    assert isinstance(received, str)
    assert json.loads(received) == message
    assert isinstance(signal.values["message"][0], str)


async def test_other_types_are_refused(echo_url, clients):
    conn = await connect(clients, echo_url)
    with pytest.raises(TypeError):
        conn.write_message(12345)  # type: ignore[arg-type]


async def test_four_mib_message_both_ways(echo_url, clients, signal):
    conn = await connect(clients, echo_url)
    payload = os.urandom(4 * MiB)
    await bounded(conn.write_message(payload, binary=True), 20)
    assert await bounded(conn.read_message(), 20) == payload
    assert signal.values["message"][0] == payload
    text = "0123456789abcdef" * (4 * MiB // 16)
    await bounded(conn.write_message(text), 20)
    assert await bounded(conn.read_message(), 20) == text


async def test_many_messages_keep_their_order(echo_url, clients):
    conn = await connect(clients, echo_url)
    for i in range(200):
        conn.write_message(f"m{i}" if i % 2 else f"b{i}".encode(), binary=not i % 2)
    for i in range(200):
        assert await bounded(conn.read_message()) == (f"m{i}" if i % 2 else f"b{i}".encode())


async def test_read_message_returns_none_after_close(echo_url, clients, signal):
    conn = await connect(clients, echo_url)
    pending = conn.read_message()
    conn.close()
    assert await bounded(pending) is None
    await bounded(conn.wait_closed())
    assert conn.closed
    assert await bounded(conn.read_message()) is None
    assert await bounded(conn.read_message()) is None
    assert (await signal.wait("close"))[0] == (1000, None)


async def test_read_message_callback_gets_the_future(echo_url, clients):
    conn = await connect(clients, echo_url)
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    conn.read_message(callback=lambda f: done.set_result(f.result()))
    conn.write_message("via callback")
    assert await bounded(done) == "via callback"


async def test_async_for_yields_every_message_until_close(echo_url, clients):
    conn = await connect(clients, echo_url)
    await bounded(conn.write_message("three then close"))

    async def collect() -> list[Any]:
        return [message async for message in conn]

    assert await bounded(collect()) == ["item 0", "item 1", "item 2"]
    assert conn.close_code == 1000
    assert conn.close_reason == "done"


async def test_on_message_callback_gets_every_message_then_none(echo_url, clients):
    received: list[Any] = []
    finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(message: Any) -> None:
        received.append(message)
        if message is None:
            finished.set_result(None)

    conn = await connect(clients, echo_url, on_message_callback=on_message)
    for i in range(5):
        conn.write_message(f"cb {i}")
    conn.write_message(b"\x00\x01", binary=True)
    conn.write_message("three then close")
    await bounded(finished)
    assert received == [f"cb {i}" for i in range(5)] + [b"\x00\x01", "item 0", "item 1", "item 2", None]
    assert received.count(None) == 1


async def test_ping_resolves_to_round_trip_time(echo_url, clients):
    conn = await connect(clients, echo_url)
    rtt = await bounded(conn.ping(b"abc"))
    assert isinstance(rtt, float)
    assert 0 <= rtt < TIMEOUT
    rtt = await bounded(conn.ping("text payload"))
    assert isinstance(rtt, float) and rtt >= 0
    with pytest.raises(ValueError):
        conn.ping(b"x" * 126)


async def test_client_close_code_and_reason_reach_the_server(echo_url, clients, signal):
    conn = await connect(clients, echo_url)
    conn.close(4000, "bye")
    assert (await signal.wait("close"))[0] == (4000, "bye")
    await bounded(conn.wait_closed())
    assert conn.closed
    # The server echoed the code of our close.
    assert conn.close_code == 4000


async def test_close_with_a_code_that_may_not_be_sent_sends_1011(echo_url, clients, signal):
    """Tornado sends any code (bokeh closes with 10000 from its error path); we never send an invalid one."""
    conn = await connect(clients, echo_url)
    conn.close(10000, "internal failure")
    assert (await signal.wait("close"))[0] == (1011, "internal failure")


async def test_close_reason_over_123_bytes_is_cut_at_a_character(echo_url, clients, signal):
    conn = await connect(clients, echo_url)
    conn.close(4000, "é" * 62)  # 124 bytes of UTF-8
    assert (await signal.wait("close"))[0] == (4000, "é" * 61)


async def test_close_code_and_reason_after_server_close(echo_url, clients, signal):
    conn = await connect(clients, echo_url)
    assert conn.close_code is None and conn.close_reason is None
    await bounded(conn.write_message("close me"))
    assert await bounded(conn.read_message()) is None
    await bounded(conn.wait_closed())
    assert conn.close_code == 4001
    assert conn.close_reason == "server says bye"
    # The server got our echo of its close code.
    assert (await signal.wait("close"))[0][0] == 4001


async def test_write_after_close_raises(echo_url, clients):
    conn = await connect(clients, echo_url)
    conn.close()
    with pytest.raises(WebSocketClosedError):
        conn.write_message("too late")
    with pytest.raises(WebSocketClosedError):
        conn.ping()
    await bounded(conn.wait_closed())
    with pytest.raises(WebSocketClosedError):
        conn.write_message("much too late")
    # close() again is a no-op.
    conn.close()


async def test_write_after_server_close_raises(echo_url, clients):
    conn = await connect(clients, echo_url)
    await bounded(conn.write_message("close me"))
    await bounded(conn.wait_closed())
    with pytest.raises(WebSocketClosedError):
        conn.write_message("too late")


async def test_subprotocol_is_negotiated(echo_url, clients, signal):
    conn = await connect(clients, echo_url, subprotocols=["other", "chat"])
    assert conn.selected_subprotocol == "chat"
    assert conn.headers["Sec-WebSocket-Protocol"] == "chat"
    handler = (await signal.wait("open"))[0]
    assert handler.selected_subprotocol == "chat"
    assert handler.request.headers["Sec-WebSocket-Protocol"] == "other, chat"


async def test_no_subprotocol_when_the_server_picks_none(echo_url, clients):
    conn = await connect(clients, echo_url, subprotocols=["other"])
    assert conn.selected_subprotocol is None
    assert "Sec-WebSocket-Protocol" not in conn.headers


async def test_http_request_headers_are_sent(echo_url, clients, signal):
    request = tornado.httpclient.HTTPRequest(echo_url, headers={"X-Token": "secret-123", "Cookie": "session=abc"})
    conn = await connect(clients, request, headers={"X-Extra": "more"})
    handler = (await signal.wait("open"))[0]
    headers = handler.request.headers
    assert headers["X-Token"] == "secret-123"
    assert headers["Cookie"] == "session=abc"
    assert headers["X-Extra"] == "more"
    assert headers["Host"] == echo_url.split("/")[2]
    # The caller's request object is not changed.
    assert "X-Extra" not in request.headers
    await bounded(conn.write_message("after custom headers"))
    assert await bounded(conn.read_message()) == "after custom headers"


async def test_query_string_reaches_the_server(echo_url, clients, signal):
    await connect(clients, echo_url + "?a=1&b=two")
    handler = (await signal.wait("open"))[0]
    assert handler.request.uri == "/ws?a=1&b=two"
    assert handler.get_argument("b") == "two"


async def test_client_max_message_size_closes_with_1009(echo_url, clients, signal):
    conn = await connect(clients, echo_url, max_message_size=1024)
    await bounded(conn.write_message("too big"))
    assert await bounded(conn.read_message()) is None
    await bounded(conn.wait_closed())
    assert (await signal.wait("close"))[0][0] == 1009


async def test_not_a_websocket_url_raises_value_error():
    with pytest.raises(ValueError):
        await bounded(websocket_connect("ftp://127.0.0.1:1/ws"))


async def test_refused_by_our_server_gives_status_and_body(harness, clients, signal):
    harness.serve([(r"/ws", Echo, {"signal": signal})])
    with pytest.raises(WebSocketHandshakeError) as info:
        await connect(clients, harness.url("/nowhere"))
    assert info.value.code == 404
    with pytest.raises(WebSocketHandshakeError) as info:
        await connect(clients, harness.url(), headers={"Origin": "https://evil.example"})
    assert info.value.code == 403
    assert b"Cross origin" in info.value.body


# -- raw servers ----------------------------------------------------------------------

Handle = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """An ``asyncio.start_server`` on 127.0.0.1 whose connections run ``handle(reader, writer)``.

    On exit it waits (bounded) for the connection handlers, then re-raises
    the first exception one of them raised.
    """

    def __init__(self, handle: Handle) -> None:
        self.handle = handle
        self.tasks: list[asyncio.Task[Any]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.errors: list[BaseException] = []
        self.port = 0

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        self.writers.append(writer)
        try:
            await self.handle(reader, writer)
        except Exception as exc:
            self.errors.append(exc)
        finally:
            writer.close()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.server.close()
        pending = [t for t in self.tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=TIMEOUT if exc_type is None else 0.5)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=1)
                if exc_type is None:
                    self.errors.append(AssertionError("a raw connection handler did not finish"))
        for writer in self.writers:
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)
        if exc_type is None and self.errors:
            raise self.errors[0]


async def read_request(reader: asyncio.StreamReader) -> tuple[str, HTTPHeaders]:
    head = await bounded(reader.readuntil(b"\r\n\r\n"))
    request_line, _, rest = head.decode("latin-1").partition("\r\n")
    return request_line, HTTPHeaders.parse(rest)


def http_response(status_line: str, headers: list[str], body: bytes = b"") -> bytes:
    return (status_line + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode("latin-1") + body


def switching(key: str, *extra: str) -> bytes:
    """A correct 101 answer to ``key`` with ``extra`` header lines."""
    return http_response(
        "HTTP/1.1 101 Switching Protocols",
        ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Accept: {accept_key(key)}", *extra],
    )


async def expect_eof(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> bytes:
    """Read until the client closes; return what came before the EOF."""
    data = b""
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


async def drain_and_drop(writer: asyncio.StreamWriter) -> None:
    """After the close handshake the server drops TCP first (RFC 6455 section 7.1.1); the handler's return closes it."""
    await bounded(writer.drain())


class ClientFrame(NamedTuple):
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    key: bytes
    wire_payload: bytes
    payload: bytes

    @property
    def close_code(self) -> Optional[int]:
        assert self.opcode == OP_CLOSE, self
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


async def read_client_frame(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> ClientFrame:
    async def read() -> ClientFrame:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await reader.readexactly(8))
        masked = bool(b1 & 0x80)
        key = await reader.readexactly(4) if masked else b""
        wire = await reader.readexactly(n) if n else b""
        payload = xor_mask(key, wire) if masked else wire
        return ClientFrame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, masked, key, wire, payload)

    return await asyncio.wait_for(read(), timeout)


def server_frame(opcode: int, payload: bytes = b"", **kwargs: Any) -> bytes:
    return build_frame(opcode, payload, mask=False, **kwargs)


# -- masking --------------------------------------------------------------------------


async def test_every_client_frame_is_masked_with_a_fresh_key(clients):
    frames: list[ClientFrame] = []
    request_seen: asyncio.Future[tuple[str, HTTPHeaders]] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line, headers = await read_request(reader)
        request_seen.set_result((request_line, headers))
        writer.write(switching(headers["Sec-WebSocket-Key"]))
        while True:
            frame = await read_client_frame(reader)
            frames.append(frame)
            if frame.opcode == OP_PING:
                writer.write(server_frame(OP_PONG, frame.payload))
            elif frame.opcode == OP_CLOSE:
                writer.write(server_frame(OP_CLOSE, frame.payload))
                await drain_and_drop(writer)
                return

    sent: list[tuple[int, bytes]] = [
        (OP_TEXT, b"hello"),
        (OP_TEXT, b"hello"),  # the same payload twice: the wire bytes must still differ
        (OP_BINARY, bytes(200)),  # 16-bit length
        (OP_BINARY, os.urandom(70_000)),  # 64-bit length
        (OP_TEXT, b""),
        (OP_TEXT, "ünïcode".encode()),
    ]
    async with RawServer(handle) as server:
        conn = await connect(clients, server.url("/path?q=1"))
        for opcode, payload in sent:
            if opcode == OP_TEXT:
                await bounded(conn.write_message(payload.decode()))
            else:
                await bounded(conn.write_message(payload, binary=True))
        await bounded(conn.ping(b"ping!"))
        conn.close(1000, "done")
        await bounded(conn.wait_closed())

    request_line, headers = request_seen.result()
    assert request_line == "GET /path?q=1 HTTP/1.1"
    assert headers["Host"] == f"127.0.0.1:{server.port}"
    assert headers["Upgrade"].lower() == "websocket"
    assert "upgrade" in headers["Connection"].lower()
    assert headers["Sec-WebSocket-Version"] == "13"
    assert len(base64.b64decode(headers["Sec-WebSocket-Key"], validate=True)) == 16
    assert "Sec-WebSocket-Extensions" not in headers

    assert [(f.opcode, f.payload) for f in frames] == sent + [
        (OP_PING, b"ping!"),
        (OP_CLOSE, close_payload(1000, b"done")),
    ]
    for frame in frames:
        assert frame.masked, f"unmasked client frame: {frame.opcode} {frame.payload[:20]!r}"
        assert len(frame.key) == 4
        assert frame.fin and frame.rsv == 0
    keys = [f.key for f in frames]
    assert len(set(keys)) == len(keys), f"a masking key was reused: {keys}"
    assert frames[0].wire_payload != frames[1].wire_payload
    assert conn.close_code == 1000


async def test_masking_keys_differ_between_connections(clients):
    keys: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        writer.write(switching(headers["Sec-WebSocket-Key"]))
        frame = await read_client_frame(reader)
        assert frame.masked
        keys.append(frame.key)
        close = await read_client_frame(reader)
        assert close.opcode == OP_CLOSE
        writer.write(server_frame(OP_CLOSE, close.payload))
        await drain_and_drop(writer)

    async with RawServer(handle) as server:
        for _ in range(5):
            conn = await connect(clients, server.url())
            await bounded(conn.write_message("same"))
            conn.close()
            await bounded(conn.wait_closed())
    assert len(set(keys)) == 5


# -- judging the server's answer --------------------------------------------------------


def refusing_server(response: bytes, *, then_close: bool = False) -> Handle:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response)
        await writer.drain()
        if then_close:
            return
        # The client must drop the connection after a refusal.
        await expect_eof(reader)

    return handle


async def test_403_gives_code_body_and_headers(clients):
    response = http_response(
        "HTTP/1.1 403 Forbidden",
        ["Content-Type: text/plain", "Content-Length: 4", "X-Reason: not-allowed"],
        b"nope",
    )
    async with RawServer(refusing_server(response)) as server:
        with pytest.raises(WebSocketHandshakeError) as info:
            await connect(clients, server.url())
    error = info.value
    assert error.code == 403
    assert error.body == b"nope"
    assert isinstance(error.headers, HTTPHeaders)
    assert error.headers["X-Reason"] == "not-allowed"
    assert error.headers["Content-Type"] == "text/plain"
    assert isinstance(error, tornado.httpclient.HTTPClientError)
    assert not isinstance(error, (WebSocketConnectError, OSError))
    assert "403" in str(error)


async def test_404_gives_code_404(clients):
    response = http_response("HTTP/1.1 404 Not Found", ["Content-Length: 9"], b"not found")
    async with RawServer(refusing_server(response)) as server:
        with pytest.raises(WebSocketHandshakeError) as info:
            await connect(clients, server.url())
    assert info.value.code == 404
    assert info.value.body == b"not found"


async def test_redirect_is_not_followed_when_told_not_to(clients):
    response = http_response("HTTP/1.1 302 Found", ["Location: ws://127.0.0.1:1/elsewhere", "Content-Length: 0"])
    async with RawServer(refusing_server(response)) as server:
        with pytest.raises(WebSocketHandshakeError) as info:
            await connect(clients, server.url(), follow_redirects=False)
    assert info.value.code == 302
    assert info.value.headers["Location"] == "ws://127.0.0.1:1/elsewhere"


async def test_refusal_without_body(clients):
    response = http_response("HTTP/1.1 401 Unauthorized", ["WWW-Authenticate: Bearer", "Content-Length: 0"])
    async with RawServer(refusing_server(response)) as server:
        with pytest.raises(WebSocketHandshakeError) as info:
            await connect(clients, server.url())
    assert info.value.code == 401
    assert info.value.body == b""
    assert info.value.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("framing", ["chunked", "until-close"])
async def test_refusal_body_without_content_length(clients, framing):
    if framing == "chunked":
        response = http_response("HTTP/1.1 403 Forbidden", ["Transfer-Encoding: chunked"], b"4\r\nnope\r\n0\r\n\r\n")
    else:
        response = http_response("HTTP/1.1 403 Forbidden", ["Connection: close"], b"nope")
    async with RawServer(refusing_server(response, then_close=framing == "until-close")) as server:
        with pytest.raises(WebSocketHandshakeError) as info:
            await connect(clients, server.url())
    assert info.value.code == 403
    assert info.value.body == b"nope"


async def test_refusal_body_is_capped_at_64_kib(clients):
    body = os.urandom(100_000)
    response = http_response("HTTP/1.1 403 Forbidden", [f"Content-Length: {len(body)}"], body)
    async with RawServer(refusing_server(response, then_close=True)) as server:
        with pytest.raises(WebSocketHandshakeError) as info:
            await connect(clients, server.url())
    assert info.value.code == 403
    assert info.value.body == body[: 64 * 1024]


async def test_stalled_refusal_body_gives_what_came_by_the_timeout(clients):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        # No Content-Length: the body ends with the connection, which this server keeps open.
        writer.write(http_response("HTTP/1.1 403 Forbidden", [], b"partial"))
        await expect_eof(reader)

    async with RawServer(handle) as server:
        with pytest.raises(WebSocketHandshakeError) as info:
            await connect(clients, server.url(), connect_timeout=0.5)
    assert info.value.code == 403
    assert not isinstance(info.value, OSError)
    assert info.value.body == b"partial"


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
async def test_bodyless_refusal_is_reported_at_once(clients, status):
    """204 and 304 never have a body (RFC 9112 section 6.3): no need to wait for the connection to end."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(http_response(f"HTTP/1.1 {status}", ["X-Status: given"]))
        await expect_eof(reader)  # keep-alive: the server keeps the connection open

    async with RawServer(handle) as server:
        started = time.monotonic()
        with pytest.raises(WebSocketHandshakeError) as info:
            await connect(clients, server.url(), connect_timeout=2)
        elapsed = time.monotonic() - started
    assert info.value.code == int(status.split()[0])
    assert info.value.body == b""
    assert info.value.headers["X-Status"] == "given"
    assert elapsed < 1, f"the error came after {elapsed:.1f} s"


def _wrong_accept(key: str) -> bytes:
    other = base64.b64encode(os.urandom(16)).decode()
    return http_response(
        "HTTP/1.1 101 Switching Protocols",
        ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Accept: {accept_key(other)}"],
    )


def _without(name: str) -> Callable[[str], bytes]:
    def make(key: str) -> bytes:
        lines = ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Accept: {accept_key(key)}"]
        return http_response("HTTP/1.1 101 Switching Protocols", [h for h in lines if not h.startswith(name + ":")])

    return make


BAD_101: list[Any] = [
    pytest.param(_wrong_accept, {}, id="wrong-accept"),
    pytest.param(lambda key: switching(key).replace(accept_key(key).encode(), b""), {}, id="empty-accept"),
    pytest.param(_without("Sec-WebSocket-Accept"), {}, id="no-accept"),
    pytest.param(lambda key: switching(key, f"Sec-WebSocket-Accept: {accept_key(key)}"), {}, id="accept-twice"),
    pytest.param(_without("Upgrade"), {}, id="no-upgrade"),
    pytest.param(_without("Connection"), {}, id="no-connection"),
    pytest.param(lambda key: switching(key).replace(b"Upgrade: websocket", b"Upgrade: h2c"), {}, id="upgrade-h2c"),
    pytest.param(
        lambda key: switching(key).replace(b"Connection: Upgrade", b"Connection: keep-alive"), {}, id="connection-keep"
    ),
    pytest.param(lambda key: switching(key, "Sec-WebSocket-Protocol: chat"), {}, id="subprotocol-none-offered"),
    pytest.param(
        lambda key: switching(key, "Sec-WebSocket-Protocol: c"), {"subprotocols": ["a", "b"]}, id="subprotocol-other"
    ),
    pytest.param(
        lambda key: switching(key, "Sec-WebSocket-Protocol: a, b"), {"subprotocols": ["a", "b"]}, id="subprotocol-two"
    ),
    pytest.param(
        lambda key: switching(key, "Sec-WebSocket-Extensions: permessage-deflate"), {}, id="extension-not-offered"
    ),
    pytest.param(
        lambda key: switching(key, "Sec-WebSocket-Extensions: x-webkit-deflate-frame"),
        {"compression_options": {}},
        id="other-extension",
    ),
    pytest.param(
        lambda key: switching(key, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"),
        {"compression_options": {}},
        id="deflate-bad-params",
    ),
    pytest.param(
        lambda key: switching(key, "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=15"),
        {"compression_options": {}},
        id="deflate-window-larger-than-offered",
    ),
    pytest.param(
        lambda key: switching(key, "Sec-WebSocket-Extensions: permessage-deflate, permessage-deflate"),
        {"compression_options": {}},
        id="deflate-twice",
    ),
]


@pytest.mark.parametrize("make_response, kwargs", BAD_101)
async def test_invalid_101_is_rejected(clients, make_response, kwargs):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        writer.write(make_response(headers["Sec-WebSocket-Key"]))
        await writer.drain()
        # The client must not send a frame; it drops the connection.
        assert await expect_eof(reader) == b""

    async with RawServer(handle) as server:
        with pytest.raises(WebSocketHandshakeError) as info:
            await connect(clients, server.url(), **kwargs)
    assert info.value.code == 101
    assert not isinstance(info.value, OSError)
    assert clients == []


async def test_valid_101_with_extra_headers_and_case_is_accepted(clients):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        key = headers["Sec-WebSocket-Key"]
        writer.write(
            http_response(
                "HTTP/1.1 101 Switching Protocols",
                [
                    "upgrade: WebSocket",
                    "connection: keep-alive, UPGRADE",
                    f"sec-websocket-accept: {accept_key(key)}",
                    "sec-websocket-protocol: b",
                    "Server: raw",
                ],
            )
        )
        writer.write(server_frame(OP_TEXT, b"welcome"))
        close = await read_client_frame(reader)
        writer.write(server_frame(OP_CLOSE, close.payload))
        await drain_and_drop(writer)

    async with RawServer(handle) as server:
        conn = await connect(clients, server.url(), subprotocols=["a", "b"])
        assert conn.selected_subprotocol == "b"
        assert conn.headers["Server"] == "raw"
        assert await bounded(conn.read_message()) == "welcome"
        conn.close()
        await bounded(conn.wait_closed())


async def test_silent_server_times_out(clients):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        # Never answer; the client gives up and closes.
        await expect_eof(reader)

    async with RawServer(handle) as server:
        started = time.monotonic()
        with pytest.raises(WebSocketTimeoutError) as info:
            await connect(clients, server.url(), connect_timeout=0.5)
        elapsed = time.monotonic() - started
    error = info.value
    assert isinstance(error, TimeoutError)
    assert isinstance(error, OSError)
    assert isinstance(error, WebSocketConnectError)
    assert isinstance(error, WebSocketHandshakeError)
    assert error.code == 599
    assert 0.4 <= elapsed < 3


async def test_server_that_never_reads_times_out(clients):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await expect_eof(reader)

    async with RawServer(handle) as server:
        with pytest.raises(WebSocketTimeoutError) as info:
            await connect(clients, server.url(), connect_timeout=0.5)
    assert info.value.code == 599


async def test_http_request_connect_timeout_is_used(clients):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await expect_eof(reader)

    async with RawServer(handle) as server:
        request = tornado.httpclient.HTTPRequest(server.url(), connect_timeout=0.3)
        with pytest.raises(WebSocketTimeoutError):
            await bounded(websocket_connect(request), 3)


async def test_refused_port_gives_connect_error(clients):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = sock.getsockname()[1]
        with pytest.raises(WebSocketConnectError) as info:
            await connect(clients, f"ws://127.0.0.1:{port}/ws")
    finally:
        sock.close()
    error = info.value
    assert isinstance(error, OSError)
    assert isinstance(error, WebSocketHandshakeError)
    assert not isinstance(error, WebSocketTimeoutError)
    assert error.code == 599
    assert f"127.0.0.1:{port}" in str(error)


async def test_server_dropping_the_connection_gives_connect_error(clients):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # then close without answering

    async with RawServer(handle) as server:
        with pytest.raises(WebSocketConnectError) as info:
            await connect(clients, server.url())
    assert info.value.code == 599


async def test_malformed_status_line_is_a_handshake_error(clients):
    async with RawServer(refusing_server(b"SPDY/9 banana\r\n\r\n")) as server:
        with pytest.raises(WebSocketHandshakeError):
            await connect(clients, server.url())


# -- the server breaking the protocol ---------------------------------------------------


async def test_masked_frame_from_server_closes_with_1002(clients):
    close_frames: list[ClientFrame] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        writer.write(switching(headers["Sec-WebSocket-Key"]))
        writer.write(build_frame(OP_TEXT, b"masked by the server", mask=True))
        close_frames.append(await read_client_frame(reader))
        # The client then drops (or half-closes) TCP without waiting for our close.
        assert await expect_eof(reader) == b""

    async with RawServer(handle) as server:
        conn = await connect(clients, server.url())
        assert await bounded(conn.read_message()) is None  # the masked message is not delivered
        await bounded(conn.wait_closed())
    (frame,) = close_frames
    assert frame.opcode == OP_CLOSE
    assert frame.masked
    assert frame.close_code == 1002
    assert conn.close_code is None  # the server never sent a close


async def test_reserved_bits_from_server_close_with_1002(clients):
    close_codes: list[Optional[int]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        writer.write(switching(headers["Sec-WebSocket-Key"]))
        writer.write(server_frame(OP_TEXT, b"compressed?", rsv=4))
        close_codes.append((await read_client_frame(reader)).close_code)
        await expect_eof(reader)

    async with RawServer(handle) as server:
        conn = await connect(clients, server.url())
        assert await bounded(conn.read_message()) is None
        await bounded(conn.wait_closed())
    assert close_codes == [1002]


async def test_client_answers_server_ping_with_masked_pong(clients):
    pongs: list[ClientFrame] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        writer.write(switching(headers["Sec-WebSocket-Key"]))
        writer.write(server_frame(OP_PING, b"are you there"))
        pongs.append(await read_client_frame(reader))
        writer.write(server_frame(OP_CLOSE, close_payload(1001, b"going away")))
        pongs.append(await read_client_frame(reader))
        await drain_and_drop(writer)

    async with RawServer(handle) as server:
        conn = await connect(clients, server.url())
        assert await bounded(conn.read_message()) is None
        await bounded(conn.wait_closed())
    assert pongs[0].opcode == OP_PONG and pongs[0].masked and pongs[0].payload == b"are you there"
    assert pongs[1].opcode == OP_CLOSE and pongs[1].masked and pongs[1].close_code == 1001
    assert conn.close_code == 1001
    assert conn.close_reason == "going away"


async def test_message_arriving_after_close_is_still_delivered(clients):
    """As with tornado.websocket: data frames may come until the server's own Close (RFC 6455 section 1.4)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        writer.write(switching(headers["Sec-WebSocket-Key"]))
        close = await read_client_frame(reader)
        assert close.opcode == OP_CLOSE
        # Still allowed: data frames until our own Close (RFC 6455 section 1.4).
        writer.write(server_frame(OP_TEXT, b"late reply") + server_frame(OP_CLOSE, close.payload))
        await drain_and_drop(writer)

    async with RawServer(handle) as server:
        conn = await connect(clients, server.url())
        conn.close(1000)
        message = await bounded(conn.read_message())
        await bounded(conn.wait_closed())
    assert conn.close_code == 1000
    assert message == "late reply"


async def test_tcp_drop_without_close_frame(clients):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        writer.write(switching(headers["Sec-WebSocket-Key"]) + server_frame(OP_TEXT, b"last words"))
        await drain_and_drop(writer)

    async with RawServer(handle) as server:
        conn = await connect(clients, server.url())
        assert await bounded(conn.read_message()) == "last words"
        assert await bounded(conn.read_message()) is None
        await bounded(conn.wait_closed())
    assert conn.close_code is None and conn.close_reason is None
    with pytest.raises(WebSocketClosedError):
        conn.write_message("nobody there")


async def test_keepalive_pings_reach_the_server(clients):
    pings: list[ClientFrame] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        writer.write(switching(headers["Sec-WebSocket-Key"]))
        while True:
            frame = await read_client_frame(reader)
            if frame.opcode == OP_PING:
                pings.append(frame)
                writer.write(server_frame(OP_PONG, frame.payload))
                if len(pings) == 3:
                    writer.write(server_frame(OP_CLOSE, close_payload(1000)))
            elif frame.opcode == OP_CLOSE:
                await drain_and_drop(writer)
                return

    async with RawServer(handle) as server:
        conn = await connect(clients, server.url(), ping_interval=0.05)
        assert await bounded(conn.read_message()) is None
        await bounded(conn.wait_closed())
    assert len(pings) == 3 and all(p.masked for p in pings)
    assert conn.close_code == 1000


async def test_keepalive_ping_timeout_drops_a_silent_server(clients):
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        writer.write(switching(headers["Sec-WebSocket-Key"]))
        while True:  # never answer a ping
            try:
                frame = await read_client_frame(reader)
            except asyncio.IncompleteReadError:
                return
            seen.append(frame.opcode)

    async with RawServer(handle) as server:
        conn = await connect(clients, server.url(), ping_interval=0.1, ping_timeout=0.2)
        assert await bounded(conn.read_message()) is None
        await bounded(conn.wait_closed())
    assert seen[0] == OP_PING
    assert conn.closed


# -- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


@pytest.fixture
def wss_url(harness, signal, tls):
    server_ctx, _ = tls
    app = tornado.web.Application([(r"/ws", Echo, {"signal": signal})])
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(app, ssl_options=server_ctx)
    server.add_sockets([sock])
    harness.servers.append(server)
    return f"wss://127.0.0.1:{port}/ws"


async def test_wss_round_trip_and_clean_close(wss_url, tls, clients, signal):
    _, client_ctx = tls
    conn = await connect(clients, wss_url, ssl_options=client_ctx)
    assert isinstance(conn.stream.socket, ssl.SSLSocket)  # the socket left the IOStream for our TLS transport
    await bounded(conn.write_message("over TLS"))
    assert await bounded(conn.read_message()) == "over TLS"
    big = os.urandom(MiB + 17)
    await bounded(conn.write_message(big, binary=True), 10)
    assert await bounded(conn.read_message(), 10) == big
    assert isinstance(await bounded(conn.ping()), float)
    conn.close(1000, "tls bye")
    await bounded(conn.wait_closed())
    assert (await signal.wait("close"))[0] == (1000, "tls bye")
    assert conn.close_code == 1000


async def test_wss_with_default_context_fails_verification(wss_url, clients):
    with pytest.raises(WebSocketConnectError) as info:
        await connect(clients, wss_url)
    assert isinstance(info.value, OSError)
    assert info.value.code == 599


async def test_wss_to_plain_http_server_fails(clients):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await bounded(reader.read(1))  # the ClientHello; answer it in plain HTTP
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await drain_and_drop(writer)

    async with RawServer(handle) as server:
        with pytest.raises(WebSocketConnectError) as info:
            await connect(clients, server.url().replace("ws://", "wss://"), connect_timeout=3)
    assert not isinstance(info.value, WebSocketTimeoutError)
    assert info.value.code == 599


async def test_wss_tls_handshake_timeout(clients):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await expect_eof(reader)  # accepts TCP, never speaks TLS

    async with RawServer(handle) as server:
        with pytest.raises(WebSocketTimeoutError) as info:
            await connect(clients, server.url().replace("ws://", "wss://"), connect_timeout=0.5)
    assert info.value.code == 599


async def test_wss_http_request_validate_cert_false(wss_url, clients):
    request = tornado.httpclient.HTTPRequest(wss_url, validate_cert=False)
    conn = await connect(clients, request)
    await bounded(conn.write_message("unverified"))
    assert await bounded(conn.read_message()) == "unverified"


# -- compression through the client ----------------------------------------------------


async def test_compression_round_trip_with_our_server(harness, clients, signal):
    harness.serve([(r"/ws", CompressedEcho, {"signal": signal})])
    conn = await connect(clients, harness.url(), compression_options={})
    extensions = conn.headers.get("Sec-WebSocket-Extensions", "")
    assert extensions.startswith("permessage-deflate")
    handler = (await signal.wait("open"))[0]
    assert "permessage-deflate" in handler.request.headers["Sec-WebSocket-Extensions"]
    messages: list[Any] = [
        "short",
        "compressible " * 1000,
        "ünïcödé ☃ " * 300,
        b"\x00" * 5000,
        os.urandom(3000),
        "",
        "x" * (2 * MiB),
    ]
    for message in messages:
        await bounded(conn.write_message(message, binary=isinstance(message, bytes)))
        assert await bounded(conn.read_message()) == message
    assert signal.values["message"] == messages
    conn.close()
    await bounded(conn.wait_closed())
    assert (await signal.wait("close"))[0] == (1000, None)


async def test_compression_offer_declined_by_server_runs_uncompressed(echo_url, clients):
    conn = await connect(clients, echo_url, compression_options={})
    assert "Sec-WebSocket-Extensions" not in conn.headers
    await bounded(conn.write_message("plain " * 100))
    assert await bounded(conn.read_message()) == "plain " * 100


async def test_compressed_conversation_with_context_takeover(harness, clients, signal):
    harness.serve([(r"/ws", Conversation, {"signal": signal})])
    conn = await connect(clients, harness.url(), compression_options={})
    extensions = conn.headers["Sec-WebSocket-Extensions"]
    assert extensions.startswith("permessage-deflate")
    assert "no_context_takeover" not in extensions
    for i in range(100):
        await bounded(conn.write_message(json.dumps({"n": i, "text": f"client message {i} " + COMMON})))
        reply = json.loads(await bounded(conn.read_message()))
        assert reply == {"reply": i, "text": f"server reply number {i} " + COMMON}
    assert [json.loads(m)["n"] for m in signal.values["message"]] == list(range(100))
    conn.close()
    await bounded(conn.wait_closed())
    assert (await signal.wait("close"))[0] == (1000, None)


async def test_client_compresses_on_the_wire(clients):
    """A raw server negotiates permessage-deflate and inflates what the client sends (RSV1 set)."""
    received: list[tuple[ClientFrame, bytes]] = []
    offers: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        offers.append(headers["Sec-WebSocket-Extensions"])
        writer.write(switching(headers["Sec-WebSocket-Key"], DEFLATE_ANSWER))
        inflate = zlib.decompressobj(-15)  # context takeover: one inflater for the whole connection
        deflate = zlib.compressobj(6, zlib.DEFLATED, -13)
        while True:
            frame = await read_client_frame(reader)
            if frame.opcode == OP_CLOSE:
                writer.write(server_frame(OP_CLOSE, frame.payload))
                await drain_and_drop(writer)
                return
            data = inflate.decompress(frame.payload + TAIL) if frame.rsv & 4 else frame.payload
            received.append((frame, data))
            reply = deflate.compress(b"reply: " + data) + deflate.flush(zlib.Z_SYNC_FLUSH)
            assert reply.endswith(TAIL)
            writer.write(server_frame(frame.opcode, reply[:-4], rsv=4))

    text = "a compressible sentence, repeated. " * 200
    async with RawServer(handle) as server:
        conn = await connect(clients, server.url(), compression_options={})
        for message in (text, text, "tiny"):
            await bounded(conn.write_message(message))
            assert await bounded(conn.read_message()) == "reply: " + message
        conn.close()
        await bounded(conn.wait_closed())

    assert offers[0].startswith("permessage-deflate")
    (first, first_data), (second, second_data), (third, third_data) = received
    assert first.rsv == 4 and first.masked
    assert first_data == second_data == text.encode()
    assert len(first.payload) < len(text) // 10
    # With context takeover the repeat is a back-reference to the previous message.
    assert len(second.payload) < len(first.payload)
    # Below the threshold a message goes uncompressed.
    assert third.rsv == 0 and third_data == b"tiny"


@functools.cache
def deflate_bomb(limit: int) -> tuple[bytes, int]:
    """Raw deflate data (as a permessage-deflate payload, tail stripped) of at most ``limit`` bytes of zeros.

    Returns the data and how much it inflates to (over 1 GiB). Built by
    repeating the compressor's steady-state output, which is what it would
    produce for more zeros; the total is checked by inflating it once.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -13, 9)
    z16, z1 = bytes(16 * MiB), bytes(MiB)
    first = compressor.compress(z16) + compressor.flush(zlib.Z_SYNC_FLUSH)
    step16 = compressor.compress(z16) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert compressor.compress(z16) + compressor.flush(zlib.Z_SYNC_FLUSH) == step16
    step1 = compressor.compress(z1) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert compressor.compress(z1) + compressor.flush(zlib.Z_SYNC_FLUSH) == step1
    data = first + step16 * 63
    inflated = 64 * 16 * MiB
    while len(data) + len(step1) - len(TAIL) <= limit:
        data += step1
        inflated += MiB
    assert data.endswith(TAIL)
    data = data[: -len(TAIL)]
    inflater = zlib.decompressobj(-13)
    total, rest = 0, data + TAIL
    while rest:
        total += len(inflater.decompress(rest, 64 * MiB))
        rest = inflater.unconsumed_tail
    assert total == inflated > 1024 * MiB
    return data, inflated


SERVER_LIMIT = MiB
# What the server lets through for one compressed frame before inflating (see Protocol._check_header).
COMPRESSED_WIRE_LIMIT = SERVER_LIMIT + SERVER_LIMIT // 1024 + 64


@pytest.mark.parametrize("sent", ["first-10KiB", "whole-message"])
async def test_deflate_bomb_is_stopped_at_the_limit(harness, signal, sent):
    harness.serve(
        [(r"/ws", CompressedEcho, {"signal": signal})],
        websocket_max_message_size=SERVER_LIMIT,
    )
    bomb, inflated = deflate_bomb(COMPRESSED_WIRE_LIMIT)
    assert inflated > 1024 * MiB and len(bomb) <= COMPRESSED_WIRE_LIMIT
    frame = build_frame(OP_BINARY, bomb, rsv=4)
    header_size = len(frame) - len(bomb)
    data = frame if sent == "whole-message" else frame[: header_size + 10 * 1024]
    # The first 10 KiB alone inflate to about ten times the limit.
    assert len(zlib.decompressobj(-13).decompress(bomb[: 10 * 1024])) > 8 * SERVER_LIMIT

    client = await harness.raw()
    response = await client.handshake(headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
    assert response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")

    tracemalloc.start()
    try:
        await client.send(data)
        close = await client.read_close()
        await client.expect_eof()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert close.close_code == 1009
    assert signal.count("message") == 0
    assert peak < SERVER_LIMIT + 7 * MiB, f"peak Python allocation {peak / MiB:.1f} MiB"


async def test_deflate_bomb_from_server_is_stopped_by_the_client(clients):
    closes: list[ClientFrame] = []
    limit = MiB
    bomb, _ = deflate_bomb(limit + limit // 1024 + 64)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        writer.write(switching(headers["Sec-WebSocket-Key"], DEFLATE_ANSWER))
        frame = server_frame(OP_BINARY, bomb, rsv=4)
        writer.write(frame[: len(frame) - len(bomb) + 10 * 1024])
        closes.append(await read_client_frame(reader))
        await expect_eof(reader)

    async with RawServer(handle) as server:
        conn = await connect(clients, server.url(), compression_options={}, max_message_size=limit)
        assert await bounded(conn.read_message()) is None
        await bounded(conn.wait_closed())
    assert closes[0].opcode == OP_CLOSE and closes[0].close_code == 1009


async def test_frames_sent_with_the_101_wait_until_the_caller_has_the_connection():
    """on_message_callback does not run before an awaited websocket_connect returned: an echo keeps its order.

    As Autobahn case 3.2: the 101, a text message and a frame with RSV2 set
    arrive in one TCP write. The text must be echoed before our Close (1002).
    """
    holder: list[Any] = []
    seen_without_connection: list[Any] = []

    def echo(message: Any) -> None:
        if message is None:
            return
        if not holder:
            seen_without_connection.append(message)
            return
        holder[0].write_message(message)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        bad = bytearray(server_frame(OP_TEXT, b"bad"))
        bad[0] |= 0x20  # RSV2: no extension gives it a meaning
        writer.write(switching(headers["Sec-WebSocket-Key"]) + server_frame(OP_TEXT, b"Hello") + bytes(bad))
        first = await read_client_frame(reader)
        second = await read_client_frame(reader)
        assert (first.opcode, first.payload) == (OP_TEXT, b"Hello"), first
        assert second.opcode == OP_CLOSE and second.close_code == 1002, second
        writer.write(server_frame(OP_CLOSE, struct.pack("!H", 1002)))
        await drain_and_drop(writer)

    async with RawServer(handle) as server:
        # Awaited directly: asyncio.wait_for (bounded) would add loop turns before we see the result.
        # The test's own timeout (pytest-timeout) bounds it.
        conn = await tornado_websocket.websocket_connect(server.url(), on_message_callback=echo)
        holder.append(conn)
        await bounded(conn.wait_closed())
    assert seen_without_connection == []
    assert conn.close_code is None  # we failed the connection (1002): the peer's answer is not read
