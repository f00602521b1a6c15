"""WebSocketConnection over real sockets: dispatch order, fairness, pausing, user errors, send_prepared,
the received-text shortcut, the pull-grace rule, keepalive and the write-buffer limit.

Servers are started with the harness of conftest.py; peers are raw clients
(what they receive is compared byte for byte) or our own client.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any, Callable, Optional

import pytest
import tornado.httpserver
import tornado.testing
import tornado.web
import trustme
from conftest import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawClient,
    bounded,
    build_frame,
    close_payload,
)
from tornado.ioloop import IOLoop

import tornado_websocket.handler
from tornado_websocket import WebSocketClosedError, WebSocketHandler, connection, websocket_connect
from tornado_websocket.connection import (
    OPEN_CONNECTIONS,
    YIELD_AFTER_EVENTS,
    PreparedMessage,
    WebSocketConnection,
)
from tornado_websocket.protocol import Protocol, Side
from tornado_websocket.transport import DetachedStream, TLSTransport

pytestmark = pytest.mark.asyncio


class Script:
    """What the handler of one test does, and what it saw (``events``, in order)."""

    def __init__(self) -> None:
        self.handlers: list[Any] = []
        self.opened = asyncio.Event()
        self.events: list[tuple[Any, ...]] = []
        self.changed = asyncio.Event()
        self.closed = asyncio.Event()
        self.on_message: Callable[[Any, Any], Any] = lambda handler, message: handler.write_message(
            message, binary=isinstance(message, bytes)
        )
        self.on_ping: Callable[[Any, bytes], Any] = lambda handler, data: None
        self.on_pong: Callable[[Any, bytes], Any] = lambda handler, data: None
        self.on_open: Callable[[Any], Any] = lambda handler: None
        self.on_close: Callable[[Any], Any] = lambda handler: None
        self.pull = False  # the handler leaves on_message alone: messages go to its pull inbox

    def record(self, *event: Any) -> None:
        self.events.append(event)
        self.changed.set()

    async def handler(self, n: int = 1) -> Any:
        async def until() -> None:
            while len(self.handlers) < n:
                self.opened.clear()
                await self.opened.wait()

        await bounded(until())
        return self.handlers[n - 1]

    async def wait_events(self, n: int) -> list[tuple[Any, ...]]:
        async def until() -> None:
            while len(self.events) < n:
                self.changed.clear()
                await self.changed.wait()

        await bounded(until())
        return self.events


class Handler(WebSocketHandler):
    def initialize(self, script: Script) -> None:
        self.script = script

    def open(self) -> Any:
        self.script.handlers.append(self)
        self.script.opened.set()
        return self.script.on_open(self)

    def on_message(self, message: Any) -> Any:
        if self.script.pull:
            return super().on_message(message)
        self.script.record("message", message)
        return self.script.on_message(self, message)

    def on_ping(self, data: bytes) -> None:
        self.script.record("ping", data)
        self.script.on_ping(self, data)

    def on_pong(self, data: bytes) -> None:
        self.script.record("pong", data)
        self.script.on_pong(self, data)

    def on_close(self) -> None:
        self.script.record("close", self.close_code)
        self.script.closed.set()
        self.script.on_close(self)


class CompressingHandler(Handler):
    def get_compression_options(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def script(harness) -> Script:
    state = Script()
    harness.serve([(r"/ws", Handler, {"script": state}), (r"/deflate", CompressingHandler, {"script": state})])
    return state


def serve_with(harness, script: Script, **settings: Any) -> int:
    return harness.serve([(r"/ws", Handler, {"script": script})], **settings)


def server_frame(opcode: int, payload: bytes = b"") -> bytes:
    return build_frame(opcode, payload, mask=False)


def text(data: str) -> bytes:
    return build_frame(OP_TEXT, data.encode())


async def read_exactly(client: RawClient, n: int) -> bytes:
    return await bounded(client.reader.readexactly(n))


async def expect_bytes(client: RawClient, expected: bytes) -> None:
    assert await read_exactly(client, len(expected)) == expected


async def client_for(harness, path: str = "/ws", **kwargs: Any) -> Any:
    client = await bounded(websocket_connect(harness.url(path), **kwargs))

    class Closer:
        async def close(self) -> None:
            client.close()
            await client.wait_closed()

    harness.ws_clients.append(Closer())
    return client


def error_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- dispatch order ---------------------------------------------------------------------------------------


async def test_events_of_one_read_are_dispatched_and_answered_in_order(harness, script):
    client = await harness.raw_ws()
    await script.handler()
    await client.send(
        text("a")
        + build_frame(OP_PING, b"p1")
        + build_frame(OP_BINARY, b"\x00b")
        + build_frame(OP_PONG, b"unsolicited")
        + text("c")
        + build_frame(OP_CLOSE, close_payload(1000, b"done"))
        + text("after the close: never parsed")
    )
    await expect_bytes(
        client,
        server_frame(OP_TEXT, b"a")
        + server_frame(OP_PONG, b"p1")
        + server_frame(OP_BINARY, b"\x00b")
        + server_frame(OP_TEXT, b"c")
        + server_frame(OP_CLOSE, close_payload(1000)),
    )
    await client.expect_eof()
    await client.close()
    await bounded(script.closed.wait())
    assert script.events == [
        ("message", "a"),
        ("ping", b"p1"),
        ("message", b"\x00b"),
        ("pong", b"unsolicited"),
        ("message", "c"),
        ("close", 1000),
    ]
    handler = script.handlers[0]
    assert handler.close_reason == "done"


# -- fairness ---------------------------------------------------------------------------------------------


async def test_dispatching_yields_to_the_loop_after_yield_after_events(harness, script, monkeypatch):
    resumed_at: list[int] = []
    original = WebSocketConnection._resume

    def spy(self: WebSocketConnection, events: Any, resume_at: int, consumer_waited: bool = False) -> None:
        resumed_at.append(resume_at)
        original(self, events, resume_at, consumer_waited)

    monkeypatch.setattr(WebSocketConnection, "_resume", spy)
    loop_turns: list[int] = []

    def on_message(handler: Any, message: str) -> None:
        handler.write_message(message)
        if len(script.events) == YIELD_AFTER_EVENTS:  # the last event before the yield
            IOLoop.current().add_callback(lambda: loop_turns.append(len(script.events)))

    script.on_message = on_message
    count = 2 * YIELD_AFTER_EVENTS + 88
    frames = b"".join(text(f"m{i}") for i in range(count))
    client = await harness.raw()
    # With the upgrade request, in one write: every frame arrives in one read.
    await client.send(client.upgrade_request() + frames)
    assert (await client.read_response()).status == 101
    expected = b"".join(server_frame(OP_TEXT, f"m{i}".encode()) for i in range(count))
    await expect_bytes(client, expected)
    assert [m for _, m in script.events] == [f"m{i}" for i in range(count)]
    assert loop_turns == [YIELD_AFTER_EVENTS]  # the loop ran between event 256 and 257
    assert resumed_at == [YIELD_AFTER_EVENTS, 2 * YIELD_AFTER_EVENTS]


# -- pausing on an awaitable -------------------------------------------------------------------------------


async def test_an_awaitable_on_message_holds_the_rest_of_the_read(harness, script):
    held: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(handler: Any, message: str) -> Any:
        handler.write_message("echo:" + message)
        return held if message == "hold" else None

    script.on_message = on_message
    client = await harness.raw_ws()
    witness = await harness.raw_ws()
    await script.handler(2)
    await client.send(text("hold") + text("x") + build_frame(OP_PING, b"q") + text("y"))
    await script.wait_events(1)
    await expect_bytes(client, server_frame(OP_TEXT, b"echo:hold"))
    # Another connection's round trip: the loop ran, the held connection's read is in.
    await witness.send_text("w")
    await expect_bytes(witness, server_frame(OP_TEXT, b"echo:w"))
    assert script.events == [("message", "hold"), ("message", "w")]
    held.set_result(None)
    await expect_bytes(
        client,
        server_frame(OP_TEXT, b"echo:x") + server_frame(OP_PONG, b"q") + server_frame(OP_TEXT, b"echo:y"),
    )
    assert script.events[2:] == [("message", "x"), ("ping", b"q"), ("message", "y")]


async def test_a_coroutine_on_message_keeps_message_order(harness, script):
    async def on_message(handler: Any, message: str) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        await handler.write_message("done:" + message)

    script.on_message = on_message
    client = await harness.raw_ws()
    await script.handler()
    await client.send(b"".join(text(f"c{i}") for i in range(20)))
    await expect_bytes(client, b"".join(server_frame(OP_TEXT, f"done:c{i}".encode()) for i in range(20)))


# -- user errors --------------------------------------------------------------------------------------------


async def test_an_error_in_on_message_closes_with_1011_and_drops_the_rest_of_that_read(harness, script, caplog):
    def on_message(handler: Any, message: str) -> None:
        if message == "boom":
            raise RuntimeError("user bug")
        handler.write_message(message)

    script.on_message = on_message
    client = await harness.raw_ws()
    await script.handler()
    await client.send(text("a") + text("boom") + text("c") + build_frame(OP_PING, b"still answered?"))
    close = server_frame(OP_CLOSE, close_payload(1011, b"internal error"))
    await expect_bytes(client, server_frame(OP_TEXT, b"a") + close)
    await client.send_close(1011)
    await client.expect_eof()
    await client.close()
    await bounded(script.closed.wait())
    assert [e for e in script.events if e[0] == "message"] == [("message", "a"), ("message", "boom")]
    assert ("ping", b"still answered?") in script.events  # a ping is not a message: dispatched, not answered
    assert error_logs(caplog) == ["Uncaught exception in WebSocket on_message"]


async def test_messages_of_a_later_read_are_delivered_after_a_user_error(harness, script, caplog):
    def on_message(handler: Any, message: str) -> None:
        if message == "boom":
            raise ValueError("user bug")

    script.on_message = on_message
    client = await harness.raw_ws()
    await script.handler()
    await client.send_text("boom")
    assert (await client.read_close()).close_code == 1011
    await client.send_text("later")  # after our close, before the peer's: still delivered
    await client.send_close(1000)
    await client.expect_eof()
    await script.wait_events(2)
    assert script.events[:2] == [("message", "boom"), ("message", "later")]


@pytest.mark.parametrize("where", ["on_ping", "on_pong"])
async def test_an_error_in_on_ping_or_on_pong_closes_with_1011(harness, script, caplog, where):
    def fail(handler: Any, data: bytes) -> None:
        raise RuntimeError(where)

    setattr(script, where, fail)
    client = await harness.raw_ws()
    await script.handler()
    await client.send_frame(OP_PING if where == "on_ping" else OP_PONG, b"x")
    if where == "on_ping":
        await expect_bytes(client, server_frame(OP_PONG, b"x"))  # the pong was queued before on_ping ran
    assert (await client.read_close()).close_code == 1011
    assert error_logs(caplog) == [f"Uncaught exception in WebSocket {where}"]


async def test_an_error_in_an_awaitable_on_message_closes_with_1011(harness, script, caplog):
    async def on_message(handler: Any, message: str) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("async user bug")

    script.on_message = on_message
    client = await harness.raw_ws()
    await script.handler()
    await client.send_text("x")
    assert (await client.read_close()).close_code == 1011
    assert error_logs(caplog) == ["Uncaught exception in WebSocket on_message"]


async def test_errors_in_close_callbacks_and_on_close_are_logged(harness, script, caplog):
    def on_close(handler: Any) -> None:
        raise RuntimeError("on_close bug")

    script.on_close = on_close
    client = await harness.raw_ws()
    handler = await script.handler()
    conn = handler.ws_connection
    calls: list[Any] = []
    conn.add_close_callback(lambda c: (_ for _ in ()).throw(RuntimeError("callback bug")))
    conn.add_close_callback(calls.append)
    client.reset()
    await bounded(conn.wait_closed())
    await bounded(script.closed.wait())
    assert calls == [conn]  # the failing callback did not stop the next
    assert error_logs(caplog) == [
        "Uncaught exception in a WebSocket close callback",
        "Uncaught exception in WebSocket on_close",
    ]


# -- send_prepared --------------------------------------------------------------------------------------------


async def test_send_prepared_outside_a_dispatch_goes_out_at_once(harness, script):
    client = await harness.raw_ws()
    handler = await script.handler()
    prepared = PreparedMessage(b"prepared", False)
    handler.ws_connection.send_prepared(prepared)
    handler.ws_connection.send_prepared(PreparedMessage(b"\x01\x02", True))
    assert prepared.frame == server_frame(OP_TEXT, b"prepared")
    assert prepared.frame is prepared.frame  # built once
    await expect_bytes(client, server_frame(OP_TEXT, b"prepared") + server_frame(OP_BINARY, b"\x01\x02"))


async def test_send_prepared_inside_a_dispatch_keeps_its_place(harness, script):
    prepared = PreparedMessage(b"shared", False)

    def on_message(handler: Any, message: str) -> None:
        handler.write_message("before")
        handler.ws_connection.send_prepared(prepared)
        handler.write_message("after")

    script.on_message = on_message
    client = await harness.raw_ws()
    await script.handler()
    await client.send_text("go")
    await expect_bytes(
        client,
        server_frame(OP_TEXT, b"before") + server_frame(OP_TEXT, b"shared") + server_frame(OP_TEXT, b"after"),
    )


async def test_send_prepared_on_a_closing_connection_sends_nothing(harness, script):
    client = await harness.raw_ws()
    handler = await script.handler()
    conn = handler.ws_connection
    conn.close(1000, "")
    conn.send_prepared(PreparedMessage(b"too late", False))
    await expect_bytes(client, server_frame(OP_CLOSE, close_payload(1000)))
    await client.send_close(1000)
    await client.expect_eof()
    await client.close()
    await bounded(conn.wait_closed())
    conn.send_prepared(PreparedMessage(b"closed", False))  # and once closed


async def test_send_prepared_on_compressing_and_client_connections_encodes_for_each(harness, script):
    deflating = await harness.raw_ws("/deflate", headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
    handler = await script.handler()
    payload = b"compressible " * 30
    handler.ws_connection.send_prepared(PreparedMessage(payload, False))
    b0, b1 = await read_exactly(deflating, 2)
    assert b0 == 0xC1  # FIN, RSV1 (compressed), text
    assert (b1 & 0x7F) < len(payload)

    client = await client_for(harness)
    await script.handler(2)
    client.ws_connection.send_prepared(PreparedMessage(b"from the client", True))
    await script.wait_events(1)
    assert script.events[0] == ("message", b"from the client")


async def test_send_prepared_past_the_write_buffer_limit_drops_the_peer(harness):
    script = Script()
    port = serve_with(harness, script, websocket_max_write_buffer_size=1024 * 1024)
    client = await harness.raw_ws(port=port)  # never reads
    handler = await script.handler()
    conn = handler.ws_connection
    prepared = PreparedMessage(b"p" * 256 * 1024, True)
    for _ in range(100):  # 25 MB at most
        conn.send_prepared(prepared)
        if conn.transport.closed:
            break
    await bounded(conn.wait_closed())
    assert script.events[-1] == ("close", None)
    await client.close()


# -- the received-text shortcut ----------------------------------------------------------------------------------


class ProtocolSpy:
    """Records the events a server Protocol produced and what it was asked to encode."""

    def __init__(self) -> None:
        self.received_utf8: list[Optional[bytes]] = []
        self.encoded: list[tuple[str, Any, Optional[bytes], Any]] = []


@pytest.fixture
def protocol_spy(monkeypatch: pytest.MonkeyPatch) -> ProtocolSpy:
    spy = ProtocolSpy()

    class SpyProtocol(Protocol):
        depth = 0  # encode_message calls encode_message_parts: record the outer call only

        def feed(self, data: Any) -> list[Any]:
            events = super().feed(data)
            spy.received_utf8 += [getattr(e, "utf8", None) for e in events]
            return events

        def encode_message(self, data: Any, binary: bool, utf8: Optional[bytes] = None, compress: bool = True) -> bytes:
            SpyProtocol.depth += 1
            try:
                result = super().encode_message(data, binary, utf8, compress)
            finally:
                SpyProtocol.depth -= 1
            spy.encoded.append(("encode_message", data, utf8, result))
            return result

        def encode_message_parts(
            self, data: Any, binary: bool, utf8: Optional[bytes] = None, compress: bool = True
        ) -> tuple[bytes, bytes]:
            result = super().encode_message_parts(data, binary, utf8, compress)
            if not SpyProtocol.depth:
                spy.encoded.append(("encode_message_parts", data, utf8, result))
            return result

    monkeypatch.setattr(tornado_websocket.handler, "Protocol", SpyProtocol)
    return spy


async def test_sending_the_str_just_received_reuses_its_utf8_bytes(harness, script, protocol_spy):
    seen_during: list[Any] = []
    seen_after: list[Any] = []

    def on_message(handler: Any, message: str) -> None:
        seen_during.append(connection._RECEIVED_TEXT.text is message)
        handler.write_message(message)  # the very str: its bytes are reused
        handler.write_message("".join(list(message)))  # an equal str: encoded anew
        IOLoop.current().add_callback(
            lambda: seen_after.append((connection._RECEIVED_TEXT.text, connection._RECEIVED_TEXT.utf8))
        )

    script.on_message = on_message
    client = await harness.raw_ws()
    await script.handler()
    small = "sm\u00e4ll"
    await client.send_text(small)
    await expect_bytes(client, server_frame(OP_TEXT, small.encode()) * 2)
    (received,) = protocol_spy.received_utf8
    assert received == small.encode()
    (same, other) = protocol_spy.encoded
    assert same[0] == "encode_message" and same[2] is received  # identity: the payload handed over
    assert other[0] == "encode_message" and other[2] is None
    assert seen_during == [True]
    assert seen_after == [(None, None)]
    assert connection._RECEIVED_TEXT.text is None and connection._RECEIVED_TEXT.utf8 is None


async def test_a_large_echo_hands_the_received_bytes_on_as_the_payload(harness, script, protocol_spy):
    held: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(handler: Any, message: str) -> Any:
        if message == "hold":
            return held
        return handler.write_message(message)

    script.on_message = on_message
    client = await harness.raw_ws()
    handler = await script.handler()
    large = "L\u00e9" * 40_000  # 120,000 UTF-8 bytes: header and payload are written apart
    frame = text(large)
    await client.send_text("hold")
    await script.wait_events(1)
    await client.send(frame)
    # While held, the transport reads ahead: once the whole frame is in, it is parsed in one piece.
    transport = handler.ws_connection.transport
    await bounded(until(lambda: len(transport._backlog or b"") >= len(frame)))
    held.set_result(None)
    await expect_bytes(client, server_frame(OP_TEXT, large.encode()))
    received = protocol_spy.received_utf8[-1]
    assert received == large.encode()
    ((name, _, utf8, (header, payload)),) = protocol_spy.encoded
    assert name == "encode_message_parts"
    assert utf8 is received and payload is received  # not encoded, not copied
    assert header == server_frame(OP_TEXT, large.encode())[: -len(payload)]
    assert connection._RECEIVED_TEXT.text is None


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` on every loop turn; callers bound the wait."""
    while not condition():
        await asyncio.sleep(0.001)


async def test_the_shortcut_does_not_apply_after_on_message_returned(harness, script, protocol_spy):
    kept: list[str] = []
    script.on_message = lambda handler, message: kept.append(message)
    client = await harness.raw_ws()
    handler = await script.handler()
    await client.send_text("later")
    await script.wait_events(1)
    handler.write_message(kept[0])  # the same str, after its dispatch
    await expect_bytes(client, server_frame(OP_TEXT, b"later"))
    ((_, data, utf8, _),) = protocol_spy.encoded
    assert data is kept[0] and utf8 is None


# -- the pull-grace rule ------------------------------------------------------------------------------------------


def start_pull_echo(script: Script) -> None:
    """Handlers that consume with ``async for`` and echo each message."""

    async def consume(handler: Any) -> None:
        async for message in handler:
            handler.write_message("echo:" + message)

    def on_open(handler: Any) -> None:
        handler.consumer = asyncio.ensure_future(consume(handler))

    script.pull = True
    script.on_open = on_open


async def test_a_close_in_the_same_read_waits_until_the_pull_consumer_answered(harness, script):
    start_pull_echo(script)
    client = await harness.raw_ws()
    await script.handler()
    await client.send(text("a") + text("b") + text("c") + build_frame(OP_CLOSE, close_payload(1001)))
    await expect_bytes(
        client,
        server_frame(OP_TEXT, b"echo:a")
        + server_frame(OP_TEXT, b"echo:b")
        + server_frame(OP_TEXT, b"echo:c")
        + server_frame(OP_CLOSE, close_payload(1001)),
    )
    await client.expect_eof()


async def test_a_violation_in_the_same_read_waits_until_the_pull_consumer_answered(harness, script):
    start_pull_echo(script)
    client = await harness.raw_ws()
    await script.handler()
    await client.send(text("a") + text("b") + build_frame(0x3, b"reserved opcode"))
    await expect_bytes(client, server_frame(OP_TEXT, b"echo:a") + server_frame(OP_TEXT, b"echo:b"))
    close = await client.read_close()
    assert close.close_code == 1002
    await client.expect_eof()


async def test_a_consumer_that_never_reads_holds_a_broken_connection_only_pull_grace(harness, script, monkeypatch):
    grace = 0.05
    monkeypatch.setattr(connection, "PULL_GRACE", grace)
    script.pull = True  # messages queue in the inbox; nobody takes them
    client = await harness.raw_ws()
    handler = await script.handler()
    handler.receive_message().cancel()  # the inbox exists, no consumer waits
    started = time.monotonic()
    await client.send(text("never taken") + build_frame(0x3, b""))
    close = await client.read_close()
    waited = time.monotonic() - started
    assert close.close_code == 1002
    assert len(handler._inbox) == 1  # closed while the message was still queued
    assert waited >= grace * 0.9  # it did wait for the consumer first
    await client.expect_eof()


async def test_a_close_while_the_consumer_waits_is_answered_at_once(harness, script, monkeypatch):
    monkeypatch.setattr(connection, "PULL_GRACE", 60.0)  # waiting for it would fail the test
    start_pull_echo(script)
    client = await harness.raw_ws()
    await script.handler()
    await client.send_text("first")
    await expect_bytes(client, server_frame(OP_TEXT, b"echo:first"))
    await client.send_close(1000)
    assert (await client.read_close()).close_code == 1000


# -- keepalive, the write-buffer limit, pings ---------------------------------------------------------------------


async def test_a_peer_that_does_not_answer_keepalive_pings_is_dropped_with_1011(harness, caplog):
    caplog.set_level(logging.DEBUG, logger="tornado.general")
    script = Script()
    port = serve_with(harness, script, websocket_ping_interval=0.02, websocket_ping_timeout=0.02)
    client = await harness.raw_ws(port=port)
    handler = await script.handler()
    assert handler.ws_connection.ping_interval == 0.02 and handler.ws_connection.ping_timeout == 0.02
    ping = await client.read_frame()
    assert (ping.opcode, ping.payload) == (OP_PING, b"")
    frame = await client.read_frame()
    if frame.opcode == OP_PING:  # a second tick can come before the deadline
        frame = await client.read_close()
    assert (frame.opcode, frame.close_code, frame.close_reason) == (OP_CLOSE, 1011, b"keepalive ping timeout")
    await client.expect_eof()
    await bounded(script.closed.wait())
    assert any("did not answer a ping" in r.getMessage() for r in caplog.records)


async def test_keepalive_pings_answered_keep_the_connection(harness):
    script = Script()
    port = serve_with(harness, script, websocket_ping_interval=0.02)
    ws = await bounded(websocket_connect(f"ws://127.0.0.1:{port}/ws"))
    handler = await script.handler()
    conn = handler.ws_connection
    for _ in range(3):  # our client answers each ping
        rtt = await bounded(conn.ping(b"x"))
        assert rtt >= 0
    assert conn.pending_pings == 0
    assert not conn.is_closing()
    ws.close()
    await bounded(ws.wait_closed())


async def test_a_peer_that_does_not_read_is_dropped_past_max_write_buffer_size(harness, caplog):
    caplog.set_level(logging.DEBUG, logger="tornado.general")
    script = Script()
    port = serve_with(harness, script, websocket_max_write_buffer_size=512 * 1024)
    await harness.raw_ws(port=port)  # never reads
    handler = await script.handler()
    conn = handler.ws_connection
    futures = []
    for _ in range(200):  # 50 MB at most
        futures.append(handler.write_message(b"w" * 256 * 1024, binary=True))
        if conn.transport.closed:
            break
    assert conn.transport.closed
    await bounded(conn.wait_closed())
    assert isinstance(futures[-1].exception(), WebSocketClosedError)
    assert any("is not reading" in r.getMessage() for r in caplog.records)
    with pytest.raises(WebSocketClosedError):
        handler.write_message("after the drop")


async def test_ping_payloads_and_limits(harness, script):
    client = await harness.raw_ws()
    handler = await script.handler()
    conn = handler.ws_connection
    future = conn.ping("str payload")
    assert conn.pending_pings == 1
    frame = await client.read_frame()
    assert (frame.opcode, frame.payload) == (OP_PING, b"str payload")
    await client.send_frame(OP_PONG, b"str payload")
    assert await bounded(future) >= 0
    assert conn.pending_pings == 0
    with pytest.raises(ValueError):
        conn.ping(b"x" * 126)
    conn.close()
    with pytest.raises(WebSocketClosedError):
        conn.ping()


# -- the rest of the connection's public face ----------------------------------------------------------------------


async def test_properties_of_an_open_server_connection(harness, script):
    await harness.raw_ws()
    handler = await script.handler()
    conn = handler.ws_connection
    assert conn.side is Side.SERVER
    assert conn.event_loop is asyncio.get_running_loop()
    assert isinstance(conn.stream, DetachedStream)
    assert conn.stream.socket is conn.transport.socket
    assert conn.max_write_buffer_size == 16 * 1024 * 1024
    assert conn.ping_interval == 0 and conn.ping_timeout == 0
    assert conn.pending_pings == 0
    assert conn in OPEN_CONNECTIONS
    assert not conn.closed and not conn.is_closing()


async def test_write_message_types_and_errors(harness, script):
    client = await harness.raw_ws()
    handler = await script.handler()
    conn = handler.ws_connection
    with pytest.raises(TypeError, match="cannot send int"):
        conn.write_message(5)  # type: ignore[arg-type]
    await conn.write_message({"k": [1, "</"]})
    await conn.write_message(b"as text")
    await conn.write_message(b"as binary", binary=True)
    big = b"B" * 100_000
    await conn.write_message(big, binary=True)  # header and payload apart, outside a dispatch
    await expect_bytes(
        client,
        server_frame(OP_TEXT, b'{"k": [1, "<\\/"]}')
        + server_frame(OP_TEXT, b"as text")
        + server_frame(OP_BINARY, b"as binary")
        + server_frame(OP_BINARY, big),
    )
    conn.close()
    with pytest.raises(WebSocketClosedError):
        conn.write_message("closing")


async def test_large_writes_inside_a_dispatch_keep_their_order(harness, script):
    big = "G" * 70_000

    def on_message(handler: Any, message: str) -> None:
        handler.write_message("small")
        handler.write_message(big)
        handler.write_message("tail")

    script.on_message = on_message
    client = await harness.raw_ws()
    await script.handler()
    await client.send_text("go")
    await expect_bytes(
        client,
        server_frame(OP_TEXT, b"small") + server_frame(OP_TEXT, big.encode()) + server_frame(OP_TEXT, b"tail"),
    )


async def test_wait_closed_and_close_callbacks_after_the_end(harness, script):
    client = await harness.raw_ws()
    handler = await script.handler()
    conn = handler.ws_connection
    client.reset()
    await bounded(conn.wait_closed())
    assert conn.closed and conn not in OPEN_CONNECTIONS
    assert conn.wait_closed().done()
    fresh = WebSocketConnection.wait_closed(conn)
    assert fresh.done()
    later: list[Any] = []
    conn.add_close_callback(later.append)
    assert later == [conn]
    conn.shutdown_write()  # a no-op once TCP is gone
    conn.close()  # a no-op too
    conn.start()  # does not reopen
    assert conn not in OPEN_CONNECTIONS


async def test_a_wait_closed_future_made_after_the_end_is_done(harness, script):
    client = await harness.raw_ws()
    handler = await script.handler()
    conn = handler.ws_connection
    client.reset()
    await bounded(script.closed.wait())
    assert conn.wait_closed().done()


async def test_the_client_connection_is_the_same_driver(harness, script):
    ws = await client_for(harness)
    await script.handler()
    conn = ws.ws_connection
    assert type(conn) is WebSocketConnection and conn.side is Side.CLIENT
    await bounded(conn.write_message("from the client driver"))
    await script.wait_events(1)
    assert script.events[0] == ("message", "from the client driver")
    assert await bounded(ws.read_message()) == "from the client driver"  # the server echoed it


async def test_when_tcp_goes_during_a_dispatch_the_rest_of_the_read_is_not_dispatched(harness, script):
    def on_message(handler: Any, message: str) -> None:
        if message == "drop":
            handler.ws_connection.connection_lost()  # as a transport reports the end of TCP

    script.on_message = on_message
    client = await harness.raw_ws()
    handler = await script.handler()
    conn = handler.ws_connection
    await client.send(text("drop") + text("not dispatched") + build_frame(OP_PING, b"nor this"))
    await bounded(script.closed.wait())
    assert script.events == [("message", "drop"), ("close", None)]
    conn.connection_lost()  # a second report changes nothing
    assert script.events == [("message", "drop"), ("close", None)]
    await client.expect_eof()


async def test_flushed_inside_a_dispatch_covers_frames_without_a_future(harness, script):
    flushes: list[asyncio.Future[None]] = []

    def on_message(handler: Any, message: str) -> None:
        conn = handler.ws_connection
        conn.send_prepared(PreparedMessage(b"prepared first", False))  # joins the batch, no future
        flushes.append(conn.flushed())

    script.on_message = on_message
    client = await harness.raw_ws()
    await script.handler()
    await client.send_text("go")
    await expect_bytes(client, server_frame(OP_TEXT, b"prepared first"))
    (flushed,) = flushes
    assert await bounded(flushed) is None


async def test_a_write_the_kernel_takes_during_a_dispatch_is_done_without_a_loop_turn(harness, script):
    # The batch's future is completed when the one send() of the batch returns, not a loop turn
    # later: a callback scheduled during on_message (it runs on the very next turn) already sees it done.
    seen: list[tuple[bool, bool]] = []
    checked = asyncio.Event()

    def on_message(handler: Any, message: str) -> None:
        future = handler.write_message(message)

        def check() -> None:
            seen.append((future.done(), future.done() and future.result() is None))
            checked.set()

        asyncio.get_running_loop().call_soon(check)

    script.on_message = on_message
    client = await harness.raw_ws()
    await script.handler()
    await client.send_text("echo")
    await expect_bytes(client, server_frame(OP_TEXT, b"echo"))
    await bounded(checked.wait())
    assert seen == [(True, True)]


# -- the same driver over TLS (the socket leaves the IOStream for TLSTransport) ---------------------------------------


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


@pytest.fixture
def wss(harness, script, tls) -> Callable[..., Any]:
    server_ctx, client_ctx = tls
    app = tornado.web.Application([(r"/ws", Handler, {"script": script})], websocket_max_write_buffer_size=None)
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(app, ssl_options=server_ctx)
    server.add_sockets([sock])
    harness.servers.append(server)

    async def connect(**kwargs: Any) -> Any:
        client = await bounded(websocket_connect(f"wss://127.0.0.1:{port}/ws", ssl_options=client_ctx, **kwargs))

        class Closer:
            async def close(self) -> None:
                client.close()
                await client.wait_closed()

        harness.ws_clients.append(Closer())
        return client

    return connect


async def test_a_server_close_over_tls_completes_and_ends_tcp(wss, script):
    client = await wss()
    handler = await script.handler()
    conn = handler.ws_connection
    assert isinstance(conn.transport, TLSTransport)
    assert conn.stream.socket is conn.transport.socket
    handler.close(1001, "over tls")
    await bounded(conn.wait_closed())
    await bounded(client.wait_closed())
    assert client.close_code == 1001 and client.close_reason == "over tls"
    assert script.events[-1] == ("close", 1001)


async def test_an_awaitable_on_message_pauses_a_tls_connection(wss, script):
    held: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(handler: Any, message: str) -> Any:
        handler.write_message("echo:" + message)
        return held if message == "hold" else None

    script.on_message = on_message
    client = await wss()
    await script.handler()
    for message in ("hold", "x", "y"):
        client.write_message(message)
    assert await bounded(client.read_message()) == "echo:hold"
    held.set_result(None)
    assert [await bounded(client.read_message()) for _ in range(2)] == ["echo:x", "echo:y"]


async def test_writes_to_a_tls_peer_that_does_not_read_wait_and_fail_when_it_goes(wss, script):
    held: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client = await wss(on_message_callback=lambda message: held)  # the client stops reading
    handler = await script.handler()
    handler.write_message("first")  # the client takes this one and then holds
    futures = []
    for _ in range(60):  # 18 MB at most
        futures.append(handler.write_message(b"t" * 300_000, binary=True))
        if handler.write_buffer_size:
            break
    assert handler.write_buffer_size > 0
    assert not futures[-1].done()
    flushed = handler.ws_connection.flushed()
    assert not flushed.done()
    client.ws_connection.abort()
    for future in (futures[-1], flushed):
        with pytest.raises(WebSocketClosedError):
            await bounded(future)
    held.set_result(None)


async def test_a_write_after_the_tls_stream_closed_fails_at_once(wss, script):
    await wss()
    handler = await script.handler()
    conn = handler.ws_connection
    conn.abort()  # the IOStream is closed; the connection hears of it on a later loop turn
    future = conn.write_message("too late")
    assert future.done() and isinstance(future.exception(), WebSocketClosedError)
    await bounded(conn.wait_closed())
    assert conn.flushed().done() and isinstance(conn.flushed().exception(), WebSocketClosedError)
