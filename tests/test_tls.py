"""Tests for TLSTransport: TLS connections taken off the IOStream, over real TLS on 127.0.0.1.

The transport's side is an ``ssl.SSLSocket`` whose handshake is done (by
Tornado's SSLIOStream, as after a real upgrade, or by hand); the peer is a
blocking ``SSLSocket`` with a timeout, driven from a worker thread, so the
event loop keeps running the transport meanwhile. Certificates come from
trustme; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from typing import Any, Callable, Optional

import pytest
import pytest_asyncio
import tornado.httpserver
import tornado.iostream
import tornado.testing
import tornado.web
import trustme
from conftest import TIMEOUT, bounded

import tornado_websocket
from tornado_websocket import transport as transport_module
from tornado_websocket.transport import PAUSED_READ_AHEAD, StreamTransport, TLSTransport, make_transport

pytestmark = pytest.mark.asyncio

MiB = 1024 * 1024


class Sink:
    """A TransportSink recording what it got; ``frame`` (set by a test) is handed out by frame_space."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.lost = 0
        self.frame: Optional[bytearray] = None
        self.frame_pos = 0
        self.filled = 0
        self.on_data: Optional[Callable[[bytes], None]] = None
        self._changed = asyncio.Event()

    def frame_space(self) -> Optional[memoryview]:
        if self.frame is None or self.frame_pos >= len(self.frame):
            return None
        return memoryview(self.frame)[self.frame_pos :]

    def frame_filled(self, n: int) -> None:
        self.frame_pos += n
        self.filled += 1
        self._changed.set()

    def data_received(self, data: Any) -> None:
        chunk = bytes(data)
        self.chunks.append(chunk)
        self._changed.set()
        if self.on_data is not None:
            self.on_data(chunk)

    def connection_lost(self) -> None:
        self.lost += 1
        self._changed.set()

    @property
    def received(self) -> bytes:
        return b"".join(self.chunks)

    async def until(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async def wait() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


class Env:
    """TLS pairs (ours: non-blocking, handshake done; peer: blocking with a timeout) and their cleanup."""

    def __init__(self, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
        self.loop = asyncio.get_running_loop()
        self.server_ctx, self.client_ctx = tls
        self.sockets: list[socket.socket] = []
        self.transports: list[Any] = []

    async def pair(self, small_buffers: bool = False) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
        listener = socket.socket()
        try:
            if small_buffers:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            raw_peer = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
            raw_ours, _ = listener.accept()
        finally:
            listener.close()
        raw_ours.settimeout(TIMEOUT)

        def handshake() -> ssl.SSLSocket:
            return self.client_ctx.wrap_socket(raw_peer, server_hostname="127.0.0.1")

        peer_future = self.loop.run_in_executor(None, handshake)
        ours = self.server_ctx.wrap_socket(raw_ours, server_side=True)  # blocking handshake, the peer in a thread
        peer = await bounded(peer_future)
        ours.setblocking(False)
        self.sockets += [ours, peer]
        return ours, peer

    def transport(self, ours: ssl.SSLSocket, sink: Sink, received: bytes = b"") -> TLSTransport:
        transport = TLSTransport(ours, sink, self.loop, self.loop, received)
        self.transports.append(transport)
        return transport

    async def in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        return await bounded(self.loop.run_in_executor(None, function, *args), TIMEOUT * 2)

    async def aclose(self) -> None:
        for transport in self.transports:
            transport.abort()
        for sock in self.sockets:
            sock.close()
        await asyncio.sleep(0)


@pytest_asyncio.fixture
async def env(tls):
    e = Env(tls)
    try:
        yield e
    finally:
        await e.aclose()


def recv_exactly(sock: ssl.SSLSocket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(min(n - len(got), MiB))
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def recv_until_eof(sock: ssl.SSLSocket) -> bytes:
    got = bytearray()
    while True:
        try:
            chunk = sock.recv(MiB)
        except (ssl.SSLEOFError, ConnectionResetError):
            return bytes(got)
        if not chunk:
            return bytes(got)
        got += chunk


# -- the transport ----------------------------------------------------------------------------------


async def test_reads_many_records_in_order_and_large_data_both_ways(env):
    ours, peer = await env.pair()
    sink = Sink()
    transport = env.transport(ours, sink)
    transport.resume_reading()
    payload = os.urandom(3 * MiB + 5)  # ~200 TLS records
    await env.in_thread(peer.sendall, payload)
    await sink.until(lambda: len(sink.received) >= len(payload))
    assert sink.received == payload
    back = os.urandom(2 * MiB + 3)
    future = transport.write([b"head", back, b"tail"])
    got = await env.in_thread(recv_exactly, peer, len(back) + 8)
    assert got == b"head" + back + b"tail"
    if future is not None:
        await bounded(future)
    assert transport.buffered_bytes == 0


async def test_small_parts_leave_in_one_write(env):
    ours, peer = await env.pair()
    transport = env.transport(ours, Sink())
    assert transport.write([b"a" * 10, b"b" * 20, b"c"]) is None
    assert await env.in_thread(recv_exactly, peer, 31) == b"a" * 10 + b"b" * 20 + b"c"


async def test_records_read_ahead_while_paused_are_all_delivered_on_resume(env):
    ours, peer = await env.pair()
    sink = Sink()
    transport = env.transport(ours, sink)  # starts paused
    pieces = [os.urandom(100) for _ in range(50)]
    for piece in pieces:  # one TLS record each
        await env.in_thread(peer.sendall, piece)
    await asyncio.sleep(0.05)  # not a synchronisation: the assertions below hold either way
    assert sink.chunks == []
    transport.resume_reading()
    await sink.until(lambda: len(sink.received) >= 5000)
    assert sink.received == b"".join(pieces)


async def test_read_ahead_while_paused_is_bounded_and_nothing_is_lost(env):
    ours, peer = await env.pair(small_buffers=True)
    sink = Sink()
    transport = env.transport(ours, sink)
    payload = os.urandom(4 * MiB)
    peer.settimeout(0.5)

    def send_until_stuck() -> int:
        sent = 0
        try:
            while sent < len(payload):
                sent += peer.send(payload[sent : sent + 64 * 1024])
        except (socket.timeout, ssl.SSLWantWriteError):
            pass
        return sent

    sent = await env.in_thread(send_until_stuck)
    assert sent < len(payload), "a paused transport read everything: the read-ahead is not bounded"
    assert sink.chunks == []
    peer.settimeout(TIMEOUT)
    transport.resume_reading()
    rest = asyncio.ensure_future(env.in_thread(peer.sendall, payload[sent:]))
    await sink.until(lambda: len(sink.received) >= len(payload), timeout=TIMEOUT * 2)
    await rest
    assert sink.received == payload
    assert PAUSED_READ_AHEAD <= len(sink.chunks[0])


async def test_frame_space_is_filled_straight_from_tls(env):
    ours, peer = await env.pair()
    sink = Sink()
    sink.frame = bytearray(MiB)
    transport = env.transport(ours, sink)
    transport.resume_reading()
    payload = os.urandom(MiB + 10)
    await env.in_thread(peer.sendall, payload)
    await sink.until(lambda: len(sink.received) >= 10)
    assert bytes(sink.frame) == payload[:MiB]
    assert sink.received == payload[MiB:]


async def test_writes_to_a_peer_that_does_not_read_wait_and_complete_in_order(env):
    ours, peer = await env.pair(small_buffers=True)
    transport = env.transport(ours, Sink())
    payloads = [os.urandom(300_000) for _ in range(8)]
    futures = [transport.write([p]) for p in payloads]
    assert transport.buffered_bytes > 0, "the kernel took 2.4 MB: the buffers are not small"
    last = futures[-1]
    assert last is not None and not last.done()
    got = await env.in_thread(recv_exactly, peer, sum(map(len, payloads)))
    assert got == b"".join(payloads)
    await bounded(last)
    assert transport.buffered_bytes == 0


async def test_shutdown_write_sends_everything_then_ends_tcp(env):
    ours, peer = await env.pair(small_buffers=True)
    sink = Sink()
    transport = env.transport(ours, sink)
    transport.resume_reading()
    payload = os.urandom(MiB)
    transport.write([payload])
    transport.shutdown_write()
    assert not transport.closed, "a half-close: reading goes on until the peer ends TCP too"
    assert await env.in_thread(recv_until_eof, peer) == payload
    peer.close()
    await sink.until(lambda: sink.lost == 1)
    assert sink.received == b""


@pytest.mark.parametrize("how", ["close", "unwrap"])
async def test_peer_leaving_while_paused_after_data_delivers_the_data_then_ends(env, how):
    ours, peer = await env.pair()
    sink = Sink()
    transport = env.transport(ours, sink)
    await env.in_thread(peer.sendall, b"last words")
    if how == "unwrap":  # a TLS close_notify (not waiting for ours), then TCP's end
        peer.setblocking(False)
        try:
            peer.unwrap()
        except ssl.SSLWantReadError:
            pass
    peer.close()
    await asyncio.sleep(0.05)  # not a synchronisation: either way the data must come first
    assert sink.chunks == [] and sink.lost == 0
    transport.resume_reading()
    await sink.until(lambda: sink.lost == 1)
    assert sink.received == b"last words"
    assert transport.closed


async def test_read_ahead_helper(env):
    ours, peer = await env.pair()
    speedups = pytest.importorskip("tornado_websocket._speedups")
    assert speedups.ssl_read_ahead(ours) is True
    unconnected = env.client_ctx.wrap_socket(socket.socket(), server_hostname="x", do_handshake_on_connect=False)
    env.sockets.append(unconnected)
    assert speedups.ssl_read_ahead(unconnected) is False  # no OpenSSL object yet: nothing to do
    assert transport_module._no_read_ahead(ours) is False  # the fallback without the extension


# -- make_transport and the faces ------------------------------------------------------------------


async def test_make_transport_takes_a_tls_stream_after_its_handshake(env):
    listener, port = tornado.testing.bind_unused_port()
    accepted: asyncio.Future[socket.socket] = env.loop.create_future()

    def on_accept(*_: Any) -> None:
        conn, _ = listener.accept()
        accepted.set_result(conn)

    env.loop.add_reader(listener.fileno(), on_accept)
    try:
        client = tornado.iostream.SSLIOStream(socket.socket(), ssl_options=env.client_ctx)
        connecting = client.connect(("127.0.0.1", port), server_hostname="127.0.0.1")
        raw = await bounded(accepted)
    finally:
        env.loop.remove_reader(listener.fileno())
        listener.close()
    wrapped = env.server_ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
    server = tornado.iostream.SSLIOStream(wrapped)
    await bounded(asyncio.gather(connecting, server.wait_for_handshake()))
    await bounded(client.write(b"GET / HTTP/1.1\r\n\r\nafter the head"))
    head = await bounded(server.read_until(b"\r\n\r\n"))
    assert head == b"GET / HTTP/1.1\r\n\r\n"
    sink = Sink()
    transport = make_transport(server, sink)
    env.transports.append(transport)
    assert isinstance(transport, TLSTransport)
    assert isinstance(transport.socket, ssl.SSLSocket)
    transport.resume_reading()
    await sink.until(lambda: sink.received == b"after the head")
    transport.write([b"reply"])
    assert await bounded(client.read_bytes(5)) == b"reply"
    client.close()
    await sink.until(lambda: sink.lost == 1)


async def test_make_transport_keeps_a_tls_stream_whose_handshake_is_not_done(env):
    ours, peer = socket.socketpair()
    env.sockets += [ours, peer]
    wrapped = env.client_ctx.wrap_socket(ours, server_hostname="x", do_handshake_on_connect=False)
    stream = tornado.iostream.SSLIOStream(wrapped)
    transport = make_transport(stream, Sink())
    env.transports.append(transport)
    assert isinstance(transport, StreamTransport)


class Echo(tornado_websocket.WebSocketHandler):
    def on_message(self, message: Any) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


@pytest_asyncio.fixture
async def wss_server(tls):
    server_ctx, client_ctx = tls
    app = tornado.web.Application([(r"/ws", Echo)], websocket_max_message_size=32 * MiB)
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(app, ssl_options=server_ctx)
    server.add_sockets([sock])
    try:
        yield f"wss://127.0.0.1:{port}/ws", client_ctx
    finally:
        server.stop()


async def test_wss_both_sides_on_tls_transport_many_in_flight_and_large(wss_server):
    url, client_ctx = wss_server
    conn = await bounded(tornado_websocket.websocket_connect(url, ssl_options=client_ctx))
    try:
        assert isinstance(conn.ws_connection.transport, TLSTransport)
        assert isinstance(conn.stream.socket, ssl.SSLSocket)
        messages = [os.urandom(64) for _ in range(500)]
        for message in messages:
            conn.write_message(message, binary=True)
        assert [await bounded(conn.read_message()) for _ in messages] == messages
        big = [os.urandom(MiB + i) for i in range(4)]
        for message in big:
            conn.write_message(message, binary=True)
        assert [await bounded(conn.read_message(), 10) for _ in big] == big
        conn.write_message("texte")
        assert await bounded(conn.read_message()) == "texte"
    finally:
        conn.close(1000, "done")
    await bounded(conn.wait_closed())
    assert conn.close_code == 1000


async def test_tornado_client_against_our_tls_server(wss_server):
    import tornado.websocket

    url, client_ctx = wss_server
    request = tornado.httpclient.HTTPRequest(url, ssl_options=client_ctx)
    conn = await bounded(tornado.websocket.websocket_connect(request))
    payload = os.urandom(3 * MiB)
    await bounded(conn.write_message(payload, binary=True), 10)
    assert await bounded(conn.read_message(), 10) == payload
    conn.close(1000)
    assert await bounded(conn.read_message()) is None
    assert conn.close_code == 1000
