"""Tests for tornado_websocket.transport: SocketTransport and make_transport over real sockets.

Every test runs on pytest-asyncio's event loop with real TCP connections on
127.0.0.1. The test plays the peer with a plain non-blocking socket; the
transport's sink is a :class:`Sink` that records what it was called with.
Every wait is bounded: a bug fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import os
import socket
import ssl
import struct
import termios
import time
from typing import Any, Callable, Optional

import pytest
import pytest_asyncio
import tornado.iostream
from conftest import TIMEOUT, bounded
from tornado.ioloop import IOLoop

from tornado_websocket.errors import WebSocketClosedError
from tornado_websocket.transport import (
    MAX_IOVEC,
    PAUSED_READ_AHEAD,
    READ_CHUNK_SIZE,
    SocketTransport,
    StreamTransport,
    make_transport,
)

pytestmark = pytest.mark.asyncio

SMALL_BUFFER = 16 * 1024  # SO_SNDBUF / SO_RCVBUF for connections whose kernel buffers must fill up fast


# -- the sink --------------------------------------------------------------------


class Sink:
    """A TransportSink recording its calls, in order, as ("data", bytes), ("filled", n) and ("lost",).

    ``frame`` (set by a test) is a buffer that :meth:`frame_space` hands out,
    from ``frame_pos`` up to ``frame_end``, like a large frame's payload buffer.
    ``on_data`` runs inside each data_received call.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.frame: Optional[bytearray] = None
        self.frame_pos = 0
        self.frame_end = 0
        self.on_data: Optional[Callable[[bytes], None]] = None
        self.closed_when_lost: list[bool] = []
        self.transport: Any = None
        self._changed = asyncio.Event()

    def frame_space(self) -> Optional[memoryview]:
        if self.frame is None or self.frame_pos >= self.frame_end:
            return None
        return memoryview(self.frame)[self.frame_pos : self.frame_end]

    def frame_filled(self, n: int) -> None:
        self.calls.append(("filled", n))
        self.frame_pos += n
        self._changed.set()

    def data_received(self, data: Any) -> None:
        copy = bytes(data)  # the view is only valid during the call
        self.calls.append(("data", copy))
        self._changed.set()
        if self.on_data is not None:
            self.on_data(copy)

    def connection_lost(self) -> None:
        self.calls.append(("lost",))
        if self.transport is not None:
            self.closed_when_lost.append(self.transport.closed)
        self._changed.set()

    # what the tests look at

    @property
    def data(self) -> list[bytes]:
        return [call[1] for call in self.calls if call[0] == "data"]

    @property
    def received(self) -> bytes:
        return b"".join(self.data)

    @property
    def lost(self) -> int:
        return sum(1 for call in self.calls if call[0] == "lost")

    async def until(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async def wait() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    async def until_received(self, n: int, timeout: float = TIMEOUT) -> bytes:
        await self.until(lambda: len(self.received) >= n, timeout)
        return self.received

    async def until_lost(self, timeout: float = TIMEOUT) -> None:
        await self.until(lambda: self.lost > 0, timeout)


# -- sockets -----------------------------------------------------------------------


def unread(sock: socket.socket) -> int:
    """Bytes waiting in ``sock``'s kernel receive queue."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def arrived(sock: socket.socket, n: int) -> None:
    """Wait, without running the event loop, until ``n`` bytes sit in ``sock``'s receive queue.

    Nothing reads the socket meanwhile (the loop does not run), so afterwards the
    transport finds all of them at its next read.
    """
    deadline = time.monotonic() + TIMEOUT
    while unread(sock) < n:
        assert time.monotonic() < deadline, f"{n} bytes never arrived ({unread(sock)} did)"
        os.sched_yield()


async def yield_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Let the event loop run until ``predicate()`` holds (bounded)."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0)

    await asyncio.wait_for(poll(), timeout)


async def next_turns(n: int = 2) -> None:
    """Let callbacks scheduled so far (call_soon) and the next I/O events run."""
    for _ in range(n):
        await asyncio.sleep(0)


def send_now(peer: socket.socket, data: bytes) -> None:
    """The peer sends a small piece that its empty kernel buffer takes at once."""
    assert peer.send(data) == len(data)


async def recv_exactly(peer: socket.socket, n: int, timeout: float = TIMEOUT) -> bytes:
    loop = asyncio.get_running_loop()

    async def read() -> bytes:
        got = bytearray()
        while len(got) < n:
            chunk = await loop.sock_recv(peer, min(n - len(got), 1 << 20))
            assert chunk, f"EOF after {len(got)} of {n} bytes"
            got += chunk
        return bytes(got)

    return await asyncio.wait_for(read(), timeout)


async def recv_until_eof(peer: socket.socket, timeout: float = TIMEOUT) -> tuple[bytes, str]:
    """Everything the peer gets until the end: (data, "eof" or "reset")."""
    loop = asyncio.get_running_loop()

    async def read() -> tuple[bytes, str]:
        got = bytearray()
        while True:
            try:
                chunk = await loop.sock_recv(peer, 1 << 20)
            except ConnectionResetError:
                return bytes(got), "reset"
            if not chunk:
                return bytes(got), "eof"
            got += chunk

    return await asyncio.wait_for(read(), timeout)


async def writable(sock: socket.socket, timeout: float) -> bool:
    """True if ``sock`` can be written within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    loop.add_writer(sock.fileno(), ready)
    try:
        await asyncio.wait_for(future, timeout)
        return True
    except asyncio.TimeoutError:
        return False
    finally:
        loop.remove_writer(sock.fileno())


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Env:
    """Creates TCP connections and transports for one test, and cleans them up after it."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.sockets: list[socket.socket] = []
        self.transports: list[Any] = []

    def pair(self, small_buffers: bool = False) -> tuple[socket.socket, socket.socket]:
        """(ours, peer): a connected TCP pair on 127.0.0.1, both non-blocking.

        ``small_buffers`` shrinks every kernel buffer (set before connecting, so the
        TCP window follows) so that a peer that does not read, or a transport that
        does not, fills them up quickly.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sockets.append(peer)
        try:
            if small_buffers:
                for sock in (listener, peer):  # accepted sockets inherit the listener's
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            peer.connect(listener.getsockname())
            ours, _ = listener.accept()
        finally:
            listener.close()
        self.sockets.append(ours)
        ours.setblocking(False)
        peer.setblocking(False)
        return ours, peer

    def transport(self, sock: socket.socket, sink: Sink, received: bytes = b"") -> SocketTransport:
        transport = SocketTransport(sock, sink, self.loop, self.loop, received)
        sink.transport = transport
        self.transports.append(transport)
        return transport

    def track(self, transport: Any, sink: Sink) -> Any:
        sink.transport = transport
        self.transports.append(transport)
        return transport

    async def aclose(self) -> None:
        for transport in self.transports:
            transport.abort()
        for sock in self.sockets:
            sock.close()
        await next_turns()


@pytest_asyncio.fixture
async def env():
    e = Env()
    try:
        yield e
    finally:
        await e.aclose()


@pytest_asyncio.fixture
async def loop_errors():
    """What reaches the loop's exception handler (e.g. "Future exception was never retrieved")."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)


async def fill_peer(transport: SocketTransport, payload: bytes) -> asyncio.Future[None]:
    """Write ``payload`` to a peer that does not read; the kernel must keep part of it back."""
    future = transport.write([payload])
    assert future is not None, "the kernel took everything: the buffers are not small enough"
    assert not future.done()
    assert 0 < transport.buffered_bytes <= len(payload)
    return future


# -- reading: paused at first, reading ahead ------------------------------------------


async def test_starts_paused_and_delivers_received_then_read_ahead_on_resume(env):
    ours, peer = env.pair()
    sink = Sink()
    send_now(peer, b"early-1;")
    arrived(ours, 8)
    transport = env.transport(ours, sink, received=b"HEAD;")
    await yield_until(lambda: unread(ours) == 0)  # read ahead while paused
    send_now(peer, b"early-2;")
    arrived(ours, 8)
    await yield_until(lambda: unread(ours) == 0)
    assert sink.calls == [], "nothing may reach the sink before resume_reading()"
    assert not transport.closed

    transport.resume_reading()
    # Delivered inside resume_reading, in one piece: what came with the constructor first.
    assert sink.calls == [("data", b"HEAD;early-1;early-2;")]

    send_now(peer, b"later")
    assert await sink.until_received(len(b"HEAD;early-1;early-2;later")) == b"HEAD;early-1;early-2;later"
    assert sink.calls[1:] == [("data", b"later")]
    assert sink.lost == 0


async def test_received_alone_is_delivered_on_resume(env):
    ours, peer = env.pair()
    sink = Sink()
    transport = env.transport(ours, sink, received=b"left over from the handshake")
    await next_turns()
    assert sink.calls == []
    transport.resume_reading()
    assert sink.calls == [("data", b"left over from the handshake")]
    send_now(peer, b"!")
    await sink.until_received(len(b"left over from the handshake!"))
    assert sink.calls[1:] == [("data", b"!")]


async def test_nothing_is_delivered_on_resume_when_nothing_came(env):
    ours, peer = env.pair()
    sink = Sink()
    transport = env.transport(ours, sink)
    await next_turns()
    transport.resume_reading()
    assert sink.calls == []
    send_now(peer, b"first")
    await sink.until_received(5)
    assert sink.calls == [("data", b"first")]


async def test_pause_holds_data_and_resume_delivers_it_in_order(env):
    ours, peer = env.pair()
    sink = Sink()
    transport = env.transport(ours, sink)
    transport.resume_reading()
    send_now(peer, b"one;")
    await sink.until_received(4)

    transport.pause_reading()
    for piece in (b"two;", b"three;", b"four;"):
        send_now(peer, piece)
        arrived(ours, len(piece))
        await yield_until(lambda: unread(ours) == 0)  # read ahead, kept
    assert sink.calls == [("data", b"one;")]

    transport.resume_reading()
    assert sink.calls == [("data", b"one;"), ("data", b"two;three;four;")]
    send_now(peer, b"five")
    assert await sink.until_received(len(b"one;two;three;four;five")) == b"one;two;three;four;five"


async def test_sink_pausing_inside_data_received_holds_the_rest(env):
    """As the connection does while user code runs: pause inside data_received, resume later."""
    ours, peer = env.pair()
    sink = Sink()
    transport = env.transport(ours, sink)
    sink.on_data = lambda data: transport.pause_reading()
    transport.resume_reading()
    send_now(peer, b"a")
    await sink.until_received(1)
    send_now(peer, b"b")
    arrived(ours, 1)
    await yield_until(lambda: unread(ours) == 0)
    assert sink.data == [b"a"]

    # resume_reading delivers the backlog, the sink pauses again inside that call:
    # what arrives next is held once more.
    transport.resume_reading()
    assert sink.data == [b"a", b"b"]
    send_now(peer, b"c")
    arrived(ours, 1)
    await yield_until(lambda: unread(ours) == 0)
    assert sink.data == [b"a", b"b"]

    sink.on_data = None
    transport.resume_reading()
    assert sink.data == [b"a", b"b", b"c"]
    send_now(peer, b"d")
    await sink.until_received(4)
    assert sink.data == [b"a", b"b", b"c", b"d"]


async def test_resume_reading_called_again_inside_data_received(env):
    """The connection calls resume_reading() from inside data_received (also for the backlog)."""
    ours, peer = env.pair()
    sink = Sink()
    transport = env.transport(ours, sink, received=b"x")
    sink.on_data = lambda data: transport.resume_reading()
    send_now(peer, b"y")
    arrived(ours, 1)
    await yield_until(lambda: unread(ours) == 0)
    transport.resume_reading()
    assert sink.calls == [("data", b"xy")]
    total = 2
    for piece in (b"1", b"22", b"333"):
        send_now(peer, piece)
        total += len(piece)
        await sink.until_received(total)
    assert sink.calls == [("data", b"xy"), ("data", b"1"), ("data", b"22"), ("data", b"333")]


@pytest.mark.parametrize("where", ["backlog", "live"])
async def test_sink_aborting_inside_data_received(env, loop_errors, where):
    """As the connection does when a peer does not read: abort() from inside data_received."""
    ours, peer = env.pair()
    sink = Sink()
    transport = env.transport(ours, sink)
    sink.on_data = lambda data: transport.abort()
    if where == "backlog":
        send_now(peer, b"bad")
        arrived(ours, 3)
        await yield_until(lambda: unread(ours) == 0)
        transport.resume_reading()  # must not touch the closed socket afterwards
    else:
        transport.resume_reading()
        send_now(peer, b"bad")
    await sink.until_lost()
    assert transport.closed
    await next_turns(3)
    assert sink.calls == [("data", b"bad"), ("lost",)]
    assert loop_errors == []
    assert await recv_until_eof(peer) in ((b"", "eof"), (b"", "reset"))


async def test_read_ahead_stops_after_paused_read_ahead_bytes_and_nothing_is_lost(env):
    ours, peer = env.pair(small_buffers=True)
    sink = Sink()
    transport = env.transport(ours, sink)
    limit = 8 * 1024 * 1024  # far more than the read-ahead and the kernel buffers together
    payload = os.urandom(limit)
    chunk = 64 * 1024
    sent = 0
    while sent < limit:
        try:
            sent += peer.send(payload[sent : sent + chunk])
        except BlockingIOError:
            # Full. The transport reads (and the peer can go on) unless it stopped reading.
            if not await writable(peer, 0.5):
                break
    assert sent < limit, "a paused transport read everything the peer sent: the read-ahead is not bounded"
    assert sent > PAUSED_READ_AHEAD
    # It no longer waits for the socket to be readable (remove_reader: False = was not registered;
    # uvloop's remove_reader returns None either way, so only asyncio's loop can tell).
    if isinstance(env.loop, asyncio.BaseEventLoop):
        assert env.loop.remove_reader(ours.fileno()) is False
    assert sink.calls == []

    transport.resume_reading()
    assert len(sink.calls) == 1, "the read-ahead is delivered in one call"
    backlog = sink.calls[0][1]
    assert PAUSED_READ_AHEAD <= len(backlog) < PAUSED_READ_AHEAD + READ_CHUNK_SIZE
    assert backlog == payload[: len(backlog)]

    # After resume it reads again: the rest arrives, and the peer can send the remainder.
    await asyncio.wait_for(env.loop.sock_sendall(peer, payload[sent:]), TIMEOUT)
    assert await sink.until_received(limit) == payload
    assert sink.lost == 0


# -- the peer leaving --------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("state", ["paused", "reading"])
async def test_peer_leaving_calls_connection_lost_once(env, how, state):
    ours, peer = env.pair()
    sink = Sink()
    transport = env.transport(ours, sink)
    if state == "reading":
        transport.resume_reading()
        send_now(peer, b"hello")
        await sink.until_received(5)
    if how == "close":
        peer.close()
    else:
        reset(peer)
    await sink.until_lost()
    assert transport.closed
    assert sink.closed_when_lost == [True]
    await next_turns(3)
    assert sink.lost == 1
    assert sink.calls[-1] == ("lost",)
    # Closed: resuming, pausing, aborting again are harmless and tell the sink nothing more.
    transport.resume_reading()
    transport.pause_reading()
    transport.abort()
    transport.shutdown_write()
    await next_turns(3)
    assert sink.lost == 1
    assert ours.fileno() == -1, "the transport closes its socket"


async def test_peer_closing_after_data_while_reading_delivers_the_data_first(env):
    ours, peer = env.pair()
    sink = Sink()
    transport = env.transport(ours, sink)
    transport.resume_reading()
    send_now(peer, b"last words")
    peer.close()
    await sink.until_lost()
    assert sink.calls == [("data", b"last words"), ("lost",)]
    assert transport.closed


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_peer_leaving_while_paused_after_data_delivers_the_data_on_resume_then_ends(env, how):
    ours, peer = env.pair()
    sink = Sink()
    transport = env.transport(ours, sink)  # starts paused
    send_now(peer, b"last words")
    arrived(ours, len(b"last words"))
    await next_turns(3)  # read ahead while paused
    if how == "close":
        peer.close()
    else:
        reset(peer)
    await yield_until(lambda: unread(ours) == 0 and not transport._reading, timeout=TIMEOUT)
    await next_turns(3)
    assert sink.calls == [], "nothing reaches a paused sink, not even the end"
    assert not transport.closed
    transport.resume_reading()
    assert sink.calls[:1] == [("data", b"last words")], "the bytes read ahead before the end are not dropped"
    assert transport.closed
    await sink.until_lost()
    assert sink.calls == [("data", b"last words"), ("lost",)]


async def test_peer_leaving_while_paused_with_the_sink_pausing_again_ends_on_the_next_resume(env):
    ours, peer = env.pair()
    sink = Sink()
    transport = env.transport(ours, sink)
    send_now(peer, b"first")
    arrived(ours, 5)
    await next_turns(3)
    peer.close()
    await yield_until(lambda: not transport._reading)
    sink.on_data = lambda data: transport.pause_reading()
    transport.resume_reading()
    assert sink.data == [b"first"] and not transport.closed
    transport.resume_reading()
    assert transport.closed
    await sink.until_lost()
    assert sink.calls == [("data", b"first"), ("lost",)]


async def test_abort_calls_connection_lost_on_a_later_loop_turn_once(env):
    ours, peer = env.pair()
    sink = Sink()
    transport = env.transport(ours, sink)
    transport.resume_reading()
    transport.abort()
    assert transport.closed
    assert sink.calls == [], "connection_lost must not run inside abort()"
    transport.abort()
    await next_turns(1)  # callbacks scheduled by abort() ran before this task resumed
    assert sink.calls == [("lost",)]
    await next_turns(3)
    assert sink.lost == 1
    data, how = await recv_until_eof(peer)
    assert data == b""
    assert how in ("eof", "reset")


# -- receiving into the frame's buffer ------------------------------------------------


async def test_frame_space_receives_straight_into_the_sinks_buffer(env):
    ours, peer = env.pair()
    sink = Sink()
    transport = env.transport(ours, sink)
    transport.resume_reading()
    sink.frame = bytearray(100)
    sink.frame_end = 100
    first = os.urandom(60)
    send_now(peer, first)
    arrived(ours, 60)
    await sink.until(lambda: sink.frame_pos == 60)
    assert sink.calls == [("filled", 60)]
    assert sink.frame[:60] == first
    assert sink.frame[60:] == bytes(40), "only n bytes were written"

    second = os.urandom(50)  # 40 fill the frame, 10 go to data_received
    send_now(peer, second)
    arrived(ours, 50)
    await sink.until_received(10)
    assert sink.calls == [("filled", 60), ("filled", 40), ("data", second[40:])]
    assert sink.frame == first + second[:40]


async def test_frame_space_is_not_used_while_paused(env):
    """What is read ahead while paused is kept and delivered through data_received."""
    ours, peer = env.pair()
    sink = Sink()
    sink.frame = bytearray(10)
    sink.frame_end = 10
    transport = env.transport(ours, sink)
    send_now(peer, b"abcdef")
    arrived(ours, 6)
    await yield_until(lambda: unread(ours) == 0)
    transport.resume_reading()
    assert sink.calls == [("data", b"abcdef")]
    send_now(peer, b"ghi")
    await sink.until(lambda: sink.frame_pos == 3)
    assert sink.calls[1:] == [("filled", 3)]
    assert sink.frame[:3] == b"ghi"


# -- writing ------------------------------------------------------------------------


async def test_write_returns_none_when_the_kernel_takes_everything(env):
    ours, peer = env.pair()
    transport = env.transport(ours, Sink())
    assert transport.write([b"single"]) is None
    assert transport.write([b"several ", bytearray(b"parts "), memoryview(b"of data"), b""]) is None
    assert transport.buffered_bytes == 0
    flushed = transport.flushed()
    assert flushed.done() and flushed.result() is None
    expected = b"singleseveral parts of data"
    assert await recv_exactly(peer, len(expected)) == expected


async def test_writes_to_a_peer_that_does_not_read_queue_in_order(env):
    ours, peer = env.pair(small_buffers=True)
    transport = env.transport(ours, Sink())
    big = os.urandom(2 * 1024 * 1024)
    big2 = os.urandom(2 * 1024 * 1024)
    f1 = transport.write([big, big2])  # two parts: the first sendmsg sends part of one
    assert f1 is not None and not f1.done()
    buffered = transport.buffered_bytes
    assert 0 < buffered < len(big) + len(big2)

    small = [b"small-1;", b"", b"small-2;"]
    f2 = transport.write(small)  # queued behind, even though the parts are tiny
    assert f2 is not None and not f2.done()
    assert transport.buffered_bytes == buffered + 16

    f3 = transport.flushed()
    assert not f3.done()
    f4 = transport.write([b"tail"])
    assert f4 is not None
    assert transport.buffered_bytes == buffered + 20

    order: list[tuple[str, int]] = []
    for name, future in (("f1", f1), ("f2", f2), ("f3", f3), ("f4", f4)):
        future.add_done_callback(lambda f, name=name: order.append((name, transport.buffered_bytes)))

    expected = big + big2 + b"small-1;small-2;tail"
    # Part of the data: nothing can be complete (the kernel buffers hold far less than 3 MiB).
    head = await recv_exactly(peer, 1024 * 1024)
    await next_turns(3)
    assert not f1.done() and not f2.done() and not f3.done()
    assert order == []
    assert transport.buffered_bytes > 0

    rest = await recv_exactly(peer, len(expected) - len(head))
    assert head + rest == expected
    await bounded(asyncio.gather(f1, f2, f3, f4))
    assert [name for name, _ in order] == ["f1", "f2", "f3", "f4"]
    assert dict(order)["f3"] <= 4, "flushed() completed before what was written before it left"
    assert transport.buffered_bytes == 0
    assert transport.flushed().done()


async def test_more_parts_than_max_iovec_are_sent_in_order(env):
    ours, peer = env.pair(small_buffers=True)
    transport = env.transport(ours, Sink())
    big = os.urandom(1024 * 1024)
    f1 = await fill_peer(transport, big)
    buffered = transport.buffered_bytes
    parts = [f"<{i:04d}>".encode() * (i % 7) for i in range(5 * MAX_IOVEC + 3)]  # some empty
    futures = [transport.write(parts[i : i + 50]) for i in range(0, len(parts), 50)]
    futures.append(transport.write(parts))  # all of them again in one call, queued
    assert all(f is not None for f in futures)
    expected = big + b"".join(parts) * 2
    assert transport.buffered_bytes == buffered + 2 * len(b"".join(parts))
    assert await recv_exactly(peer, len(expected)) == expected
    await bounded(asyncio.gather(f1, *futures))
    assert transport.buffered_bytes == 0


async def test_more_parts_than_iov_max_in_one_write_to_an_idle_transport(env):
    ours, peer = env.pair()
    sink = Sink()
    transport = env.transport(ours, sink)
    parts = [b"%05d," % i for i in range(2000)]
    future = transport.write(parts)
    if future is not None:
        await bounded(future)
    assert not transport.closed
    expected = b"".join(parts)
    assert await recv_exactly(peer, len(expected)) == expected


async def test_shutdown_write_sends_everything_then_eof(env):
    ours, peer = env.pair(small_buffers=True)
    sink = Sink()
    transport = env.transport(ours, sink)
    payload = os.urandom(1024 * 1024)
    future = await fill_peer(transport, payload)
    transport.shutdown_write()
    assert not transport.closed
    data, how = await recv_until_eof(peer)
    assert how == "eof"
    assert len(data) == len(payload) and data == payload
    await bounded(future)
    assert transport.buffered_bytes == 0

    # Half-closed: we still read what the peer sends, and hear when it leaves.
    transport.resume_reading()
    send_now(peer, b"goodbye")
    assert await sink.until_received(7) == b"goodbye"
    peer.close()
    await sink.until_lost()
    await next_turns(3)
    assert sink.calls == [("data", b"goodbye"), ("lost",)]


async def test_shutdown_write_with_nothing_pending_sends_eof_at_once(env):
    ours, peer = env.pair()
    transport = env.transport(ours, Sink())
    assert transport.write([b"all of it"]) is None
    transport.shutdown_write()
    assert await recv_until_eof(peer) == (b"all of it", "eof")
    assert not transport.closed


async def readable(sock: socket.socket) -> None:
    """Until the kernel holds bytes (or the end) for ``sock`` to read."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await bounded(ready)
    finally:
        loop.remove_reader(sock.fileno())


async def test_close_if_drained_closes_at_once_and_the_peer_gets_everything_then_eof(env):
    ours, peer = env.pair()
    sink = Sink()
    transport = env.transport(ours, sink)
    assert transport.write([b"the last frame"]) is None
    assert transport.close_if_drained() is True
    assert transport.closed
    assert await recv_until_eof(peer) == (b"the last frame", "eof")  # FIN, not RST
    await sink.until_lost()
    assert transport.close_if_drained() is True  # closed stays closed


async def test_close_if_drained_after_the_peers_fin_closes(env):
    ours, peer = env.pair()
    transport = env.transport(ours, Sink())
    peer.shutdown(socket.SHUT_WR)
    await readable(ours)  # the FIN is here, unread
    assert transport.close_if_drained() is True
    assert await recv_until_eof(peer) == (b"", "eof")


async def test_close_if_drained_keeps_a_connection_with_unread_bytes(env):
    ours, peer = env.pair()
    transport = env.transport(ours, Sink())
    send_now(peer, b"sent after its Close")
    await readable(ours)
    assert transport.close_if_drained() is False  # closing now would answer with RST
    assert not transport.closed
    assert transport.write([b"still open"]) is None
    assert await recv_exactly(peer, 10) == b"still open"


async def test_close_if_drained_keeps_a_connection_with_writes_waiting(env):
    ours, peer = env.pair(small_buffers=True)
    transport = env.transport(ours, Sink())
    future = await fill_peer(transport, os.urandom(1024 * 1024))
    assert transport.close_if_drained() is False
    assert not transport.closed and not future.done()


async def test_abort_fails_pending_writes_quietly(env, loop_errors):
    ours, peer = env.pair(small_buffers=True)
    sink = Sink()
    transport = env.transport(ours, sink)
    payload = os.urandom(1024 * 1024)
    f1 = await fill_peer(transport, payload)
    f2 = transport.write([b"queued"])
    f3 = transport.flushed()
    assert f2 is not None

    transport.abort()
    assert transport.closed
    assert f1.done() and f2.done() and f3.done()
    assert isinstance(f1.exception(), WebSocketClosedError)
    assert isinstance(f3.exception(), WebSocketClosedError)
    # f2's exception is never looked at by anyone: it must not be reported either.

    later = transport.write([b"too late"])
    assert later is not None and later.done()
    assert isinstance(later.exception(), WebSocketClosedError)
    later_flush = transport.flushed()
    assert later_flush.done() and isinstance(later_flush.exception(), WebSocketClosedError)
    transport.write([b"and never looked at"])  # dropped at once, unretrieved

    assert sink.calls == []
    await next_turns(3)
    assert sink.calls == [("lost",)]

    data, _ = await recv_until_eof(peer)
    assert len(data) < len(payload) and payload.startswith(data)

    del f2
    gc.collect()
    await next_turns(2)
    assert [c.get("message") for c in loop_errors] == []


async def test_write_to_a_reset_connection_fails_and_closes(env, loop_errors):
    ours, peer = env.pair()
    reset(peer)
    deadline = time.monotonic() + TIMEOUT
    while ours.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:  # the RST arrived (reading clears it)
        assert time.monotonic() < deadline
        os.sched_yield()
    sink = Sink()
    transport = env.transport(ours, sink)
    future = transport.write([b"into the void"])
    assert future is not None and future.done()
    assert isinstance(future.exception(), WebSocketClosedError)
    assert transport.closed
    transport.write([b"again"])  # unretrieved: no noise
    await next_turns(3)
    assert sink.calls == [("lost",)]
    gc.collect()
    await next_turns(2)
    assert [c.get("message") for c in loop_errors] == []


# -- make_transport ------------------------------------------------------------------


async def test_make_transport_takes_the_socket_and_the_streams_buffered_bytes(env):
    ours, peer = env.pair()
    sink = Sink()
    stream = tornado.iostream.IOStream(ours)
    send_now(peer, b"GET / HTTP/1.1\r\n\r\n" + b"first frame bytes")
    arrived(ours, 35)
    head = await bounded(stream.read_bytes(18))
    assert head == b"GET / HTTP/1.1\r\n\r\n"
    assert stream._read_buffer_size == 17  # the rest waits in the IOStream's buffer
    send_now(peer, b"|still in the kernel")
    arrived(ours, 20)

    transport = env.track(make_transport(stream, sink), sink)
    assert isinstance(transport, SocketTransport)
    assert transport.socket is ours
    assert ours.fileno() not in IOLoop.current().handlers
    await yield_until(lambda: unread(ours) == 0)  # read ahead by the transport, not the stream
    assert sink.calls == []

    transport.resume_reading()
    assert sink.calls == [("data", b"first frame bytes|still in the kernel")]
    send_now(peer, b"|after")
    assert await sink.until_received(43) == b"first frame bytes|still in the kernel|after"


async def test_make_transport_unregisters_the_streams_handler(env):
    """A stream with a close callback listens for the end of the connection: that must stop."""
    ours, peer = env.pair()
    sink = Sink()
    stream = tornado.iostream.IOStream(ours)
    send_now(peer, b"request")
    arrived(ours, 7)
    assert await bounded(stream.read_bytes(7)) == b"request"
    stream_closed: list[bool] = []
    stream.set_close_callback(lambda: stream_closed.append(True))
    fd = ours.fileno()
    assert fd in IOLoop.current().handlers  # precondition: the IOStream is registered

    transport = env.track(make_transport(stream, sink), sink)
    assert isinstance(transport, SocketTransport)
    assert fd not in IOLoop.current().handlers
    transport.resume_reading()
    assert sink.calls == []
    send_now(peer, b"frame")
    assert await sink.until_received(5) == b"frame"
    peer.close()
    await sink.until_lost()
    await next_turns(3)
    assert sink.calls == [("data", b"frame"), ("lost",)]
    assert stream_closed == [], "the IOStream is no longer involved"


async def test_make_transport_keeps_a_stream_with_a_pending_write(env):
    ours, peer = env.pair(small_buffers=True)
    sink = Sink()
    stream = tornado.iostream.IOStream(ours)
    payload = os.urandom(2 * 1024 * 1024)
    written = stream.write(payload)
    assert stream.writing()  # precondition: the peer does not read, the stream keeps bytes back

    transport = env.track(make_transport(stream, sink), sink)
    assert isinstance(transport, StreamTransport)
    assert transport.stream is stream
    assert transport.buffered_bytes > 0
    transport.resume_reading()
    send_now(peer, b"ping")
    assert await sink.until_received(4) == b"ping"
    assert await recv_exactly(peer, len(payload)) == payload
    await bounded(written)
    transport.abort()
    await sink.until_lost()
    await next_turns(3)
    assert sink.lost == 1


async def test_make_transport_keeps_a_stream_with_a_pending_read(env):
    ours, peer = env.pair()
    sink = Sink()
    stream = tornado.iostream.IOStream(ours)
    reading = stream.read_bytes(10)
    assert stream.reading()
    transport = env.track(make_transport(stream, sink), sink)
    assert isinstance(transport, StreamTransport)
    transport.abort()
    with pytest.raises(tornado.iostream.StreamClosedError):
        await bounded(reading)


async def test_make_transport_keeps_a_closed_stream(env):
    ours, peer = env.pair()
    stream = tornado.iostream.IOStream(ours)
    stream.close()
    transport = make_transport(stream, Sink())
    assert isinstance(transport, StreamTransport)
    assert transport.closed


async def test_transport_over_a_closed_stream_tells_the_sink(env):
    ours, peer = env.pair()
    stream = tornado.iostream.IOStream(ours)
    stream.close()
    sink = Sink()
    transport = make_transport(stream, sink)
    transport.resume_reading()
    await sink.until_lost(timeout=1.0)
    assert sink.lost == 1


async def test_make_transport_keeps_a_tls_stream(env):
    ours, peer = env.pair()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    wrapped = context.wrap_socket(ours, do_handshake_on_connect=False)
    env.sockets.append(wrapped)
    stream = tornado.iostream.SSLIOStream(wrapped)
    sink = Sink()
    transport = env.track(make_transport(stream, sink), sink)
    assert isinstance(transport, StreamTransport)
    assert transport.stream is stream
    transport.abort()
    await sink.until_lost()
    assert sink.lost == 1
