"""Handler-level tests: the Tornado-compatible API of WebSocketHandler against real clients."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
import websockets
from conftest import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, TIMEOUT, bounded, build_frame

import tornado_websocket
from tornado_websocket import WebSocketClosedError

pytestmark = pytest.mark.asyncio


# -- the seed example, verbatim ----------------------------------------------------


class EchoWebSocket(tornado_websocket.WebSocketHandler):
    def open(self):
        self.receive_message(self.on_message)

    def on_message(self, message):
        self.write_message("You said: " + message)  # noqa: UP025


async def test_seed_example_echoes_each_message_once_in_order(harness):
    harness.serve([(r"/ws", EchoWebSocket)])
    ws = await harness.ws()
    for i in range(100):
        await ws.send(f"message {i}")
    for i in range(100):
        assert await bounded(ws.recv()) == f"You said: message {i}"
    # Nothing extra was queued behind the 100 answers.
    await ws.send("marker")
    assert await bounded(ws.recv()) == "You said: marker"


async def test_seed_example_one_at_a_time(harness):
    harness.serve([(r"/ws", EchoWebSocket)])
    ws = await harness.ws()
    for i in range(20):
        await ws.send(f"m{i}")
        assert await bounded(ws.recv()) == f"You said: m{i}"


async def test_seed_example_frames_sent_with_the_upgrade_request(harness):
    harness.serve([(r"/ws", EchoWebSocket)])
    client = await harness.raw()
    frames = b"".join(build_frame(OP_TEXT, f"early {i}".encode()) for i in range(3))
    await client.send(client.upgrade_request() + frames)
    assert (await client.read_response()).status == 101
    for i in range(3):
        assert await client.read_text() == f"You said: early {i}"


# -- push mode ----------------------------------------------------------------------


class PushEcho(tornado_websocket.WebSocketHandler):
    def on_message(self, message):
        self.write_message(message, binary=isinstance(message, bytes))


async def test_push_mode_echoes_text_and_binary(harness):
    harness.serve([(r"/ws", PushEcho)])
    ws = await harness.ws()
    sent = [f"text {i}" if i % 2 else f"bin {i}".encode() for i in range(100)]
    for m in sent:
        await ws.send(m)
    for m in sent:
        assert await bounded(ws.recv()) == m


async def test_large_messages_both_ways(harness):
    """Messages larger than the socket buffers: partial sends must keep every byte in order."""
    harness.serve([(r"/ws", PushEcho)])
    ws = await harness.ws()
    big = bytes(range(256)) * (3 * 1024 * 1024 // 256)
    await ws.send(big)
    await ws.send("small after big")
    assert await bounded(ws.recv()) == big
    assert await bounded(ws.recv()) == "small after big"


async def test_many_concurrent_connections(harness):
    harness.serve([(r"/ws", EchoWebSocket)])
    clients = [await harness.ws() for _ in range(20)]

    async def talk(index, ws):
        for i in range(20):
            await ws.send(f"{index}:{i}")
        return [await bounded(ws.recv()) for _ in range(20)]

    results = await bounded(asyncio.gather(*(talk(n, ws) for n, ws in enumerate(clients))))
    for n, replies in enumerate(results):
        assert replies == [f"You said: {n}:{i}" for i in range(20)]


class AsyncPush(tornado_websocket.WebSocketHandler):
    def initialize(self, signal, gate):
        self.signal = signal
        self.gate = gate
        self.active = 0

    async def on_message(self, message):
        self.active += 1
        self.signal.fire("start", (message, self.active))
        if message == "block":
            await self.gate.wait()
        else:
            for _ in range(len(message) % 4):
                await asyncio.sleep(0)
        self.active -= 1
        self.write_message(message)


async def test_async_on_message_keeps_order_one_at_a_time(harness, signal):
    harness.serve([(r"/ws", AsyncPush, {"signal": signal, "gate": asyncio.Event()})])
    ws = await harness.ws()
    sent = ["x" * (i % 7 + 1) + str(i) for i in range(100)]
    for m in sent:
        await ws.send(m)
    for m in sent:
        assert await bounded(ws.recv()) == m
    assert [active for _, active in signal.values["start"]] == [1] * 100
    assert [m for m, _ in signal.values["start"]] == sent


async def test_async_on_message_pauses_reading(harness, signal):
    gate = asyncio.Event()
    harness.serve([(r"/ws", AsyncPush, {"signal": signal, "gate": gate})])
    client = await harness.raw_ws()
    await client.send(build_frame(OP_TEXT, b"block"))
    await signal.wait("start", 1)
    await client.send(build_frame(OP_TEXT, b"next") + build_frame(OP_PING, b"behind"))
    # Bounded check for absence: while on_message("block") waits, nothing else is read.
    with pytest.raises(asyncio.TimeoutError):
        await client.read_frame(timeout=0.3)
    assert signal.count("start") == 1
    gate.set()
    assert await client.read_text() == "block"
    assert await client.read_text() == "next"
    frame = await client.read_frame()
    assert (frame.opcode, frame.payload) == (OP_PONG, b"behind")
    assert signal.count("start") == 2


# -- pull mode ------------------------------------------------------------------------


class PullAwait(tornado_websocket.WebSocketHandler):
    """``await self.receive_message()`` in a task started by open()."""

    def initialize(self, signal, gate=None, echo=True):
        self.signal = signal
        self.gate = gate
        self.echo = echo

    def open(self):
        self.consumer = asyncio.ensure_future(self.consume())

    async def consume(self):
        if self.gate is not None:
            await self.gate.wait()
        while True:
            message = await self.receive_message()
            self.signal.fire("received", message)
            if message is None:
                break
            if self.echo:
                await self.write_message(message, binary=isinstance(message, bytes))


class PullAsyncFor(PullAwait):
    async def consume(self):
        if self.gate is not None:
            await self.gate.wait()
        async for message in self:
            self.signal.fire("received", message)
            if self.echo:
                await self.write_message(message, binary=isinstance(message, bytes))
        self.signal.fire("received", None)


class AsyncCallback(tornado_websocket.WebSocketHandler):
    """receive_message(callback) with a coroutine callback: reading pauses for it too."""

    def initialize(self, signal):
        self.signal = signal
        self.active = 0

    def open(self):
        self.receive_message(self.handle)

    async def handle(self, message):
        self.active += 1
        self.signal.fire("active", self.active)
        for _ in range(int(message) % 3):
            await asyncio.sleep(0)
        self.active -= 1
        await self.write_message(message)


async def test_receive_message_with_async_callback_keeps_order(harness, signal):
    harness.serve([(r"/ws", AsyncCallback, {"signal": signal})])
    ws = await harness.ws()
    for i in range(60):
        await ws.send(str(i))
    for i in range(60):
        assert await bounded(ws.recv()) == str(i)
    assert set(signal.values["active"]) == {1}


class PullWithCancel(PullAwait):
    async def consume(self):
        while True:
            try:
                # A caller that gives up at once (its waiter is cancelled) must not eat a message.
                message = await asyncio.wait_for(self.receive_message(), 0)
            except asyncio.TimeoutError:
                message = await self.receive_message()
            self.signal.fire("received", message)
            if message is None:
                break
            await self.write_message(message)


async def test_pull_mode_cancelled_receive_loses_nothing(harness, signal):
    harness.serve([(r"/ws", PullWithCancel, {"signal": signal})])
    ws = await harness.ws()
    for i in range(50):
        await ws.send(f"c{i}")
    for i in range(50):
        assert await bounded(ws.recv()) == f"c{i}"


@pytest.mark.parametrize("handler", [PullAwait, PullAsyncFor], ids=["await", "async-for"])
async def test_pull_mode_nothing_lost_or_duplicated(harness, signal, handler):
    harness.serve([(r"/ws", handler, {"signal": signal})])
    ws = await harness.ws()
    sent = [f"pull {i}" for i in range(150)] + [b"binary \x00\xff"]
    for m in sent:
        await ws.send(m)
    for m in sent:
        assert await bounded(ws.recv()) == m
    await bounded(ws.close())
    received = await signal.wait("received", len(sent) + 1)
    assert received == sent + [None]


@pytest.mark.parametrize("handler", [PullAwait, PullAsyncFor], ids=["await", "async-for"])
async def test_pull_mode_backpressure_pauses_reading(harness, signal, handler):
    """With a stalled consumer at most max_queued_messages are read ahead."""
    gate = asyncio.Event()
    harness.serve([(r"/ws", handler, {"signal": signal, "gate": gate})])
    client = await harness.raw_ws()
    n = 100
    queue_limit = handler.max_queued_messages
    await client.send(b"".join(build_frame(OP_TEXT, f"{i}".encode()) for i in range(n)) + build_frame(OP_PING, b"end"))
    gate.set()
    frames = []
    while len(frames) < n + 1:
        frames.append(await client.read_frame())
    texts = [f.payload.decode() for f in frames if f.opcode == OP_TEXT]
    assert texts == [str(i) for i in range(n)]
    pong_at = next(i for i, f in enumerate(frames) if f.opcode == OP_PONG)
    assert frames[pong_at].payload == b"end"
    # The ping behind the 100 messages could only be read once the consumer took n - limit of them.
    assert pong_at >= n - queue_limit


@pytest.mark.parametrize("handler", [PullAwait, PullAsyncFor], ids=["await", "async-for"])
async def test_pull_mode_messages_queued_before_close_are_still_delivered(harness, signal, handler):
    gate = asyncio.Event()
    harness.serve([(r"/ws", handler, {"signal": signal, "gate": gate, "echo": False})])
    client = await harness.raw_ws()
    await client.send(
        b"".join(build_frame(OP_TEXT, f"q{i}".encode()) for i in range(5))
        + build_frame(OP_CLOSE, (1000).to_bytes(2, "big"))
    )
    assert (await client.read_close()).close_code == 1000
    await client.expect_eof()
    await client.close()
    gate.set()
    received = await signal.wait("received", 6)
    assert received == [f"q{i}" for i in range(5)] + [None]


class AbandonedPull(tornado_websocket.WebSocketHandler):
    """Pull mode with no consumer: the inbox fills and reading pauses (backpressure)."""

    def initialize(self, signal):
        self.signal = signal

    def open(self):
        self.signal.fire("open", self)

    def on_close(self):
        self.signal.fire("close")


async def test_read_loop_ends_after_close_with_full_inbox(harness, signal):
    harness.serve([(r"/ws", AbandonedPull, {"signal": signal})])
    client = await harness.raw_ws()
    (handler,) = await signal.wait("open")
    limit = handler.max_queued_messages
    # One write: the server parses all of them in one chunk and pauses after `limit`.
    await client.send(b"".join(build_frame(OP_TEXT, f"{i}".encode()) for i in range(limit + 8)))
    await client.close()
    await signal.wait("close")
    # Nothing is left waiting: pulling drains what was queued (in order, no more
    # than the limit: dispatching stopped at the close) and then gets None.
    received = []
    while True:
        message = await bounded(handler.receive_message())
        if message is None:
            break
        received.append(message)
    assert received == [f"{i}" for i in range(len(received))]
    assert len(received) <= limit
    assert handler._connection.closed and handler._connection._batch is None


# -- write_message ---------------------------------------------------------------------


class Writer(tornado_websocket.WebSocketHandler):
    def initialize(self, signal):
        self.signal = signal

    def on_message(self, message):
        if message == "json":
            self.write_message({"a": 1, "b": [True, None], "s": "é"})
        elif message == "bytes-as-binary":
            self.write_message(b"\x00\x01", binary=True)
        elif message == "close-then-write":
            self.close(4000, "closing")
            for attempt in (lambda: self.write_message("late"), lambda: self.ping(b"late")):
                try:
                    attempt()
                except WebSocketClosedError:
                    self.signal.fire("raised")


async def test_write_message_dict_sends_json_text(harness, signal):
    harness.serve([(r"/ws", Writer, {"signal": signal})])
    ws = await harness.ws()
    await ws.send("json")
    reply = await bounded(ws.recv())
    assert isinstance(reply, str)
    assert json.loads(reply) == {"a": 1, "b": [True, None], "s": "é"}
    await ws.send("bytes-as-binary")
    assert await bounded(ws.recv()) == b"\x00\x01"


async def test_write_and_ping_after_close_raise(harness, signal):
    harness.serve([(r"/ws", Writer, {"signal": signal})])
    ws = await harness.ws()
    await ws.send("close-then-write")
    with pytest.raises(websockets.ConnectionClosed):
        await bounded(ws.recv())
    assert ws.close_code == 4000
    assert ws.close_reason == "closing"
    assert signal.count("raised") == 2


# -- on_close: exactly once, on every path ------------------------------------------------


class Tracker(tornado_websocket.WebSocketHandler):
    def initialize(self, signal):
        self.signal = signal

    def open(self):
        self.signal.fire("open", self)

    def on_message(self, message):
        if message == "close-me":
            self.close(4000, "server says bye")
        elif message == "boom":
            raise RuntimeError("boom in on_message")
        else:
            self.write_message(message)

    def on_close(self):
        try:
            self.write_message("from on_close")
            wrote = "wrote"
        except WebSocketClosedError:
            wrote = "raised"
        self.signal.fire("close", (self.close_code, self.close_reason, wrote))


async def closed_once(harness, signal):
    """Wait for on_close, let everything settle, then check it ran exactly once; return its view."""
    await signal.wait("close", 1)
    await harness.aclose()
    assert signal.count("close") == 1, signal.values["close"]
    code, reason, wrote = signal.values["close"][0]
    assert wrote == "raised"  # write_message in on_close raises WebSocketClosedError
    return code, reason


async def test_on_close_clean_close_by_client(harness, signal):
    harness.serve([(r"/ws", Tracker, {"signal": signal})])
    ws = await harness.ws()
    await ws.send("hello")
    assert await bounded(ws.recv()) == "hello"
    await bounded(ws.close(4001, "bye ü"))
    assert await closed_once(harness, signal) == (4001, "bye ü")


async def test_on_close_client_close_without_code(harness, signal):
    harness.serve([(r"/ws", Tracker, {"signal": signal})])
    client = await harness.raw_ws()
    await client.send_close(None)
    assert (await client.read_close()).opcode == OP_CLOSE
    await client.expect_eof()
    await client.close()
    code, reason = await closed_once(harness, signal)
    assert code is None and not reason


async def test_on_close_close_by_server_in_on_message(harness, signal):
    harness.serve([(r"/ws", Tracker, {"signal": signal})])
    ws = await harness.ws()
    await ws.send("close-me")
    with pytest.raises(websockets.ConnectionClosed):
        await bounded(ws.recv())
    assert (ws.close_code, ws.close_reason) == (4000, "server says bye")
    await bounded(ws.wait_closed())
    code, _ = await closed_once(harness, signal)
    assert code == 4000  # the client echoed the server's code


async def test_on_close_server_side_close_from_outside(harness, signal):
    harness.serve([(r"/ws", Tracker, {"signal": signal})])
    client = await harness.raw_ws()
    (handler,) = await signal.wait("open", 1)
    handler.close(4002, "admin")
    with pytest.raises(WebSocketClosedError):
        handler.write_message("after close")
    frame = await client.read_close()
    assert (frame.close_code, frame.close_reason) == (4002, b"admin")
    await client.send_close(4002)
    await client.expect_eof()
    await client.close()
    code, reason = await closed_once(harness, signal)
    assert code == 4002
    assert not reason  # the client's close carried no reason ("" here, None in Tornado)


async def test_on_close_tcp_reset_by_client(harness, signal):
    harness.serve([(r"/ws", Tracker, {"signal": signal})])
    client = await harness.raw_ws()
    await client.send_text("ping-pong")
    assert await client.read_text() == "ping-pong"
    client.reset()
    assert await closed_once(harness, signal) == (None, None)


async def test_on_close_abrupt_drop_by_client(harness, signal):
    harness.serve([(r"/ws", Tracker, {"signal": signal})])
    client = await harness.raw_ws()
    await client.send(build_frame(OP_TEXT, b"half a mess", fin=False))
    await client.close()
    assert await closed_once(harness, signal) == (None, None)


async def test_on_close_after_protocol_error(harness, signal):
    harness.serve([(r"/ws", Tracker, {"signal": signal})])
    client = await harness.raw_ws()
    await client.send(build_frame(OP_TEXT, b"unmasked", mask=False))
    await client.expect_close_then_eof(1002)
    await client.close()
    assert await closed_once(harness, signal) == (None, None)


async def test_on_close_after_ping_timeout(harness, signal):
    harness.serve(
        [(r"/ws", Tracker, {"signal": signal})],
        websocket_ping_interval=0.2,
        websocket_ping_timeout=0.2,
    )
    client = await harness.raw_ws()  # never answers pings
    await signal.wait("close", 1, timeout=3)
    frames = []
    while True:
        try:
            frames.append(await client.read_frame(timeout=2))
        except (asyncio.IncompleteReadError, ConnectionResetError):
            break  # EOF: the server dropped us
    assert frames and frames[0].opcode == OP_PING
    assert all(f.opcode == OP_PING for f in frames[:-1])
    if frames[-1].opcode == OP_CLOSE:
        assert frames[-1].close_code == 1011
    assert await closed_once(harness, signal) == (None, None)


class PongCounter(Tracker):
    def on_pong(self, data):
        self.signal.fire("pong", data)


async def test_keepalive_keeps_an_answering_client(harness, signal):
    harness.serve(
        [(r"/ws", PongCounter, {"signal": signal})],
        websocket_ping_interval=0.1,
        websocket_ping_timeout=0.2,
    )
    ws = await harness.ws()  # websockets answers pings by itself
    await signal.wait("pong", 3, timeout=3)
    await ws.send("still open")
    assert await bounded(ws.recv()) == "still open"
    assert signal.count("close") == 0


class CloseInOpen(Tracker):
    def open(self):
        self.close(4003, "go away")


async def test_close_in_open(harness, signal):
    harness.serve([(r"/ws", CloseInOpen, {"signal": signal})])
    client = await harness.raw_ws()
    frame = await client.read_close()
    assert (frame.close_code, frame.close_reason) == (4003, b"go away")
    await client.send_close(4003, b"ok")
    await client.expect_eof()
    await client.close()
    assert await closed_once(harness, signal) == (4003, "ok")


class GatedOpen(Tracker):
    def initialize(self, signal, gate):
        super().initialize(signal)
        self.gate = gate

    async def open(self):
        self.signal.fire("opening")
        await self.gate.wait()
        self.signal.fire("opened")


async def test_on_close_once_when_client_drops_during_async_open(harness, signal):
    gate = asyncio.Event()
    harness.serve([(r"/ws", GatedOpen, {"signal": signal, "gate": gate})])
    client = await harness.raw_ws()
    await signal.wait("opening")
    client.reset()
    await signal.wait("close", 1)
    gate.set()
    await signal.wait("opened", 1)
    code, _ = await closed_once(harness, signal)
    assert code is None


class PingHook(Tracker):
    def on_ping(self, data):
        self.signal.fire("on_ping", data)


async def test_on_ping_hook_and_automatic_pong(harness, signal):
    harness.serve([(r"/ws", PingHook, {"signal": signal})])
    client = await harness.raw_ws()
    await client.send_frame(OP_PING, b"hook")
    frame = await client.read_frame()
    assert (frame.opcode, frame.payload) == (OP_PONG, b"hook")
    assert await signal.wait("on_ping") == [b"hook"]


class GatedOnMessage(Tracker):
    def initialize(self, signal, gate):
        super().initialize(signal)
        self.gate = gate

    async def on_message(self, message):
        self.signal.fire("order", ("message", message))
        self.signal.fire("stuck")
        await self.gate.wait()

    def on_close(self):
        self.signal.fire("order", ("close", None))
        super().on_close()


@pytest.mark.parametrize("how", ["reset", "fin"])
async def test_on_close_when_client_drops_during_async_on_message(harness, signal, how):
    gate = asyncio.Event()
    harness.serve([(r"/ws", GatedOnMessage, {"signal": signal, "gate": gate})])
    client = await harness.raw_ws()
    await client.send_text("never finishes")
    await signal.wait("stuck")
    if how == "reset":
        client.reset()
    else:
        await client.close()
    await signal.wait("close", 1)
    gate.set()
    await harness.aclose()
    assert signal.count("close") == 1


async def test_no_on_message_after_on_close(harness, signal):
    """Messages parsed in the same read as a message whose handler is still running when the peer drops."""
    gate = asyncio.Event()
    harness.serve([(r"/ws", GatedOnMessage, {"signal": signal, "gate": gate})])
    client = await harness.raw_ws()
    await client.send(build_frame(OP_TEXT, b"first") + build_frame(OP_TEXT, b"second"))
    await signal.wait("stuck")
    client.reset()
    await signal.wait("close", 1)
    gate.set()
    await harness.aclose()
    order = signal.values["order"]
    assert order[-1] == ("close", None), order


# -- errors in user code -------------------------------------------------------------------


class FailingOpen(Tracker):
    def open(self):
        raise RuntimeError("boom in open")


class AsyncFailingMessage(Tracker):
    async def on_message(self, message):
        await asyncio.sleep(0)
        raise RuntimeError("boom in async on_message")


def _error_records(caplog, needle):
    return [
        r
        for r in caplog.records
        if r.name == "tornado.application"
        and r.levelno >= logging.ERROR
        and r.exc_info
        and needle in str(r.exc_info[1])
    ]


@pytest.mark.parametrize(
    "path, trigger, needle",
    [
        ("/open-fails", None, "boom in open"),
        ("/ws", "boom", "boom in on_message"),
        ("/async-fails", "anything", "boom in async on_message"),
    ],
    ids=["open", "on_message", "async-on_message"],
)
async def test_user_exception_logged_and_closed_with_1011(harness, signal, caplog, path, trigger, needle):
    caplog.set_level(logging.ERROR, logger="tornado.application")
    other_signal = type(signal)()
    harness.serve(
        [
            (r"/ws", Tracker, {"signal": signal}),
            (r"/open-fails", FailingOpen, {"signal": signal}),
            (r"/async-fails", AsyncFailingMessage, {"signal": signal}),
            (r"/other", Tracker, {"signal": other_signal}),
        ]
    )
    other = await harness.ws("/other")
    await other.send("before")
    assert await bounded(other.recv()) == "before"

    client = await harness.raw_ws(path)
    if trigger is not None:
        await client.send_text(trigger)
    frame = await client.read_close()
    assert frame.close_code == 1011
    await client.send_close(1011)
    await client.expect_eof()
    await client.close()
    await signal.wait("close", 1)

    records = _error_records(caplog, needle)
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    assert "Traceback" in caplog.text and needle in caplog.text

    await other.send("after")
    assert await bounded(other.recv()) == "after"
    assert other_signal.count("close") == 0
    await harness.aclose()
    assert signal.count("close") == 1


async def test_exception_in_on_message_does_not_process_later_messages_as_errors(harness, signal, caplog):
    """Messages behind the failing one must not produce a cascade of logged errors."""
    caplog.set_level(logging.ERROR, logger="tornado.application")
    harness.serve([(r"/ws", Tracker, {"signal": signal})])
    client = await harness.raw_ws()
    await client.send(
        build_frame(OP_TEXT, b"boom") + build_frame(OP_TEXT, b"after 1") + build_frame(OP_TEXT, b"after 2")
    )
    frame = await client.read_close()
    assert frame.close_code == 1011
    await client.send_close(1011)
    await client.expect_eof()
    await client.close()
    await harness.aclose()
    errors = [r for r in caplog.records if r.name == "tornado.application" and r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() + " " + repr(r.exc_info and r.exc_info[1]) for r in errors]


# -- ping / RTT ----------------------------------------------------------------------------


class Pinger(tornado_websocket.WebSocketHandler):
    def initialize(self, signal):
        self.signal = signal

    def open(self):
        self.task = asyncio.ensure_future(self.measure())

    async def measure(self):
        try:
            self.ping(b"x" * 126)
        except ValueError:
            self.signal.fire("too-long")
        try:
            rtt = await self.ping(b"rtt-probe")
            self.signal.fire("rtt", rtt)
            rtt2 = await self.ping()
            self.signal.fire("rtt", rtt2)
        except WebSocketClosedError:
            self.signal.fire("ping-closed")


async def test_handler_ping_resolves_with_rtt(harness, signal):
    harness.serve([(r"/ws", Pinger, {"signal": signal})])
    await harness.ws()  # websockets answers pings with the same payload
    rtts = await signal.wait("rtt", 2)
    for rtt in rtts:
        assert isinstance(rtt, float)
        assert 0.0 <= rtt < TIMEOUT
    assert signal.count("too-long") == 1


async def test_handler_ping_payload_seen_by_raw_client(harness, signal):
    harness.serve([(r"/ws", Pinger, {"signal": signal})])
    client = await harness.raw_ws()
    frame = await client.read_frame()
    assert (frame.opcode, frame.payload) == (OP_PING, b"rtt-probe")
    assert signal.count("rtt") == 0
    await client.send_frame(OP_PONG, b"rtt-probe")
    (rtt,) = await signal.wait("rtt", 1)
    assert isinstance(rtt, float) and rtt >= 0.0
    frame = await client.read_frame()
    assert (frame.opcode, frame.payload) == (OP_PING, b"")
    # The second ping is never answered: its future fails once the connection is gone.
    client.reset()
    await signal.wait("ping-closed", 1)
    assert signal.count("rtt") == 1


# -- Tornado compatibility odds and ends ---------------------------------------------------


class PathArgs(tornado_websocket.WebSocketHandler):
    def open(self, room, user):
        self.write_message(f"{room}/{user}")

    def select_subprotocol(self, subprotocols):
        return subprotocols[-1] if subprotocols else None


async def test_open_receives_path_arguments_and_subprotocol(harness):
    harness.serve([(r"/room/(\w+)/(\w+)", PathArgs)])
    ws = await harness.ws("/room/lobby/alice", subprotocols=["a", "b"])
    assert ws.subprotocol == "b"
    assert await bounded(ws.recv()) == "lobby/alice"


# -- when the replies to one read leave ---------------------------------------------------


class BatchProbe(tornado_websocket.WebSocketHandler):
    """Records, for each message, how many frames written earlier in this read still wait."""

    def initialize(self, signal):
        self.signal = signal

    def on_message(self, message):
        batch = self.ws_connection._batch
        self.signal.fire("waiting", len(batch) if batch else 0)
        self.write_message("re:" + message)


@pytest.mark.parametrize("slow", [False, True])
async def test_replies_to_one_read_leave_together_unless_handling_is_slow(harness, signal, monkeypatch, slow):
    """One send per read; but once FLUSH_AFTER has passed, what is ready leaves before the next message."""
    from tornado_websocket import batching

    now = [0.0]

    def clock() -> float:
        if slow:
            now[0] += batching.FLUSH_AFTER  # every message takes the whole budget
        return now[0]

    monkeypatch.setattr(batching, "clock", clock)
    harness.serve([(r"/ws", BatchProbe, {"signal": signal})])
    client = await harness.raw_ws()
    await client.send(b"".join(build_frame(OP_TEXT, f"{i}".encode()) for i in range(4)))
    waiting = await signal.wait("waiting", 4)
    assert waiting == ([0, 0, 0, 0] if slow else [0, 1, 2, 3])
    assert [await client.read_text() for _ in range(4)] == ["re:0", "re:1", "re:2", "re:3"]
