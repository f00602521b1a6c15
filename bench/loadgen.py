"""The load generator: a picows (Cython) client that runs one scenario against one server.

``python bench/loadgen.py --port P --server-pid PID --scenario N [--quick] [--floor]``
prints one line ``RESULT {json}`` and exits. run.py starts it once per
measurement, in its own process (pinned to its own core when there are two).

How it stays out of the way:

* Parsing is picows' (Cython). Sending uses frames that were built and
  masked once (with a random mask key) and written straight to the
  transport: the messages that one received chunk releases go out in a
  single ``write``, so the number in flight never exceeds the window.
* It reports its own CPU time (``time.process_time``) and the server's
  (utime + stime from ``/proc/<pid>/stat``) over the measured phase: a
  server near 100 % of a core while the load generator is well below it
  means the server is the bottleneck, not the client.
* Every echoed message is checked (type, length and content).
* Scenario 7 (permessage-deflate) offers the extension like a browser
  (``permessage-deflate; client_max_window_bits``), fails unless the
  server's ``Sec-WebSocket-Extensions`` answer accepts it, and compresses
  the whole message sequence (with the window kept from message to
  message, as negotiated) before the measured phase: frames are prebuilt
  and masked as in the other scenarios, so during the measurement the load
  generator only inflates and checks the echoes, each of which must come
  back compressed (RSV1) at least once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import hashlib
import json
import os
import resource
import selectors
import socket
import statistics
import sys
import time
import zlib
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect  # noqa: E402
from scenarios import (  # noqa: E402
    BROADCAST_PAYLOAD,
    MAX_MESSAGE_SIZE,
    binary_payload,
    client_tls_context,
    json_payload,
    proc_cpu_seconds,
    proc_cpu_split,
    proc_rss_kib,
    raise_nofile_limit,
    scaled,
    system_cpu,
    text_payload,
)

CONNECT_TIMEOUT = 30.0  # one batch of connection attempts
PHASE_TIMEOUT = 180.0  # one measured phase
REPLY_TIMEOUT = 60.0  # one control reply / one broadcast round
TOTAL_TIMEOUT = 280.0  # the whole run (run.py kills us at 300 s)

perf_counter = time.perf_counter

#: Connections kept open until the process exits (never garbage-collected mid-run).
KEEP: list[Any] = []

#: The client TLS context of wss:// scenarios (set by main() from --tls).
TLS_CONTEXT: Any = None


class BenchError(Exception):
    pass


def build_frame(opcode: int, payload: bytes, key: bytes, rsv1: bool = False) -> bytes:
    """One complete client frame (FIN set, masked with ``key``; RSV1 marks a compressed message)."""
    n = len(payload)
    first = 0x80 | (0x40 if rsv1 else 0) | opcode
    if n < 126:
        header = bytes([first, 0x80 | n])
    elif n < 1 << 16:
        header = bytes([first, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([first, 0x80 | 127]) + n.to_bytes(8, "big")
    if n == 0:
        return header + key
    mask = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return header + key + masked


def mask_key() -> bytes:
    while True:
        key = os.urandom(4)
        if key != b"\0\0\0\0":
            return key


# -- listeners -------------------------------------------------------------


class WindowedEcho(WSListener):  # type: ignore[misc]
    """Keeps ``window`` messages in flight until ``count`` echoes came back; subclasses send and check."""

    def __init__(self) -> None:
        self.transport: Optional[WSTransport] = None
        self.done: Optional[asyncio.Future[None]] = None
        self.t_start = self.t_end = 0.0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self._write = transport.underlying_transport.write

    def _start(self, window: int, count: int) -> asyncio.Future[None]:
        self.count = count
        self.received = 0
        self.pending = 0
        self.sent = min(window, count)
        self.done = asyncio.get_running_loop().create_future()
        self.t_start = perf_counter()
        self._send(self.sent)
        return self.done

    def _send(self, k: int) -> None:
        raise NotImplementedError

    def _fail(self, why: str) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(BenchError(why))

    def _echo_ok(self, frame: WSFrame, done: asyncio.Future[None]) -> None:
        """One correct echo: refill the window (once per read) and finish after ``count``."""
        self.received += 1
        if self.sent < self.count:
            self.sent += 1
            self.pending += 1
        if frame.last_in_buffer and self.pending:
            self._send(self.pending)
            self.pending = 0
        if self.received == self.count:
            self.t_end = perf_counter()
            done.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._fail("the server closed the connection")


class Pipeline(WindowedEcho):
    """Echoes of one prebuilt frame (scenarios 1-4)."""

    def run(self, frame: bytes, expected: bytes, msg_type: WSMsgType, window: int, count: int) -> asyncio.Future[None]:
        self.frame = frame
        self.small = len(frame) <= 4096
        self.expected = expected
        self.msg_type = msg_type
        return self._start(window, count)

    def _send(self, k: int) -> None:
        if self.small:
            self._write(self.frame * k)
        else:
            for _ in range(k):
                self._write(self.frame)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        done = self.done
        if done is None or done.done():
            return
        if frame.msg_type != self.msg_type or not frame.fin:
            self._fail(f"unexpected frame {frame}")
            return
        if frame.get_payload_as_bytes() != self.expected:
            self._fail(f"echo differs from what was sent ({frame.payload_size} bytes)")
            return
        self._echo_ok(frame, done)


#: Scenario 7's offer, as browsers send it: the server picks both windows.
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
#: The end of a deflate sync flush, removed from every compressed message (RFC 7692 section 7.2.1).
SYNC_TAIL = b"\x00\x00\xff\xff"
#: The client's zlib settings (zlib's defaults, level 6 and memLevel 8; the window is what the server allows).
CLIENT_LEVEL = 6
CLIENT_MEM_LEVEL = 8


def parse_deflate_answer(values: list[str]) -> dict[str, Optional[str]]:
    """The parameters of permessage-deflate in the server's Sec-WebSocket-Extensions answer.

    Raises BenchError when the server did not accept permessage-deflate.
    """
    for value in values:
        for extension in value.split(","):
            name, *params = [part.strip() for part in extension.split(";")]
            if name.lower() != "permessage-deflate":
                continue
            out: dict[str, Optional[str]] = {}
            for param in params:
                key, eq, val = param.partition("=")
                out[key.strip().lower()] = val.strip().strip('"') if eq else None
            return out
    raise BenchError(f"the server did not accept permessage-deflate (Sec-WebSocket-Extensions: {values!r})")


def deflate_frames(pool: list[bytes], total: int, wbits: int, no_context_takeover: bool) -> tuple[list[bytes], int]:
    """Masked, compressed text frames of messages 0..total-1 (message i is ``pool[i % len(pool)]``).

    One compressor for the whole sequence, as a client keeps it (unless the
    server asked for client_no_context_takeover). Returns the frames and the
    total of their compressed payload sizes.
    """
    if not 9 <= wbits <= 15:
        raise BenchError(f"zlib cannot compress with a {wbits}-bit window")
    key = mask_key()
    frames: list[bytes] = []
    wire = 0
    compressor = zlib.compressobj(CLIENT_LEVEL, zlib.DEFLATED, -wbits, CLIENT_MEM_LEVEL)
    for i in range(total):
        if no_context_takeover and i:
            compressor = zlib.compressobj(CLIENT_LEVEL, zlib.DEFLATED, -wbits, CLIENT_MEM_LEVEL)
        data = compressor.compress(pool[i % len(pool)]) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(SYNC_TAIL)
        data = data[:-4]
        wire += len(data)
        frames.append(build_frame(0x1, data, key, rsv1=True))
    return frames, wire


class DeflatePipeline(WindowedEcho):
    """Scenario 7: like Pipeline, with prebuilt compressed frames; inflates and checks every echo."""

    def __init__(self) -> None:
        super().__init__()
        self.inflater = zlib.decompressobj(-15)  # a 15-bit window reads any smaller one too

    def run(self, frames: list[bytes], pool: list[bytes], first: int, window: int, count: int) -> asyncio.Future[None]:
        """Send frames[first:first+count], ``window`` in flight; echo j must be pool[j % len(pool)]."""
        self.frames = frames
        self.pool = pool
        self.first = first
        self.wire_bytes = 0  # payload bytes of the echoes as they came (compressed)
        self.compressed = 0  # echoes with RSV1 set
        self.next_frame = first
        return self._start(window, count)

    def _send(self, k: int) -> None:
        start = self.next_frame
        self.next_frame = start + k
        self._write(b"".join(self.frames[start : start + k]))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        done = self.done
        if done is None or done.done():
            return
        if frame.msg_type != WSMsgType.TEXT or not frame.fin:
            self._fail(f"unexpected frame {frame}")
            return
        payload = frame.get_payload_as_bytes()
        self.wire_bytes += len(payload)
        if frame.rsv1:
            self.compressed += 1
            try:
                data = self.inflater.decompress(payload + SYNC_TAIL)
            except zlib.error as exc:
                self._fail(f"the echo does not inflate: {exc}")
                return
            if self.inflater.eof:  # the server ended its deflate stream (allowed without context takeover)
                self.inflater = zlib.decompressobj(-15)
        else:
            data = payload
        pool = self.pool
        if data != pool[(self.first + self.received) % len(pool)]:
            self._fail(f"echo differs from what was sent ({len(data)} bytes)")
            return
        self._echo_ok(frame, done)


class Control(WSListener):  # type: ignore[misc]
    """The /control connection: text commands, one text reply each."""

    def __init__(self) -> None:
        self.transport: Optional[WSTransport] = None
        self.replies: asyncio.Queue[str] = asyncio.Queue()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.replies.put_nowait(frame.get_payload_as_utf8_text())

    def send(self, command: str) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, command.encode())

    async def request(self, command: str, timeout: float = REPLY_TIMEOUT) -> str:
        self.send(command)
        return await asyncio.wait_for(self.replies.get(), timeout)


class Idle(WSListener):  # type: ignore[misc]
    """A connection that only sits there (picows answers pings by itself)."""


class BroadcastState:
    """What every receiving connection of scenario 6 reports to."""

    def __init__(self) -> None:
        self.target = 0
        self.count = 0
        self.t_first = self.t_last = 0.0
        self.future: Optional[asyncio.Future[None]] = None

    def reset(self, target: int) -> asyncio.Future[None]:
        self.target = target
        self.count = 0
        self.t_first = self.t_last = 0.0
        self.future = asyncio.get_running_loop().create_future()
        return self.future

    def fail(self, why: str) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_exception(BenchError(why))


class Receiver(WSListener):  # type: ignore[misc]
    def __init__(self, state: BroadcastState) -> None:
        self.state = state

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        state = self.state
        if frame.msg_type != WSMsgType.BINARY or frame.get_payload_as_bytes() != BROADCAST_PAYLOAD:
            if frame.msg_type not in (WSMsgType.PING, WSMsgType.PONG):
                state.fail(f"unexpected frame {frame}")
            return
        now = perf_counter()
        state.count += 1
        if state.count == 1:
            state.t_first = now
        if state.count == state.target:
            state.t_last = now
            if state.future is not None and not state.future.done():
                state.future.set_result(None)
        elif state.count > state.target:
            state.fail("more broadcast messages than connections")


# -- helpers ----------------------------------------------------------------


async def connect(
    url: str, factory: Callable[[], WSListener], extra_headers: Optional[dict[str, str]] = None
) -> tuple[WSTransport, Any]:
    return await ws_connect(  # type: ignore[no-any-return]
        factory,
        url,
        max_frame_size=MAX_MESSAGE_SIZE,
        websocket_handshake_timeout=CONNECT_TIMEOUT,
        extra_headers=extra_headers,
        ssl_context=TLS_CONTEXT if url.startswith("wss:") else None,
    )


def tls_details(transport: WSTransport) -> dict[str, Any]:
    """The negotiated TLS version and cipher suite of a wss:// connection (empty for ws://)."""
    ssl_object = transport.underlying_transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return {}
    return {"tls_version": ssl_object.version(), "cipher": ssl_object.cipher()[0]}


async def open_many(url: str, factory: Callable[[], WSListener], n: int, batch: int) -> list[tuple[WSTransport, Any]]:
    """Open ``n`` connections, at most ``batch`` handshakes at a time, retrying failures (3 tries)."""
    opened: list[tuple[WSTransport, Any]] = []
    missing = n
    errors: list[str] = []
    for _attempt in range(3):
        while missing > 0:
            k = min(batch, missing)
            results = await asyncio.wait_for(
                asyncio.gather(*(connect(url, factory) for _ in range(k)), return_exceptions=True),
                CONNECT_TIMEOUT * 2,
            )
            good = [r for r in results if not isinstance(r, BaseException)]
            opened.extend(good)  # type: ignore[arg-type]
            errors.extend(repr(r) for r in results if isinstance(r, BaseException))
            missing -= k
            if len(good) < k:
                break
        missing = n - len(opened)
        if missing == 0:
            return opened
        await asyncio.sleep(0.5)
    raise BenchError(f"opened {len(opened)} of {n} connections; errors: {errors[:3]}")


async def wait_count(control: Control, n: int, timeout: float = 60.0) -> None:
    """Poll COUNT until the server holds ``n`` echo connections."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        last = await control.request("COUNT")
        if int(last) == n:
            return
        await asyncio.sleep(0.05)
    raise BenchError(f"the server holds {last} connections, expected {n}")


class CpuMeter:
    """Wall time, our CPU time and the server's CPU time over a phase.

    Also the CPU time that *other* processes used meanwhile (machine-wide user
    + system time from /proc/stat minus ours and the server's; interrupt and
    softirq time, which includes our own loopback traffic, is left out) and
    the time the hypervisor stole: both say whether the machine was quiet.
    """

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid

    def start(self) -> None:
        self.system0 = system_cpu()
        self.server_split0 = proc_cpu_split(self.pid)
        self.server0 = proc_cpu_seconds(self.pid)
        self.client0 = resource.getrusage(resource.RUSAGE_SELF)
        self.wall0 = perf_counter()

    def stop(self) -> dict[str, float]:
        wall = perf_counter() - self.wall0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        server_total = proc_cpu_seconds(self.pid) - self.server0
        server_split = proc_cpu_split(self.pid)
        system = system_cpu()
        client = usage.ru_utime - self.client0.ru_utime + usage.ru_stime - self.client0.ru_stime
        # Tick-based like /proc/stat, so the two subtract cleanly.
        server_ticks = sum(server_split) - sum(self.server_split0)
        machine = sum(system[k] - self.system0[k] for k in ("user", "nice", "system"))
        other = max(0.0, machine - client - server_ticks)
        steal = system.get("steal", 0.0) - self.system0.get("steal", 0.0)
        return {
            "wall_s": wall,
            "client_cpu_s": client,
            "server_cpu_s": server_total,
            "client_cpu_util": client / wall if wall > 0 else 0.0,
            "server_cpu_util": server_total / wall if wall > 0 else 0.0,
            "other_cpu_s": other,
            "other_cpu_util": other / wall if wall > 0 else 0.0,
            "steal_util": steal / wall if wall > 0 else 0.0,
        }


# -- scenarios --------------------------------------------------------------


async def scenario_pipeline(number: int, params: dict[str, Any], url: str, pid: int) -> dict[str, Any]:
    size = params["size"]
    text = params["text"]
    payload = text_payload(size) if text else binary_payload(size)
    assert len(payload) == size
    msg_type = WSMsgType.TEXT if text else WSMsgType.BINARY
    frame = build_frame(0x1 if text else 0x2, payload, mask_key())
    transport, listener = await asyncio.wait_for(connect(url, Pipeline), CONNECT_TIMEOUT)
    try:
        window, count = params["window"], params["count"]
        await asyncio.wait_for(listener.run(frame, payload, msg_type, window, params["warmup"]), PHASE_TIMEOUT)
        meter = CpuMeter(pid)
        meter.start()
        await asyncio.wait_for(listener.run(frame, payload, msg_type, window, count), PHASE_TIMEOUT)
        cpu = meter.stop()
        elapsed = listener.t_end - listener.t_start
        cpu["wall_s"] = elapsed
        for key in ("client_cpu", "server_cpu", "other_cpu"):
            cpu[key + "_util"] = cpu[key + "_s"] / elapsed
        rate = count / elapsed
        if number == 2:
            metrics = {"round_trips_per_s": rate, "rtt_us": 1e6 / rate}
        elif size >= 1024 * 1024:
            metrics = {"mb_per_s": count * size / elapsed / 1e6}
        else:
            metrics = {"msgs_per_s": rate}
        extra = {"messages": count, "elapsed_s": elapsed, **tls_details(transport)}
        return {"metrics": metrics, "cpu": cpu, "extra": extra}
    finally:
        transport.disconnect()


async def scenario_deflate(params: dict[str, Any], url: str, pid: int) -> dict[str, Any]:
    size, window, count, warmup = params["size"], params["window"], params["count"], params["warmup"]
    t0 = perf_counter()
    pool = [json_payload(i, size) for i in range(params["pool"])]
    transport, listener = await asyncio.wait_for(
        connect(url, DeflatePipeline, {"Sec-WebSocket-Extensions": DEFLATE_OFFER}), CONNECT_TIMEOUT
    )
    try:
        answer = transport.response.headers.getall("Sec-WebSocket-Extensions", [])
        accepted = parse_deflate_answer(answer)
        wbits = int(accepted.get("client_max_window_bits") or 15)
        no_takeover = "client_no_context_takeover" in accepted
        frames, sent_wire = deflate_frames(pool, warmup + count, wbits, no_takeover)
        setup_s = perf_counter() - t0
        await asyncio.wait_for(listener.run(frames, pool, 0, window, warmup), PHASE_TIMEOUT)
        meter = CpuMeter(pid)
        meter.start()
        await asyncio.wait_for(listener.run(frames, pool, warmup, window, count), PHASE_TIMEOUT)
        cpu = meter.stop()
        if listener.compressed == 0:
            raise BenchError("permessage-deflate was negotiated but no echo came back compressed")
        elapsed = listener.t_end - listener.t_start
        cpu["wall_s"] = elapsed
        for key in ("client_cpu", "server_cpu", "other_cpu"):
            cpu[key + "_util"] = cpu[key + "_s"] / elapsed
        return {
            "metrics": {"msgs_per_s": count / elapsed, "echo_compression": count * size / listener.wire_bytes},
            "cpu": cpu,
            "extra": {
                "messages": count,
                "elapsed_s": elapsed,
                "offer": DEFLATE_OFFER,
                "answer": answer,
                "client_window_bits": wbits,
                "client_no_context_takeover": no_takeover,
                "distinct_messages": len(pool),
                "compressed_echoes": listener.compressed,
                "echo_wire_bytes_per_msg": listener.wire_bytes / count,
                "sent_compression": (warmup + count) * size / sent_wire,
                "setup_s": setup_s,
            },
        }
    finally:
        transport.disconnect()


async def scenario_idle(params: dict[str, Any], url: str, pid: int) -> dict[str, Any]:
    n, warm, batch = params["connections"], params["warmup_connections"], params["batch"]
    control_transport, control = await asyncio.wait_for(connect(url + "control", Control), CONNECT_TIMEOUT)
    KEEP.append(control_transport)
    # A few connections first, so one-off allocations (first handshake, caches) are not counted.
    keep = KEEP
    keep += await open_many(url, Idle, warm, batch)
    await wait_count(control, warm)
    await asyncio.sleep(0.5)
    rss0 = proc_rss_kib(pid)
    meter = CpuMeter(pid)
    meter.start()
    keep += await open_many(url, Idle, n, batch)
    cpu = meter.stop()
    await wait_count(control, warm + n)
    await asyncio.sleep(1.0)
    rss1 = proc_rss_kib(pid)
    return {
        "metrics": {"kib_per_conn": (rss1 - rss0) / n},
        "cpu": cpu,
        "extra": {
            "connections": n,
            "rss_before_kib": rss0,
            "rss_after_kib": rss1,
            "open_per_s": n / cpu["wall_s"],
            "open_count": len(keep),
        },
    }


async def broadcast_rounds(
    control: Control, state: BroadcastState, commands: list[str], n: int, rounds: int, warmup: int, pid: int
) -> dict[str, dict[str, Any]]:
    """``warmup + rounds`` rounds of every command in ``commands``, interleaved (A, B, A, B, ...).

    Interleaving keeps a busy machine's drift from favouring whichever
    command ran first; each command gets its own medians and CPU per round.
    """
    per: dict[str, dict[str, Any]] = {
        c: {"fanout": [], "last": [], "first": [], "method": "", "client_cpu": 0.0, "server_cpu": 0.0} for c in commands
    }
    t_wall = 0.0
    other_s = 0.0
    steal_s = 0.0
    for i in range(warmup + rounds):
        for command in commands:
            record = per[command]
            meter = CpuMeter(pid)
            meter.start()
            future = state.reset(n)
            t0 = perf_counter()
            control.send(command)
            reply = await asyncio.wait_for(control.replies.get(), REPLY_TIMEOUT)
            await asyncio.wait_for(future, REPLY_TIMEOUT)
            cpu = meter.stop()
            words = reply.split()
            if not words or words[0] in ("unsupported", "unknown"):
                raise BenchError(f"{command}: server answered {reply!r}")
            record["method"] = " ".join(words[1:])
            if i >= warmup:
                record["fanout"].append(float(words[0]))
                record["last"].append((state.t_last - t0) * 1e6)
                record["first"].append((state.t_first - t0) * 1e6)
                record["client_cpu"] += cpu["client_cpu_s"]
                record["server_cpu"] += cpu["server_cpu_s"]
                t_wall += cpu["wall_s"]
                other_s += cpu["other_cpu_s"]
                steal_s += cpu["steal_util"] * cpu["wall_s"]
            await asyncio.sleep(0.2)
    out: dict[str, dict[str, Any]] = {}
    for command, record in per.items():
        out[command] = {
            "fanout_us": statistics.median(record["fanout"]),
            "last_client_us": statistics.median(record["last"]),
            "first_client_us": statistics.median(record["first"]),
            "fanout_us_rounds": record["fanout"],
            "last_client_us_rounds": record["last"],
            "method": record["method"],
            "client_cpu_ms_per_round": record["client_cpu"] * 1e3 / rounds,
            "server_cpu_ms_per_round": record["server_cpu"] * 1e3 / rounds,
            "cpu": {
                "wall_s": t_wall,
                "other_cpu_util": other_s / t_wall if t_wall else 0.0,
                "steal_util": steal_s / t_wall if t_wall else 0.0,
            },
        }
    return out


async def scenario_broadcast(params: dict[str, Any], url: str, pid: int, floor: bool) -> dict[str, Any]:
    n, batch = params["connections"], params["batch"]
    rounds, warmup = params["rounds"], params["warmup_rounds"]
    state = BroadcastState()
    control_transport, control = await asyncio.wait_for(connect(url + "control", Control), CONNECT_TIMEOUT)
    KEEP.append(control_transport)
    t0 = perf_counter()
    keep = KEEP
    keep += await open_many(url, lambda: Receiver(state), n, batch)
    open_s = perf_counter() - t0
    await wait_count(control, n)
    await asyncio.sleep(0.5)
    # ours also runs the bare sock.send() floor and its pure-Python broadcast path, interleaved with it.
    commands = ["BROADCAST", "FLOOR", "BROADCAST_PY"] if floor else ["BROADCAST"]
    results = await broadcast_rounds(control, state, commands, n, rounds, warmup, pid)
    result = results["BROADCAST"]
    metrics = {"fanout_us": result["fanout_us"], "last_client_us": result["last_client_us"]}
    extra: dict[str, Any] = {"connections": len(keep), "open_per_s": n / open_s, "broadcast": result}
    if floor:
        metrics["floor_fanout_us"] = results["FLOOR"]["fanout_us"]
        metrics["floor_last_client_us"] = results["FLOOR"]["last_client_us"]
        metrics["python_fanout_us"] = results["BROADCAST_PY"]["fanout_us"]
        metrics["python_last_client_us"] = results["BROADCAST_PY"]["last_client_us"]
        extra["floor"] = results["FLOOR"]
        extra["python"] = results["BROADCAST_PY"]
    cpu = {k: v for k, v in result["cpu"].items() if k in ("other_cpu_util", "steal_util", "wall_s")}
    return {"metrics": metrics, "cpu": cpu, "extra": extra}


def churn_request(host: str, port: int) -> tuple[bytes, bytes]:
    """An upgrade request with a fresh key, and the ``Sec-WebSocket-Accept`` value it must be answered with."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    request = (
        b"GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (host.encode(), port, key)
    )
    return request, accept


class ChurnConnection:
    """One short-lived connection of scenario 10: a non-blocking socket and where it is in its life.

    Stages: 0 connecting; 1 upgrade sent, waiting for the 101 (its
    ``Sec-WebSocket-Accept`` is checked); 2 one masked 64 B binary frame
    sent, waiting for its echo (checked byte for byte); 3 a Close (1000)
    sent, waiting for the server's Close (1000), after which TCP is ended.
    """

    __slots__ = ("sock", "stage", "buf", "request", "accept")

    def __init__(self, host: str, port: int, request: bytes, accept: bytes) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stage = 0
        self.buf = b""
        self.request, self.accept = request, accept
        err = self.sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            self.sock.close()
            raise BenchError(f"connect failed: {os.strerror(err)}")


def churn_phase(
    host: str, port: int, keys: list[tuple[bytes, bytes]], parallel: int, frame: bytes, echo: bytes, close: bytes
) -> float:
    """Run ``len(keys)`` connections, ``parallel`` at a time, on one epoll loop of plain sockets; the seconds taken.

    No asyncio and no WebSocket client: the load generator must stay
    cheaper per connection than every server it measures. Raises
    BenchError for any wrong answer, an early end, or no progress for
    REPLY_TIMEOUT seconds.
    """
    sel = selectors.EpollSelector()
    todo = iter(keys)
    active = 0
    started = time.perf_counter()

    def open_one() -> bool:
        nonlocal active
        key = next(todo, None)
        if key is None:
            return False
        conn = ChurnConnection(host, port, *key)
        sel.register(conn.sock, selectors.EVENT_WRITE, conn)
        active += 1
        return True

    def finish(conn: ChurnConnection) -> None:
        nonlocal active
        sel.unregister(conn.sock)
        conn.sock.close()  # both Close frames exchanged: end TCP
        active -= 1
        open_one()

    for _ in range(parallel):
        if not open_one():
            break
    try:
        while active:
            ready = sel.select(REPLY_TIMEOUT)
            if not ready:
                raise BenchError(f"churn: no progress for {REPLY_TIMEOUT:.0f} s")
            if time.perf_counter() - started > PHASE_TIMEOUT:
                raise BenchError(f"churn: the phase took over {PHASE_TIMEOUT:.0f} s")
            for selkey, _ in ready:
                conn = selkey.data
                sock = conn.sock
                if conn.stage == 0:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise BenchError(f"connect failed: {os.strerror(err)}")
                    sock.send(conn.request)  # a few hundred bytes: an empty socket buffer takes them
                    conn.stage = 1
                    sel.modify(sock, selectors.EVENT_READ, conn)
                    continue
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    raise BenchError(f"churn: the server ended TCP at stage {conn.stage}")
                buf = conn.buf + data
                if conn.stage == 1:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        conn.buf = buf
                        continue
                    head, buf = buf[: end + 4], buf[end + 4 :]
                    if not head.startswith(b"HTTP/1.1 101") or conn.accept not in head:
                        raise BenchError(f"bad upgrade response {head[:200]!r}")
                    conn.stage = 2
                    sock.send(frame)
                if conn.stage == 2:
                    if len(buf) < len(echo):
                        conn.buf = buf
                        continue
                    if buf[: len(echo)] != echo:
                        raise BenchError("the churn echo differs from what was sent")
                    buf = buf[len(echo) :]
                    conn.stage = 3
                    sock.send(close)
                if conn.stage == 3:
                    if len(buf) < 2 or len(buf) < 2 + (buf[1] & 0x7F):
                        conn.buf = buf
                        continue
                    if buf[0] != 0x88 or buf[1] & 0x7F < 2 or buf[2:4] != b"\x03\xe8":
                        raise BenchError(f"expected the server's Close 1000, got {buf[:16]!r}")
                    finish(conn)
    finally:
        for selkey in list(sel.get_map().values()):
            selkey.fileobj.close()  # type: ignore[union-attr]
        sel.close()
    return time.perf_counter() - started


async def scenario_churn(params: dict[str, Any], host: str, port: int, pid: int) -> dict[str, Any]:
    """``parallel`` connections at a time open, echo once and cleanly close until ``count`` are done."""
    payload = binary_payload(params["size"])
    frame = build_frame(0x2, payload, mask_key())
    echo = bytes([0x82, len(payload)]) + payload  # what the server must send back (unmasked)
    close = build_frame(0x8, b"\x03\xe8", mask_key())
    parallel = params["parallel"]

    def keys(total: int) -> list[tuple[bytes, bytes]]:
        return [churn_request(host, port) for _ in range(total)]  # fresh keys, made before the clock starts

    churn_phase(host, port, keys(params["warmup"]), parallel, frame, echo, close)
    measured = keys(params["count"])
    meter = CpuMeter(pid)
    meter.start()
    elapsed = churn_phase(host, port, measured, parallel, frame, echo, close)
    cpu = meter.stop()
    return {
        "metrics": {"handshakes_per_s": params["count"] / elapsed},
        "cpu": cpu,
        "extra": {"connections": params["count"], "parallel": parallel, "elapsed_s": elapsed},
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    params = scaled(args.scenario, args.quick, args.connections)
    url = f"{'wss' if params.get('tls') else 'ws'}://{args.host}:{args.port}/"
    kind = params["kind"]
    if kind == "churn":
        return await scenario_churn(params, args.host, args.port, args.server_pid)
    if kind == "pipeline":
        return await scenario_pipeline(args.scenario, params, url, args.server_pid)
    if kind == "deflate":
        return await scenario_deflate(params, url, args.server_pid)
    if kind == "idle":
        return await scenario_idle(params, url, args.server_pid)
    return await scenario_broadcast(params, url, args.server_pid, args.floor)


def main() -> None:
    parser = argparse.ArgumentParser(description="picows load generator for one benchmark scenario")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--scenario", type=int, choices=range(1, 11), required=True)
    parser.add_argument("--tls", metavar="DIR", help="wss:// scenarios: trust DIR/ca.pem")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--floor", action="store_true", help="scenario 6: also measure the FLOOR command")
    parser.add_argument("--connections", type=int, default=None, help="scenarios 5-6: fewer connections (fd limit)")
    args = parser.parse_args()
    soft, hard = raise_nofile_limit()
    global TLS_CONTEXT
    if args.tls:
        TLS_CONTEXT = client_tls_context(args.tls)
    params = scaled(args.scenario, args.quick, args.connections)
    needed = params.get("connections", 0) + params.get("warmup_connections", 0) + 64
    try:
        if soft < needed:
            raise BenchError(f"RLIMIT_NOFILE is {soft} (hard {hard}); scenario {args.scenario} needs {needed}")
        result = asyncio.run(asyncio.wait_for(run(args), TOTAL_TIMEOUT))
        result["ok"] = True
        result["nofile"] = [soft, hard]
    except BaseException as exc:  # report every failure as a result line
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print("RESULT " + json.dumps(result), flush=True)
    # Skip tearing down thousands of connections one by one: the kernel closes them.
    os._exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
