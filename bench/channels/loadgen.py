"""Scenario 11's load generator: subscribers and a publisher speaking either protocol over raw WebSocket.

One process plays one role (``run.py`` starts two subscriber processes and
one publisher):

``python bench/channels/loadgen.py subscribe --kind K --port P --count N --sample S --expect M``
    opens ``N`` WebSockets to one server, subscribes each to the channel
    ``bench``, prints ``READY``, waits for ``GO <seconds>`` on stdin and reads
    until every connection has ``M`` messages or the seconds pass, then
    prints ``RESULT {json}``.
``python bench/channels/loadgen.py recover --kind ours --port P --count N``
    opens and subscribes ``N`` WebSockets (noting each one's offset and
    epoch), closes them all, prints ``CLOSED``, waits for ``GO <missed>`` on
    stdin, then reconnects them (in the same batches) with ``since`` and
    ``epoch`` and prints ``RESULT {json}`` once each has its ``missed``
    messages: the time it took, how many said ``recovered``.
``python bench/channels/loadgen.py publish --kind K --port P --rate R --count M``
    publishes ``M`` messages at ``R`` per second (a tick every 5 ms sends
    what is due) through one WebSocket, prints ``RESULT {json}``, and stays
    connected until a line on stdin (or ``--linger`` seconds), so the server
    can finish what it was sent.

Both protocols are spoken by the same code over one raw WebSocket client
(an asyncio protocol on uvloop when installed, the HTTP/1.1 upgrade written
by hand, client frames masked with a random key):

* ``ours``: JSON text frames of tornado_websocket's ChannelsHandler at
  ``/channels?batch=1`` (envelopes leaving in one loop turn share a frame,
  one per line, as the library's ChannelsClient asks):
  ``{"op":"subscribe","channel":"bench"}`` answered by
  ``{"op":"subscribed",...}``; ``{"op":"publish","channel":"bench","data":D}``;
  deliveries are ``{"op":"message",...,"data":D}``.
* ``socketio``: Engine.IO 4 / Socket.IO 5 at
  ``/socket.io/?EIO=4&transport=websocket``: the server's ``0{...}`` open
  packet, ``40`` (connect) answered by ``40{"sid":...}``,
  ``42["subscribe","bench"]`` answered by ``42["subscribed","bench"]``,
  ``42["publish",D]``; deliveries are ``42["message",D]``; every ``2``
  (ping) is answered with ``3`` (pong).

``D`` is ``{"s": seq, "t": send time (time.monotonic(), system-wide on
Linux), "p": padding}``, 96 bytes of JSON. Every subscriber counts its
deliveries by walking the frame headers of each received chunk (a
``startswith`` on the payload tells deliveries from the rest); ``S`` of
them, spread evenly, also decode every delivery: they check the sequence
(missing, repeated, and arrived after a later one) and record the latency (arrival, taken once
per received chunk, minus ``t``) in a log histogram (0.5 % buckets) that
``run.py`` merges across processes. Every loop is bounded in count and in
time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import random
import resource
import sys
import time
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scenarios import raise_nofile_limit  # type: ignore[import-not-found]  # noqa: E402

CHANNEL = "bench"
CONNECT_BATCH = 100  # handshakes in flight at once
CONNECT_TIMEOUT = 60.0  # all connections opened and subscribed within this
BUCKETS_PER_DECADE = 460  # log histogram: 10 ** (1 / 460) = 0.5 % per bucket
PAD = "x" * 48
MAX_RETRIES = 100  # subscribes sent again after an "unavailable" refusal, per connection
RETRY_DELAY = 0.1  # seconds (to twice that) before such a retry

PATHS = {"ours": "/channels?batch=1", "socketio": "/socket.io/?EIO=4&transport=websocket"}
DELIVERY_PREFIX = {"ours": b'{"op":"message"', "socketio": b'42["message"'}


def bucket_of(seconds: float) -> int:
    return int(math.log10(max(seconds, 1e-7) * 1e6) * BUCKETS_PER_DECADE)


def bucket_value(bucket: int) -> float:
    """The upper bound of a bucket, in seconds."""
    return float(10 ** ((bucket + 1) / BUCKETS_PER_DECADE) / 1e6)


def payload(seq: int) -> dict[str, Any]:
    return {"s": seq, "t": time.monotonic(), "p": PAD}


def mask_frame(text: str) -> bytes:
    """A masked, final text frame (client to server)."""
    data = text.encode()
    key = os.urandom(4)
    n = len(data)
    if n < 126:
        header = bytes([0x81, 0x80 | n])
    elif n < 65536:
        header = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    repeated = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big") if n else b""
    return header + key + masked


def subscribe_frame(kind: str, since: Optional[int] = None, epoch: Optional[str] = None) -> str:
    if kind == "ours":
        request: dict[str, Any] = {"op": "subscribe", "channel": CHANNEL}
        if since is not None:
            request.update(since=since, epoch=epoch)
        return json.dumps(request)
    return "42" + json.dumps(["subscribe", CHANNEL])


def publish_frame(kind: str, data: dict[str, Any]) -> str:
    if kind == "ours":
        return json.dumps({"op": "publish", "channel": CHANNEL, "data": data}, separators=(",", ":"))
    return "42" + json.dumps(["publish", data], separators=(",", ":"))


class Client(asyncio.Protocol):
    """One raw WebSocket connection speaking ``kind``; counts (and optionally decodes) deliveries."""

    def __init__(
        self, kind: str, port: int, sample: bool, expect: int, on_done: Callable[[], None], subscribe: bool = True
    ) -> None:
        self.kind = kind
        self.subscribe = subscribe
        self.port = port
        self.sample = sample
        self.expect = expect
        self.on_done = on_done
        self.prefix = DELIVERY_PREFIX[kind]
        self.transport: Optional[asyncio.Transport] = None
        self.upgraded = False
        self.buf = b""
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.count = 0  # deliveries
        self.last_arrival = 0.0
        # Sampled connections: which sequence numbers came, repeats, and arrivals after a later one.
        self.seen = bytearray(expect) if sample else bytearray()
        self.highest = -1
        self.repeats = 0
        self.reordered = 0
        self.hist: dict[int, int] = {}
        self.errors: list[str] = []
        self.warmup = 0  # deliveries with a smaller sequence number are not timed
        self.since: Optional[int] = None  # subscribe from here (ours), with self.epoch
        self.offset: Optional[int] = None  # from "subscribed" (ours)
        self.epoch: Optional[str] = None
        self.recovered: Optional[bool] = None
        self.acked: Any = None  # the id of the last "published" reply (ours)
        self.finished = False  # on_done was called
        self.retries = 0  # subscribes refused as "unavailable" and sent again

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass
        assert self.transport is not None
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (
                f"GET {PATHS[self.kind]} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: http://127.0.0.1:{self.port}\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before subscribed: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self._fail(f"handshake refused: {buf[:80]!r}")
                return
            self.upgraded = True
            buf = buf[end + 4 :]
            if self.kind == "ours":
                self._joined()
        i = 0
        before = self.count
        n = len(buf)
        prefix = self.prefix
        sample = self.sample
        arrival = 0.0
        while n - i >= 2:
            length = buf[i + 1] & 0x7F
            if length < 126:
                start = i + 2
            elif length == 126:
                if n - i < 4:
                    break
                length = int.from_bytes(buf[i + 2 : i + 4], "big")
                start = i + 4
            else:
                if n - i < 10:
                    break
                length = int.from_bytes(buf[i + 2 : i + 10], "big")
                start = i + 10
            end = start + length
            if end > n:
                break
            deliveries = buf.count(prefix, start, end)  # ours with ?batch=1: several envelopes, one per line
            if deliveries:
                self.count += deliveries
                if sample or not self.ready.done():  # (a recovery's "subscribed" shares the frame)
                    if not arrival:
                        arrival = time.monotonic()
                    for line in buf[start:end].split(b"\n"):
                        if not line.startswith(prefix):
                            self._control(1, line)
                        elif sample:
                            self._sampled(line, arrival)
            else:
                opcode = buf[i] & 0x0F
                payload = buf[start:end]
                for line in payload.split(b"\n") if self.kind == "ours" and opcode == 1 else [payload]:
                    self._control(opcode, line)
            i = end
        self.buf = buf[i:] if i < n else b""
        if self.count != before and self.ready.done():
            self.last_arrival = arrival or time.monotonic()
            if self.count >= self.expect and not self.finished:
                self.finished = True
                self.on_done()

    # -- frames

    def send(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(mask_frame(text))

    def _sampled(self, frame: bytes, arrival: float) -> None:
        if self.kind == "ours":
            data = json.loads(frame)["data"]
        else:
            data = json.loads(frame[2:])[1]
        seq = data["s"]
        if seq < len(self.seen):
            if self.seen[seq]:
                self.repeats += 1
            self.seen[seq] = 1
        if seq < self.highest:
            self.reordered += 1
        else:
            self.highest = seq
        if seq >= self.warmup:
            bucket = bucket_of(arrival - data["t"])
            self.hist[bucket] = self.hist.get(bucket, 0) + 1

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x9:  # ping: pong with the same payload
            assert self.transport is not None
            self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
        elif opcode == 0x8:
            self._fail(f"closed by the server: {payload[:2].hex()} {payload[2:80]!r}")
        elif opcode != 0x1:
            return
        elif self.kind == "ours":
            if payload.startswith(b'{"op":"subscribed"') and not self.ready.done():
                subscribed = json.loads(payload)
                self.offset, self.epoch, self.recovered = (
                    subscribed["offset"],
                    subscribed["epoch"],
                    subscribed["recovered"],
                )
                self.ready.set_result(None)
            elif payload.startswith(b'{"op":"published"'):
                self.acked = json.loads(payload).get("id")
            elif payload.startswith(b'{"op":"error"'):
                if b'"unavailable"' in payload and not self.ready.done() and self.retries < MAX_RETRIES:
                    # The server could not read history right now: subscribe again shortly, as channels.js does.
                    self.retries += 1
                    delay = RETRY_DELAY * (1 + random.random())
                    asyncio.get_running_loop().call_later(delay, self._joined)
                else:
                    self._fail(payload[:200].decode(errors="replace"))
        elif payload == b"2":
            self.send("3")
        elif payload.startswith(b"0{"):
            self.send("40")
        elif payload.startswith(b"40"):
            self._joined()
        elif payload.startswith(b'42["subscribed"') and not self.ready.done():
            self.ready.set_result(None)
        elif payload.startswith(b"44"):
            self._fail(payload[:200].decode(errors="replace"))

    def _joined(self) -> None:
        """Connected (to the namespace, for Socket.IO): subscribe, or for a publisher, be ready."""
        if self.subscribe:
            self.send(subscribe_frame(self.kind, self.since, self.epoch))
        elif not self.ready.done():
            self.ready.set_result(None)

    def _fail(self, why: str) -> None:
        self.errors.append(why)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()


async def open_clients(
    kind: str, port: int, count: int, sample: int, expect: int, on_done: Callable[[], None]
) -> list[Client]:
    """Open and subscribe ``count`` connections, ``CONNECT_BATCH`` at a time; raise if one fails."""
    loop = asyncio.get_running_loop()
    every = max(1, count // sample) if sample else 0
    clients: list[Client] = []
    deadline = loop.time() + CONNECT_TIMEOUT
    for first in range(0, count, CONNECT_BATCH):
        batch: list[Client] = []
        for index in range(first, min(count, first + CONNECT_BATCH)):
            client = Client(kind, port, bool(every) and index % every == 0, expect, on_done)
            await loop.create_connection(lambda c=client: c, "127.0.0.1", port)  # type: ignore[misc]
            batch.append(client)
        remaining = deadline - loop.time()
        await asyncio.wait_for(asyncio.gather(*(c.ready for c in batch)), max(remaining, 0.1))
        clients.extend(batch)
    return clients


async def read_line(timeout: float) -> str:
    loop = asyncio.get_running_loop()
    line: str = await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), timeout)
    return line.strip()


async def subscribe_role(args: argparse.Namespace) -> dict[str, Any]:
    done = asyncio.Event()
    finished = 0

    def on_done() -> None:
        nonlocal finished
        finished += 1
        if finished >= args.count:
            done.set()

    clients = await open_clients(args.kind, args.port, args.count, args.sample, args.expect, on_done)
    for client in clients:
        client.count = 0  # nothing before READY counts
        client.warmup = args.warmup
    print("READY", flush=True)
    go = await read_line(CONNECT_TIMEOUT * 5)
    if not go.startswith("GO "):
        raise RuntimeError(f"expected GO, got {go!r}")
    seconds = float(go.split()[1])
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(done.wait(), seconds)
        timed_out = False
    except asyncio.TimeoutError:
        timed_out = True
    t1 = time.monotonic()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    hist: dict[int, int] = {}
    for client in clients:
        for bucket, n in client.hist.items():
            hist[bucket] = hist.get(bucket, 0) + n
    sampled = [c for c in clients if c.sample]
    result = {
        "connections": len(clients),
        "deliveries": sum(c.count for c in clients),
        "expected": args.expect * len(clients),
        "complete_connections": sum(1 for c in clients if c.count >= args.expect),
        "min_per_connection": min(c.count for c in clients),
        "max_per_connection": max(c.count for c in clients),
        "last_arrival": max(c.last_arrival for c in clients),
        "timed_out": timed_out,
        "sampled_connections": len(sampled),
        "sampled_missing": sum(len(c.seen) - sum(c.seen) for c in sampled),
        "sampled_repeats": sum(c.repeats for c in sampled),
        "sampled_reordered": sum(c.reordered for c in sampled),
        "hist": hist,
        "cpu_s": cpu,
        "wall_s": t1 - t0,
        "errors": [e for c in clients for e in c.errors][:5],
    }
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    return result


async def recover_role(args: argparse.Namespace) -> dict[str, Any]:
    """Subscribe ``count`` connections, disconnect them all, and (after ``GO``) time their resume from ``since``."""
    clients = await open_clients(args.kind, args.port, args.count, 0, 0, lambda: None)
    positions = [(c.offset, c.epoch) for c in clients]
    for client in clients:
        assert client.transport is not None
        client.transport.close()
    await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), CONNECT_TIMEOUT)
    print("CLOSED", flush=True)
    go = await read_line(CONNECT_TIMEOUT * 5)
    if not go.startswith("GO "):
        raise RuntimeError(f"expected GO, got {go!r}")
    missed = int(go.split()[1])
    done = asyncio.Event()
    finished = 0

    def on_done() -> None:
        nonlocal finished
        finished += 1
        if finished >= args.count:
            done.set()

    loop = asyncio.get_running_loop()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    back: list[Client] = []
    for first in range(0, args.count, CONNECT_BATCH):  # the same batches as the first connect
        batch = []
        for since, epoch in positions[first : first + CONNECT_BATCH]:
            client = Client(args.kind, args.port, False, missed, on_done)
            client.since, client.epoch = since, epoch
            await loop.create_connection(lambda c=client: c, "127.0.0.1", args.port)  # type: ignore[misc]
            batch.append(client)
        back.extend(batch)
    timed_out = False
    try:
        await asyncio.wait_for(done.wait(), CONNECT_TIMEOUT)
    except asyncio.TimeoutError:
        timed_out = True
    t1 = time.monotonic()
    result = {
        "connections": len(back),
        "missed": missed,
        "seconds": t1 - t0,
        "timed_out": timed_out,
        "complete": sum(1 for c in back if c.count >= missed),
        "recovered": sum(1 for c in back if c.recovered),
        "subscribe_retries": sum(c.retries for c in back),
        "deliveries": sum(c.count for c in back),
        "cpu_s": time.process_time() - cpu0,
        "errors": [e for c in back for e in c.errors][:5],
    }
    for client in back:
        if client.transport is not None:
            client.transport.close()
    return result


async def publish_role(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    client = Client(args.kind, args.port, False, 0, lambda: None, subscribe=False)
    await loop.create_connection(lambda: client, "127.0.0.1", args.port)
    await asyncio.wait_for(client.ready, CONNECT_TIMEOUT)
    cpu0 = time.process_time()
    t0 = time.monotonic()
    deadline = t0 + args.count / args.rate * 2 + 10.0
    sent = 0
    while sent < args.count:
        now = time.monotonic()
        if now > deadline or client.errors:
            break
        due = min(args.count, int((now - t0) * args.rate) + 1)
        while sent < due:
            frame = publish_frame(args.kind, payload(sent))
            if args.kind == "ours" and sent == args.count - 1:
                frame = frame[:-1] + ',"id":"last"}'  # answered once stored: publishes are handled in order
            client.send(frame)
            sent += 1
        await asyncio.sleep(0.005)
    if args.kind == "ours" and sent == args.count:
        stored = loop.time() + CONNECT_TIMEOUT
        while client.acked != "last" and loop.time() < stored and not client.errors:
            await asyncio.sleep(0.005)  # polls the reply (bounded): every publish is stored when it comes
    t1 = time.monotonic()
    result = {
        "acked": client.acked == "last",
        "sent": sent,
        "t_start": t0,
        "t_end": t1,
        "rate_achieved": sent / max(t1 - t0, 1e-9),
        "cpu_s": time.process_time() - cpu0,
        "errors": client.errors[:5],
    }
    print("RESULT " + json.dumps(result), flush=True)
    # Stay connected until told (or --linger s): the server may still be working through what we sent.
    with contextlib.suppress(asyncio.TimeoutError):
        await read_line(args.linger)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["subscribe", "publish", "recover"])
    parser.add_argument("--kind", choices=sorted(PATHS), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True, help="connections (subscribe) or messages (publish)")
    parser.add_argument("--sample", type=int, default=50, help="subscribers that decode every delivery")
    parser.add_argument("--expect", type=int, default=0, help="messages each subscriber should get")
    parser.add_argument("--warmup", type=int, default=0, help="first messages not timed (subscribe)")
    parser.add_argument("--linger", type=float, default=60.0, help="seconds to stay connected after (publish)")
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second (publish)")
    args = parser.parse_args()
    raise_nofile_limit()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.role == "subscribe":
        print("RESULT " + json.dumps(asyncio.run(subscribe_role(args))), flush=True)
    elif args.role == "recover":
        print("RESULT " + json.dumps(asyncio.run(recover_role(args))), flush=True)
    else:
        asyncio.run(publish_role(args))


if __name__ == "__main__":
    main()
