"""WebSocketEndpoint, the face the handler and the client share, over real sockets on 127.0.0.1.

Every call goes through ``ws_connection`` (a stand-in or ``None`` there is
obeyed), and ``write_message``/``ping``/``close`` work from other threads:
4 threads x 5,000 messages on one connection whose peer reads slowly, both
ways, each message arriving once and each thread's order kept.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import socket
import threading
from typing import Any, Callable, Optional

import pytest
from conftest import OP_TEXT, TIMEOUT, bounded, build_frame

from tornado_websocket import WebSocketClosedError, WebSocketHandler, websocket_connect
from tornado_websocket.endpoint import WebSocketEndpoint

pytestmark = pytest.mark.asyncio

THREADS = 4
PER_THREAD = 5_000
MIN_SIZE, MAX_SIZE = 8, 20 * 1024
WINDOW = 64  # writes a thread leaves in flight before it waits for the oldest
BOUND = 60.0  # every thread test ends within this


class Server:
    """The handlers of one test and what they received."""

    def __init__(self) -> None:
        self.handlers: list[Any] = []
        self.opened = asyncio.Event()
        self.received: list[Any] = []
        self.closes: list[Any] = []
        self.closed = asyncio.Event()
        self.consumer: Optional[Callable[[Any], Any]] = None  # replaces on_message when set

    async def handler(self, n: int = 1) -> Any:
        async def until() -> None:
            while len(self.handlers) < n:
                self.opened.clear()
                await self.opened.wait()

        await bounded(until())
        return self.handlers[n - 1]


class Handler(WebSocketHandler):
    def initialize(self, server: Server) -> None:
        self.server = server

    def open(self) -> None:
        self.server.handlers.append(self)
        self.server.opened.set()

    def on_message(self, message: Any) -> Any:
        if self.server.consumer is not None:
            return self.server.consumer(message)
        self.server.received.append(message)
        return None

    def on_close(self) -> None:
        self.server.closes.append((self.close_code, self.close_reason))
        self.server.closed.set()


class IteratingHandler(WebSocketHandler):
    """Pulls with ``async for`` and echoes upper-cased; closes on "close"."""

    def initialize(self, server: Server) -> None:
        self.server = server

    def open(self) -> None:
        self.server.handlers.append(self)
        self.server.opened.set()
        self.task = asyncio.ensure_future(self.consume())

    async def consume(self) -> None:
        async for message in self:
            if message == "close":
                self.close(1000, "asked")
            else:
                self.write_message(message.upper())
        self.server.received.append("iteration ended")


@pytest.fixture
def server(harness) -> Server:
    state = Server()
    harness.serve([(r"/ws", Handler, {"server": state}), (r"/iter", IteratingHandler, {"server": state})])
    return state


async def connect(harness, path: str = "/ws", **kwargs: Any) -> Any:
    client = await bounded(websocket_connect(harness.url(path), **kwargs))
    harness.ws_clients.append(_Closer(client))
    return client


class _Closer:
    """Lets the harness close our client at teardown like a websockets client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def close(self) -> None:
        self.client.close()
        await self.client.wait_closed()


class StandIn:
    """Something put in ``ws_connection`` by an application or a test: every call must reach it."""

    def __init__(self) -> None:
        self._thread = threading.get_ident()
        self.calls: list[tuple[Any, ...]] = []

    def write_message(self, message: Any, binary: bool = False) -> str:
        self.calls.append(("write_message", message, binary))
        return "written"

    def write_ping(self, data: Any) -> None:
        self.calls.append(("write_ping", data))

    def close(self, code: Any, reason: Any) -> None:
        self.calls.append(("close", code, reason))

    def is_closing(self) -> bool:
        self.calls.append(("is_closing",))
        return False


async def in_thread(call: Callable[[], Any]) -> Any:
    """Run ``call`` in a new thread (not the loop's) and await its result, bounded."""
    return await bounded(asyncio.get_running_loop().run_in_executor(None, call), BOUND)


# -- through ws_connection ----------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["server", "client"])
async def test_calls_go_to_what_ws_connection_holds(harness, server, side):
    client = await connect(harness)
    handler = await server.handler()
    endpoint = handler if side == "server" else client
    real = endpoint.ws_connection
    stand_in = StandIn()
    endpoint.ws_connection = stand_in
    # As Tornado's handler: ask is_closing() first, ping through write_ping() (no future).
    assert endpoint.write_message("m", binary=True) == "written"
    assert endpoint.ping("p") is None
    assert endpoint.is_closing() is False
    endpoint.close(4000, "why")
    assert stand_in.calls == [
        ("is_closing",),
        ("write_message", "m", True),
        ("is_closing",),
        ("write_ping", b"p"),
        ("is_closing",),
        ("close", 4000, "why"),
    ]
    assert endpoint.ws_connection is None  # close() let go of it, as Tornado's does
    # The real connection saw none of it: it is open and the peer got nothing.
    assert not real.is_closing()
    endpoint.ws_connection = real
    if side == "client":
        got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        server.consumer = got.set_result
    endpoint.write_message("real")
    if side == "server":
        assert await bounded(client.read_message()) == "real"
    else:
        assert await bounded(got) == "real"


@pytest.mark.parametrize("side", ["server", "client"])
async def test_ws_connection_none_means_closed(harness, server, side):
    client = await connect(harness)
    handler = await server.handler()
    endpoint = handler if side == "server" else client
    real = endpoint.ws_connection
    endpoint.ws_connection = None
    with pytest.raises(WebSocketClosedError):
        endpoint.write_message("x")
    with pytest.raises(WebSocketClosedError):
        endpoint.ping()
    assert endpoint.close() is None  # a no-op
    assert endpoint.is_closing()
    assert not real.is_closing()
    endpoint.ws_connection = real  # so that the test ends with a close handshake


async def _until(condition: Callable[[], bool]) -> None:
    """Poll a condition no event reports (a buffer size) on every loop turn; the caller bounds the wait."""
    while not condition():
        await asyncio.sleep(0.001)


# -- is_closing, close codes --------------------------------------------------------------------------


async def test_is_closing_on_both_sides_through_a_close_handshake(harness, server):
    client = await connect(harness)
    handler = await server.handler()
    assert not handler.is_closing() and not client.is_closing()
    client.close(4001, "client says")
    assert client.is_closing()
    await bounded(server.closed.wait())
    assert handler.is_closing()
    assert server.closes == [(4001, "client says")]
    await bounded(client.wait_closed())
    assert client.close_code == 4001  # the server echoed the code
    assert client.is_closing()


async def test_an_endpoint_that_never_opened_is_closing():
    endpoint = WebSocketEndpoint()
    assert endpoint.is_closing()
    assert endpoint.write_buffer_size == 0
    assert endpoint.close() is None
    with pytest.raises(WebSocketClosedError):
        endpoint.write_message("x")
    with pytest.raises(WebSocketClosedError):
        endpoint.set_nodelay(True)
    called = []
    endpoint.add_close_callback(called.append)
    assert called == [endpoint]


async def test_close_sends_1011_for_a_code_that_may_not_be_sent(harness, server):
    """Tornado sends what it is given (bokeh closes with 10000 from its error path); we send 1011 instead."""
    client = await connect(harness)
    await server.handler()
    client.close(10000, "r" * 124)  # an impossible code and a reason one byte too long
    await bounded(server.closed.wait())
    assert server.closes == [(1011, "r" * 123)]
    assert client.ws_connection is None and client.is_closing()


# -- write_buffer_size ------------------------------------------------------------------------------


async def test_write_buffer_size_grows_while_the_peer_does_not_read_and_is_zero_once_closed(harness):
    server = Server()
    port = harness.serve([(r"/ws", Handler, {"server": server})], websocket_max_write_buffer_size=None)
    raw = await harness.raw_ws(port=port)  # never reads
    handler = await server.handler()
    assert handler.write_buffer_size == 0
    for _ in range(40):  # at most 12 MB, more than loopback buffers hold
        handler.write_message(b"x" * 300_000, binary=True)
        if handler.write_buffer_size:
            break
    assert handler.write_buffer_size > 0
    raw.reset()
    await bounded(server.closed.wait())
    assert handler.write_buffer_size == 0


async def test_client_write_buffer_size_grows_while_the_server_does_not_read(harness, server):
    held: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    server.consumer = lambda message: held  # the first message holds reading
    client = await connect(harness, max_write_buffer_size=None)
    await server.handler()
    assert client.write_buffer_size == 0
    for _ in range(60):
        client.write_message(b"y" * 300_000, binary=True)
        if client.write_buffer_size:
            break
    assert client.write_buffer_size > 0
    held.set_result(None)


# -- add_close_callback ------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["server", "client"])
async def test_add_close_callback_is_called_once_with_the_endpoint(harness, server, side):
    client = await connect(harness)
    handler = await server.handler()
    endpoint = handler if side == "server" else client
    called: list[Any] = []
    endpoint.add_close_callback(called.append)
    assert called == []
    client.close()
    await bounded(server.closed.wait())
    await bounded(client.wait_closed())
    assert called == [endpoint]
    late: list[Any] = []
    endpoint.add_close_callback(late.append)  # already closed: at once
    assert late == [endpoint]
    assert called == [endpoint]


# -- set_nodelay ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["server", "client"])
async def test_set_nodelay_sets_tcp_nodelay_on_the_socket(harness, server, side):
    client = await connect(harness)
    handler = await server.handler()
    endpoint = handler if side == "server" else client
    sock = endpoint.ws_connection.stream.socket
    endpoint.set_nodelay(False)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    endpoint.set_nodelay(True)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


# -- async iteration ----------------------------------------------------------------------------------


async def test_async_for_on_both_sides_until_the_close(harness, server):
    client = await connect(harness, "/iter")
    handler = await server.handler()
    for word in ("one", "two", "three"):
        client.write_message(word)
    got = []
    client.write_message("close")
    async for message in client:
        got.append(message)
    assert got == ["ONE", "TWO", "THREE"]
    await bounded(handler.task)
    assert server.received == ["iteration ended"]
    assert client.close_code == 1000 and client.close_reason == "asked"


async def test_async_for_on_a_closed_client_ends_at_once(harness, server):
    client = await connect(harness)
    await server.handler()
    client.close()
    await bounded(client.wait_closed())
    assert [m async for m in client] == []


# -- other threads: many messages, one connection, both directions --------------------------------------------


def message_for(thread: int, seq: int) -> Any:
    """Thread ``thread``'s ``seq``-th message: its ids in front, a filler that depends on both; 8 B to 20 KB."""
    size = MIN_SIZE + ((thread * PER_THREAD + seq) * 7919) % (MAX_SIZE - MIN_SIZE + 1)
    if seq % 997 == 0:
        size = MAX_SIZE if seq % 2 else MIN_SIZE
    head = b"%d:%d:" % (thread, seq)
    body = head + bytes([97 + (thread * 7 + seq) % 26]) * max(size - len(head), 0)
    return body.decode() if thread % 2 == 0 else body  # even threads send text, odd ones binary


class Collector:
    """Checks every message that arrives: exactly once, in each thread's order, intact."""

    def __init__(self) -> None:
        self.next_seq = collections.defaultdict(int)
        self.errors: list[str] = []
        self.count = 0
        self.done = asyncio.get_running_loop().create_future()
        self.slow_every = 256
        self.writer: Any = None
        self.most_buffered = 0  # the writer's write_buffer_size, seen from here

    def __call__(self, message: Any) -> Optional[Any]:
        if message is None:
            return None
        self.count += 1
        data = message.encode() if isinstance(message, str) else message
        thread, seq = (int(x) for x in data.split(b":", 2)[:2])
        expected = message_for(thread, seq)
        if message != expected:
            self.errors.append(f"thread {thread} message {seq} arrived changed ({type(message).__name__})")
        if seq != self.next_seq[thread]:
            self.errors.append(f"thread {thread}: message {seq} arrived when {self.next_seq[thread]} was due")
        self.next_seq[thread] = seq + 1
        if self.writer is not None:
            self.most_buffered = max(self.most_buffered, self.writer.write_buffer_size)
        if self.count == THREADS * PER_THREAD and not self.done.done():
            self.done.set_result(None)
        if self.count % self.slow_every == 0:
            return asyncio.sleep(0.002)  # a slow reader: reading pauses meanwhile
        return None


def writer(endpoint: Any, thread: int, loop_thread: int) -> int:
    """Write this thread's messages, at most WINDOW in flight; return how many futures completed."""
    assert threading.get_ident() != loop_thread
    in_flight: collections.deque[concurrent.futures.Future[None]] = collections.deque()
    completed = 0
    for seq in range(PER_THREAD):
        message = message_for(thread, seq)
        future = endpoint.write_message(message, binary=isinstance(message, bytes))
        assert isinstance(future, concurrent.futures.Future)
        in_flight.append(future)
        if len(in_flight) > WINDOW:
            assert in_flight.popleft().result(BOUND) is None
            completed += 1
    while in_flight:
        assert in_flight.popleft().result(BOUND) is None
        completed += 1
    return completed


@pytest.mark.parametrize("writers", ["server", "client"])
async def test_four_threads_write_5000_messages_each_on_one_connection(harness, server, writers):
    collector = Collector()
    if writers == "server":
        client = await connect(harness, on_message_callback=collector)
        handler = await server.handler()
        endpoint = handler
    else:
        server.consumer = collector
        client = await connect(harness)
        handler = await server.handler()
        endpoint = client
    collector.writer = endpoint
    loop_thread = threading.get_ident()
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        jobs = [loop.run_in_executor(pool, writer, endpoint, t, loop_thread) for t in range(THREADS)]
        completed = await bounded(asyncio.gather(*jobs), BOUND)
        await bounded(collector.done, BOUND)
    assert completed == [PER_THREAD] * THREADS  # every returned concurrent future completed
    assert collector.errors == []
    assert collector.count == THREADS * PER_THREAD
    assert dict(collector.next_seq) == {t: PER_THREAD for t in range(THREADS)}
    assert not handler.is_closing() and not client.is_closing()
    assert collector.most_buffered > 0  # the reader was slower than the writers: writes queued


# -- other threads: ping, close, errors -------------------------------------------------------------------


@pytest.mark.parametrize("side", ["server", "client"])
async def test_ping_from_a_thread_gives_the_round_trip_time(harness, server, side):
    client = await connect(harness)
    handler = await server.handler()
    endpoint = handler if side == "server" else client

    def ping() -> float:
        future = endpoint.ping(b"from a thread")
        assert isinstance(future, concurrent.futures.Future)
        return future.result(BOUND)

    rtt = await in_thread(ping)
    assert isinstance(rtt, float) and rtt >= 0


async def test_close_from_a_thread_on_the_server(harness, server):
    raw = await harness.raw_ws()
    handler = await server.handler()

    def close() -> Any:
        future = handler.close(4002, "from a thread")
        assert handler.ws_connection is None  # at once, in the calling thread
        return future.result(BOUND)

    assert await in_thread(close) is None
    frame = await raw.read_close()
    assert (frame.close_code, frame.close_reason) == (4002, b"from a thread")
    await raw.send_close(4002)
    await raw.expect_eof()
    await raw.close()
    await bounded(server.closed.wait())
    assert server.closes == [(4002, None)]  # the echo carried no reason


async def test_close_from_a_thread_on_the_client(harness, server):
    client = await connect(harness)
    await server.handler()
    assert await in_thread(lambda: client.close(4003, "thread").result(BOUND)) is None
    await bounded(client.wait_closed())
    await bounded(server.closed.wait())  # the client can see the end of TCP before the server's on_close runs
    assert server.closes == [(4003, "thread")]


async def test_close_from_a_thread_with_a_bad_code_sends_1011(harness, server):
    client = await connect(harness)
    await server.handler()
    future = await in_thread(lambda: client.close(1006))
    assert future.result(BOUND) is None
    await bounded(server.closed.wait())
    assert server.closes[0][0] == 1011


async def test_a_write_from_a_thread_to_a_closing_connection_fails_its_future(harness, server):
    raw = await harness.raw_ws()  # does not answer our close: the connection stays closing
    handler = await server.handler()
    handler.ws_connection.close(1000, "")  # the connection closes; the handler still holds it

    def write() -> BaseException:
        exc = handler.write_message("late").exception(BOUND)
        assert exc is not None
        return exc

    assert isinstance(await in_thread(write), WebSocketClosedError)
    assert (await raw.read_close()).close_code == 1000


async def test_a_write_from_a_thread_to_a_closed_endpoint_raises_in_that_thread(harness, server):
    client = await connect(harness)
    handler = await server.handler()
    client.close()
    await bounded(server.closed.wait())

    def write() -> str:
        with pytest.raises(WebSocketClosedError):
            handler.write_message("late")
        with pytest.raises(WebSocketClosedError):
            handler.ping()
        assert handler.close() is None
        return "raised"

    assert await in_thread(write) == "raised"


async def test_a_thread_write_that_tcp_drops_fails_with_websocket_closed_error(harness):
    server = Server()
    port = harness.serve([(r"/ws", Handler, {"server": server})], websocket_max_write_buffer_size=None)
    raw = await harness.raw_ws(port=port)  # never reads
    handler = await server.handler()
    started = threading.Event()
    futures: list[concurrent.futures.Future[None]] = []

    def write() -> None:
        for _ in range(40):  # 12 MB: the kernel cannot take it all
            futures.append(handler.write_message(b"z" * 300_000, binary=True))
        started.set()

    await in_thread(write)
    await bounded(_until(lambda: handler.write_buffer_size > 0))
    raw.reset()
    outcomes = await in_thread(lambda: [f.exception(BOUND) for f in futures])
    assert started.is_set()
    assert any(isinstance(exc, WebSocketClosedError) for exc in outcomes)
    assert all(exc is None or isinstance(exc, WebSocketClosedError) for exc in outcomes)


async def test_a_thread_call_cancelled_before_the_loop_ran_it_is_not_made(harness, server):
    raw = await harness.raw_ws()
    handler = await server.handler()
    results: list[concurrent.futures.Future[None]] = []

    def write_and_cancel() -> None:
        future = handler.write_message("never sent")
        assert future.cancel()
        results.append(future)

    thread = threading.Thread(target=write_and_cancel)
    thread.start()
    thread.join(BOUND)  # the loop is blocked meanwhile: the call waits for it
    assert not thread.is_alive()
    handler.write_message("sent")
    expected = build_frame(OP_TEXT, b"sent", mask=False)
    assert await bounded(raw.reader.readexactly(len(expected)), TIMEOUT) == expected
    assert results[0].cancelled()


async def test_the_default_owner_hooks_feed_the_pull_inbox_and_ignore_control_frames():
    endpoint = WebSocketEndpoint()
    assert endpoint._ws_pull_pending() is None  # nobody pulls yet
    assert endpoint._on_ws_message("queued") is None
    assert endpoint._ws_pull_pending() is not None  # a message waits for a consumer
    endpoint._on_ws_ping(b"ignored")
    endpoint._on_ws_pong(b"ignored")
    assert await bounded(endpoint.__anext__()) == "queued"
    endpoint._on_ws_closed()  # no connection was attached: the inbox closes all the same
    assert [m async for m in endpoint] == []


class PlainStandIn:
    """A stand-in as an application or a test for ``tornado.websocket`` writes it: no private attributes."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def write_message(self, message: Any, binary: bool = False) -> str:
        self.calls.append(("write_message", message, binary))
        return "written"

    def is_closing(self) -> bool:  # Tornado's handler asks every stand-in this
        self.calls.append(("is_closing",))
        return False

    def write_ping(self, data: Any) -> None:
        self.calls.append(("write_ping", data))

    def close(self, code: Any, reason: Any) -> None:
        self.calls.append(("close", code, reason))


@pytest.mark.parametrize("side", ["server", "client"])
async def test_a_stand_in_without_private_attributes_is_obeyed(harness, server, side):
    client = await connect(harness)
    handler = await server.handler()
    endpoint = handler if side == "server" else client
    real = endpoint.ws_connection
    stand_in = PlainStandIn()
    endpoint.ws_connection = stand_in
    try:
        assert endpoint.write_message("m") == "written"
        assert endpoint.ping(b"p") is None
        endpoint.close(4000, "why")
        assert stand_in.calls == [
            ("is_closing",),
            ("write_message", "m", False),
            ("is_closing",),
            ("write_ping", b"p"),
            ("close", 4000, "why"),
        ]
    finally:
        endpoint.ws_connection = real


async def test_a_mock_in_ws_connection_is_called_on_the_loop_thread(harness, server):
    from unittest import mock

    await connect(harness)
    handler = await server.handler()
    real = handler.ws_connection
    handler.ws_connection = mock.Mock()
    handler.ws_connection.is_closing.return_value = False  # a bare Mock's is_closing() is truthy
    try:
        handler.write_message("m")
        handler.ws_connection.write_message.assert_called_once_with("m", binary=False)  # as Tornado calls it
    finally:
        handler.ws_connection = real


# -- the client's Tornado names on the same face ----------------------------------------------------------


async def test_the_clients_protocol_is_its_ws_connection(harness, server):
    client = await connect(harness, "/ws?x=1")
    await server.handler()
    real = client.ws_connection
    assert client.protocol is real
    assert client.parsed.path == "/ws" and client.parsed.query == "x=1"
    client.protocol = None  # Tornado's name, settable: the same attribute
    assert client.ws_connection is None and client.is_closing()
    client.protocol = real
    assert client.ws_connection is real
    client.close()
    await bounded(client.wait_closed())
    assert client.protocol is None


async def test_the_clients_read_queue_is_its_pull_inbox(harness, server):
    client = await connect(harness)
    handler = await server.handler()
    handler.write_message("queued")
    assert await bounded(client.read_queue.get()) == "queued"
    client.on_message(None)  # Tornado's way to say "closed": the queue ends
    assert await bounded(client.read_message()) is None


async def test_an_error_in_on_message_callback_at_the_close_is_logged(harness, server, caplog):
    seen: list[Any] = []

    def callback(message: Any) -> None:
        seen.append(message)
        if message is None:
            raise RuntimeError("callback bug at close")

    client = await connect(harness, on_message_callback=callback)
    handler = await server.handler()
    handler.close()
    await bounded(client.wait_closed())
    assert seen == [None]
    assert "Uncaught exception in on_message_callback(None)" in [r.getMessage() for r in caplog.records]
