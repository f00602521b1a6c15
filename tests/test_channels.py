"""Channels: history (plain unit tests) and the ChannelsHandler protocol over real sockets (in-process hub).

The protocol tests run a Tornado server on 127.0.0.1 with ``ChannelsHandler``
and talk JSON to it through ``websockets`` clients; every read is bounded.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any, Optional

import pytest
import tornado.web
from conftest import TIMEOUT, RawClient, bounded

import tornado_websocket
import tornado_websocket.metrics
from tornado_websocket.channels import ChannelsHandler, default_hub, publish_json
from tornado_websocket.channels_client import (
    ChannelMessage,
    ChannelsClient,
    ChannelsDisconnected,
    ChannelsError,
    PresenceEvent,
    RecoveryFailed,
)
from tornado_websocket.channels_history import ChannelHistory, HistorySettings, effective_since, resolve
from tornado_websocket.channels_memory import MemoryBackend
from tornado_websocket.hub import Hub, HubUnavailableError

# -- history -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_offsets_increase_from_one_and_since_recovers_the_rest():
    history = ChannelHistory(HistorySettings(max_count=10, max_age=None))
    assert [history.append(f"m{i}") for i in range(5)] == [1, 2, 3, 4, 5]
    recovery = history.recover(2, history.epoch)
    assert (recovery.epoch, recovery.offset, recovery.recovered) == (history.epoch, 5, True)
    assert recovery.entries == [(3, "m2"), (4, "m3"), (5, "m4")]
    assert history.recover(5, history.epoch).entries == [] and history.recover(5).recovered
    everything = history.recover(0)
    assert [o for o, _ in everything.entries] == [1, 2, 3, 4, 5] and everything.recovered


def test_no_since_means_no_history_and_nothing_to_recover():
    history = ChannelHistory(HistorySettings())
    history.append("a")
    recovery = history.recover(None)
    assert (recovery.offset, recovery.entries, recovery.recovered) == (1, [], True)


def test_count_bound_trims_the_oldest_and_a_since_before_them_is_not_recovered():
    history = ChannelHistory(HistorySettings(max_count=3, max_age=None))
    for i in range(6):
        history.append(str(i))
    assert len(history) == 3
    assert history.recover(3).recovered and [o for o, _ in history.recover(3).entries] == [4, 5, 6]
    partial = history.recover(1)
    assert not partial.recovered
    assert [o for o, _ in partial.entries] == [4, 5, 6]  # what is left is still sent, in order


def test_age_bound_drops_old_messages():
    clock = Clock()
    history = ChannelHistory(HistorySettings(max_count=100, max_age=10.0), clock=clock)
    history.append("old")
    clock.now += 6
    history.append("young")
    clock.now += 6  # "old" is 12 s old now
    recovery = history.recover(0)
    assert recovery.entries == [(2, "young")] and not recovery.recovered
    assert history.recover(1).recovered


def test_another_epoch_is_not_recovered_and_gets_the_new_history():
    history = ChannelHistory(HistorySettings())
    history.append("x")
    history.append("y")
    recovery = history.recover(7, "someone-elses-epoch")
    assert not recovery.recovered and recovery.entries == [(1, "x"), (2, "y")]
    assert recovery.epoch == history.epoch != "someone-elses-epoch"
    assert ChannelHistory(HistorySettings()).epoch != history.epoch


def test_a_since_beyond_the_latest_is_not_recovered():
    history = ChannelHistory(HistorySettings())
    history.append("x")
    recovery = history.recover(5, history.epoch)
    assert not recovery.recovered and recovery.entries == []


def test_zero_count_keeps_nothing():
    history = ChannelHistory(HistorySettings(max_count=0))
    history.append("x")
    history.append("y")
    assert history.recover(2).recovered and not history.recover(1).recovered


def test_resolve_and_effective_since_agree_with_the_memory_history():
    assert effective_since(None, None, "e") is None
    assert effective_since(4, "e", "e") == 4 and effective_since(4, None, "e") == 4
    assert effective_since(4, "other", "e") == 0
    assert resolve(3, "e", "e", 5, [(4, "a"), (5, "b")]).recovered
    assert not resolve(2, "e", "e", 5, [(4, "a"), (5, "b")]).recovered


def test_settings_are_validated():
    with pytest.raises(ValueError):
        HistorySettings(max_count=-1)
    with pytest.raises(ValueError):
        HistorySettings(max_age=0)


# -- the protocol ------------------------------------------------------------------------


class Peer:
    """A ``websockets`` client speaking the channels protocol."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, **request: Any) -> None:
        await bounded(self.ws.send(json.dumps(request)))

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        return json.loads(await bounded(self.ws.recv(), timeout))  # type: ignore[no-any-return]

    async def expect(self, op: str, **fields: Any) -> dict[str, Any]:
        frame = await self.recv()
        assert frame["op"] == op, frame
        for key, value in fields.items():
            assert frame[key] == value, (key, frame)
        return frame

    async def subscribe(self, channel: str, **fields: Any) -> dict[str, Any]:
        await self.send(op="subscribe", channel=channel, **fields)
        return await self.expect("subscribed", channel=channel)


async def peer(harness: Any, path: str = "/channels", port: Optional[int] = None) -> Peer:
    return Peer(await harness.ws(path, port=port))


def serve(harness: Any, hub: Hub, handler: type = ChannelsHandler, **kwargs: Any) -> int:
    return harness.serve([(r"/channels", handler, {"hub": hub, **kwargs})])


@pytest.mark.asyncio
async def test_publish_reaches_subscribers_with_offsets_and_epoch(harness):
    hub = Hub()
    serve(harness, hub)
    alice, bob = await peer(harness), await peer(harness)
    sub = await alice.subscribe("room")
    assert sub == {"op": "subscribed", "channel": "room", "offset": 0, "epoch": sub["epoch"], "recovered": True}
    await bob.subscribe("room")
    values: list[Any] = [{"text": "héllo"}, [1, 2], "s", 3.5, None, True]
    for i, value in enumerate(values):
        await bob.send(op="publish", channel="room", data=value, id=i)
        ack = await bob.expect("message", offset=i + 1)  # bob is subscribed too: his copy comes first
        assert ack["data"] == value
        await bob.expect("published", channel="room", offset=i + 1, id=i)
    for i, value in enumerate(values):
        await alice.expect("message", channel="room", offset=i + 1, epoch=sub["epoch"], data=value)
    assert await bounded(publish_json(hub, "room", {"from": "server"})) == len(values) + 1
    await alice.expect("message", offset=len(values) + 1, data={"from": "server"})


@pytest.mark.asyncio
async def test_subscribe_since_sends_history_then_live_without_gap_or_duplicate(harness):
    hub = Hub()
    serve(harness, hub)
    writer = await peer(harness)
    first = await writer.subscribe("room")
    for i in range(10):
        await publish_json(hub, "room", i)
    for i in range(10):
        await writer.expect("message", data=i)

    late = await peer(harness)
    # Publish while the late subscriber's history is being read: each arrives once, in order.
    await late.send(op="subscribe", channel="room", since=4, epoch=first["epoch"])
    racing = [asyncio.ensure_future(publish_json(hub, "room", 10 + i)) for i in range(5)]
    head = await late.expect("subscribed", channel="room", recovered=True, epoch=first["epoch"])
    assert head["offset"] >= 10
    await bounded(asyncio.gather(*racing))
    got = [(await late.expect("message"))["offset"] for _ in range(11)]
    assert got == list(range(5, 16))
    await publish_json(hub, "room", "end")
    await late.expect("message", offset=16, data="end")


@pytest.mark.asyncio
async def test_a_lost_epoch_is_reported_as_not_recovered(harness):
    hub = Hub()
    serve(harness, hub)
    client = await peer(harness)
    await publish_json(hub, "room", "a")
    head = await client.subscribe("room", since=3, epoch="an-epoch-from-before-a-restart")
    assert head["recovered"] is False and head["epoch"] != "an-epoch-from-before-a-restart"
    await client.expect("message", offset=1, data="a")  # the new history, from its start


@pytest.mark.asyncio
async def test_unsubscribe_and_errors(harness):
    hub = Hub()
    serve(harness, hub, max_channels=2)
    client = await peer(harness)
    await client.send(op="unsubscribe", channel="room")
    await client.expect("error", code="not_subscribed", channel="room")
    await client.subscribe("room")
    await client.send(op="subscribe", channel="room")
    await client.expect("error", code="already_subscribed")
    await client.subscribe("other")
    await client.send(op="subscribe", channel="third")
    await client.expect("error", code="too_many_channels", channel="third")
    for bad in ("not json", json.dumps([1]), json.dumps({"op": "dance"}), json.dumps({"op": "subscribe"})):
        await bounded(client.ws.send(bad))
        await client.expect("error", code="bad_request")
    await client.send(op="subscribe", channel="x", since=-1)
    await client.expect("error", code="bad_request")
    await client.send(op="publish", channel="room")
    await client.expect("error", code="bad_request")
    await bounded(client.ws.send(b"\x00"))
    await client.expect("error", code="bad_request")
    await client.send(op="unsubscribe", channel="room")
    await client.expect("unsubscribed", channel="room")
    await publish_json(hub, "room", "not for you")
    await publish_json(hub, "other", "for you")
    await client.expect("message", channel="other", data="for you")
    assert hub.subscribers("room") == 0


class Guarded(ChannelsHandler):
    def can_subscribe(self, channel: str) -> bool:
        return not channel.startswith("secret")

    async def can_publish(self, channel: str, data: Any) -> bool:
        await asyncio.sleep(0)
        return channel != "readonly"


@pytest.mark.asyncio
async def test_hooks_refuse_subscribe_and_publish(harness):
    hub = Hub()
    serve(harness, hub, Guarded)
    client = await peer(harness)
    await client.send(op="subscribe", channel="secret-room")
    await client.expect("error", code="forbidden", channel="secret-room")
    await client.subscribe("readonly")
    await client.send(op="publish", channel="readonly", data=1, id="p1")
    await client.expect("error", code="forbidden", id="p1")
    await publish_json(hub, "readonly", "ok")
    await client.expect("message", offset=1, data="ok")  # the refused publish got no offset
    assert hub.subscribers("secret-room") == 0


@pytest.mark.asyncio
async def test_publish_rate_is_limited_per_connection(harness):
    hub = Hub()
    serve(harness, hub, publish_rate=0.001, publish_burst=3)
    client = await peer(harness)
    for i in range(5):
        await client.send(op="publish", channel="room", data=i, id=i)
    for i in range(3):
        await client.expect("published", id=i)
    for i in range(3, 5):
        await client.expect("error", code="rate_limited", id=i)


@pytest.mark.asyncio
async def test_presence_lists_members_and_sends_join_and_leave(harness):
    hub = Hub()
    serve(harness, hub)
    alice, bob, watcher = await peer(harness), await peer(harness), await peer(harness)
    await alice.subscribe("room", presence=True, info={"nick": "alice"})
    listing = await alice.expect("presence", channel="room")
    assert listing["members"] == []
    joined = await alice.expect("join", channel="room")
    assert joined["member"]["info"] == {"nick": "alice"}
    await watcher.subscribe("room")  # no presence asked: not listed, no events
    await bob.subscribe("room", presence=True, info={"nick": "bob"})
    listing = await bob.expect("presence")
    assert [m["info"] for m in listing["members"]] == [{"nick": "alice"}]
    assert (await bob.expect("join"))["member"]["info"] == {"nick": "bob"}
    assert (await alice.expect("join"))["member"]["info"] == {"nick": "bob"}
    await watcher.send(op="presence", channel="room")
    listing = await watcher.expect("presence")
    assert sorted(m["info"]["nick"] for m in listing["members"]) == ["alice", "bob"]
    await bounded(bob.ws.close())
    left = await alice.expect("leave", channel="room")
    assert left["member"] == joined["member"] | {"id": left["member"]["id"], "info": {"nick": "bob"}}
    assert list(await hub.members("room")) == [joined["member"]["id"]]
    await publish_json(hub, "room", "end")
    await watcher.expect("message", data="end")  # the watcher got no presence events before it


# -- the Python client ------------------------------------------------------------------------


async def collect(client: ChannelsClient, count: int, timeout: float = TIMEOUT) -> list[Any]:
    return [await client.next_event(timeout) for _ in range(count)]


@pytest.mark.asyncio
async def test_client_reconnects_and_resumes_each_message_once_in_order(harness):
    hub = Hub()
    port = serve(harness, hub)
    client = ChannelsClient(harness.url("/channels", port), reconnect_min=0.01, reconnect_max=0.05)
    try:
        await client.connect(TIMEOUT)
        await bounded(client.subscribe("room"))
        for i in range(60):
            if i % 10 == 5:
                client.drop_connection()  # the next ones are published while it is away
            await publish_json(hub, "room", i)
        events = await collect(client, 60)
        assert [e.data for e in events] == list(range(60))
        assert [e.offset for e in events] == list(range(1, 61))
        assert all(isinstance(e, ChannelMessage) for e in events)
        assert client.connections >= 2 and client.recovery_failures == 0
        # Publishing through the client: acknowledged with the offset.
        assert await bounded(client.publish("room", {"n": "mine"})) == 61
        assert (await client.next_event(TIMEOUT)).data == {"n": "mine"}
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_client_is_told_when_recovery_failed(harness):
    hub = Hub(MemoryBackend(HistorySettings(max_count=5)))
    port = serve(harness, hub)
    client = ChannelsClient(harness.url("/channels", port), reconnect_min=0.01, reconnect_max=0.05)
    try:
        await client.connect(TIMEOUT)
        await bounded(client.subscribe("room"))
        await publish_json(hub, "room", "seen")
        assert (await client.next_event(TIMEOUT)).data == "seen"
        client.drop_connection()
        for i in range(20):
            await publish_json(hub, "room", i)  # more than history keeps
        failed = await client.next_event(TIMEOUT)
        assert isinstance(failed, RecoveryFailed) and failed.channel == "room" and failed.offset == 21
        rest = await collect(client, 5)
        assert [e.data for e in rest] == list(range(15, 20))  # what history still had, in order
        assert client.recovery_failures == 1
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_client_publish_refusals_raise(harness):
    hub = Hub()
    port = harness.serve([(r"/channels", Guarded, {"hub": hub})])
    client = ChannelsClient(harness.url("/channels", port))
    try:
        await client.connect(TIMEOUT)
        with pytest.raises(ChannelsError) as refused:
            await bounded(client.publish("readonly", 1))
        assert refused.value.code == "forbidden"
        with pytest.raises(ChannelsError):
            await bounded(client.subscribe("secret"))
        assert (await bounded(client.subscribe("public", since=0)))["recovered"] is True
    finally:
        await client.close()


def test_serve_refuses_several_processes_without_a_shared_backend():
    app = tornado.web.Application([(r"/channels", ChannelsHandler)])
    with pytest.raises(ValueError, match="shared backend"):
        tornado_websocket.serve(app, 0, processes=2)
    app = tornado.web.Application([(r"/channels", ChannelsHandler, {"hub": Hub()})])
    with pytest.raises(ValueError, match="MemoryBackend"):
        tornado_websocket.serve(app, 0, processes=2)


@pytest.mark.asyncio
async def test_client_fails_over_to_the_next_url(harness):
    hub = Hub()
    port = serve(harness, hub)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"ws://127.0.0.1:{unused.getsockname()[1]}/channels"  # nothing listens there
    good = harness.url("/channels", port)
    client = ChannelsClient([dead, good], reconnect_min=0.01, reconnect_max=0.05)
    try:
        await client.connect(TIMEOUT)
        assert client.url == good + "?batch=1" and client.connected
    finally:
        await client.close()
    assert not client.connected


@pytest.mark.asyncio
async def test_client_presence_unsubscribe_and_iteration(harness):
    hub = Hub()
    port = serve(harness, hub)
    client = ChannelsClient(harness.url("/channels", port))
    await client.connect(TIMEOUT)
    head = await bounded(client.subscribe("room", presence=True, info="me"))
    with pytest.raises(ValueError):
        await client.subscribe("room")
    listing = await client.next_event(TIMEOUT)
    assert isinstance(listing, PresenceEvent) and (listing.kind, listing.members) == ("presence", [])
    joined = await client.next_event(TIMEOUT)
    assert joined.kind == "join" and joined.member == {"id": joined.member["id"], "info": "me"}
    client.request_presence("room")
    listing = await client.next_event(TIMEOUT)
    assert listing.kind == "presence" and listing.members == [joined.member]
    await bounded(client.subscribe("other"))
    await publish_json(hub, "room", 1)
    assert (await client.next_event(TIMEOUT)).data == 1
    assert client.position("room") == (head["epoch"], 1)
    client.unsubscribe("room")
    client.unsubscribe("room")  # again: nothing
    await bounded(wait_for_subscribers(hub, "room", 0))
    await publish_json(hub, "room", "not for me")
    await publish_json(hub, "other", "for me")
    seen = []

    async def iterate() -> None:
        async for event in client:
            seen.append(event)
            if len(seen) == 1:
                await client.close()  # iteration ends after what was queued

    await bounded(iterate())
    assert [e.data for e in seen] == ["for me"]
    with pytest.raises(ChannelsDisconnected):
        await client.next_event(TIMEOUT)


async def wait_for_subscribers(hub: Hub, channel: str, count: int) -> None:
    while hub.subscribers(channel) != count:
        await asyncio.sleep(0.01)  # polls hub state (bounded by the caller)


class FlakyBackendHandler(ChannelsHandler):
    """Answers the first subscribe of each connection as if the backend were down."""

    refused = 0

    def can_subscribe(self, channel: str) -> bool:
        if not getattr(self, "_refused_once", False):
            self._refused_once = True
            FlakyBackendHandler.refused += 1
            raise HubUnavailableError("the backend is down (for this test)")
        return True


@pytest.mark.asyncio
async def test_client_subscribes_again_after_unavailable(harness):
    hub = Hub()
    port = harness.serve([(r"/channels", FlakyBackendHandler, {"hub": hub})])
    client = ChannelsClient(harness.url("/channels", port), reconnect_min=0.01, reconnect_max=0.05)
    try:
        await client.connect(TIMEOUT)
        head = await bounded(client.subscribe("room"))
        assert head["recovered"] is True and FlakyBackendHandler.refused == 1
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_default_hub_and_bytes_published_by_server_code(harness):
    port = harness.serve([(r"/channels", ChannelsHandler)])
    client = await peer(harness, port=port)
    await client.subscribe("room")
    hub = default_hub()
    assert hub is default_hub()
    await hub.publish("room", "héllo".encode())
    assert (await client.expect("message"))["data"] == "héllo"  # bytes become a JSON string


@pytest.mark.asyncio
async def test_a_slow_consumer_is_closed_with_1013_and_comes_back_with_since(harness):
    hub = Hub(MemoryBackend(HistorySettings(max_count=10_000)), max_pending_bytes=64 * 1024)
    port = harness.serve(
        [(r"/channels", ChannelsHandler, {"hub": hub})], websocket_max_write_buffer_size=256 * 1024 * 1024
    )
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await bounded(loop.sock_connect(sock, ("127.0.0.1", port)))
    reader, writer = await bounded(asyncio.open_connection(sock=sock, limit=1024))
    slow = RawClient(reader, writer, port)
    harness.raw_clients.append(slow)
    await slow.handshake("/channels")
    await slow.send_text(json.dumps({"op": "subscribe", "channel": "room"}))
    head = json.loads(await slow.read_text())
    assert head["op"] == "subscribed"
    closed_before = tornado_websocket.metrics.STATS.slow_consumers_closed
    big = "x" * (128 * 1024)
    for i in range(400):  # 50 MiB at most: far more than the socket buffers hold
        await publish_json(hub, "room", {"i": i, "pad": big})
        await asyncio.sleep(0)  # one loop turn: the hub sends what was published in it
        if hub.subscribers("room") == 0 or tornado_websocket.metrics.STATS.slow_consumers_closed > closed_before:
            break
    else:
        pytest.fail("the hub never closed the subscriber that does not read")
    assert tornado_websocket.metrics.STATS.slow_consumers_closed == closed_before + 1
    # It reads now: a prefix of the messages in order, then Close 1013.
    offsets = []
    while True:
        frame = await slow.read_frame(timeout=TIMEOUT)
        if frame.opcode == 0x8:
            break
        offsets.append(json.loads(frame.payload)["offset"])
    assert frame.close_code == 1013
    assert offsets == list(range(1, len(offsets) + 1))
    # Back with the last offset it saw: the rest, recovered.
    back = await peer(harness, port=port)
    resumed = await back.subscribe("room", since=offsets[-1], epoch=head["epoch"])
    assert resumed["recovered"] is True
    latest = resumed["offset"]
    for offset in range(offsets[-1] + 1, latest + 1):
        await back.expect("message", offset=offset)


class CountingBackend(MemoryBackend):
    """The in-process backend, counting the history reads the hub asks of it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reads = 0

    async def recover(self, channel: str, since: Optional[int], epoch: Optional[str]) -> Any:
        self.reads += 1
        return await super().recover(channel, since, epoch)


@pytest.mark.asyncio
async def test_recoveries_within_what_the_hub_delivered_need_no_history_read(harness):
    backend = CountingBackend()
    hub = Hub(backend, recent_size=10)
    serve(harness, hub)
    keeper = await peer(harness)
    head = await keeper.subscribe("room")  # keeps the channel live in this process
    assert backend.reads == 1
    for i in range(30):
        await publish_json(hub, "room", i)
    for i in range(30):
        await keeper.expect("message", data=i)
    late = await peer(harness)
    resumed = await late.subscribe("room", since=25, epoch=head["epoch"])
    assert resumed["recovered"] is True and resumed["offset"] == 30
    assert [(await late.expect("message"))["offset"] for _ in range(5)] == [26, 27, 28, 29, 30]
    assert backend.reads == 1, "a recovery inside the recent messages read the backend"
    older = await peer(harness)
    resumed = await older.subscribe("room", since=5, epoch=head["epoch"])  # before the recent 10
    assert resumed["recovered"] is True and backend.reads == 2
    assert [(await older.expect("message"))["offset"] for _ in range(25)] == list(range(6, 31))
    other_epoch = await peer(harness)
    resumed = await other_epoch.subscribe("room", since=25, epoch="lost")
    assert resumed["recovered"] is False and backend.reads == 3


@pytest.mark.asyncio
async def test_batch_clients_get_what_leaves_together_in_one_frame_one_per_line(harness):
    hub = Hub()
    serve(harness, hub)
    single = await peer(harness)
    batched = await peer(harness, "/channels?batch=1")
    await single.subscribe("room")
    await batched.subscribe("room")

    async def burst() -> None:  # published in one turn of the event loop
        for i in range(10):
            await publish_json(hub, "room", i)

    await burst()
    got = [await single.expect("message") for _ in range(10)]
    assert [m["data"] for m in got] == list(range(10))  # one message per frame
    frame = await bounded(batched.ws.recv())
    lines = [json.loads(line) for line in frame.split("\n")]
    assert [m["data"] for m in lines] == list(range(10)) and {m["op"] for m in lines} == {"message"}
    # Recovery comes joined too: subscribed, then the history, in as few frames as MAX_JOINED allows.
    late = await peer(harness, "/channels?batch=1")
    await late.send(op="subscribe", channel="room", since=0, epoch=got[0]["epoch"])
    lines = [json.loads(line) for line in (await bounded(late.ws.recv())).split("\n")]
    assert lines[0]["op"] == "subscribed" and lines[0]["recovered"] is True
    assert [m["offset"] for m in lines[1:]] == list(range(1, 11))


@pytest.mark.asyncio
async def test_a_gap_in_live_delivery_is_filled_from_history(harness):
    backend = MemoryBackend()
    hub = Hub(backend)
    serve(harness, hub)
    client = await peer(harness)
    await client.subscribe("room")
    for i in range(3):
        await publish_json(hub, "room", i)
    # A backend that skipped one (say, a lost pub/sub message): offset 4 is in history, never delivered.
    backend._history("room").append(json.dumps(3))
    await publish_json(hub, "room", 4)  # offset 5: the hub sees the gap and reads history
    await publish_json(hub, "room", 5)  # arrives while it reads
    assert [(await client.expect("message"))["offset"] for _ in range(6)] == [1, 2, 3, 4, 5, 6]
    await publish_json(hub, "room", "end")
    await client.expect("message", offset=7, data="end")


@pytest.mark.asyncio
async def test_a_gap_history_cannot_fill_is_passed_over(harness, caplog):
    backend = MemoryBackend(HistorySettings(max_count=0))
    hub = Hub(backend)
    serve(harness, hub)
    client = await peer(harness)
    await client.subscribe("room")
    await publish_json(hub, "room", 0)
    backend._history("room").append(json.dumps("lost"))  # offset 2: not delivered, not kept
    await publish_json(hub, "room", 2)
    assert [(await client.expect("message"))["offset"] for _ in range(2)] == [1, 3]
    assert any("incomplete" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_a_crowd_coming_back_costs_one_history_read(harness):
    backend = CountingBackend()
    hub = Hub(backend)
    serve(harness, hub)
    first = await peer(harness)
    head = await first.subscribe("room")
    await first.send(op="unsubscribe", channel="room")
    await first.expect("unsubscribed")
    assert hub.subscribers("room") == 0 and backend.reads == 1
    for i in range(10):
        await publish_json(hub, "room", i)  # nobody here sees these live
    crowd = [await peer(harness) for _ in range(8)]
    for member in crowd:
        await member.send(op="subscribe", channel="room", since=0, epoch=head["epoch"])
    for member in crowd:
        resumed = await member.expect("subscribed", recovered=True)
        assert resumed["offset"] == 10
        assert [(await member.expect("message"))["data"] for _ in range(10)] == list(range(10))
    assert backend.reads == 2, f"{backend.reads - 1} history reads for one crowd"


@pytest.mark.asyncio
async def test_the_hub_recovers_no_more_than_the_history_keeps(harness):
    """The hub's recent messages are bounded by the backend's max_count: beyond it, recovery fails as history does."""
    backend = CountingBackend(history=HistorySettings(max_count=5, max_age=None))
    hub = Hub(backend, recent_size=1000)
    assert hub.recent_size == 5
    serve(harness, hub)
    keeper = await peer(harness)
    head = await keeper.subscribe("room")
    for i in range(10):
        await publish_json(hub, "room", i)
    for i in range(10):
        await keeper.expect("message", data=i)
    late = await peer(harness)
    resumed = await late.subscribe("room", since=0, epoch=head["epoch"])
    assert resumed["recovered"] is False and backend.reads == 2  # as the history answers: 1-5 are gone
    within = await peer(harness)
    resumed = await within.subscribe("room", since=6, epoch=head["epoch"])
    assert resumed["recovered"] is True and backend.reads == 2  # answered by the hub
    assert [(await within.expect("message"))["offset"] for _ in range(4)] == [7, 8, 9, 10]


class ClockedBackend(CountingBackend):
    """The in-process backend with its histories on a clock the test moves."""

    def __init__(self, now: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.now = now

    def _history(self, channel: str) -> ChannelHistory:
        if channel not in self._histories:
            self._histories[channel] = ChannelHistory(self.history_settings, clock=lambda: self.now[0])
        return self._histories[channel]


@pytest.mark.asyncio
async def test_the_hub_recovers_nothing_older_than_the_history_keeps(harness, monkeypatch):
    """Messages older than max_age are not recovered from the hub's recent messages either."""
    now = [1000.0]
    monkeypatch.setattr(tornado_websocket.hub, "clock", lambda: now[0])
    backend = ClockedBackend(now, history=HistorySettings(max_count=100, max_age=60.0))
    hub = Hub(backend)
    serve(harness, hub)
    keeper = await peer(harness)
    head = await keeper.subscribe("room")
    for i in range(3):
        await publish_json(hub, "room", i)
    now[0] += 50.0
    for i in range(3, 6):
        await publish_json(hub, "room", i)
    for i in range(6):
        await keeper.expect("message", data=i)
    fresh = await peer(harness)
    resumed = await fresh.subscribe("room", since=0, epoch=head["epoch"])
    assert resumed["recovered"] is True and backend.reads == 1  # all six are within 60 s: from the hub
    assert [(await fresh.expect("message"))["offset"] for _ in range(6)] == [1, 2, 3, 4, 5, 6]
    now[0] += 20.0  # the first three are 70 s old now, the last three 20 s
    late = await peer(harness)
    resumed = await late.subscribe("room", since=0, epoch=head["epoch"])
    assert resumed["recovered"] is False and backend.reads == 2  # the history has lost 1-3, and says so
    within = await peer(harness)
    resumed = await within.subscribe("room", since=3, epoch=head["epoch"])
    assert resumed["recovered"] is True
    assert [(await within.expect("message"))["offset"] for _ in range(3)] == [4, 5, 6]
