"""Test harness: a real Tornado HTTPServer on 127.0.0.1 and a raw-socket WebSocket client.

Every test runs on pytest-asyncio's event loop; the server runs on that same
loop (Tornado's IOLoop wraps the running asyncio loop), so tests can look at
server-side state directly. Every read is bounded by ``TIMEOUT`` so that a bug
fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
from typing import Any, NamedTuple, Optional

import pytest
import pytest_asyncio
import tornado.httpserver
import tornado.testing
import tornado.web
import websockets.asyncio.client
from tornado.httputil import HTTPHeaders

import tornado_websocket.handler
from tornado_websocket.handshake import accept_key
from tornado_websocket.protocol import Protocol

TIMEOUT = 5.0

#: ``TORNADO_WEBSOCKET_TEST_LOOP=uvloop`` runs every asyncio test on uvloop instead of asyncio's loop.
TEST_LOOP = os.environ.get("TORNADO_WEBSOCKET_TEST_LOOP", "asyncio")
if TEST_LOOP == "uvloop":
    import uvloop

    def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
        return {"uvloop": uvloop.new_event_loop}

elif TEST_LOOP != "asyncio":
    raise RuntimeError(f"TORNADO_WEBSOCKET_TEST_LOOP must be asyncio or uvloop, not {TEST_LOOP!r}")

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


async def bounded(awaitable: Any, timeout: float = TIMEOUT) -> Any:
    """Await ``awaitable`` for at most ``timeout`` seconds (a hang fails the test)."""
    return await asyncio.wait_for(awaitable, timeout)


# -- frames ------------------------------------------------------------------


def xor_mask(key: bytes, data: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    full = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(full, "big")).to_bytes(n, "big")


def build_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: Optional[int] = None,
    key: Optional[bytes] = None,
    include_payload: bool = True,
) -> bytes:
    """Encode a frame the way a client would (masked by default).

    ``rsv`` is the 3-bit RSV1..RSV3 value (4 = RSV1). ``length`` overrides the
    length written in the header; ``include_payload=False`` sends only the header.
    """
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    n = len(payload) if length is None else length
    mbit = 0x80 if mask else 0
    if n < 126:
        header = bytes((b0, mbit | n))
    elif n < 65536:
        header = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        header = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        key = key or os.urandom(4)
        header += key
        payload = xor_mask(key, payload)
    return header + payload if include_payload else header


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


class Frame(NamedTuple):
    fin: bool
    rsv: int
    opcode: int
    payload: bytes
    masked: bool

    @property
    def close_code(self) -> Optional[int]:
        assert self.opcode == OP_CLOSE, f"not a close frame: {self}"
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> bytes:
        return self.payload[2:]


class Response(NamedTuple):
    status: int
    reason: str
    headers: HTTPHeaders
    body: bytes


# -- the raw client ------------------------------------------------------------


class RawClient:
    """A WebSocket client that speaks raw bytes over ``asyncio.open_connection``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        self.reader = reader
        self.writer = writer
        self.port = port
        self.key = ""

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await bounded(asyncio.open_connection("127.0.0.1", port))
        return cls(reader, writer, port)

    # HTTP

    def upgrade_request(
        self,
        path: str = "/ws",
        *,
        method: str = "GET",
        headers: Optional[dict[str, Optional[str]]] = None,
        key: Optional[str] = None,
        extra_lines: tuple[str, ...] = (),
        http_version: str = "HTTP/1.1",
    ) -> bytes:
        """An upgrade request; a header given as ``None`` in ``headers`` is left out.

        ``extra_lines`` are raw header lines added as they are (e.g. a repeated header).
        """
        self.key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
        fields: dict[str, Optional[str]] = {
            "Host": f"127.0.0.1:{self.port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": self.key,
            "Sec-WebSocket-Version": "13",
        }
        for name, value in (headers or {}).items():
            fields[name] = value
        lines = [f"{method} {path} {http_version}"]
        lines += [f"{k}: {v}" for k, v in fields.items() if v is not None]
        lines += list(extra_lines)
        if method == "POST":
            lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def read_response(self) -> Response:
        head = await bounded(self.reader.readuntil(b"\r\n\r\n"))
        text = head.decode("latin-1")
        status_line, _, rest = text.partition("\r\n")
        version, status, reason = (status_line.split(" ", 2) + [""])[:3]
        assert version.startswith("HTTP/1."), status_line
        headers = HTTPHeaders.parse(rest)
        body = b""
        length = int(headers.get("Content-Length", "0"))
        if length:
            body = await bounded(self.reader.readexactly(length))
        return Response(int(status), reason, headers, body)

    async def request(self, path: str = "/ws", **kwargs: Any) -> Response:
        await self.send(self.upgrade_request(path, **kwargs))
        return await self.read_response()

    async def handshake(self, path: str = "/ws", **kwargs: Any) -> Response:
        response = await self.request(path, **kwargs)
        assert response.status == 101, response
        assert response.headers["Sec-WebSocket-Accept"] == accept_key(self.key)
        return response

    # frames

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await bounded(self.writer.drain())

    async def send_frame(self, opcode: int, payload: bytes = b"", **kwargs: Any) -> None:
        await self.send(build_frame(opcode, payload, **kwargs))

    async def send_text(self, text: str) -> None:
        await self.send_frame(OP_TEXT, text.encode("utf-8"))

    async def send_close(self, code: Optional[int] = 1000, reason: bytes = b"") -> None:
        await self.send_frame(OP_CLOSE, b"" if code is None else close_payload(code, reason))

    async def read_frame(self, timeout: float = TIMEOUT, rsv_allowed: int = 0) -> Frame:
        """The next frame; fails if the server masked it or set RSV bits beyond ``rsv_allowed`` (4: RSV1)."""

        async def read() -> Frame:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            masked = bool(b1 & 0x80)
            key = await self.reader.readexactly(4) if masked else b""
            payload = await self.reader.readexactly(n) if n else b""
            if masked:
                payload = xor_mask(key, payload)
            return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, payload, masked)

        frame = await asyncio.wait_for(read(), timeout)
        assert not frame.masked, "the server masked a frame"
        assert frame.rsv & ~rsv_allowed == 0, f"the server set RSV bits: {frame}"
        return frame

    async def read_message(self) -> tuple[int, bytes]:
        """Read one data message (reassembled); fails on a control frame."""
        first = await self.read_frame()
        assert first.opcode in (OP_TEXT, OP_BINARY), f"expected a data frame, got {first}"
        parts = [first.payload]
        frame = first
        while not frame.fin:
            frame = await self.read_frame()
            assert frame.opcode == OP_CONT, frame
            parts.append(frame.payload)
        return first.opcode, b"".join(parts)

    async def read_text(self) -> str:
        opcode, data = await self.read_message()
        assert opcode == OP_TEXT
        return data.decode("utf-8")

    async def read_close(self) -> Frame:
        frame = await self.read_frame()
        assert frame.opcode == OP_CLOSE, f"expected a close frame, got {frame}"
        return frame

    async def expect_eof(self, timeout: float = TIMEOUT) -> None:
        """The server closed (or half-closed) TCP: the next read gives EOF, no data."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except ConnectionResetError:
            return
        assert data == b"", f"expected EOF, got {data!r}"

    async def expect_close_then_eof(self, code: int) -> Frame:
        frame = await self.read_close()
        assert frame.close_code == code, f"expected close code {code}, got {frame.close_code} {frame.payload!r}"
        await self.expect_eof()
        return frame

    # ending

    def reset(self) -> None:
        """Drop the connection with a TCP RST (SO_LINGER 0)."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        if self.writer.transport.is_closing():
            return
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


# -- the harness ---------------------------------------------------------------


class Harness:
    """Starts servers and clients for one test and tears everything down after it."""

    def __init__(self) -> None:
        self.servers: list[tornado.httpserver.HTTPServer] = []
        self.raw_clients: list[RawClient] = []
        self.ws_clients: list[Any] = []
        self.port = 0

    def serve(self, handlers: Any, **settings: Any) -> int:
        """Serve ``handlers`` (a list or an Application) on a free port; return the port."""
        app = (
            handlers if isinstance(handlers, tornado.web.Application) else tornado.web.Application(handlers, **settings)
        )
        sock, port = tornado.testing.bind_unused_port()
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets([sock])
        self.servers.append(server)
        self.port = port
        return port

    def url(self, path: str = "/ws", port: Optional[int] = None) -> str:
        return f"ws://127.0.0.1:{port or self.port}{path}"

    async def raw(self, port: Optional[int] = None) -> RawClient:
        client = await RawClient.connect(port or self.port)
        self.raw_clients.append(client)
        return client

    async def raw_ws(self, path: str = "/ws", port: Optional[int] = None, **kwargs: Any) -> RawClient:
        """A raw client that has completed the opening handshake."""
        client = await self.raw(port)
        await client.handshake(path, **kwargs)
        return client

    async def ws(self, path: str = "/ws", port: Optional[int] = None, **kwargs: Any) -> Any:
        """A ``websockets`` client connection."""
        options: dict[str, Any] = {
            "open_timeout": TIMEOUT,
            "close_timeout": 2,
            "ping_interval": None,
            "compression": None,
            "max_size": None,
        }
        options.update(kwargs)
        conn = await websockets.asyncio.client.connect(self.url(path, port), **options)
        self.ws_clients.append(conn)
        return conn

    async def aclose(self) -> None:
        """Close every client, stop the servers and wait (bounded) until all tasks settled.

        Idempotent: a test may call it to reach a point where nothing is left running.
        """
        ws_clients, self.ws_clients = self.ws_clients, []
        raw_clients, self.raw_clients = self.raw_clients, []
        servers, self.servers = self.servers, []
        for conn in ws_clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.5)
        for client in raw_clients:
            await client.close()
        for server in servers:
            server.stop()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.close_all_connections(), 2)
        # Let the server-side connections see the EOFs and finish; cancel what is left.
        current = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if others:
            _, pending = await asyncio.wait(others, timeout=2)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)


@pytest_asyncio.fixture
async def harness():
    h = Harness()
    try:
        yield h
    finally:
        await h.aclose()


class Signal:
    """Counts occurrences of named events on the server side and lets a test await them."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.values: dict[str, list[Any]] = {}
        self._changed = asyncio.Event()

    def fire(self, name: str, value: Any = None) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        self.values.setdefault(name, []).append(value)
        self._changed.set()

    def count(self, name: str) -> int:
        return self.counts.get(name, 0)

    async def wait(self, name: str, n: int = 1, timeout: float = TIMEOUT) -> list[Any]:
        """Wait until ``name`` fired at least ``n`` times; return its values."""

        async def until() -> None:
            while self.count(name) < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)
        return self.values[name]


@pytest_asyncio.fixture
async def signal():
    return Signal()


class FeedSpy:
    """Counts the bytes the server's Protocol was fed, so a test can send a frame piece by piece.

    Waiting until the server has parsed each piece (instead of sleeping) makes
    every piece arrive in its own ``Protocol.feed`` call.
    """

    def __init__(self) -> None:
        self.fed = 0
        self.calls = 0
        self._changed = asyncio.Event()

    async def wait_fed(self, total: int, timeout: float = TIMEOUT) -> None:
        async def until() -> None:
            while self.fed < total:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)

    async def send_in_pieces(self, client: RawClient, data: bytes, cuts: list[int]) -> None:
        """Send ``data`` split at ``cuts``; each piece is parsed before the next is sent."""
        base = self.fed
        bounds = sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]
        start = 0
        for end in bounds:
            await client.send(data[start:end])
            await self.wait_fed(base + end)
            start = end


@pytest.fixture
def feed_spy(monkeypatch: pytest.MonkeyPatch) -> FeedSpy:
    """Make WebSocketHandler build a Protocol that reports every feed() (and every
    frame_buffer_filled()) to the returned spy."""
    spy = FeedSpy()

    class SpyProtocol(Protocol):
        def feed(self, data: bytes) -> list[Any]:
            events = super().feed(data)
            spy.fed += len(data)
            spy.calls += 1
            spy._changed.set()
            return events

        def frame_buffer_filled(self, n: int) -> list[Any]:
            # Bytes received straight into a large frame's buffer count as fed too.
            events = super().frame_buffer_filled(n)
            spy.fed += n
            spy.calls += 1
            spy._changed.set()
            return events

    monkeypatch.setattr(tornado_websocket.handler, "Protocol", SpyProtocol)
    return spy
