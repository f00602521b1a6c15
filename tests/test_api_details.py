"""Details of the Tornado-compatible API that apps rely on when they switch imports."""

from __future__ import annotations

import asyncio

import pytest
from conftest import OP_TEXT, bounded, build_frame

import tornado_websocket
from tornado_websocket.errors import WebSocketClosedError, WebSocketError
from tornado_websocket.keepalive import MAX_PENDING_PINGS

pytestmark = pytest.mark.asyncio


class Recorder(tornado_websocket.WebSocketHandler):
    def initialize(self, signal):
        self.signal = signal

    def open(self):
        self.signal.fire("open", self)

    def on_message(self, message):
        if message == "return-true":
            return True  # not awaitable: must be ignored, not freeze the connection
        if message == "close-none-reason":
            self.ws_connection.close(4000, None)
            return None
        self.write_message(message)
        return None

    def on_close(self):
        self.signal.fire("close", (self.close_code, self.close_reason))


async def test_ws_connection_is_closing_is_a_method_like_tornado(harness, signal):
    harness.serve([(r"/ws", Recorder, {"signal": signal})])
    ws = await harness.ws()
    (handler,) = await signal.wait("open")
    assert handler.ws_connection.is_closing() is False
    handler.close(1000)
    assert handler.ws_connection is None  # as Tornado: gone from the handler at once
    with pytest.raises(WebSocketClosedError):
        handler.write_message("late")
    await bounded(ws.wait_closed())


async def test_a_non_awaitable_result_from_on_message_is_ignored(harness, signal):
    harness.serve([(r"/ws", Recorder, {"signal": signal})])
    ws = await harness.ws()
    await ws.send("return-true")
    await ws.send("still here")
    assert await bounded(ws.recv()) == "still here"


async def test_close_accepts_a_none_reason(harness, signal):
    harness.serve([(r"/ws", Recorder, {"signal": signal})])
    ws = await harness.ws()
    await ws.send("close-none-reason")
    await bounded(ws.wait_closed())
    assert ws.close_code == 4000 and ws.close_reason == ""


async def test_client_protocol_is_none_once_closed(harness, signal):
    harness.serve([(r"/ws", Recorder, {"signal": signal})])
    conn = await bounded(tornado_websocket.websocket_connect(harness.url()))
    assert conn.protocol is not None
    conn.close()
    await bounded(conn.wait_closed())
    assert conn.protocol is None


async def test_timed_out_reads_do_not_pile_up_in_the_inbox(harness, signal):
    harness.serve([(r"/ws", Recorder, {"signal": signal})])
    conn = await bounded(tornado_websocket.websocket_connect(harness.url()))
    for _ in range(50):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(conn.read_message(), 0.001)
    assert len(conn._inbox._waiters) <= 1
    await conn.write_message("after the timeouts")
    assert await bounded(conn.read_message()) == "after the timeouts"


async def test_unanswered_pings_are_bounded(harness, signal):
    harness.serve([(r"/ws", Recorder, {"signal": signal})])
    client = await harness.raw_ws()  # a raw client that never answers pings
    (handler,) = await signal.wait("open")
    futures = [handler.ping(b"%d" % i) for i in range(MAX_PENDING_PINGS + 5)]
    assert handler._connection.pending_pings == MAX_PENDING_PINGS
    for future in futures[:5]:  # the oldest were given up, with an error rather than forever
        with pytest.raises(WebSocketError):
            await bounded(future)
    for i in range(MAX_PENDING_PINGS + 5):  # every ping was still sent, in order
        frame = await client.read_frame()
        assert (frame.opcode, frame.payload) == (0x9, b"%d" % i)
    await client.send(build_frame(OP_TEXT, b"echo"))
    assert await client.read_text() == "echo"


async def test_ping_timeout_longer_than_the_interval_is_capped(harness, signal, caplog):
    from tornado_websocket import options

    options.LOG._once.clear()  # the warning is once per process: forget earlier tests'
    options.ConnectionOptions.create.cache_clear()
    harness.serve([(r"/ws", Recorder, {"signal": signal})], websocket_ping_interval=10, websocket_ping_timeout=30)
    await harness.ws()
    (handler,) = await signal.wait("open")
    assert handler._connection.ping_timeout == 10
    assert any("cannot be longer" in r.getMessage() for r in caplog.records)


async def test_ws_connection_stream_stands_in_for_the_iostream(harness, signal):
    """Apps reach for ws_connection.stream (socket, close, closed, set_nodelay) as on Tornado."""
    import socket

    from tornado_websocket.transport import DetachedStream

    harness.serve([(r"/ws", Recorder, {"signal": signal})])
    ws = await harness.ws()
    (handler,) = await signal.wait("open")
    stream = handler.ws_connection.stream
    assert isinstance(stream, DetachedStream)  # plain TCP: the socket left the IOStream
    assert isinstance(stream.socket, socket.socket)
    assert stream.socket.getpeername() == ws.local_address[:2]
    assert stream.fileno() == stream.socket.fileno()
    stream.set_nodelay(False)
    assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    assert not stream.closed()
    stream.close()  # drops TCP, no close handshake
    assert stream.closed()
    assert await signal.wait("close") == [(None, None)]
    await bounded(ws.wait_closed())
    assert ws.close_code == 1006
