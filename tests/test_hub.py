"""Hub tests: publish/subscribe over real WebSocket connections, in one process and through Redis.

In-process tests run a Tornado server on 127.0.0.1 with a ``Hub()`` and
real clients (``websockets``, ``tornado_websocket.websocket_connect`` and
the raw client of conftest). Redis tests run a real ``redis-server`` (see
``redis_server.py``) with two servers, each with its own
``Hub(RedisBackend(url))``, as two processes would; the last tests start
two real OS processes (``hub_echo_server.py``). Without ``redis-server`` the
Redis tests are skipped locally and fail when ``CI`` is set.

Every wait is bounded; conditions that cannot be awaited are polled with a
bounded loop (:func:`wait_until`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import types
from typing import Any, Callable, Optional, Union

import pytest
import pytest_asyncio
from conftest import OP_BINARY, OP_CLOSE, OP_TEXT, TIMEOUT, RawClient, bounded
from redis_server import RedisServer, find_redis_server

import tornado_websocket
import tornado_websocket.channels_redis
import tornado_websocket.hub
import tornado_websocket.metrics
from tornado_websocket import WebSocketClosedError, websocket_connect
from tornado_websocket.hub import Hub, HubUnavailableError, InProcessBackend, RedisBackend

pytestmark = pytest.mark.asyncio

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO_SERVER = os.path.join(HERE, "hub_echo_server.py")
RECOVERY_TIMEOUT = 15.0
HUB_LOGGER = "tornado_websocket.hub"


# -- helpers -------------------------------------------------------------------------


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` (a state with no event to await) until it holds; fail after ``timeout``."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), timeout)
    except asyncio.TimeoutError:
        pytest.fail(f"timed out after {timeout} s waiting for {what}")


class RoomHandler(tornado_websocket.WebSocketHandler):
    """Subscribed to the room of its URL; ``"ready"`` once the subscription is active; publishes what it gets."""

    def initialize(self, hub: Hub, signal: Any) -> None:
        self.hub = hub
        self.signal = signal
        self.room = ""

    async def open(self, room: str) -> None:  # type: ignore[override]
        self.room = room
        self.signal.fire("open", self)
        await self.hub.subscribe(room, self)
        self.write_message("ready")

    async def on_message(self, message: Union[str, bytes]) -> None:  # type: ignore[override]
        await self.hub.publish(self.room, message)

    def on_close(self) -> None:
        self.signal.fire("close", self)


class DeflateRoomHandler(RoomHandler):
    def get_compression_options(self) -> Optional[dict[str, Any]]:
        return {}


class SinkHandler(tornado_websocket.WebSocketHandler):
    """Records what the client sends (for hubs that publish to client connections)."""

    def initialize(self, hub: Hub, signal: Any) -> None:
        self.signal = signal

    def on_message(self, message: Union[str, bytes]) -> None:
        self.signal.fire("sink", message)


def routes(hub: Hub, signal: Any) -> list[Any]:
    kwargs = {"hub": hub, "signal": signal}
    return [
        (r"/ws/(\w+)", RoomHandler, kwargs),
        (r"/deflate/(\w+)", DeflateRoomHandler, kwargs),
        (r"/sink", SinkHandler, kwargs),
    ]


async def join(harness: Any, signal: Any, room: str, *, port: Optional[int] = None, path: str = "ws", **kwargs: Any):
    """Connect a ``websockets`` client to ``room``; return it and its server handler once subscribed."""
    ws = await harness.ws(f"/{path}/{room}", port=port, **kwargs)
    assert await bounded(ws.recv(), RECOVERY_TIMEOUT) == "ready"
    return ws, signal.values["open"][-1]


async def recv_n(ws: Any, n: int, timeout: float = TIMEOUT) -> list[Union[str, bytes]]:
    return [await bounded(ws.recv(), timeout) for _ in range(n)]


async def expect_next(ws: Any, expected: Union[str, bytes]) -> None:
    """The next message ``ws`` receives is ``expected`` (nothing unexpected was queued before it)."""
    got = await bounded(ws.recv())
    assert got == expected, f"expected {expected!r} next, got {str(got)[:80]!r}"


def check_per_publisher(messages: list[Any], publishers: dict[str, int]) -> None:
    """``messages`` hold each ``"<publisher>:<i>"`` exactly once, in order per publisher."""
    seen: dict[str, list[int]] = {name: [] for name in publishers}
    for message in messages:
        name, _, index = message.partition(":")
        seen[name].append(int(index))
    for name, count in publishers.items():
        assert seen[name] == list(range(count)), f"messages of {name} out of order, missing or repeated"
    assert len(messages) == sum(publishers.values())


def skip_or_fail(reason: str) -> None:
    """Without Redis the Redis tests are skipped locally and fail in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required when CI is set)")
    pytest.skip(reason)


class TornadoClients:
    """``tornado_websocket`` clients of a test, closed at teardown."""

    def __init__(self) -> None:
        self.clients: list[Any] = []

    async def connect(self, url: str, **kwargs: Any) -> Any:
        client = await bounded(websocket_connect(url, **kwargs))
        self.clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.clients:
            client.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.wait_closed(), 2)


@pytest_asyncio.fixture
async def tornado_clients(harness):
    clients = TornadoClients()
    try:
        yield clients
    finally:
        await clients.aclose()


# -- in-process: delivery ---------------------------------------------------------------


async def test_each_subscriber_gets_each_message_once_in_publish_order(harness, signal, tornado_clients):
    hub = Hub()
    assert isinstance(hub.backend, InProcessBackend)
    port = harness.serve(routes(hub, signal))
    plain, _ = await join(harness, signal, "room")
    plain2, _ = await join(harness, signal, "room")
    deflated, deflate_handler = await join(harness, signal, "room", path="deflate", compression="deflate")
    assert deflate_handler.ws_connection.protocol.deflate is not None  # the encode-per-connection path
    tornado_client = await tornado_clients.connect(f"ws://127.0.0.1:{port}/ws/room")
    assert await bounded(tornado_client.read_message()) == "ready"
    other, _ = await join(harness, signal, "other")
    assert hub.subscribers("room") == 4
    assert hub.subscribers("other") == 1
    assert hub.subscribers("nobody") == 0

    published = [f"message {i}" for i in range(200)]
    for message in published:
        await bounded(hub.publish("room", message))
    await bounded(hub.publish("room", "end"))
    await bounded(hub.publish("other", "end of other"))

    for ws in (plain, plain2, deflated):
        assert await recv_n(ws, 200) == published
        await expect_next(ws, "end")  # no duplicate before the end marker
    assert [await bounded(tornado_client.read_message()) for _ in range(201)] == published + ["end"]
    await expect_next(other, "end of other")  # "room" did not leak into "other"


async def test_messages_published_by_clients_keep_per_publisher_order(harness, signal):
    hub = Hub()
    harness.serve(routes(hub, signal))
    alice, _ = await join(harness, signal, "room")
    bob, _ = await join(harness, signal, "room")
    carol, _ = await join(harness, signal, "room", path="deflate", compression="deflate")

    async def send_all(ws: Any, name: str) -> None:
        for i in range(100):
            await bounded(ws.send(f"{name}:{i}"))

    await bounded(asyncio.gather(send_all(alice, "alice"), send_all(bob, "bob")))
    for ws in (alice, bob, carol):
        check_per_publisher(await recv_n(ws, 200), {"alice": 100, "bob": 100})
    await bounded(hub.publish("room", "end"))
    for ws in (alice, bob, carol):
        await expect_next(ws, "end")


async def test_text_stays_text_and_bytes_stay_binary(harness, signal, tornado_clients):
    hub = Hub()
    port = harness.serve(routes(hub, signal))
    plain, _ = await join(harness, signal, "room")
    deflated, _ = await join(harness, signal, "room", path="deflate", compression="deflate")
    tornado_client = await tornado_clients.connect(f"ws://127.0.0.1:{port}/ws/room")
    assert await bounded(tornado_client.read_message()) == "ready"
    raw = await harness.raw_ws("/ws/room")
    assert await raw.read_text() == "ready"

    messages: list[Union[str, bytes]] = [
        "héllo ✓",
        b"\x00\x01\xfe\xff",
        "",
        b"",
        "x" * 100_000,  # over the size where frames are written in two parts
        bytes(range(256)) * 400,
        b"looks like text",
    ]
    for message in messages:
        await bounded(hub.publish("room", message))

    for ws in (plain, deflated):
        received = await recv_n(ws, len(messages))
        assert received == messages
        assert [type(m) for m in received] == [type(m) for m in messages]
    received = [await bounded(tornado_client.read_message()) for _ in messages]
    assert received == messages
    assert [type(m) for m in received] == [type(m) for m in messages]
    for message in messages:
        opcode, payload = await raw.read_message()
        assert opcode == (OP_TEXT if isinstance(message, str) else OP_BINARY)
        assert payload == (message.encode("utf-8") if isinstance(message, str) else message)


async def test_hub_accepts_handlers_clients_and_connections(harness, signal, tornado_clients):
    hub = Hub()
    port = harness.serve(routes(hub, signal))
    client = await tornado_clients.connect(f"ws://127.0.0.1:{port}/sink")  # a client: it sends masked frames
    peer, handler = await join(harness, signal, "own")
    hub.subscribe("all", client)
    hub.subscribe("all", handler.ws_connection)  # a WebSocketConnection
    hub.subscribe("all", handler)  # its handler: the same connection, still one subscriber
    assert hub.subscribers("all") == 2

    await bounded(hub.publish("all", "text"))
    await bounded(hub.publish("all", b"bytes"))
    assert await signal.wait("sink", 2) == ["text", b"bytes"]
    assert await recv_n(peer, 2) == ["text", b"bytes"]
    # Nothing more was sent: each connection got each message once.
    client.write_message("marker")
    assert (await signal.wait("sink", 3))[2:] == ["marker"]
    handler.write_message("marker")
    await expect_next(peer, "marker")


# -- in-process: subscriptions ------------------------------------------------------------


async def test_unsubscribe_stops_delivery_and_is_a_no_op_for_non_subscribers(harness, signal):
    hub = Hub()
    harness.serve(routes(hub, signal))
    leaver, leaver_handler = await join(harness, signal, "room")
    stayer, stayer_handler = await join(harness, signal, "room")
    outsider, outsider_handler = await join(harness, signal, "other")

    # Subscribing twice is one subscription: one copy of each message.
    hub.subscribe("room", stayer_handler)
    assert hub.subscribers("room") == 2

    # Unsubscribing what is not subscribed changes nothing and raises nothing.
    hub.unsubscribe("room", outsider_handler)
    hub.unsubscribe("no such channel", stayer_handler)
    hub.unsubscribe("no such channel", outsider_handler)
    assert (hub.subscribers("room"), hub.subscribers("other")) == (2, 1)

    hub.unsubscribe("room", leaver_handler)
    assert hub.subscribers("room") == 1
    hub.unsubscribe("room", leaver_handler)  # again: a no-op
    assert hub.subscribers("room") == 1

    await bounded(hub.publish("room", "after unsubscribe"))
    await expect_next(stayer, "after unsubscribe")
    leaver_handler.write_message("direct")  # the leaver got nothing from the hub before this
    await expect_next(leaver, "direct")
    outsider_handler.write_message("direct")
    await expect_next(outsider, "direct")

    # Unsubscribing the last subscriber removes the channel; publishing to it is fine.
    hub.unsubscribe("room", stayer_handler)
    assert hub.subscribers("room") == 0
    await bounded(hub.publish("room", "to nobody"))
    stayer_handler.write_message("direct")
    await expect_next(stayer, "direct")

    # And one can subscribe again.
    hub.subscribe("room", leaver_handler)
    await bounded(hub.publish("room", "back"))
    await expect_next(leaver, "back")


async def test_closed_connections_are_unsubscribed_automatically(harness, signal):
    hub = Hub()
    harness.serve(routes(hub, signal))
    clean, clean_handler = await join(harness, signal, "room")
    dropped = await harness.raw_ws("/ws/room")
    assert await dropped.read_text() == "ready"
    dropped_handler = signal.values["open"][-1]
    stayer, _ = await join(harness, signal, "room")
    hub.subscribe("second", clean_handler)  # one connection in two channels
    assert (hub.subscribers("room"), hub.subscribers("second")) == (3, 1)

    await bounded(clean.close())  # close handshake
    dropped.reset()  # TCP RST, no close frame
    closed = await signal.wait("close", 2)
    assert {id(h) for h in closed} == {id(clean_handler), id(dropped_handler)}
    assert hub.subscribers("room") == 1
    assert hub.subscribers("second") == 0

    # Later publishes neither fail nor reach the closed connections.
    await bounded(hub.publish("room", "after close"))
    await bounded(hub.publish("second", "after close"))
    await expect_next(stayer, "after close")
    with pytest.raises(WebSocketClosedError):
        clean_handler.write_message("x")


async def test_subscribing_a_closed_connection_does_not_leave_it_subscribed(harness, signal):
    hub = Hub()
    harness.serve(routes(hub, signal))
    ws, handler = await join(harness, signal, "room")
    await bounded(ws.close())
    await signal.wait("close")
    assert hub.subscribers("room") == 0

    try:
        hub.subscribe("late", handler)  # e.g. after an await in on_message, when the peer has gone
    except TypeError:
        pass  # refusing a closed WebSocket is fine too ("not an open WebSocket")
    assert hub.subscribers("late") == 0


async def test_subscribe_rejects_what_is_not_a_websocket(harness, signal):
    hub = Hub()
    harness.serve(routes(hub, signal))
    ws, handler = await join(harness, signal, "room")
    not_upgraded = types.SimpleNamespace(_connection=None)  # e.g. a handler before the upgrade
    for target in (object(), "room", None, 42, not_upgraded, handler.request):
        with pytest.raises(TypeError):
            hub.subscribe("bad", target)
    assert hub.subscribers("bad") == 0
    await bounded(hub.publish("bad", "to nobody"))  # no half-made subscription
    await bounded(hub.publish("room", "still fine"))
    await expect_next(ws, "still fine")


async def test_publish_rejects_what_is_not_str_or_bytes(harness, signal):
    hub = Hub()
    harness.serve(routes(hub, signal))
    ws, _ = await join(harness, signal, "room")
    for message in (123, None, {"a": 1}, ["x"], bytearray(b"x"), memoryview(b"x"), 1.5):
        with pytest.raises(TypeError):
            await bounded(hub.publish("room", message))  # type: ignore[arg-type]
    await bounded(hub.publish("room", "valid"))
    await expect_next(ws, "valid")  # none of the rejected ones was sent


# -- in-process: the slow consumer policy ---------------------------------------------------


async def never_reading_client(harness: Any, port: int, path: str) -> RawClient:
    """A raw client that completes the handshake, reads ``"ready"``, and then reads nothing.

    Its receive buffer is small (SO_RCVBUF) and its asyncio reader buffers at
    most about 2 KiB before it stops reading the socket.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await bounded(loop.sock_connect(sock, ("127.0.0.1", port)))
        reader, writer = await bounded(asyncio.open_connection(sock=sock, limit=1024))
    except BaseException:
        sock.close()
        raise
    client = RawClient(reader, writer, port)
    harness.raw_clients.append(client)
    await client.handshake(path)
    assert await client.read_text() == "ready"
    return client


async def test_slow_consumer_is_closed_with_1013_while_others_get_everything(harness, signal, caplog):
    caplog.set_level(logging.INFO, logger=HUB_LOGGER)
    hub = Hub(max_pending_bytes=64 * 1024)
    assert hub.slow_consumer_code == 1013
    write_buffer_limit = 256 * 1024 * 1024  # far above what the test sends: the hub must act, not this
    port = harness.serve(routes(hub, signal), websocket_max_write_buffer_size=write_buffer_limit)
    reader, _ = await join(harness, signal, "room")
    slow = await never_reading_client(harness, port, "/ws/room")
    slow_handler = signal.values["open"][-1]
    slow_connection = slow_handler.ws_connection
    assert slow_connection.max_write_buffer_size == write_buffer_limit
    assert hub.subscribers("room") == 2

    closed_before = tornado_websocket.metrics.STATS.slow_consumers_closed
    published: list[str] = []
    max_messages = 400  # 400 x 128 KiB = 50 MiB: far more than the socket buffers can hold
    for i in range(max_messages):
        message = f"{i:06d}:" + "x" * (128 * 1024)
        await bounded(hub.publish("room", message))
        published.append(message)
        assert await bounded(reader.recv()) == message  # the reading subscriber keeps up, message by message
        if slow_connection.is_closing():
            break
    else:
        pytest.fail(f"the hub never closed the client that does not read ({max_messages} messages of 128 KiB)")
    closed_after = len(published)
    assert tornado_websocket.metrics.STATS.slow_consumers_closed == closed_before + 1
    assert not slow_connection.closed, "TCP was dropped (write buffer limit?) instead of a close handshake"
    assert any("slow consumer" in r.getMessage() for r in caplog.records if r.name == HUB_LOGGER)

    # The hub no longer writes to it; the reading subscriber goes on receiving everything.
    for i in range(3):
        message = f"after close {i}"
        await bounded(hub.publish("room", message))
        published.append(message)
        assert await bounded(reader.recv()) == message

    # Now the slow client reads: an in-order prefix of what was published, then Close 1013.
    received: list[bytes] = []
    while True:
        frame = await slow.read_frame(timeout=TIMEOUT)
        if frame.opcode == OP_CLOSE:
            break
        assert frame.opcode == OP_TEXT and frame.fin
        received.append(frame.payload)
    assert frame.close_code == 1013, f"closed with {frame.close_code} {frame.close_reason!r}"
    assert 0 < len(received) < closed_after
    assert received == [m.encode() for m in published[: len(received)]]

    # Completing the close handshake ends the connection: on_close runs and the hub forgets it.
    await slow.send_close(1013)
    await slow.expect_eof()  # the server half-closes TCP ...
    await slow.close()  # ... and drops the connection when we do
    closed = await signal.wait("close")
    assert closed == [slow_handler]
    assert hub.subscribers("room") == 1
    await bounded(hub.publish("room", "last"))
    await expect_next(reader, "last")


# -- Redis: two hubs, as in two processes ------------------------------------------------------


@pytest.fixture
def redis_server():
    executable = find_redis_server()
    if executable is None:
        skip_or_fail("redis-server is not installed")
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        skip_or_fail("the redis Python package is not installed")
    server = RedisServer(executable)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest_asyncio.fixture
async def redis_hub(harness, redis_server):
    """Make hubs with their own RedisBackend (fast reconnects); they are closed before the harness."""
    hubs: list[Hub] = []

    def make(**kwargs: Any) -> Hub:
        hub = Hub(RedisBackend(redis_server.url, reconnect_min=0.05, reconnect_max=0.5, **kwargs))
        hubs.append(hub)
        return hub

    try:
        yield make
    finally:
        for hub in hubs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(hub.close(), 5)


async def test_redis_hubs_deliver_across_servers_once_in_order(harness, signal, redis_hub):
    hub_a, hub_b = redis_hub(), redis_hub()
    port_a = harness.serve(routes(hub_a, signal))
    port_b = harness.serve(routes(hub_b, signal))
    assert port_a != port_b
    alice, alice_handler = await join(harness, signal, "room", port=port_a)
    anna, _ = await join(harness, signal, "room", port=port_a)
    bob, _ = await join(harness, signal, "room", port=port_b)
    ben, _ = await join(harness, signal, "other", port=port_b)
    hub_a.subscribe("room", alice_handler)  # again: still one copy per message
    assert (hub_a.subscribers("room"), hub_b.subscribers("room"), hub_b.subscribers("other")) == (2, 1, 1)
    assert hub_a.backend.is_subscribed("room") and hub_b.backend.is_subscribed("room")

    # One message each way first.
    await bounded(bob.send("hello from B"))
    for ws in (alice, anna, bob):
        await expect_next(ws, "hello from B")
    await bounded(alice.send("hello from A"))
    for ws in (alice, anna, bob):
        await expect_next(ws, "hello from A")

    async def send_all(ws: Any, name: str) -> None:
        for i in range(100):
            await bounded(ws.send(f"{name}:{i}"))

    async def publish_all(hub: Hub, name: str) -> None:
        for i in range(100):
            await bounded(hub.publish("room", f"{name}:{i}"))

    # Two clients (through their handlers) and both hubs directly publish at the same time.
    await bounded(
        asyncio.gather(
            send_all(alice, "alice"),
            send_all(bob, "bob"),
            publish_all(hub_a, "hubA"),
            publish_all(hub_b, "hubB"),
        ),
        RECOVERY_TIMEOUT,
    )
    expected = {"alice": 100, "bob": 100, "hubA": 100, "hubB": 100}
    for ws in (alice, anna, bob):
        received = await recv_n(ws, sum(expected.values()))
        check_per_publisher(received, expected)
    await bounded(hub_b.publish("room", "end"))
    await bounded(hub_b.publish("other", "end of other"))
    for ws in (alice, anna, bob):
        await expect_next(ws, "end")  # each message came once: nothing queued before the end marker
    await expect_next(ben, "end of other")


async def test_redis_binary_and_text_survive_the_round_trip(harness, signal, redis_hub):
    hub_a, hub_b = redis_hub(), redis_hub()
    port_a = harness.serve(routes(hub_a, signal))
    port_b = harness.serve(routes(hub_b, signal))
    alice, _ = await join(harness, signal, "room", port=port_a)
    bob, _ = await join(harness, signal, "room", port=port_b)
    messages: list[Union[str, bytes]] = ["héllo ✓", b"\x00\xff", "", b"", b"t-looks-tagged", "b", "x" * 70_000]
    for message in messages:
        await bounded(hub_a.publish("room", message))
    for ws in (alice, bob):
        received = await recv_n(ws, len(messages))
        assert received == messages
        assert [type(m) for m in received] == [type(m) for m in messages]


async def test_redis_restart_publish_fails_then_recovers(harness, signal, redis_hub, redis_server, caplog):
    caplog.set_level(logging.INFO, logger=HUB_LOGGER)
    hub_a, hub_b = redis_hub(), redis_hub()
    port_a = harness.serve(routes(hub_a, signal))
    port_b = harness.serve(routes(hub_b, signal))
    alice, alice_handler = await join(harness, signal, "room", port=port_a)
    bob, _ = await join(harness, signal, "room", port=port_b)
    await bounded(bob.send("before"))
    await expect_next(alice, "before")
    await expect_next(bob, "before")

    await asyncio.to_thread(redis_server.stop)
    for hub, failures in ((hub_b, 3), (hub_a, 1)):
        for _ in range(failures):
            with pytest.raises(HubUnavailableError):
                await bounded(hub.publish("room", "lost"), RECOVERY_TIMEOUT)
    await wait_until(
        lambda: not hub_a.backend.is_subscribed("room") and not hub_b.backend.is_subscribed("room"),
        "both backends to notice that Redis is gone",
        RECOVERY_TIMEOUT,
    )
    # Subscribing during the outage needs history: it fails clearly instead of hanging.
    with pytest.raises(HubUnavailableError):
        await bounded(hub_a.subscribe("elsewhere", alice_handler, since=0), RECOVERY_TIMEOUT)
    assert hub_a.subscribers("elsewhere") == 0

    await asyncio.to_thread(redis_server.start)
    await wait_until(
        lambda: hub_a.backend.is_subscribed("room") and hub_b.backend.is_subscribed("room"),
        "both backends to subscribe again",
        RECOVERY_TIMEOUT,
    )
    late, _ = await join(harness, signal, "room", port=port_a)

    await bounded(bob.send("after from bob"))
    for ws in (alice, bob, late):
        await expect_next(ws, "after from bob")
    await bounded(alice.send("after from alice"))
    for ws in (alice, bob, late):
        await expect_next(ws, "after from alice")
    await bounded(hub_b.publish("room", "direct after"))
    for ws in (alice, bob, late):
        await expect_next(ws, "direct after")  # "lost" was never delivered, nothing arrives twice

    warnings = [r.getMessage() for r in caplog.records if r.name == HUB_LOGGER and r.levelno == logging.WARNING]
    assert any("lost the Redis connection" in m for m in warnings), warnings
    assert len([m for m in warnings if "Redis is back" in m]) == 2, warnings


class AsyncioSpy:
    """Stands in for the hub module's ``asyncio`` to record the reconnect delays it sleeps."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float, *args: Any) -> Any:
        self.sleeps.append(delay)
        return await asyncio.sleep(delay, *args)


async def test_redis_reconnect_backoff_starts_again_from_the_minimum(redis_server, monkeypatch):
    spy = AsyncioSpy()
    monkeypatch.setattr(tornado_websocket.channels_redis, "asyncio", spy)
    backend = RedisBackend(redis_server.url, reconnect_min=0.01, reconnect_max=0.16)
    hub = Hub(backend)
    try:
        # Subscribe a channel without a connection: the backend's own API.
        await bounded(backend.channel_added("room"))
        await asyncio.to_thread(redis_server.stop)
        await wait_until(lambda: len(spy.sleeps) >= 6, "six reconnect attempts", RECOVERY_TIMEOUT)
        nominal = [0.01, 0.02, 0.04, 0.08, 0.16, 0.16]  # the backoff grows to its cap, with +-50% jitter
        for slept, expected in zip(spy.sleeps[:6], nominal):
            assert 0.5 * expected <= slept < 1.5 * expected, spy.sleeps[:6]
        await asyncio.to_thread(redis_server.start)
        await wait_until(lambda: backend.is_subscribed("room"), "the resubscription", RECOVERY_TIMEOUT)

        attempts = len(spy.sleeps)
        await asyncio.to_thread(redis_server.stop)
        await wait_until(lambda: len(spy.sleeps) > attempts, "a reconnect attempt", RECOVERY_TIMEOUT)
        first_delay = spy.sleeps[attempts]
        assert 0.005 <= first_delay < 0.015, f"the second outage started with a {first_delay} s delay"
    finally:
        await bounded(hub.close())


async def test_redis_publish_type_errors_need_no_redis(redis_server, redis_hub):
    hub = redis_hub()
    await asyncio.to_thread(redis_server.stop)
    for message in (123, None, bytearray(b"x"), {"a": 1}):
        with pytest.raises(TypeError):
            await bounded(hub.publish("room", message))  # type: ignore[arg-type]
    with pytest.raises(HubUnavailableError):
        await bounded(hub.publish("room", "text"), RECOVERY_TIMEOUT)


# -- Redis: two real OS processes --------------------------------------------------------------


class EchoProcess:
    def __init__(self, process: asyncio.subprocess.Process, port: int, stderr_path: str) -> None:
        self.process = process
        self.port = port
        self.stderr_path = stderr_path


@pytest_asyncio.fixture
async def echo_processes(redis_server, tmp_path):
    """Start ``hub_echo_server.py`` processes sharing ``redis_server``; kill them at teardown."""
    processes: list[asyncio.subprocess.Process] = []

    async def start() -> EchoProcess:
        stderr_path = str(tmp_path / f"echo-{len(processes)}.stderr")
        with open(stderr_path, "wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                ECHO_SERVER,
                redis_server.url,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=os.path.dirname(HERE),
            )
        processes.append(process)
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), 20)
        except asyncio.TimeoutError:
            line = b""
        if not line.startswith(b"PORT "):
            with open(stderr_path, "rb") as f:
                pytest.fail(f"hub_echo_server.py did not start: {line!r}\n{f.read().decode(errors='replace')}")
        return EchoProcess(process, int(line.split()[1]), stderr_path)

    try:
        yield start
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 5)
            except asyncio.TimeoutError:
                process.kill()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(process.wait(), 5)


async def test_two_processes_share_channels_through_redis(harness, echo_processes):
    first, second = await echo_processes(), await echo_processes()
    assert first.process.pid != second.process.pid and first.port != second.port

    async def connect(port: int, room: str) -> Any:
        ws = await harness.ws(f"/ws/{room}", port=port)
        assert await bounded(ws.recv(), RECOVERY_TIMEOUT) == "ready"
        return ws

    alice = await connect(first.port, "room")
    anna = await connect(first.port, "room")
    bob = await connect(second.port, "room")
    ben = await connect(second.port, "other")

    await bounded(bob.send("bob:0"))  # second process -> first
    for ws in (alice, anna, bob):
        await expect_next(ws, "bob:0")
    await bounded(alice.send(b"alice:0"))  # first process -> second, binary stays binary
    for ws in (alice, anna, bob):
        await expect_next(ws, b"alice:0")

    async def send_all(ws: Any, name: str) -> None:
        for i in range(100):
            await bounded(ws.send(f"{name}:{i}"))

    await bounded(asyncio.gather(send_all(alice, "alice"), send_all(bob, "bob")), RECOVERY_TIMEOUT)
    for ws in (alice, anna, bob):
        check_per_publisher(await recv_n(ws, 200), {"alice": 100, "bob": 100})
    await bounded(anna.send("end"))
    for ws in (alice, anna, bob):
        await expect_next(ws, "end")
    await bounded(ben.send("end of other"))
    await expect_next(ben, "end of other")  # "room" never reached "other"

    for echo in (first, second):
        assert echo.process.returncode is None, open(echo.stderr_path).read()
    # Closing stdin makes a server exit (so none outlives a dead test run).
    assert first.process.stdin is not None
    first.process.stdin.close()
    await bounded(first.process.wait(), 10)
