"""The chat demo (demos/chat/chat.py) as processes, with real WebSocket clients.

Most tests run twice: ``memory`` (one process, no Redis: both "sides" are the
same process) and ``redis`` (two processes sharing a real redis-server
started for the test). Every wait is bounded; every process is killed at
teardown.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import pytest
import pytest_asyncio
from chat_fixtures import CHAT, ChatClient, ChatServer, Processes, RedisServer

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


def redis_cluster(procs: Processes, *extra: str) -> Cluster:
    redis = procs.redis()
    a = procs.chat(redis.url, "--presence-ttl", TTL, *extra)
    b = procs.chat(redis.url, "--presence-ttl", TTL, *extra)
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

    async def join_resumed(self, server: ChatServer, old: ChatClient, nick: str) -> ChatClient:
        client = await ChatClient.resume(server, old, nick)
        self.all.append(client)
        return client

    async def resume_from(
        self, server: ChatServer, offset: Optional[int], epoch: Optional[str], nick: str
    ) -> ChatClient:
        client = await ChatClient.connect(server)
        self.all.append(client)
        await client.subscribe(nick, since=offset or 0, epoch=epoch)
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
    return lambda m: m.get("data", {}).get("text") == text


pytestmark = pytest.mark.asyncio


# -- messages, presence, history ---------------------------------------------------------


async def test_message_reaches_the_other_process(cluster: Cluster, clients: Clients) -> None:
    alice = await clients.join(cluster.a, "alice")
    bob = await clients.join(cluster.b, "bob")
    await alice.say("hello from A", nick="mallory", ts=0)  # the server stamps nick and time itself
    got = (await bob.expect("message", text_is("hello from A")))["data"]
    assert got["nick"] == "alice"
    assert abs(got["ts"] / 1000 - time.time()) < 60
    await bob.say("hello from B")
    assert (await alice.expect("message", text_is("hello from B")))["data"]["nick"] == "bob"


async def test_presence_lists_both_users_across_processes(cluster: Cluster, clients: Clients) -> None:
    alice = await clients.join(cluster.a, "alice")
    bob = await clients.join(cluster.b, "bob")
    await alice.expect_users("alice", "bob")
    await bob.expect_users("alice", "bob")
    await bob.close()
    await alice.expect_users("alice")


async def test_newcomer_gets_the_last_50_messages_in_order(cluster: Cluster, clients: Clients) -> None:
    # 60 messages from 6 senders (10 each: within one connection's burst), on both processes.
    senders = [await clients.join(cluster.a if i % 2 == 0 else cluster.b, f"sender{i}") for i in range(6)]
    for k in range(60):
        sender = senders[k // 10]
        await sender.say(f"msg {k:02d}")
        await sender.expect("message", text_is(f"msg {k:02d}"))  # published before the next
    newcomer = await clients.join(cluster.b, "newcomer")
    # Exactly 50 in memory; Redis trims its stream approximately (XADD MAXLEN ~), so at least 50 there.
    first = 60 - len(newcomer.history)
    assert first == 10 if cluster.redis is None else 0 <= first <= 10
    assert [m["text"] for m in newcomer.history] == [f"msg {k:02d}" for k in range(first, 60)]
    assert [m["nick"] for m in newcomer.history] == [f"sender{k // 10}" for k in range(first, 60)]
    assert newcomer.subscribed["offset"] == 60


async def test_nicknames_are_sanitized_and_can_change(cluster: Cluster, clients: Clients) -> None:
    first = await clients.join(cluster.a, "  ali\x00ce\u202e\u200b\n ")
    await first.say("hi")
    assert (await first.expect("message"))["data"]["nick"] == "alice"
    await clients.join(cluster.b, "x" * 100)
    await clients.join(cluster.a, "\x01\x02")
    await first.expect_users("alice", "x" * 24, "guest")
    # A new name: subscribe again from where we stand, with the new info.
    await first.send({"op": "unsubscribe", "channel": first.channel})
    await first.expect("unsubscribed")
    await first.subscribe("carol", since=first.offset, epoch=first.epoch)
    await first.expect_users("carol", "x" * 24, "guest")
    await first.say("now carol")
    assert (await first.expect("message", text_is("now carol")))["data"]["nick"] == "carol"


async def test_metrics_and_health(cluster: Cluster) -> None:
    def get(path: str) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", cluster.a.port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    assert await asyncio.to_thread(get, "/health") == (200, "ok\n")
    status, metrics = await asyncio.to_thread(get, "/metrics")
    assert status == 200 and "tornado_websocket_open_connections" in metrics
    status, script = await asyncio.to_thread(get, "/lib/channels.js")
    assert status == 200 and "class Client" in script


# -- what the server refuses ---------------------------------------------------------------


async def test_oversized_message_gets_an_error_and_is_not_broadcast(cluster: Cluster, clients: Clients) -> None:
    alice = await clients.join(cluster.a, "alice")
    bob = await clients.join(cluster.b, "bob")
    await alice.say("y" * 2000)  # at the limit: accepted
    assert len((await bob.expect("message"))["data"]["text"]) == 2000
    await alice.say("z" * 2001)
    error = await alice.expect("error")
    assert error["code"] == "too_long"
    await alice.say("after")
    # Alice's messages arrive in order: the next one bob gets must be "after", not the oversized one.
    assert (await bob.expect("message"))["data"]["text"] == "after"


async def test_rate_limit_refuses_excess_messages(cluster: Cluster, clients: Clients) -> None:
    alice = await clients.join(cluster.a, "alice")
    for i in range(15):
        await alice.say(f"burst {i}")
    accepted, refused = 0, 0
    while accepted + refused < 15:
        reply = await alice.recv()
        assert reply is not None, "closed by the server"
        if reply["op"] == "message":
            accepted += 1
        elif reply["op"] == "error":
            assert reply["code"] == "rate_limited", reply
            refused += 1
    assert 10 <= accepted <= 12 and refused >= 3, (accepted, refused)
    assert not alice.conn.closed


async def test_repeated_abuse_closes_with_1008(cluster: Cluster, clients: Clients) -> None:
    spammer = await clients.join(cluster.a, "spammer")
    bob = await clients.join(cluster.b, "bob")
    await bob.expect_users("bob", "spammer")
    for i in range(60):
        try:
            await spammer.say(f"spam {i}")
        except tornado_websocket.WebSocketClosedError:
            break  # the server's close already arrived
    assert await spammer.expect_closed() == 1008
    await bob.expect_users("bob")


async def test_html_comes_back_as_literal_text(cluster: Cluster, clients: Clients) -> None:
    alice = await clients.join(cluster.a, "alice")
    bob = await clients.join(cluster.b, "<i>bob</i>")
    await alice.expect_users("alice", "<i>bob</i>")
    text = "<b>x</b> <script>alert(1)</script> &amp; <img src=x onerror=alert(2)>"
    await alice.say(text)
    assert (await bob.expect("message"))["data"]["text"] == text


async def test_protocol_errors(cluster: Cluster, clients: Clients) -> None:
    client = await clients.connect(cluster.a)
    await client.conn.write_message("not json")
    assert (await client.expect("error"))["code"] == "bad_request"
    await client.send({"op": "dance"})
    assert (await client.expect("error"))["code"] == "bad_request"
    await client.send({"op": "publish", "channel": client.channel, "data": "no text"})
    assert (await client.expect("error"))["code"] == "bad_request"
    for channel in ("lobby", "room:no spaces!", "room:" + "x" * 33):
        await client.send({"op": "subscribe", "channel": channel})
        error = await client.expect("error")
        assert (error["code"], error["channel"]) == ("forbidden", channel)
        await client.send({"op": "publish", "channel": channel, "data": {"text": "hi"}})
        assert (await client.expect("error"))["code"] == "forbidden"


async def test_sigterm_closes_clients_with_1001_and_exits_cleanly(cluster: Cluster, clients: Clients) -> None:
    alice = await clients.join(cluster.a, "alice")
    bob = await clients.join(cluster.b, "bob")
    await bob.expect_users("alice", "bob")
    assert await asyncio.to_thread(cluster.a.stop) == 0
    assert await alice.expect_closed() == 1001
    if cluster.a is not cluster.b:
        await bob.expect_users("bob")  # said goodbye: no need to wait for the TTL


# -- Redis only -------------------------------------------------------------------------------


async def test_crashed_process_users_disappear(procs: Processes, clients: Clients) -> None:
    cluster = redis_cluster(procs)
    alice = await clients.join(cluster.a, "alice")
    await clients.join(cluster.b, "bob")
    await alice.expect_users("alice", "bob")
    cluster.b.kill()  # SIGKILL: no goodbye, only the missing heartbeat tells
    await alice.expect_users("alice", timeout=20)


async def test_killed_process_clients_resume_on_the_other_with_nothing_lost(procs: Processes, clients: Clients) -> None:
    cluster = redis_cluster(procs, "--rate", "100", "--burst", "100")
    reader = await clients.join(cluster.a, "reader")
    writer = await clients.join(cluster.b, "writer")
    sent = 0

    async def say_next() -> None:
        nonlocal sent
        await writer.say(f"n {sent}")
        await writer.expect("message", text_is(f"n {sent}"))  # published (the writer's own copy)
        sent += 1

    for _ in range(5):
        await say_next()
    for k in range(5):
        assert (await reader.expect("message"))["data"]["text"] == f"n {k}"
    cluster.a.kill()  # SIGKILL mid-stream: the reader's connection drops
    assert await reader.expect_closed() in (None, 1006)  # no close frame: the process is gone
    for _ in range(8):  # published while the reader is away
        await say_next()
    resumed = await clients.join_resumed(cluster.b, reader, "reader")
    assert resumed.subscribed["recovered"] is True
    await say_next()
    texts = [m["text"] for m in resumed.history]
    texts.append((await resumed.expect("message"))["data"]["text"])
    assert texts == [f"n {k}" for k in range(5, sent)]  # nothing lost, nothing twice, in order


async def test_history_lost_in_redis_is_reported_not_hidden(procs: Processes, clients: Clients) -> None:
    cluster = redis_cluster(procs)
    assert cluster.redis is not None
    alice = await clients.join(cluster.a, "alice")
    await alice.say("before")
    await alice.expect("message", text_is("before"))
    old_epoch, old_offset = alice.epoch, alice.offset

    await asyncio.to_thread(cluster.redis.stop)
    await alice.say("while Redis is down")
    assert (await alice.expect("error"))["code"] == "unavailable"
    await asyncio.to_thread(cluster.redis.start)  # same port, empty: the history is gone

    # The processes reconnect on their own (backoff up to 2 s): probe until a publish goes through.
    bob = await clients.connect(cluster.b)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    for n in range(1, 1000):
        await bob.send({"op": "publish", "channel": bob.channel, "data": {"text": f"probe {n}"}, "id": n})
        reply = await bob.recv()
        assert reply is not None and reply.get("id") == n, reply
        if reply["op"] == "published":
            break
        assert loop.time() < deadline, "publishing did not work again within 30 s of Redis coming back"
        await asyncio.sleep(0.5)  # the rate limit allows a burst of 10: pace the probes
    carol = await clients.resume_from(cluster.b, old_offset, old_epoch, "alice")
    assert carol.subscribed["recovered"] is False
    assert carol.subscribed["epoch"] != old_epoch
    await bob.say("after")
    await carol.expect("message", text_is("after"))


async def test_processes_share_one_port_and_a_killed_worker_is_replaced(procs: Processes, clients: Clients) -> None:
    redis = procs.redis()
    server = procs.chat(redis.url, "--processes", "2", "--presence-ttl", TTL, "--rate", "100", "--burst", "100")
    # The kernel spreads connections over the two workers: connect until both serve someone (bounded).
    watcher = await clients.join(server, "watcher")
    by_process: dict[int, ChatClient] = {}
    for n in range(40):
        client = await clients.join(server, f"user{n}")
        await watcher.expect("join", lambda m, nick=f"user{n}": m["member"]["info"]["nick"] == nick)
        member = next(info for info in watcher.members_info.values() if info["nick"] == f"user{n}")
        by_process.setdefault(member["process"], client)
        if len(by_process) == 2:
            break
    assert len(by_process) == 2, "40 connections all went to one worker"
    (pid_a, a), (pid_b, b) = sorted(by_process.items())
    assert server.proc is not None and {pid_a, pid_b}.isdisjoint({server.proc.pid})
    await a.say("across workers")
    await b.expect("message", text_is("across workers"))
    await a.expect("message", text_is("across workers"))  # a has seen it: its resume starts after it

    os.kill(pid_a, signal.SIGKILL)  # one worker crashes; the parent starts another on the same port
    assert await a.expect_closed() in (None, 1006)
    await b.say("while a was away")
    await b.expect("message", text_is("while a was away"))
    resumed = await clients.join_resumed(server, a, "back")
    assert resumed.subscribed["recovered"] is True
    assert [m["text"] for m in resumed.history] == ["while a was away"]
    assert server.running


async def test_processes_need_redis(procs: Processes) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(CHAT), "--processes", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "needs --redis" in result.stderr
