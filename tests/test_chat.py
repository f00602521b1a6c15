"""The chat demo (demos/chat/chat.py) as processes, with real WebSocket clients.

Most tests run twice: ``memory`` (one process, no Redis: both "sides" are the
same process) and ``redis`` (two processes sharing a real redis-server
started for the test). Every wait is bounded; every process is killed at
teardown.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Optional

import pytest
import pytest_asyncio
from chat_fixtures import ChatClient, ChatServer, Processes, RedisServer

import tornado_websocket

TTL = "2"  # --presence-ttl for the Redis processes: a dead process's users go within ~2-3 s


@dataclass
class Cluster:
    """Where to connect: ``a`` and ``b`` are two processes with Redis, the same one without."""

    a: ChatServer
    b: ChatServer
    redis: Optional[RedisServer]


@pytest.fixture
def procs():
    group = Processes()
    try:
        yield group
    finally:
        print(group.logs())  # shown by pytest for a failed test only
        group.close()


def redis_cluster(procs: Processes) -> Cluster:
    redis = procs.redis()
    a = procs.chat(redis.url, "--presence-ttl", TTL)
    b = procs.chat(redis.url, "--presence-ttl", TTL)
    return Cluster(a, b, redis)


@pytest.fixture(params=["memory", "redis"])
def cluster(request: pytest.FixtureRequest, procs: Processes) -> Cluster:
    if request.param == "memory":
        server = procs.chat()
        return Cluster(server, server, None)
    return redis_cluster(procs)


class Clients:
    """The test's chat clients, closed at teardown."""

    def __init__(self) -> None:
        self.all: list[ChatClient] = []

    async def join(self, server: ChatServer, nick: str, room: str = "lobby") -> ChatClient:
        client = await ChatClient.join(server, nick, room)
        self.all.append(client)
        return client

    async def connect(self, server: ChatServer, room: str = "lobby") -> ChatClient:
        client = await ChatClient.connect(server, room)
        self.all.append(client)
        return client

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.all), return_exceptions=True)


@pytest_asyncio.fixture
async def clients():
    group = Clients()
    try:
        yield group
    finally:
        await group.close()


def text_is(text: str) -> Any:
    return lambda m: m.get("text") == text


def users_are(*nicks: str) -> Any:
    return lambda m: sorted(m.get("users", [])) == sorted(nicks)


pytestmark = pytest.mark.asyncio


# -- messages, presence, history ---------------------------------------------------------


async def test_message_reaches_the_other_process(cluster: Cluster, clients: Clients) -> None:
    alice = await clients.join(cluster.a, "alice")
    bob = await clients.join(cluster.b, "bob")
    await alice.say("hello from A")
    got = await bob.expect("message", text_is("hello from A"))
    assert got["nick"] == "alice"
    assert isinstance(got["id"], str) and abs(got["ts"] / 1000 - time.time()) < 60
    await bob.say("hello from B")
    assert (await alice.expect("message", text_is("hello from B")))["nick"] == "bob"


async def test_presence_lists_both_users_across_processes(cluster: Cluster, clients: Clients) -> None:
    alice = await clients.join(cluster.a, "alice")
    bob = await clients.join(cluster.b, "bob")
    await alice.expect("presence", users_are("alice", "bob"))
    await bob.expect("presence", users_are("alice", "bob"))
    await bob.close()
    await alice.expect("presence", users_are("alice"))


async def test_newcomer_gets_exactly_the_last_50_messages_in_order(cluster: Cluster, clients: Clients) -> None:
    # 60 messages from 6 senders (10 each: within one connection's burst), on both processes.
    senders = [await clients.join(cluster.a if i % 2 == 0 else cluster.b, f"sender{i}") for i in range(6)]
    for k in range(60):
        sender = senders[k // 10]
        await sender.say(f"msg {k:02d}")
        await sender.expect("message", text_is(f"msg {k:02d}"))  # stored and published before the next
    newcomer = await clients.join(cluster.b, "newcomer")
    assert [m["text"] for m in newcomer.history] == [f"msg {k:02d}" for k in range(10, 60)]
    assert [m["nick"] for m in newcomer.history] == [f"sender{k // 10}" for k in range(10, 60)]


async def test_nicknames_are_sanitized_and_unique_per_room(cluster: Cluster, clients: Clients) -> None:
    first = await clients.join(cluster.a, "  ali\x00ce\u202e\u200b\n ")
    assert first.nick == "alice"
    second = await clients.join(cluster.b, "alice")
    assert second.nick == "alice-2"
    long = await clients.join(cluster.a, "x" * 100)
    assert long.nick == "x" * 24
    long2 = await clients.join(cluster.b, "x" * 100)
    assert long2.nick == "x" * 22 + "-2" and len(long2.nick) == 24
    other_room = await clients.join(cluster.b, "alice", room="elsewhere")
    assert other_room.nick == "alice"
    await first.send({"type": "nick", "nick": "carol"})
    assert (await first.expect("nick"))["nick"] == "carol"
    await second.expect("presence", users_are("carol", "alice-2", "x" * 24, "x" * 22 + "-2"))
    guest = await clients.join(cluster.a, "\x01\x02")
    assert guest.nick == "guest"


# -- what the server refuses ---------------------------------------------------------------


async def test_oversized_message_gets_an_error_and_is_not_broadcast(cluster: Cluster, clients: Clients) -> None:
    alice = await clients.join(cluster.a, "alice")
    bob = await clients.join(cluster.b, "bob")
    await alice.say("y" * 2000)  # at the limit: accepted
    assert len((await bob.expect("message"))["text"]) == 2000
    await alice.say("z" * 2001)
    error = await alice.expect("error")
    assert error["code"] == "too_long"
    await alice.say("after")
    # Alice's messages arrive in order: the next one bob gets must be "after", not the oversized one.
    assert (await bob.expect("message"))["text"] == "after"


async def test_rate_limit_refuses_excess_messages(cluster: Cluster, clients: Clients) -> None:
    alice = await clients.join(cluster.a, "alice")
    for i in range(15):
        await alice.say(f"burst {i}")
    accepted, refused = 0, 0
    while accepted + refused < 15:
        reply = await alice.recv()
        assert reply is not None, "closed by the server"
        if reply["type"] == "message":
            accepted += 1
        elif reply["type"] == "error":
            assert reply["code"] == "rate_limited", reply
            refused += 1
    assert 10 <= accepted <= 12 and refused >= 3, (accepted, refused)
    assert not alice.conn.closed


async def test_repeated_abuse_closes_with_1008(cluster: Cluster, clients: Clients) -> None:
    spammer = await clients.join(cluster.a, "spammer")
    bob = await clients.join(cluster.b, "bob")
    for i in range(60):
        try:
            await spammer.say(f"spam {i}")
        except tornado_websocket.WebSocketClosedError:
            break  # the server's close already arrived
    assert await spammer.expect_closed() == 1008
    await bob.expect("presence", users_are("bob"))


async def test_html_comes_back_as_literal_text(cluster: Cluster, clients: Clients) -> None:
    alice = await clients.join(cluster.a, "alice")
    bob = await clients.join(cluster.b, "<i>bob</i>")
    assert bob.nick == "<i>bob</i>"
    text = "<b>x</b> <script>alert(1)</script> &amp; <img src=x onerror=alert(2)>"
    await alice.say(text)
    assert (await bob.expect("message"))["text"] == text


async def test_protocol_errors(cluster: Cluster, clients: Clients) -> None:
    client = await clients.connect(cluster.a)
    await client.say("before hello")
    assert (await client.expect("error"))["code"] == "hello_first"
    await client.conn.write_message("not json")
    assert (await client.expect("error"))["code"] == "invalid"
    await client.send({"type": "dance"})
    assert (await client.expect("error"))["code"] == "invalid"
    with pytest.raises(tornado_websocket.WebSocketHandshakeError) as info:
        await tornado_websocket.websocket_connect(cluster.a.ws_url("no spaces!"), connect_timeout=10)
    assert info.value.code == 400


async def test_sigterm_closes_clients_with_1001_and_exits_cleanly(cluster: Cluster, clients: Clients) -> None:
    alice = await clients.join(cluster.a, "alice")
    bob = await clients.join(cluster.b, "bob")
    await bob.expect("presence", users_are("alice", "bob"))
    if cluster.a is cluster.b:
        assert await asyncio.to_thread(cluster.a.stop) == 0
        assert await alice.expect_closed() == 1001
        return
    assert await asyncio.to_thread(cluster.a.stop) == 0
    assert await alice.expect_closed() == 1001
    await bob.expect("presence", users_are("bob"))  # said goodbye: no need to wait for the TTL


# -- Redis only -------------------------------------------------------------------------------


async def test_crashed_process_users_disappear(procs: Processes, clients: Clients) -> None:
    cluster = redis_cluster(procs)
    alice = await clients.join(cluster.a, "alice")
    await clients.join(cluster.b, "bob")
    await alice.expect("presence", users_are("alice", "bob"))
    cluster.b.kill()  # SIGKILL: no goodbye, only the missing heartbeat tells
    await alice.expect("presence", users_are("alice"), timeout=15)


async def test_redis_restart_recovers(procs: Processes, clients: Clients) -> None:
    cluster = redis_cluster(procs)
    assert cluster.redis is not None
    alice = await clients.join(cluster.a, "alice")
    bob = await clients.join(cluster.b, "bob")
    await alice.say("before")
    await bob.expect("message", text_is("before"))

    await asyncio.to_thread(cluster.redis.stop)
    await alice.say("while Redis is down")
    assert (await alice.expect("error"))["code"] == "unavailable"
    restarted_at = time.time()
    await asyncio.to_thread(cluster.redis.start)  # same port, empty

    # Both processes reconnect on their own (backoff up to 2 s): probe until a message crosses.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    for n in range(1, 1000):
        await alice.say(f"probe {n}")
        try:
            await bob.expect("message", text_is(f"probe {n}"), timeout=1.0)
            break
        except AssertionError:
            assert loop.time() < deadline, "messages did not flow again within 30 s of Redis coming back"
    await bob.say("and back")
    await alice.expect("message", text_is("and back"))
    # The heartbeat put both users back into the (empty) new Redis.
    since = restarted_at * 1_000_000

    def fresh_and_full(m: dict[str, Any]) -> bool:
        return m["rev"] > since and sorted(m["users"]) == ["alice", "bob"]

    await alice.expect("presence", fresh_and_full, timeout=15)
    await bob.expect("presence", fresh_and_full, timeout=15)
    # A newcomer's history has what was said since the restart.
    carol = await clients.join(cluster.a, "carol")
    assert [m["text"] for m in carol.history][-1] == "and back"
