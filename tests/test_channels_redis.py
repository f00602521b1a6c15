"""Channels through real Redis: one ``redis-server``, and a real three-node Redis Cluster.

Each test runs ChannelsHandler servers on 127.0.0.1, each with its own
``Hub`` and Redis backend (as separate processes would have), and
``ChannelsClient`` clients. Without ``redis-server`` the tests are skipped
locally and fail when ``CI`` is set. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any, Callable

import pytest
import pytest_asyncio
from conftest import TIMEOUT, bounded
from redis_server import RedisCluster, RedisServer, command, find_redis_cli, find_redis_server

from tornado_websocket.channels import ChannelsHandler, publish_json
from tornado_websocket.channels_client import ChannelMessage, ChannelsClient, PresenceEvent, RecoveryFailed
from tornado_websocket.channels_history import HistorySettings
from tornado_websocket.channels_redis import RedisBackend, RedisClusterBackend
from tornado_websocket.hub import Hub

pytestmark = pytest.mark.asyncio

RECOVERY_TIMEOUT = 15.0


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required when CI is set)")
    pytest.skip(reason)


def redis_executable() -> str:
    executable = find_redis_server()
    if executable is None:
        skip_or_fail("redis-server is not installed")
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        skip_or_fail("the redis Python package is not installed")
    assert executable is not None
    return executable


@pytest.fixture
def redis_server():
    server = RedisServer(redis_executable())
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def redis_cluster():
    executable = redis_executable()
    cli = find_redis_cli()
    if cli is None:
        skip_or_fail("redis-cli is not installed")
    assert cli is not None
    cluster = RedisCluster(executable, cli)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


async def wait_until(predicate: Callable[[], Any], what: str, timeout: float = RECOVERY_TIMEOUT) -> None:
    async def poll() -> None:
        while not await predicate():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), timeout)
    except asyncio.TimeoutError:
        pytest.fail(f"timed out after {timeout} s waiting for {what}")


class Deployment:
    """Hubs (each a 'process') with a ChannelsHandler server each, and clients; all closed at teardown."""

    def __init__(self, harness: Any) -> None:
        self.harness = harness
        self.hubs: list[Hub] = []
        self.clients: list[ChannelsClient] = []

    def server(self, backend: Any) -> tuple[Hub, str]:
        hub = Hub(backend)
        self.hubs.append(hub)
        options = {"hub": hub, "publish_rate": 1e6, "publish_burst": 10**6}
        port = self.harness.serve([(r"/channels", ChannelsHandler, options)])
        return hub, self.harness.url("/channels", port)

    async def client(self, url: Any) -> ChannelsClient:
        client = ChannelsClient(url, reconnect_min=0.02, reconnect_max=0.2)
        self.clients.append(client)
        await client.connect(TIMEOUT)
        return client

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()
        for hub in self.hubs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(hub.close(), 5)


@pytest_asyncio.fixture
async def deployment(harness):
    deployment = Deployment(harness)
    try:
        yield deployment
    finally:
        await deployment.aclose()


def fast(url: str, **kwargs: Any) -> RedisBackend:
    return RedisBackend(url, reconnect_min=0.02, reconnect_max=0.2, **kwargs)


async def messages(client: ChannelsClient, count: int) -> list[ChannelMessage]:
    got = []
    for _ in range(count):
        event = await client.next_event(RECOVERY_TIMEOUT)
        assert isinstance(event, ChannelMessage), event
        got.append(event)
    return got


# -- one Redis server ----------------------------------------------------------------------


async def test_offsets_history_and_recovery_are_shared_by_every_process(deployment, redis_server):
    hub_a, url_a = deployment.server(fast(redis_server.url))
    hub_b, url_b = deployment.server(fast(redis_server.url))
    reader = await deployment.client(url_a)
    writer = await deployment.client(url_b)
    head = await bounded(reader.subscribe("room"))
    assert (head["offset"], head["recovered"]) == (0, True)
    offsets = [await bounded(writer.publish("room", {"n": i})) for i in range(20)]
    assert offsets == list(range(1, 21))
    got = await messages(reader, 20)
    assert [m.data["n"] for m in got] == list(range(20)) and [m.offset for m in got] == offsets
    assert {m.epoch for m in got} == {head["epoch"]}

    # A later subscriber on the other process recovers from offset 12 of that epoch, then goes live.
    late = await deployment.client(url_b)
    racing = asyncio.ensure_future(publish_json(hub_a, "room", {"n": 20}))
    resumed = await bounded(late.subscribe("room", since=12, epoch=head["epoch"]))
    assert resumed["recovered"] is True and resumed["epoch"] == head["epoch"]
    await bounded(racing)
    got = await messages(late, 9)
    assert [m.offset for m in got] == list(range(13, 22))
    assert (await messages(reader, 1))[0].offset == 21
    assert await bounded(publish_json(hub_b, "room", "end")) == 22
    assert (await messages(late, 1))[0].data == "end"
    assert (await messages(reader, 1))[0].data == "end"


async def test_history_is_trimmed_by_count_and_age(deployment, redis_server):
    backend = fast(redis_server.url, history=HistorySettings(max_count=5, max_age=1.0))
    hub, _ = deployment.server(backend)
    for i in range(300):
        await publish_json(hub, "room", i)
    recovery = await backend.recover("room", 0, None)
    assert recovery.offset == 300 and not recovery.recovered
    assert 5 <= len(recovery.entries) < 300  # MAXLEN ~ keeps about max_count
    assert [o for o, _ in recovery.entries] == list(range(301 - len(recovery.entries), 301))
    assert (await backend.recover("room", 298, recovery.epoch)).recovered

    async def aged_out() -> bool:
        return (await backend.recover("room", 0, None)).entries == []

    await wait_until(aged_out, "the history to age out")
    assert not (await backend.recover("room", 299, recovery.epoch)).recovered


async def test_flushall_makes_a_new_epoch_and_clients_are_told(deployment, redis_server):
    hub, url = deployment.server(fast(redis_server.url))
    client = await deployment.client(url)
    head = await bounded(client.subscribe("room"))
    await publish_json(hub, "room", "before")
    assert (await messages(client, 1))[0].offset == 1
    assert command(redis_server.port, "FLUSHALL") == b"+OK\r\n"
    # While connected: the next message comes in a new epoch, and the client says recovery failed.
    assert await bounded(publish_json(hub, "room", "after")) == 1
    failed = await client.next_event(RECOVERY_TIMEOUT)
    assert isinstance(failed, RecoveryFailed) and failed.previous_epoch == head["epoch"] != failed.epoch
    after = (await messages(client, 1))[0]
    assert (after.data, after.offset, after.epoch) == ("after", 1, failed.epoch)
    # Coming back with an offset of the lost epoch: not recovered, nothing hangs.
    other = await deployment.client(url)
    resumed = await bounded(other.subscribe("room", since=1, epoch=head["epoch"]))
    assert resumed["recovered"] is False and resumed["epoch"] == failed.epoch


async def test_a_lost_pubsub_connection_is_filled_from_history(deployment, redis_server):
    hub_a, url_a = deployment.server(fast(redis_server.url))
    hub_b, _ = deployment.server(fast(redis_server.url))
    client = await deployment.client(url_a)
    await bounded(client.subscribe("room"))
    for i in range(5):
        await publish_json(hub_b, "room", i)
    await messages(client, 5)
    # Redis drops every pub/sub connection; what is published before they are back comes from history.
    assert command(redis_server.port, "CLIENT", "KILL", "TYPE", "pubsub").startswith(b":")
    for i in range(5, 40):
        await publish_json(hub_b, "room", i)
    got = await messages(client, 35)
    assert [m.data for m in got] == list(range(5, 40))
    await publish_json(hub_b, "room", "end")
    assert (await messages(client, 1))[0].data == "end"  # no duplicate queued before it
    assert client.duplicates_dropped == 0 and client.recovery_failures == 0


async def test_presence_across_processes_and_a_dead_process_drops_out(deployment, redis_server):
    hub_a, url_a = deployment.server(fast(redis_server.url, presence_ttl=0.6))
    dying_backend = fast(redis_server.url, presence_ttl=0.6)
    hub_b, url_b = deployment.server(dying_backend)
    alice = await deployment.client(url_a)
    bob = await deployment.client(url_b)
    await bounded(alice.subscribe("room", presence=True, info={"nick": "alice"}))
    listing = await alice.next_event(TIMEOUT)
    assert isinstance(listing, PresenceEvent) and listing.kind == "presence" and listing.members == []
    assert (await alice.next_event(TIMEOUT)).kind == "join"  # her own
    await bounded(bob.subscribe("room", presence=True, info={"nick": "bob"}))
    listing = await bob.next_event(TIMEOUT)
    assert [m["info"] for m in listing.members] == [{"nick": "alice"}]
    joined = await alice.next_event(TIMEOUT)
    assert (joined.kind, joined.member["info"]) == ("join", {"nick": "bob"})
    assert sorted(m["nick"] for m in (await hub_b.members("room")).values()) == ["alice", "bob"]

    # Bob's process stops refreshing its heartbeat (as if killed): alice's process removes him.
    assert dying_backend._heartbeat is not None
    dying_backend._heartbeat.cancel()
    left = await alice.next_event(RECOVERY_TIMEOUT)
    assert (left.kind, left.member["info"]) == ("leave", {"nick": "bob"})
    assert [m["nick"] for m in (await hub_a.members("room")).values()] == ["alice"]


# -- a Redis Cluster ----------------------------------------------------------------------------


async def test_cluster_spreads_channels_over_shards_and_delivers_once_in_order(deployment, redis_cluster):
    backend_a = RedisClusterBackend(redis_cluster.url, reconnect_min=0.02, reconnect_max=0.2)
    backend_b = RedisClusterBackend(redis_cluster.url, reconnect_min=0.02, reconnect_max=0.2)
    hub_a, url_a = deployment.server(backend_a)
    hub_b, url_b = deployment.server(backend_b)
    channels = [f"room{i}" for i in range(12)]
    reader = await deployment.client(url_a)
    for channel in channels:
        head = await bounded(reader.subscribe(channel))
        assert head["recovered"] is True
    nodes = {backend_a._node_of(channel) for channel in channels}
    assert len(nodes) == 3, f"12 channels landed on {len(nodes)} of 3 shards"
    for node in redis_cluster.nodes:
        shard_channels = command(node.port, "PUBSUB", "SHARDCHANNELS")
        assert shard_channels.startswith(b"*") and shard_channels != b"*0\r\n", "no SSUBSCRIBE on a shard"

    writer = await deployment.client(url_b)
    for i in range(10):
        for channel in channels:
            assert await bounded(writer.publish(channel, i)) == i + 1
    got = await messages(reader, 10 * len(channels))
    for channel in channels:
        assert [m.data for m in got if m.channel == channel] == list(range(10))
        assert [m.offset for m in got if m.channel == channel] == list(range(1, 11))

    # Recovery from history in the cluster, on the other process.
    late = await deployment.client(url_b)
    epoch = got[0].epoch if got[0].channel == channels[0] else next(m.epoch for m in got if m.channel == channels[0])
    resumed = await bounded(late.subscribe(channels[0], since=7, epoch=epoch))
    assert resumed["recovered"] is True
    assert [m.data for m in await messages(late, 3)] == [7, 8, 9]
    # Keys of each channel share one slot: every node holds some.
    for node in redis_cluster.nodes:
        assert int(command(node.port, "DBSIZE")[1:].strip()) > 0


async def test_a_publish_sent_again_is_stored_once(redis_server):
    backend = fast(redis_server.url)
    try:
        hub = Hub(backend)
        assert await publish_json(hub, "room", "first") == 1
        keys = backend._history_keys("room")
        args = [
            "unused-epoch", 100, 0, b"t" + b'"again"', backend.key("room", "live"), "PUBLISH", "publish-id-1", "0",
        ]  # fmt: skip
        first = await backend._publish(keys=keys, args=args)
        args[-1] = "1"  # as _send_batch does after a failed connection: the answer was lost, not the publish
        second = await backend._publish(keys=keys, args=args)
        assert int(first[0]) == int(second[0]) == 2
        recovery = await backend.recover("room", 0, None)
        assert recovery.entries == [(1, '"first"'), (2, '"again"')]
        assert await publish_json(hub, "room", "next") == 3
    finally:
        await backend.close()


async def test_the_first_publish_after_a_redis_restart_succeeds(redis_server):
    backend = fast(redis_server.url)
    try:
        hub = Hub(backend)
        await publish_json(hub, "room", "before")  # the publisher's pooled connection goes stale with the restart
        await asyncio.to_thread(redis_server.restart)
        assert await bounded(publish_json(hub, "room", "after"), RECOVERY_TIMEOUT) == 1  # new server, new epoch
    finally:
        await backend.close()
