"""Hostile peers against a real server on 127.0.0.1.

Each test points one misbehaving peer at a real Tornado ``HTTPServer`` and
bounds what it may cost: the time until it is dropped, the server's memory
(``tracemalloc`` peak growth, the IOStream's buffered bytes) and what a
well-behaved client on the same server still gets. That client (a
:class:`Bystander`, a ``websockets`` client echoing on ``/echo``) runs in
parallel in every test and must keep getting its echoes, with no gap over
:data:`MAX_GAP` seconds.

Every wait is bounded. The only sleeps are pacing: the trickled handshake's
one byte per 0.2 s and the bystander's 20 ms between round trips; every
other wait is on an event (a server-side signal, a future, EOF), or a
bounded window in which something must *not* happen (a blocked write).

The tests marked ``xfail(strict=True, reason="BUG: ...")`` show bugs of the
package found here; each passes once its bug is fixed (and then fails as
XPASS, so the mark has to go).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import socket
import struct
import threading
import time
import tracemalloc
from typing import Any, Optional

import pytest
import pytest_asyncio
import tornado.httpserver
import tornado.testing
import tornado.web
import websockets.exceptions
from conftest import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    TIMEOUT,
    Frame,
    RawClient,
    bounded,
    build_frame,
)

import tornado_websocket
from tornado_websocket.connection import OPEN_CONNECTIONS
from tornado_websocket.errors import WebSocketClosedError
from tornado_websocket.handshake import accept_key

pytestmark = pytest.mark.asyncio

KiB = 1024
MiB = 1024 * KiB
#: Longest gap allowed between two echoes of the bystander while a hostile peer is served.
MAX_GAP = 1.0


# -- servers and handlers ------------------------------------------------------


def serve(
    harness: Any, handlers: list[Any], *, idle_connection_timeout: Optional[float] = None, **settings: Any
) -> tuple[tornado.httpserver.HTTPServer, int]:
    """Like ``harness.serve`` but with HTTPServer options; the harness still tears it down."""
    app = tornado.web.Application(handlers, **settings)
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(app, idle_connection_timeout=idle_connection_timeout)
    server.add_sockets([sock])
    harness.servers.append(server)
    harness.port = port
    return server, port


class Echo(tornado_websocket.WebSocketHandler):
    """The bystander's endpoint: echoes, and reports the pongs it gets (keepalive tests)."""

    def initialize(self, signal: Any) -> None:
        self.signal = signal

    def on_message(self, message: Any) -> None:
        self.write_message(message, binary=isinstance(message, bytes))

    def on_pong(self, data: bytes) -> None:
        self.signal.fire("echo-pong")


class Tracked(tornado_websocket.WebSocketHandler):
    """The hostile peer's endpoint: reports open, close (with the time) and counts pings."""

    def initialize(self, signal: Any, sndbuf: Optional[int] = None) -> None:
        self.signal = signal
        self.sndbuf = sndbuf
        self.pings = 0

    def open(self) -> None:
        assert self.ws_connection is not None
        if self.sndbuf is not None:
            # A small kernel send buffer makes "the peer does not read" show in our write buffer at once.
            self.ws_connection.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        self.opened_at = time.monotonic()
        self.signal.fire("open", self)

    def on_message(self, message: Any) -> None:
        self.write_message(message, binary=isinstance(message, bytes))

    def on_ping(self, data: bytes) -> None:
        self.pings += 1
        if self.pings % 1000 == 0:
            self.signal.fire("ping-1000", self.pings)

    def on_close(self) -> None:
        self.signal.fire("close", (self, time.monotonic()))


MESSAGE_SIZE = 64 * KiB
#: Header of a server frame with a 64 KiB payload (64-bit length form).
MESSAGE_HEADER = 10


def nth_payload(i: int) -> bytes:
    """The ``i``-th 64 KiB message, freshly allocated (so unbounded buffering would show in tracemalloc)."""
    return bytes((i % 251,)) * MESSAGE_SIZE


class Writer(Tracked):
    """Writes 64 KiB binary messages in a loop from ``open()``.

    ``awaited``: each ``await write_message()`` before the next (the flow
    control the docs ask for). Otherwise fire-and-forget: write, yield to the
    loop, write again. Records the largest IOStream write buffer seen after
    a write, and the last few futures it did not await.
    """

    awaited = True
    LIMIT_MESSAGES = 2000  # 125 MiB: a bound on the loop should the write-buffer limit never act

    def open(self) -> None:
        super().open()
        self.written = 0
        self.max_buffered = 0
        self.unawaited: list[asyncio.Future[None]] = []
        self.error: Optional[BaseException] = None
        self.task = asyncio.ensure_future(self._write_loop())

    def _note_buffer(self) -> None:
        connection = self.ws_connection
        if connection is not None:
            self.max_buffered = max(self.max_buffered, connection.write_buffer_size)

    async def _write_loop(self) -> None:
        try:
            for i in range(self.LIMIT_MESSAGES):
                try:
                    future = self.write_message(nth_payload(i), binary=True)
                except WebSocketClosedError:
                    return
                self.written += 1
                self._note_buffer()
                if self.awaited:
                    if not future.done():
                        self.signal.fire("blocked", future)
                    try:
                        await future
                    except WebSocketClosedError:
                        return
                else:
                    self.unawaited.append(future)
                    del self.unawaited[:-4]  # keep the last few: they must fail, not hang
                    await asyncio.sleep(0)  # yield to the loop (no flow control)
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.error = exc
            raise


class AwaitingWriter(Writer):
    awaited = True


class FireAndForgetWriter(Writer):
    awaited = False


def app_handlers(signal: Any, **hostile: Any) -> list[Any]:
    return [
        (r"/echo", Echo, {"signal": signal}),
        (r"/ws", Tracked, {"signal": signal, **hostile}),
        (r"/awaiting", AwaitingWriter, {"signal": signal, **hostile}),
        (r"/fire-and-forget", FireAndForgetWriter, {"signal": signal, **hostile}),
    ]


# -- the well-behaved client ---------------------------------------------------------


class Bystander:
    """A ``websockets`` client echoing on ``/echo`` every 20 ms until stopped.

    :meth:`finish` stops it and asserts it kept getting echoes: no error,
    every echo right, no gap over :data:`MAX_GAP` between two echoes (nor
    from the last one to the end), and a last round trip that works.
    """

    PACE = 0.02  # seconds between round trips: pacing, not synchronisation

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.stamps: list[float] = []
        self._stop = asyncio.Event()
        self._task: Optional[asyncio.Task[None]] = None
        self._first = asyncio.Event()

    @classmethod
    async def start(cls, harness: Any, port: int) -> Bystander:
        bystander = cls(await harness.ws("/echo", port=port))
        bystander._task = asyncio.ensure_future(bystander._run())
        bystander._task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a failed test's teardown
        await bounded(bystander._first.wait())
        return bystander

    async def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            message = f"bystander {i}"
            await self.conn.send(message)
            reply = await asyncio.wait_for(self.conn.recv(), MAX_GAP * 2)
            assert reply == message, (reply, message)
            self.stamps.append(time.monotonic())
            self._first.set()
            i += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.PACE)

    @property
    def echoes(self) -> int:
        return len(self.stamps)

    async def finish(self, since: int = 0) -> None:
        """Stop; assert the echoes kept coming (``since``: echoes before the hostile phase)."""
        end = time.monotonic()
        self._stop.set()
        assert self._task is not None
        await bounded(self._task)  # re-raises a failed or timed-out round trip
        stamps = self.stamps[max(since - 1, 0) :]  # from the last echo before the hostile phase
        assert stamps, "the bystander never got an echo"
        gaps = [b - a for a, b in zip(stamps, stamps[1:])] + [end - stamps[-1]]
        assert max(gaps) < MAX_GAP, f"the bystander waited {max(gaps):.3f} s for an echo"
        await self.conn.send("last")
        assert await asyncio.wait_for(self.conn.recv(), MAX_GAP) == "last"


# -- helpers ---------------------------------------------------------------------------


async def raw_with_rcvbuf(harness: Any, port: int, rcvbuf: int) -> RawClient:
    """A raw client whose socket has a small receive buffer (set before connecting)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await bounded(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)))
    reader, writer = await bounded(asyncio.open_connection(sock=sock))
    client = RawClient(reader, writer, port)
    harness.raw_clients.append(client)
    return client


def parse_server_frames(buf: bytearray) -> list[Frame]:
    """Take every complete (unmasked) server frame off the front of ``buf``."""
    frames = []
    pos = 0
    while len(buf) - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        assert not b1 & 0x80, "the server masked a frame"
        n = b1 & 0x7F
        start = pos + 2
        if n == 126:
            if len(buf) - pos < 4:
                break
            (n,) = struct.unpack_from("!H", buf, pos + 2)
            start = pos + 4
        elif n == 127:
            if len(buf) - pos < 10:
                break
            (n,) = struct.unpack_from("!Q", buf, pos + 2)
            start = pos + 10
        if len(buf) < start + n:
            break
        frames.append(Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, bytes(buf[start : start + n]), False))
        pos = start + n
    del buf[:pos]
    return frames


async def read_until_eof(client: RawClient, timeout: float = TIMEOUT) -> tuple[list[Frame], bool]:
    """Read frames until the server ends TCP; return them and whether it was a reset."""
    buf = bytearray()
    frames: list[Frame] = []
    reset = False

    async def read() -> None:
        nonlocal reset
        while True:
            try:
                data = await client.reader.read(256 * KiB)
            except ConnectionResetError:
                reset = True
                return
            if not data:
                return
            buf.extend(data)
            frames.extend(parse_server_frames(buf))

    await asyncio.wait_for(read(), timeout)
    return frames, reset


class MemoryWatch:
    """tracemalloc around a block: ``growth`` is the peak minus what was traced at the start."""

    def __enter__(self) -> MemoryWatch:
        tracemalloc.start()
        self.base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        self.growth = 0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.growth = tracemalloc.get_traced_memory()[1] - self.base
        tracemalloc.stop()


async def wait_for_close_of(signal: Any, handler: Any, timeout: float = TIMEOUT) -> float:
    """Wait until ``handler.on_close`` ran; return when it ran (monotonic)."""

    async def until() -> float:
        while True:
            for owner, at in signal.values.get("close", []):
                if owner is handler:
                    return float(at)
            signal._changed.clear()
            await signal._changed.wait()

    return await asyncio.wait_for(until(), timeout)


# -- 1. a handshake trickled one byte per 0.2 s ----------------------------------------------

HEADER_TIMEOUT = 1.0
TRICKLE = 0.2


async def test_trickled_handshake_is_dropped_after_the_header_timeout(harness, signal):
    _, port = serve(harness, app_handlers(signal), idle_connection_timeout=HEADER_TIMEOUT)
    bystander = await Bystander.start(harness, port)
    before = bystander.echoes

    client = await harness.raw(port)
    connected = time.monotonic()
    request = client.upgrade_request("/ws")
    ended = asyncio.ensure_future(client.reader.read(65536))
    sent = 0
    while not ended.done() and sent < len(request) and time.monotonic() - connected < HEADER_TIMEOUT + 3:
        client.writer.write(request[sent : sent + 1])
        sent += 1
        await asyncio.wait([ended], timeout=TRICKLE)  # the deliberate pacing; ends early on EOF
    assert ended.done(), f"still connected {time.monotonic() - connected:.1f} s into a trickled handshake"
    elapsed = time.monotonic() - connected
    try:
        data = ended.result()
    except ConnectionResetError:
        data = b""
    assert data == b"", f"the server answered a request it never fully got: {data!r}"
    assert sent < len(request) // 2, f"{sent} of {len(request)} bytes were sent before the drop"
    assert HEADER_TIMEOUT - 0.1 <= elapsed < HEADER_TIMEOUT + 0.5, f"dropped after {elapsed:.2f} s"
    assert signal.count("open") == 0

    # The server still serves others: the bystander never stalled, and a new handshake works.
    await bystander.finish(before)
    fresh = await harness.raw_ws("/ws", port=port)
    await fresh.send_text("after")
    assert await fresh.read_text() == "after"


# -- 2. a peer that never reads while the server writes -------------------------------------

WRITE_LIMIT = 1 * MiB


async def test_awaited_write_message_blocks_while_the_peer_does_not_read(harness, signal):
    _, port = serve(harness, app_handlers(signal), websocket_max_write_buffer_size=WRITE_LIMIT)
    bystander = await Bystander.start(harness, port)
    before = bystander.echoes

    client = await harness.raw_ws("/awaiting", port=port)  # ... and does not read
    (handler,) = await signal.wait("open")
    # The loop runs until the kernel's buffers are full; then one write stays pending for good.
    await signal.wait("blocked")
    for _ in range(50):
        seen = signal.count("blocked")
        blocked = signal.values["blocked"][-1]
        try:
            await asyncio.wait_for(asyncio.shield(blocked), 0.5)
        except asyncio.TimeoutError:
            break  # pending for 0.5 s with the peer not reading: blocked
        await signal.wait("blocked", seen + 1)  # the kernel took more; wait for the next pending write
    else:  # pragma: no cover
        pytest.fail("write_message() never stayed blocked against a peer that does not read")
    assert not blocked.done()
    written = handler.written
    assert signal.count("close") == 0, "the server dropped a peer whose writer awaited write_message()"
    # Flow control held: one message at most waits in the write buffer, well under the limit.
    assert handler.max_buffered <= MESSAGE_HEADER + MESSAGE_SIZE <= WRITE_LIMIT, handler.max_buffered
    assert handler.ws_connection.write_buffer_size <= MESSAGE_HEADER + MESSAGE_SIZE

    # Once the peer reads, the blocked write completes and every message arrives whole, in order.
    for i in range(written + 3):
        opcode, data = await client.read_message()
        assert opcode == OP_BINARY and data == nth_payload(i), f"message {i} differs"
    await bounded(asyncio.shield(blocked))
    assert handler.written > written
    await bystander.finish(before)

    # Dropping the reader ends the writer: its pending write fails instead of hanging.
    client.reset()
    await wait_for_close_of(signal, handler)
    await bounded(handler.task)
    assert handler.error is None


async def test_fire_and_forget_writes_past_the_limit_drop_the_peer(harness, signal, caplog):
    caplog.set_level(logging.DEBUG, logger="tornado.general")  # a peer's misbehaviour logs at DEBUG only
    _, port = serve(harness, app_handlers(signal), websocket_max_write_buffer_size=WRITE_LIMIT)
    bystander = await Bystander.start(harness, port)
    before = bystander.echoes

    with MemoryWatch() as memory:
        client = await raw_with_rcvbuf(harness, port, 16 * KiB)
        await client.handshake("/fire-and-forget")  # ... and never reads
        (handler,) = await signal.wait("open")
        closed_at = await wait_for_close_of(signal, handler, timeout=10)
    assert closed_at - handler.opened_at < 5.0
    await bounded(handler.task)
    assert handler.error is None

    # Dropped by the limit, with the buffer never over the limit plus the message that crossed it.
    assert WRITE_LIMIT < handler.max_buffered <= WRITE_LIMIT + MESSAGE_HEADER + MESSAGE_SIZE, handler.max_buffered
    not_reading = [r for r in caplog.records if "not reading" in r.getMessage()]
    assert len(not_reading) == 1, [r.getMessage() for r in caplog.records]
    # ... and memory with it: no copy of the unsent data beyond that.
    assert memory.growth < WRITE_LIMIT + 8 * MESSAGE_SIZE + 1 * MiB, f"peak grew {memory.growth / MiB:.2f} MiB"
    # The writes it never awaited failed; none is left pending forever.
    assert handler.unawaited
    for future in handler.unawaited:
        with pytest.raises(WebSocketClosedError):
            await bounded(future)
    await bystander.finish(before)


# -- 3. a frame header announcing 2^62 bytes ----------------------------------------------------


async def test_frame_of_2_to_62_bytes_gets_1009_before_any_payload(harness, signal):
    _, port = serve(harness, app_handlers(signal), websocket_max_message_size=1 * MiB)
    bystander = await Bystander.start(harness, port)
    before = bystander.echoes
    client = await harness.raw_ws("/ws", port=port)
    (handler,) = await signal.wait("open")

    header = build_frame(OP_BINARY, length=1 << 62, include_payload=False)
    assert header[1] == 0x80 | 127 and header[2:10] == bytes.fromhex("4000000000000000") and len(header) == 14
    with MemoryWatch() as memory:
        sent = time.monotonic()
        await client.send(header)
        close = await client.read_frame(timeout=1.0)
        answered = time.monotonic() - sent
        await client.expect_eof()
        await client.close()  # the server half-closed and waits for our FIN
        await wait_for_close_of(signal, handler)
    assert close.opcode == OP_CLOSE and close.close_code == 1009, close
    assert answered < 0.5, f"the 1009 took {answered:.2f} s"
    assert memory.growth < 1 * MiB, f"peak grew {memory.growth / MiB:.2f} MiB"
    await bystander.finish(before)


# -- 4. a flood of pings, pongs left unread ------------------------------------------------------

PINGS = 20_000
PING_PAYLOAD = 125
FLOOD_WRITE = 64 * KiB


def ping_payload(i: int) -> bytes:
    return struct.pack("!I", i) + bytes((i % 256,)) * (PING_PAYLOAD - 4)


class SockClient:
    """A client on a bare non-blocking socket: nothing reads it until the test calls :meth:`recv_frames`.

    (An asyncio stream would read up to 128 KiB ahead, and lose what it read
    if the server then resets the connection.)
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()

    @classmethod
    async def connect(cls, port: int, rcvbuf: int, path: str = "/ws") -> SockClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        client = cls(sock)
        await bounded(client.loop.sock_connect(sock, ("127.0.0.1", port)))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await bounded(client.loop.sock_sendall(sock, request.encode()))
        while b"\r\n\r\n" not in client.buf:
            data = await bounded(client.loop.sock_recv(sock, 4096))
            assert data, "EOF during the handshake"
            client.buf.extend(data)
        head, _, rest = bytes(client.buf).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ") and accept_key(key).encode() in head, head
        client.buf = bytearray(rest)
        return client

    async def send(self, data: bytes) -> None:
        await bounded(self.loop.sock_sendall(self.sock, data))

    async def recv_frames(self, count: Optional[int] = None, timeout: float = TIMEOUT) -> tuple[list[Frame], bool]:
        """Read ``count`` frames (or until EOF/reset); return them and whether TCP ended."""
        frames = parse_server_frames(self.buf)

        async def read() -> bool:
            while count is None or len(frames) < count:
                try:
                    data = await self.loop.sock_recv(self.sock, 256 * KiB)
                except ConnectionResetError:
                    return True
                if not data:
                    return True
                self.buf.extend(data)
                frames.extend(parse_server_frames(self.buf))
            return False

        ended = await asyncio.wait_for(read(), timeout)
        return frames, ended

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    "limit, expect_drop",
    [(None, False), (64 * KiB, True)],
    ids=["default-limit-stays-usable", "64KiB-limit-drops"],
)
async def test_ping_flood_pongs_every_ping_in_order_within_the_write_limit(harness, signal, limit, expect_drop):
    """20,000 pings (2.6 MB) written in 64 KiB writes while not reading the pongs (2.5 MB).

    Both ends have small kernel buffers, so the unread pongs wait in the
    server's IOStream. Our server answers every ping with its own pong, in
    order (no coalescing), and the write-buffer limit is what bounds the
    pongs held: under the default 16 MiB the connection stays usable and all
    20,000 pongs arrive; with 64 KiB the peer is dropped early, and the pongs
    it did get are a prefix, in order.
    """
    settings = {} if limit is None else {"websocket_max_write_buffer_size": limit}
    _, port = serve(harness, app_handlers(signal, sndbuf=16 * KiB), **settings)
    bystander = await Bystander.start(harness, port)
    before = bystander.echoes
    flood = b"".join(build_frame(OP_PING, ping_payload(i)) for i in range(PINGS))
    pong_bytes = PINGS * (2 + PING_PAYLOAD)

    client = await SockClient.connect(port, rcvbuf=16 * KiB)
    try:
        (handler,) = await signal.wait("open")
        with MemoryWatch() as memory:
            refused = False
            for start in range(0, len(flood), FLOOD_WRITE):
                try:
                    await client.send(flood[start : start + FLOOD_WRITE])
                except (ConnectionError, asyncio.TimeoutError):
                    refused = True
                    break
            if expect_drop:
                await wait_for_close_of(signal, handler, timeout=10)
            else:
                await signal.wait("ping-1000", PINGS // 1000, timeout=20)
                held = handler.ws_connection.write_buffer_size
        del flood

        if expect_drop:
            frames, ended = await client.recv_frames()
            assert ended
            assert all(f.opcode == OP_PONG for f in frames), {f.opcode for f in frames}
            assert [f.payload for f in frames] == [ping_payload(i) for i in range(len(frames))]
            # Dropped early: it stopped reading the flood once the pongs it held passed 64 KiB.
            assert len(frames) <= handler.pings < PINGS // 4, (len(frames), handler.pings)
            assert memory.growth < 2 * MiB, f"peak grew {memory.growth / MiB:.2f} MiB"
        else:
            assert not refused and signal.count("close") == 0
            assert handler.pings == PINGS
            # Most pongs wait in the IOStream (the kernel buffers are small), well under the 16 MiB limit.
            assert pong_bytes // 2 < held <= pong_bytes, held
            # Beyond the pongs' bytes: the flood's read buffers, and for each write made while the
            # socket was full a queued view and its future (~600 B; ~1,500 writes here): 3.9-4.4 MiB seen.
            assert memory.growth < pong_bytes + 3 * MiB, f"peak grew {memory.growth / MiB:.2f} MiB"
            # Now read: every pong, right payload, in order; then the connection still echoes.
            frames, ended = await client.recv_frames(PINGS, timeout=20)
            assert not ended and len(frames) == PINGS and not client.buf
            assert all(f.opcode == OP_PONG for f in frames)
            assert [f.payload for f in frames] == [ping_payload(i) for i in range(PINGS)]
            await client.send(build_frame(OP_TEXT, b"still there?"))
            (echo,), _ = await client.recv_frames(1)
            assert (echo.opcode, echo.payload) == (OP_TEXT, b"still there?")
    finally:
        client.close()
    await bystander.finish(before)


# -- 5. a peer that vanishes without a FIN ---------------------------------------------------------

PING_INTERVAL = 0.2
PING_TIMEOUT = 0.2


async def test_vanished_peer_is_dropped_by_the_keepalive_ping_timeout(harness, signal):
    _, port = serve(
        harness, app_handlers(signal), websocket_ping_interval=PING_INTERVAL, websocket_ping_timeout=PING_TIMEOUT
    )
    bystander = await Bystander.start(harness, port)
    before = bystander.echoes
    # Handshake, then silence: it neither reads nor answers a ping, and sends no FIN.
    client = await harness.raw_ws("/ws", port=port)
    (handler,) = await signal.wait("open")
    closed_at = await wait_for_close_of(signal, handler, timeout=5)
    detected = closed_at - handler.opened_at
    assert PING_INTERVAL + PING_TIMEOUT - 0.05 <= detected < 2.0, f"on_close after {detected:.2f} s"
    assert handler.close_code is None

    # What it would have read: the unanswered ping(s), then Close 1011, then the end of TCP.
    frames, _ = await read_until_eof(client)
    assert frames and frames[-1].opcode == OP_CLOSE, frames
    assert frames[-1].close_code == 1011, frames[-1]
    assert all(f.opcode == OP_PING for f in frames[:-1]) and frames[:-1], frames

    # The bystander (whose client answers pings) stays through several more ping rounds.
    await signal.wait("echo-pong", signal.count("echo-pong") + 5)
    await bystander.finish(before)


# -- 6. peer misbehaviour is not logged as an error ---------------------------------------------------

VIOLATIONS = {
    "unmasked": (build_frame(OP_TEXT, b"hello", mask=False), 1002),
    "bad-utf8": (build_frame(OP_TEXT, b"ok \xff\xfe bad"), 1007),
    "reserved-data-opcode": (build_frame(0x3, b"x"), 1002),
    "reserved-control-opcode": (build_frame(0xB, b"x"), 1002),
    "oversized-control": (build_frame(OP_PING, b"x" * 126), 1002),
    "length-2^62": (build_frame(OP_BINARY, length=1 << 62, include_payload=False), 1009),
    "length-top-bit": (build_frame(OP_BINARY, length=1 << 63, include_payload=False), 1002),
}
LOGGERS = ("tornado", "tornado_websocket", "asyncio")


@pytest.mark.parametrize("violation", list(VIOLATIONS))
async def test_peer_misbehaviour_is_never_logged_as_an_error(harness, signal, caplog, violation):
    caplog.set_level(logging.DEBUG)
    data, code = VIOLATIONS[violation]
    _, port = serve(harness, app_handlers(signal))
    bystander = await Bystander.start(harness, port)
    before = bystander.echoes
    client = await harness.raw_ws("/ws", port=port)
    (handler,) = await signal.wait("open")
    caplog.clear()

    await client.send(data)
    await client.expect_close_then_eof(code)
    await client.close()  # the server half-closed and waits for our FIN
    await wait_for_close_of(signal, handler)
    await bystander.finish(before)

    ours = [r for r in caplog.records if r.name.split(".")[0] in LOGGERS]
    shown = [f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], shown
    assert not [r for r in ours if r.exc_info or "Traceback" in r.getMessage()], shown
    assert "Traceback" not in caplog.text
    mentions = [r for r in ours if re.search(rf"\b{code}\b", r.getMessage())]
    assert len(mentions) <= 1, shown


# -- 7. graceful shutdown --------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def own_connections_only():
    """Set aside, for one shutdown test, the entries of the process-wide OPEN_CONNECTIONS that are not ours.

    Other tests leave entries behind (connections of event loops closed under
    them, and dead connections; see the two xfail tests below), and
    ``shutdown()`` acts on every entry. They are put back afterwards.
    """
    loop = asyncio.get_running_loop()
    foreign = {c for c in OPEN_CONNECTIONS if c._aloop is not loop or c.closed}
    OPEN_CONNECTIONS.difference_update(foreign)
    try:
        yield foreign
    finally:
        OPEN_CONNECTIONS.update(foreign)


async def _our_close_code(conn: Any) -> Optional[int]:
    while (await conn.read_message()) is not None:
        pass
    return conn.close_code


async def _websockets_close_code(conn: Any) -> Optional[int]:
    with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
        while True:
            await conn.recv()
    return info.value.rcvd.code if info.value.rcvd is not None else None


async def _connect_three(harness: Any, signal: Any, port: int, raw_third: bool) -> tuple[list[Any], Any]:
    url = harness.url("/ws", port)
    ours = await bounded(tornado_websocket.websocket_connect(url))
    theirs = await harness.ws("/ws", port=port)
    if raw_third:
        third: Any = await harness.raw_ws("/ws", port=port)
    else:
        third = await bounded(tornado_websocket.websocket_connect(url))
    handlers = await signal.wait("open", 3)
    # All three are really up: each gets an echo.
    await bounded(ours.write_message("a"))
    assert await bounded(ours.read_message()) == "a"
    await theirs.send("b")
    assert await bounded(theirs.recv()) == "b"
    if raw_third:
        await third.send_text("c")
        assert await third.read_text() == "c"
    else:
        await bounded(third.write_message("c"))
        assert await bounded(third.read_message()) == "c"
    return [ours, theirs, third], handlers


async def _assert_refused(port: int) -> None:
    with pytest.raises(OSError):
        _, writer = await bounded(asyncio.open_connection("127.0.0.1", port))
        writer.close()


async def test_shutdown_closes_every_client_with_1001_and_stops_accepting(harness, signal, own_connections_only):
    server, port = serve(harness, app_handlers(signal))
    (ours, theirs, third), handlers = await _connect_three(harness, signal, port, raw_third=False)
    expected = [c for c in OPEN_CONNECTIONS if not c.protocol.is_client]
    assert {h.ws_connection for h in handlers} <= set(expected)

    codes = [asyncio.ensure_future(_our_close_code(ours)), asyncio.ensure_future(_websockets_close_code(theirs))]
    codes.append(asyncio.ensure_future(_our_close_code(third)))
    started = time.monotonic()
    closed = await tornado_websocket.shutdown(server, timeout=2)  # bounded by its timeout (and pytest-timeout)
    took = time.monotonic() - started

    assert closed == len(expected)
    assert took < 1.0, f"shutdown took {took:.2f} s though every client answered"
    assert signal.count("close") == 3, "on_close did not run for every connection"
    assert [h.close_code for h in handlers] == [1001] * 3
    assert await bounded(asyncio.gather(*codes)) == [1001, 1001, 1001]
    await _assert_refused(port)


async def test_shutdown_returns_after_the_timeout_when_a_client_ignores_the_close(
    harness, signal, own_connections_only
):
    server, port = serve(harness, app_handlers(signal))
    (ours, theirs, raw), handlers = await _connect_three(harness, signal, port, raw_third=True)
    codes = [asyncio.ensure_future(_our_close_code(ours)), asyncio.ensure_future(_websockets_close_code(theirs))]

    started = time.monotonic()
    await tornado_websocket.shutdown(server, timeout=2)  # bounded by its timeout (and pytest-timeout)
    took = time.monotonic() - started

    assert 1.9 <= took < 3.0, f"shutdown returned after {took:.2f} s"
    assert await bounded(asyncio.gather(*codes)) == [1001, 1001]
    # The raw client got the Close, never answered it, and was dropped at the timeout.
    close = await raw.read_close()
    assert close.close_code == 1001
    await raw.expect_eof()
    await _assert_refused(port)
    # on_close ran for all three, the dropped one included (see the xfail below for when).
    await signal.wait("close", 3, timeout=1)
    assert sorted(h.close_code or 0 for h in handlers) == [0, 1001, 1001]


async def test_shutdown_has_run_on_close_of_the_connections_it_dropped_when_it_returns(
    harness, signal, own_connections_only
):
    server, port = serve(harness, app_handlers(signal))
    (ours, theirs, raw), handlers = await _connect_three(harness, signal, port, raw_third=True)
    silent = handlers[2].ws_connection
    await tornado_websocket.shutdown(server, timeout=0.5)
    at_return = (signal.count("close"), silent.closed, silent in OPEN_CONNECTIONS)
    await signal.wait("close", 3, timeout=2)  # it does run, one loop iteration later
    assert at_return == (3, True, False), f"(on_close runs, closed, still in OPEN_CONNECTIONS) = {at_return}"


class GatedOpen(Tracked):
    """``open()`` waits for the test's gate; a peer may vanish meanwhile."""

    def initialize(self, signal: Any, gate: asyncio.Event) -> None:
        super().initialize(signal)
        self.gate = gate

    async def open(self) -> None:
        super().open()
        await self.gate.wait()
        self.signal.fire("open-returned", self)  # get() calls connection.start() right after, in this same step


async def test_peer_vanishing_during_async_open_leaves_no_open_connection_behind(harness, signal, own_connections_only):
    gate = asyncio.Event()
    server, port = serve(harness, [(r"/ws", GatedOpen, {"signal": signal, "gate": gate})])
    client = await harness.raw_ws("/ws", port=port)
    (handler,) = await signal.wait("open")
    connection = handler.ws_connection
    client.reset()  # gone while open() still runs
    await wait_for_close_of(signal, handler)
    gate.set()
    await signal.wait("open-returned")
    assert connection.closed
    leaked = connection in OPEN_CONNECTIONS
    counted = await tornado_websocket.shutdown(server, timeout=1)
    OPEN_CONNECTIONS.discard(connection)  # keep the leak out of later tests either way
    assert (leaked, counted) == (False, 0), f"(in OPEN_CONNECTIONS, counted by shutdown) = {(leaked, counted)}"


class _Quiet(tornado_websocket.WebSocketHandler):
    def on_message(self, message: Any) -> None:
        self.write_message(message)


def _leave_a_connection_on_a_closed_loop() -> list[Any]:
    """Open a server-side connection on an event loop in another thread, then let that loop close under it.

    What an app that runs an IOLoop per thread, or Tornado's AsyncTestCase,
    leaves behind: the loop is gone, the stream's close callback never ran.
    Returns the connections (server and client side) it left in OPEN_CONNECTIONS.
    """
    left: list[Any] = []

    async def main() -> None:
        app = tornado.web.Application([(r"/ws", _Quiet)])
        sock, port = tornado.testing.bind_unused_port()
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets([sock])
        before = set(OPEN_CONNECTIONS)
        client = await bounded(tornado_websocket.websocket_connect(f"ws://127.0.0.1:{port}/ws"))
        await bounded(client.write_message("x"))
        assert await bounded(client.read_message()) == "x"
        server.stop()
        left.extend(set(OPEN_CONNECTIONS) - before)

    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(TIMEOUT * 2)
    assert not thread.is_alive() and not errors, errors
    return left


async def test_shutdown_only_touches_connections_of_its_own_event_loop(harness, signal, own_connections_only):
    stale = await asyncio.get_running_loop().run_in_executor(None, _leave_a_connection_on_a_closed_loop)
    assert any(not c.protocol.is_client for c in stale), stale
    try:
        server, port = serve(harness, app_handlers(signal))
        ours = await bounded(tornado_websocket.websocket_connect(harness.url("/ws", port)))
        await signal.wait("open")
        code = asyncio.ensure_future(_our_close_code(ours))
        closed = await tornado_websocket.shutdown(server, timeout=1)
        assert closed == 1
        assert await bounded(code) == 1001
    finally:
        for connection in stale:
            OPEN_CONNECTIONS.discard(connection)
            with contextlib.suppress(Exception):
                connection.transport.abort()
