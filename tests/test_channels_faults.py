"""Channels under real faults: a server process killed with SIGKILL, Redis restarted (AOF on), Redis flushed,
and a lossy, slow, then silent network link (a network namespace with nftables rules, and a relay
adding 100 ms each way).

Two ``channels_server.py`` processes share one ``redis-server``;
``ChannelsClient`` subscribers are spread over both, and two publishers
(one per process) publish numbered messages at a steady rate. A publish
counts as *sent* once the server acknowledged it (an unacknowledged one, in
flight when its server died or while Redis was down, may or may not have
been published; it is counted apart). After the fault each subscriber must
have received every sent message exactly once, in order per publisher.
Each test prints its counts (``FAULT ...``) and appends them as JSON to
``$CHANNELS_FAULT_REPORT`` when that is set.

Every wait is bounded; publishers pace themselves (a bounded count at a
fixed interval); no test asserts on timing except the keepalive bound the
brief asks for (a silent link noticed within ping interval + timeout, plus
a margin for scheduling).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import Any, Optional

import pytest
import pytest_asyncio
from redis_server import RedisServer, command, find_redis_server

from tornado_websocket.channels_client import (
    ChannelMessage,
    ChannelsClient,
    ChannelsDisconnected,
    ChannelsError,
    PresenceEvent,
    RecoveryFailed,
)

pytestmark = pytest.mark.asyncio

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "channels_server.py")
CHANNEL = "room"
SETTLE_TIMEOUT = 30.0
PRESENCE_TTL = 1.0


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required when CI is set)")
    pytest.skip(reason)


def report(name: str, counts: dict[str, Any]) -> None:
    line = f"FAULT {name}: " + " ".join(f"{k}={v}" for k, v in counts.items())
    print(line)
    path = os.environ.get("CHANNELS_FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": name, **counts}) + "\n")


@pytest.fixture
def aof_redis():
    executable = find_redis_server()
    if executable is None:
        skip_or_fail("redis-server is not installed")
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        skip_or_fail("the redis Python package is not installed")
    assert executable is not None
    server = RedisServer(executable, appendonly=True)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


class ServerProcess:
    def __init__(self, process: asyncio.subprocess.Process, ports: list[int], host: str) -> None:
        self.process = process
        self.ports = ports
        self.host = host

    def url(self, index: int = 0) -> str:
        return f"ws://{self.host}:{self.ports[index]}/channels"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)


@pytest_asyncio.fixture
async def servers(tmp_path):
    """Start ``channels_server.py`` processes (optionally inside a network namespace); kill them at teardown."""
    started: list[asyncio.subprocess.Process] = []

    async def start(*args: str, netns: Optional[str] = None, host: str = "127.0.0.1") -> ServerProcess:
        stderr_path = str(tmp_path / f"server-{len(started)}.stderr")
        prefix = ["ip", "netns", "exec", netns] if netns else []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
        with open(stderr_path, "wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                *prefix,
                sys.executable,
                SERVER,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=env,
            )
        started.append(process)
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), 20)
        except asyncio.TimeoutError:
            line = b""
        if not line.startswith(b"PORTS "):
            with open(stderr_path, "rb") as f:
                pytest.fail(f"channels_server.py did not start: {line!r}\n{f.read().decode(errors='replace')}")
        return ServerProcess(process, [int(p) for p in line.split()[1:]], host)

    try:
        yield start
    finally:
        for process in started:
            if process.returncode is None:
                process.kill()
        for process in started:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(process.wait(), 5)


class Subscriber:
    """A ChannelsClient subscribed to the channel, recording what it receives."""

    def __init__(self, urls: list[str], presence: bool = False, **options: Any) -> None:
        self.client = ChannelsClient(urls, reconnect_min=0.05, reconnect_max=0.5, **options)
        self.presence = presence
        self.received: list[tuple[str, int]] = []
        self.ends: set[str] = set()
        self.failures: list[RecoveryFailed] = []
        self.presence_events: list[PresenceEvent] = []
        self.changed = asyncio.Event()
        self.task: Optional[asyncio.Task[None]] = None

    async def start(self) -> None:
        await self.client.connect(10)
        await asyncio.wait_for(self.client.subscribe(CHANNEL, presence=self.presence), 10)
        self.task = asyncio.ensure_future(self._consume())

    async def _consume(self) -> None:
        async for event in self.client:
            if isinstance(event, ChannelMessage):
                data = event.data
                if "end" in data:
                    self.ends.add(data["end"])
                else:
                    self.received.append((data["p"], data["n"]))
            elif isinstance(event, RecoveryFailed):
                self.failures.append(event)
            elif isinstance(event, PresenceEvent):
                self.presence_events.append(event)
            self.changed.set()

    async def wait_for(self, predicate: Any, what: str, timeout: float = SETTLE_TIMEOUT) -> None:
        async def until() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(until(), timeout)
        except asyncio.TimeoutError:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")

    async def close(self) -> None:
        await self.client.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


class Publisher:
    """Publishes ``{"p": name, "n": i}`` for i < count, one every ``interval`` seconds, through a ChannelsClient."""

    def __init__(self, name: str, urls: list[str], count: int, interval: float) -> None:
        self.name = name
        self.client = ChannelsClient(urls, reconnect_min=0.05, reconnect_max=0.5)
        self.count = count
        self.interval = interval
        self.acked: list[int] = []
        self.unacked: list[int] = []
        self.task: Optional[asyncio.Task[None]] = None

    async def start(self) -> None:
        await self.client.connect(10)
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        for i in range(self.count):
            try:
                await self.client.publish(CHANNEL, {"p": self.name, "n": i}, timeout=5)
                self.acked.append(i)
            except (ChannelsDisconnected, ChannelsError, asyncio.TimeoutError):
                self.unacked.append(i)
            await asyncio.sleep(self.interval)  # the steady rate
        for _ in range(50):  # the end marker must get through
            try:
                await self.client.publish(CHANNEL, {"end": self.name}, timeout=5)
                return
            except (ChannelsDisconnected, ChannelsError, asyncio.TimeoutError):
                await asyncio.sleep(0.1)
        raise AssertionError(f"publisher {self.name} could not publish its end marker")

    async def done(self) -> None:
        assert self.task is not None
        await asyncio.wait_for(self.task, SETTLE_TIMEOUT + self.count * self.interval)

    async def wait_acked(self, n: int) -> None:
        async def until() -> None:
            while len(self.acked) < n:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(until(), SETTLE_TIMEOUT)

    async def close(self) -> None:
        await self.client.close()


def check(name: str, subscribers: list[Subscriber], publishers: list[Publisher], **extra: Any) -> dict[str, Any]:
    """Every sent (acknowledged) message reached every subscriber once, in order per publisher; report counts."""
    sent = sum(len(p.acked) for p in publishers)
    lost = duplicated = out_of_order = unacked_delivered = 0
    for subscriber in subscribers:
        for publisher in publishers:
            seq = [n for p, n in subscriber.received if p == publisher.name]
            duplicated += len(seq) - len(set(seq))
            out_of_order += sum(1 for a, b in zip(seq, seq[1:]) if b <= a)
            lost += len(set(publisher.acked) - set(seq))
            unacked_delivered += len(set(seq) & set(publisher.unacked))
    counts = {
        "subscribers": len(subscribers),
        "sent": sent,
        "expected_deliveries": sent * len(subscribers),
        "received": sum(len(s.received) for s in subscribers),
        "lost": lost,
        "duplicated": duplicated,
        "out_of_order": out_of_order,
        "unacked_publishes": sum(len(p.unacked) for p in publishers),
        "unacked_but_delivered": unacked_delivered,
        "reconnections": sum(s.client.connections - 1 for s in subscribers),
        **extra,
    }
    report(name, counts)
    return counts


async def run_stream(subscribers: list[Subscriber], publishers: list[Publisher], fault: Any, at: int) -> None:
    """Start everyone, inject ``fault`` once publishers have ``at`` messages acknowledged, wait for the end."""
    for subscriber in subscribers:
        await subscriber.start()
    for publisher in publishers:
        await publisher.start()
    await publishers[0].wait_acked(at)
    await fault()
    for publisher in publishers:
        await publisher.done()
    names = {p.name for p in publishers}
    for subscriber in subscribers:
        await subscriber.wait_for(lambda s=subscriber: s.ends >= names, "every end marker")


async def close_all(*parties: Any) -> None:
    for party in parties:
        await party.close()


# -- a server process killed ----------------------------------------------------------------------


async def test_kill_9_one_process_its_clients_resume_on_the_other(aof_redis, servers):
    args = ("--redis", aof_redis.url, "--presence-ttl", str(PRESENCE_TTL))
    a, b = await servers(*args), await servers(*args)
    subscribers = [Subscriber([a.url(), b.url()], presence=True) for _ in range(6)]
    subscribers += [Subscriber([b.url(), a.url()]) for _ in range(4)]
    watcher = Subscriber([b.url()], presence=True)
    publishers = [Publisher("pa", [a.url(), b.url()], 400, 0.005), Publisher("pb", [b.url(), a.url()], 400, 0.005)]
    await watcher.start()
    try:

        async def kill() -> None:
            a.kill()
            await asyncio.wait_for(a.process.wait(), 5)

        await run_stream(subscribers, publishers, kill, at=100)
        # Every member that was on the killed process drops out of presence (heartbeat expiry).
        joined_on_a = {
            e.member["id"]
            for e in watcher.presence_events
            if e.kind == "join" and e.member and e.member["info"] is None and e.member["id"]
        }

        def left() -> set[str]:
            return {e.member["id"] for e in watcher.presence_events if e.kind == "leave" and e.member}

        moved = [s for s in subscribers[:6]]
        counts = check(
            "kill-9",
            subscribers,
            publishers,
            moved_clients=sum(1 for s in moved if s.client.connections >= 2),
        )
        assert counts["lost"] == 0 and counts["duplicated"] == 0 and counts["out_of_order"] == 0
        assert counts["moved_clients"] == 6, "the killed process's clients did not all reconnect to the other"
        assert all(not s.failures for s in subscribers), "recovery failed after a process was killed"
        assert counts["sent"] >= 700
        await watcher.wait_for(lambda: len(left()) >= 6, "leave events for the killed process's members")
        assert joined_on_a >= left()
    finally:
        await close_all(watcher, *subscribers, *publishers)


# -- Redis restarted, Redis flushed -------------------------------------------------------------------


async def test_redis_restart_with_aof_loses_nothing(aof_redis, servers):
    args = ("--redis", aof_redis.url)
    a, b = await servers(*args), await servers(*args)
    subscribers = [Subscriber([a.url(), b.url()]) for _ in range(5)] + [
        Subscriber([b.url(), a.url()]) for _ in range(5)
    ]
    publishers = [Publisher("pa", [a.url(), b.url()], 400, 0.005), Publisher("pb", [b.url(), a.url()], 400, 0.005)]
    try:

        async def restart() -> None:
            await asyncio.to_thread(aof_redis.restart)

        await run_stream(subscribers, publishers, restart, at=100)
        counts = check("redis-restart-aof", subscribers, publishers)
        assert counts["lost"] == 0 and counts["duplicated"] == 0 and counts["out_of_order"] == 0
        assert all(not s.failures for s in subscribers), "recovery failed although AOF kept the history"
        assert counts["sent"] >= 400
    finally:
        await close_all(*subscribers, *publishers)


async def test_flushall_clients_are_told_recovery_failed_and_nothing_hangs(aof_redis, servers):
    args = ("--redis", aof_redis.url)
    a, b = await servers(*args), await servers(*args)
    subscribers = [Subscriber([a.url(), b.url()]) for _ in range(4)] + [
        Subscriber([b.url(), a.url()]) for _ in range(4)
    ]
    publishers = [Publisher("pa", [a.url()], 200, 0.005), Publisher("pb", [b.url()], 200, 0.005)]
    try:

        async def flush() -> None:
            assert command(aof_redis.port, "FLUSHALL") == b"+OK\r\n"

        await run_stream(subscribers, publishers, flush, at=60)
        told = sum(1 for s in subscribers if s.failures)
        counts = check("flushall", subscribers, publishers, told_recovery_failed=told)
        assert told == len(subscribers), "a subscriber was not told its channel's history was lost"
        assert all(len({f.epoch for f in s.failures}) == 1 for s in subscribers)
        assert counts["duplicated"] == 0 and counts["out_of_order"] == 0
    finally:
        await close_all(*subscribers, *publishers)


# -- a lossy, then silent, link -------------------------------------------------------------------


class Namespace:
    """A network namespace joined to this one by a veth pair: 10.77.X.1 here, 10.77.X.2 inside."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name = f"twch{tag}"
        self.outer, self.inner = f"twc{tag}a", f"twc{tag}b"
        subnet = int(tag, 16) % 250 + 1
        self.outer_ip, self.inner_ip = f"10.77.{subnet}.1", f"10.77.{subnet}.2"

    def run(self, *args: str, inside: bool = False, stdin: Optional[str] = None) -> None:
        prefix = ["ip", "netns", "exec", self.name] if inside else []
        subprocess.run([*prefix, *args], check=True, input=stdin, text=True, capture_output=True, timeout=10)

    def create(self) -> None:
        self.run("ip", "netns", "add", self.name)
        self.run("ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        self.run("ip", "link", "set", self.inner, "netns", self.name)
        self.run("ip", "addr", "add", f"{self.outer_ip}/30", "dev", self.outer)
        self.run("ip", "link", "set", self.outer, "up")
        self.run("ip", "addr", "add", f"{self.inner_ip}/30", "dev", self.inner, inside=True)
        self.run("ip", "link", "set", self.inner, "up", inside=True)
        self.run("ip", "link", "set", "lo", "up", inside=True)

    def rules(self, port: int, verdict: str) -> None:
        """Inside the namespace, apply ``verdict`` to TCP ``port`` (both ways), replacing earlier rules."""
        if self._has_table():
            self.run("nft", "delete", "table", "inet", "twlossy", inside=True)
        ruleset = f"""
table inet twlossy {{
  chain input {{ type filter hook input priority 0; tcp dport {port} {verdict}; }}
  chain output {{ type filter hook output priority 0; tcp sport {port} {verdict}; }}
}}
"""
        self.run("nft", "-f", "-", inside=True, stdin=ruleset)

    def _has_table(self) -> bool:
        result = subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "list", "table", "inet", "twlossy"],
            capture_output=True,
            timeout=10,
        )
        return result.returncode == 0

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)


@pytest.fixture
def namespace():
    if os.geteuid() != 0:
        pytest.skip("the lossy-link test makes a network namespace: it needs root")
    if shutil.which("nft") is None or shutil.which("ip") is None:
        pytest.skip("nft or ip is missing (apt-get install -y nftables iproute2)")
    ns = Namespace()
    try:
        ns.create()
    except (subprocess.SubprocessError, OSError) as exc:
        ns.remove()
        pytest.skip(f"cannot make a network namespace here: {exc}")
    try:
        yield ns
    finally:
        ns.remove()


class DelayRelay:
    """A TCP relay on 127.0.0.1 that holds every chunk ``delay`` seconds each way (order kept): a slow link."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target = target
        self.delay = delay
        self.server: Optional[asyncio.base_events.Server] = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 10)
        except (OSError, asyncio.TimeoutError):
            writer.close()
            return
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(source, sink))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))  # the link's latency, not a synchronisation
                if not data:
                    sink.close()
                    return
                sink.write(data)
                await sink.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await source.read(65536)
                queue.put_nowait((loop.time() + self.delay, data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.CancelledError):
            sender.cancel()
            sink.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2)


LOSSY_PORT, CLEAN_PORT = 8701, 8702
LATENCY = 0.1
PING_INTERVAL, PING_TIMEOUT = 0.5, 1.0


async def test_lossy_then_silent_link_keeps_every_message_once_in_order(namespace, servers):
    # The server runs inside the namespace; subscribers reach it on the lossy port, the publisher on a clean one.
    server = await servers(
        "--address", namespace.inner_ip, "--port", str(LOSSY_PORT), "--port", str(CLEAN_PORT),
        netns=namespace.name, host=namespace.inner_ip,
    )  # fmt: skip
    namespace.rules(LOSSY_PORT, "numgen random mod 100 < 5 drop")
    # ...and through a relay adding 100 ms each way: lossy and slow.
    relay = DelayRelay((namespace.inner_ip, LOSSY_PORT), LATENCY)
    relay_url = f"ws://127.0.0.1:{await relay.start()}/channels"
    keepalive = {"ping_interval": PING_INTERVAL, "ping_timeout": PING_TIMEOUT}
    subscribers = [Subscriber([relay_url], **keepalive) for _ in range(5)]
    publisher = Publisher("p", [server.url(1)], 600, 0.005)
    try:
        detected: list[float] = []

        async def silence() -> None:
            namespace.rules(LOSSY_PORT, "drop")
            silent_since = time.monotonic()
            # Keepalive notices: every subscriber's connection drops (no pong) and it starts reconnecting.
            deadline = silent_since + 10 * (PING_INTERVAL + PING_TIMEOUT)
            waiting = list(subscribers)
            while waiting and time.monotonic() < deadline:
                for s in [s for s in waiting if not s.client.connected]:
                    detected.append(time.monotonic() - silent_since)
                    waiting.remove(s)
                await asyncio.sleep(0.01)  # polls the clients' state (bounded by the deadline)
            assert not waiting, "keepalive did not notice the silent link"
            namespace.rules(LOSSY_PORT, "numgen random mod 100 < 5 drop")  # back to lossy: they reconnect

        await run_stream(subscribers, [publisher], silence, at=150)
        counts = check(
            "lossy-then-silent-link",
            subscribers,
            [publisher],
            silent_link_noticed_max_s=round(max(detected), 2),
            ping_interval_plus_timeout_s=PING_INTERVAL + PING_TIMEOUT,
            latency_each_way_s=LATENCY,
        )
        assert counts["lost"] == 0 and counts["duplicated"] == 0 and counts["out_of_order"] == 0
        assert counts["unacked_publishes"] == 0  # the publisher's link was clean
        assert all(not s.failures for s in subscribers)
        assert all(s.client.connections >= 2 for s in subscribers)
        # Noticed within ping interval + timeout (plus the link's round trip and some scheduling slack).
        assert max(detected) <= PING_INTERVAL + PING_TIMEOUT + 2 * LATENCY + 0.5, detected
    finally:
        await close_all(*subscribers, publisher)
        await relay.close()
