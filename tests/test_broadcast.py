"""broadcast() over real sockets to handlers, clients and WebSocketConnection objects, byte for byte."""

from __future__ import annotations

import asyncio
import struct
import zlib
from typing import Any

import pytest
from conftest import OP_BINARY, OP_TEXT, TIMEOUT, RawClient, bounded, build_frame
from tornado.escape import json_encode

import tornado_websocket
from tornado_websocket import WebSocketHandler, broadcast, websocket_connect
from tornado_websocket.connection import WebSocketConnection

pytestmark = pytest.mark.asyncio

END = b"END"  # broadcast last to every peer: anything extra or missing before it misaligns the bytes


class Peers:
    """The server handlers of one test, and what each received."""

    def __init__(self) -> None:
        self.handlers: list[Any] = []
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        self.received: dict[int, list[Any]] = {}
        self.got = asyncio.Event()

    async def wait_open(self, n: int) -> None:
        async def until() -> None:
            while len(self.handlers) < n:
                self.opened.clear()
                await self.opened.wait()

        await bounded(until())

    async def wait_received(self, handler: Any, n: int) -> list[Any]:
        async def until() -> None:
            while len(self.received.get(id(handler), [])) < n:
                self.got.clear()
                await self.got.wait()

        await bounded(until())
        return self.received[id(handler)]


class Handler(WebSocketHandler):
    def initialize(self, peers: Peers) -> None:
        self.peers = peers

    def open(self) -> None:
        self.peers.handlers.append(self)
        self.peers.opened.set()

    def on_message(self, message: Any) -> None:
        self.peers.received.setdefault(id(self), []).append(message)
        self.peers.got.set()

    def on_close(self) -> None:
        self.peers.closed.set()


class CompressingHandler(Handler):
    def get_compression_options(self) -> dict[str, Any]:
        return {}


class RelayHandler(Handler):
    """Writes around a broadcast made while its message is dispatched."""

    def on_message(self, message: Any) -> None:
        self.write_message("before")
        broadcast(self.peers.handlers, "middle:" + message)
        self.write_message("after")


@pytest.fixture
def peers() -> Peers:
    return Peers()


def serve(harness: Any, peers: Peers) -> int:
    return harness.serve(
        [
            (r"/ws", Handler, {"peers": peers}),
            (r"/deflate", CompressingHandler, {"peers": peers}),
            (r"/relay", RelayHandler, {"peers": peers}),
        ]
    )


def frame(opcode: int, payload: bytes) -> bytes:
    """The unmasked, uncompressed frame a server sends (built by the test harness, not the package)."""
    return build_frame(opcode, payload, mask=False)


async def read_exactly(client: RawClient, n: int) -> bytes:
    return await bounded(client.reader.readexactly(n))


async def read_raw_frame(client: RawClient) -> tuple[int, bytes]:
    """(first header byte, payload) of the next server frame; RSV bits allowed (compression)."""
    b0, b1 = await read_exactly(client, 2)
    assert not b1 & 0x80, "a server frame must not be masked"
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await read_exactly(client, 2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await read_exactly(client, 8))
    return b0, await read_exactly(client, n) if n else b""


# -- servers without compression: one frame, byte for byte ------------------------------------------


MESSAGES = [
    ("hello", False, frame(OP_TEXT, b"hello")),
    ("h\u00e9llo \u2603", False, frame(OP_TEXT, "h\u00e9llo \u2603".encode())),
    (b"\x00\xffraw", True, frame(OP_BINARY, b"\x00\xffraw")),
    (b"bytes as text", False, frame(OP_TEXT, b"bytes as text")),
    (bytearray(b"a bytearray"), True, frame(OP_BINARY, b"a bytearray")),
    (memoryview(b"a memoryview"), True, frame(OP_BINARY, b"a memoryview")),
    ({"a": 1, "b": ["</script>", None]}, False, frame(OP_TEXT, b'{"a": 1, "b": ["<\\/script>", null]}')),
    ("", False, frame(OP_TEXT, b"")),
    ("x" * 125, False, frame(OP_TEXT, b"x" * 125)),
    ("y" * 126, False, frame(OP_TEXT, b"y" * 126)),
    (b"z" * 65535, True, frame(OP_BINARY, b"z" * 65535)),
    (b"w" * 65536, True, frame(OP_BINARY, b"w" * 65536)),
    (b"v" * 200_000, True, frame(OP_BINARY, b"v" * 200_000)),
]


async def test_every_message_type_reaches_every_handler_byte_for_byte(harness, peers):
    serve(harness, peers)
    clients = [await harness.raw_ws() for _ in range(3)]
    await peers.wait_open(3)
    expected = b""
    for message, binary, wire in MESSAGES:
        assert broadcast(peers.handlers, message, binary=binary) == 3
        expected += wire
    assert broadcast(peers.handlers, END, binary=True) == 3
    expected += frame(OP_BINARY, END)
    for client in clients:
        assert await read_exactly(client, len(expected)) == expected


async def test_websocket_connection_objects_and_generators_are_accepted(harness, peers):
    serve(harness, peers)
    clients = [await harness.raw_ws() for _ in range(2)]
    await peers.wait_open(2)
    connections = [h.ws_connection for h in peers.handlers]
    assert all(type(c) is WebSocketConnection for c in connections)
    assert broadcast(iter(connections), "to connections") == 2
    assert broadcast((h for h in peers.handlers), b"to handlers", binary=True) == 2
    expected = frame(OP_TEXT, b"to connections") + frame(OP_BINARY, b"to handlers")
    for client in clients:
        assert await read_exactly(client, len(expected)) == expected


async def test_an_empty_collection_sends_nothing():
    assert broadcast([], "nobody") == 0


@pytest.mark.parametrize("message", [42, 1.5, None, ["a", "list"], ("a", "tuple"), object()])
async def test_other_message_types_raise_type_error_and_send_nothing(harness, peers, message):
    serve(harness, peers)
    client = await harness.raw_ws()
    await peers.wait_open(1)
    with pytest.raises(TypeError, match="cannot broadcast"):
        broadcast(peers.handlers, message)
    broadcast(peers.handlers, END, binary=True)
    expected = frame(OP_BINARY, END)
    assert await read_exactly(client, len(expected)) == expected


# -- closing and closed connections are skipped ------------------------------------------------------


async def test_closing_and_gone_connections_are_skipped(harness, peers):
    serve(harness, peers)
    open_client, closed_handler_client, closed_connection_client, gone_client = [
        await harness.raw_ws() for _ in range(4)
    ]
    await peers.wait_open(4)
    open_handler, closed_handler, closed_connection_handler, gone_handler = peers.handlers
    closed_connection = closed_connection_handler.ws_connection
    gone_connection = gone_handler.ws_connection

    closed_handler.close(1000, "bye")  # the handler let go of its connection (ws_connection is None)
    closed_connection.close(1001, "")  # the connection itself is closing (the handler still holds it)
    assert closed_handler.ws_connection is None
    assert closed_connection_handler.ws_connection is closed_connection and closed_connection.is_closing()

    gone_client.reset()  # the peer is gone
    await bounded(gone_connection.wait_closed())
    assert gone_handler.ws_connection is None and gone_connection.closed

    everyone = [*peers.handlers, closed_connection, gone_connection]
    assert broadcast(everyone, "only the open one") == 1
    assert broadcast(everyone, END, binary=True) == 1
    expected = frame(OP_TEXT, b"only the open one") + frame(OP_BINARY, END)
    assert await read_exactly(open_client, len(expected)) == expected

    # The closing ones got their Close frame and nothing after it.
    for client, code in ((closed_handler_client, 1000), (closed_connection_client, 1001)):
        close = await client.read_close()
        assert close.close_code == code
        await client.send_close(code)
        await client.expect_eof()


# -- compressing connections encode for themselves ------------------------------------------------------


async def test_compressing_connections_get_compressed_frames_and_plain_ones_plain(harness, peers):
    serve(harness, peers)
    plain = await harness.raw_ws("/ws")
    deflating = await harness.raw_ws("/deflate", headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
    await peers.wait_open(2)
    assert peers.handlers[1].ws_connection.protocol.deflate is not None
    assert peers.handlers[0].ws_connection.protocol.deflate is None

    messages: list[tuple[Any, bool, int, bytes]] = [
        ("compress me " * 20, False, OP_TEXT, ("compress me " * 20).encode()),
        (b"\x01\x02" * 500, True, OP_BINARY, b"\x01\x02" * 500),
        ({"k": "v" * 100}, False, OP_TEXT, json_encode({"k": "v" * 100}).encode()),
        ("compress me " * 20, False, OP_TEXT, ("compress me " * 20).encode()),  # the shared context
        ("short", False, OP_TEXT, b"short"),  # under the threshold: sent plain
    ]
    for message, binary, _, _ in messages:
        assert broadcast(peers.handlers, message, binary=binary) == 2

    expected_plain = b"".join(frame(opcode, payload) for _, _, opcode, payload in messages)
    assert await read_exactly(plain, len(expected_plain)) == expected_plain

    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # context takeover: one inflater for the connection
    for _, _, opcode, payload in messages:
        b0, data = await read_raw_frame(deflating)
        if len(payload) >= 32:
            assert b0 == 0x80 | 0x40 | opcode, f"expected a compressed frame, got {b0:#x}"
            assert inflater.decompress(data + b"\x00\x00\xff\xff") == payload
            assert len(data) < len(payload)
        else:
            assert (b0, data) == (0x80 | opcode, payload)


# -- client connections mask their frames -------------------------------------------------------------


async def test_client_connections_send_masked_frames_the_server_accepts(harness, peers):
    serve(harness, peers)
    clients = [await bounded(websocket_connect(harness.url("/ws"))) for _ in range(2)]
    deflating = await bounded(websocket_connect(harness.url("/deflate"), compression_options={}))
    await peers.wait_open(3)
    try:
        targets = [clients[0], clients[1].ws_connection, deflating]
        assert type(targets[1]) is WebSocketConnection and targets[1].protocol.is_client
        sent: list[Any] = [
            "text from a client",
            b"\x00binary\xff" * 10,
            {"json": True},
            "z" * 70_000,
            "long text compressed " * 10,
        ]
        expected: list[Any] = [
            "text from a client",
            b"\x00binary\xff" * 10,
            json_encode({"json": True}),
            "z" * 70_000,
            "long text compressed " * 10,
        ]
        for message in sent:
            assert broadcast(targets, message, binary=isinstance(message, bytes)) == 3
        for handler in peers.handlers:
            assert await peers.wait_received(handler, len(expected)) == expected
        # Nothing failed on the way: the clients are open and no close was sent.
        assert all(not c.is_closing() for c in (*clients, deflating))
    finally:
        for client in (*clients, deflating):
            client.close()
            await bounded(client.wait_closed())


async def test_a_client_that_closed_is_skipped(harness, peers):
    serve(harness, peers)
    client = await bounded(websocket_connect(harness.url("/ws")))
    await peers.wait_open(1)
    client.close()
    assert broadcast([client], "nothing") == 0
    await bounded(client.wait_closed())
    assert broadcast([client], "nothing") == 0
    assert peers.received == {}


# -- inside a dispatch the broadcast keeps its place -------------------------------------------------------


async def test_a_broadcast_from_on_message_keeps_its_place_between_writes(harness, peers):
    serve(harness, peers)
    sender = await harness.raw_ws("/relay")
    await peers.wait_open(1)
    listener = await harness.raw_ws("/ws")
    await peers.wait_open(2)
    await sender.send_text("m")
    expected = frame(OP_TEXT, b"before") + frame(OP_TEXT, b"middle:m") + frame(OP_TEXT, b"after")
    assert await read_exactly(sender, len(expected)) == expected
    assert await read_exactly(listener, len(frame(OP_TEXT, b"middle:m"))) == frame(OP_TEXT, b"middle:m")


async def test_broadcast_is_exported_by_the_package():
    assert tornado_websocket.broadcast is broadcast


async def test_a_slow_reader_gets_everything_in_order(harness, peers):
    # The kernel does not take it all at once: the rest waits in the connection's queue, in order.
    serve(harness, peers)
    client = await harness.raw_ws()
    await peers.wait_open(1)
    big = [bytes([i]) * 300_000 for i in range(40)]  # 12 MB: more than loopback buffers hold
    for payload in big:
        assert broadcast(peers.handlers, payload, binary=True) == 1
    assert peers.handlers[0].write_buffer_size > 0
    for payload in big:
        expected = frame(OP_BINARY, payload)
        assert await bounded(client.reader.readexactly(len(expected)), TIMEOUT) == expected


# -- the C fan-out loop (_speedups.send_frame_to_all) and the Python path beside it ------------------


async def test_send_frame_to_all_reports_what_each_socket_did_not_take():
    import errno
    import socket

    speedups = pytest.importorskip("tornado_websocket._speedups")
    a, b = socket.socketpair()
    full_a, full_b = socket.socketpair()
    gone_a, gone_b = socket.socketpair()
    try:
        full_a.setblocking(False)
        while True:  # fill full_a's buffers: the C loop must not block on it
            try:
                full_a.send(b"x" * 65536)
            except BlockingIOError:
                break
        gone_b.close()
        frame = b"\x82\x03abc"
        short = speedups.send_frame_to_all([a.fileno(), full_a.fileno(), gone_a.fileno()], frame)
        assert short == [(1, 0), (2, -errno.EPIPE)]  # and no SIGPIPE killed us
        assert b.recv(16) == frame
        with pytest.raises(ValueError):
            speedups.send_frame_to_all([-1], frame)
        assert speedups.send_frame_to_all([], frame) == []
    finally:
        for sock in (a, b, full_a, full_b, gone_a):
            sock.close()


async def test_plain_server_connections_go_through_the_c_loop_and_the_others_do_not(harness, peers, monkeypatch):
    from tornado_websocket import connection as connection_module

    real = connection_module._send_frame_to_all
    if real is None:
        pytest.skip("no C extension (or TORNADO_WEBSOCKET_NO_SPEEDUPS): the Python path is the only one")
    calls: list[int] = []

    def spy(fds: list[int], data: bytes) -> list[tuple[int, int]]:
        calls.append(len(fds))
        return real(fds, data)

    monkeypatch.setattr(connection_module, "_send_frame_to_all", spy)
    port = serve(harness, peers)
    plain = [await harness.raw_ws() for _ in range(3)]
    deflate = await harness.raw_ws("/deflate", headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
    await peers.wait_open(4)
    message = b"to all, compressible " * 10
    assert broadcast(peers.handlers, message, binary=True) == 4
    assert calls == [3], "the three plain connections in one C call, the compressing one on its own"
    for client in plain:
        assert await read_exactly(client, len(frame(OP_BINARY, message))) == frame(OP_BINARY, message)
    b0, payload = await read_raw_frame(deflate)
    assert b0 & 0x40  # compressed by its own connection
    assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == message
    assert port
    stats = [h.ws_connection.protocol.messages_sent for h in peers.handlers]
    assert stats == [1, 1, 1, 1]


@pytest.mark.parametrize("python_path", [False, True], ids=["c-loop", "python-path"])
async def test_broadcast_counts_every_byte_of_every_frame_it_sends(harness, peers, monkeypatch, python_path):
    # bytes_sent is derived from the message counters (see Protocol.bytes_sent): a broadcast must
    # keep it equal to the bytes that left, for short headers (2 bytes) and longer ones (4 and 10).
    from tornado_websocket import connection as connection_module

    if python_path:
        monkeypatch.setattr(connection_module, "_send_frame_to_all", None)
    serve(harness, peers)
    clients = [await harness.raw_ws() for _ in range(2)]
    await peers.wait_open(2)
    before = [(h.ws_connection.protocol.messages_sent, h.ws_connection.protocol.bytes_sent) for h in peers.handlers]
    wire = frame(OP_BINARY, b"s" * 10) + frame(OP_BINARY, b"m" * 300) + frame(OP_BINARY, b"l" * 70_000)
    for payload in (b"s" * 10, b"m" * 300, b"l" * 70_000):
        assert broadcast(peers.handlers, payload, binary=True) == 2
    for client in clients:
        assert await read_exactly(client, len(wire)) == wire
    after = [(h.ws_connection.protocol.messages_sent, h.ws_connection.protocol.bytes_sent) for h in peers.handlers]
    assert [(m1 - m0, b1 - b0) for (m0, b0), (m1, b1) in zip(before, after)] == [(3, len(wire))] * 2
