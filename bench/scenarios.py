"""Scenario and metric definitions shared by run.py, loadgen.py and plot.py.

Nothing here does I/O: it only says what each scenario sends and how its
result is named, measured and compared.
"""

from __future__ import annotations

import os
import resource
from typing import Any, Optional

#: Largest message every server and the load generator accept (16 MiB).
MAX_MESSAGE_SIZE = 16 * 1024 * 1024

#: Payload of the scenario-6 broadcast message (128 bytes, binary).
BROADCAST_PAYLOAD = bytes(range(128))

#: Every server kind run.py knows, in table order; "tornado" is the baseline for ratios.
SERVERS = ["ours", "tornado", "websockets", "aiohttp", "picows"]
BASELINE = "tornado"

SERVER_LABELS = {
    "ours": "tornado_websocket",
    "tornado": "tornado.websocket",
    "websockets": "websockets",
    "aiohttp": "aiohttp",
    "picows": "picows",
}

# Full-size parameters; --quick divides the counts (see scaled()).
SCENARIOS: dict[int, dict[str, Any]] = {
    1: {
        "title": "64 B binary echo, 100 in flight",
        "kind": "pipeline",
        "size": 64,
        "text": False,
        "window": 100,
        "count": 100_000,
        "warmup": 5_000,
    },
    2: {
        "title": "64 B ping-pong, 1 in flight",
        "kind": "pipeline",
        "size": 64,
        "text": False,
        "window": 1,
        "count": 20_000,
        "warmup": 1_000,
    },
    3: {
        "title": "1 MiB binary echo, 4 in flight",
        "kind": "pipeline",
        "size": 1024 * 1024,
        "text": False,
        "window": 4,
        "count": 400,
        "warmup": 20,
    },
    4: {
        "title": "16 KiB UTF-8 text echo, 20 in flight",
        "kind": "pipeline",
        "size": 16 * 1024,
        "text": True,
        "window": 20,
        "count": 20_000,
        "warmup": 1_000,
    },
    5: {
        "title": "idle connections: server RSS growth",
        "kind": "idle",
        "connections": 5_000,
        "warmup_connections": 100,
        "batch": 200,
    },
    6: {
        "title": "broadcast 128 B to every client",
        "kind": "broadcast",
        "connections": 5_000,
        "batch": 200,
        "rounds": 7,
        "warmup_rounds": 2,
    },
}

QUICK_DIVISOR = 10

#: One row of the result table per metric: (metric key, scenario, label, unit, higher_is_better).
METRICS: list[tuple[str, int, str, str, bool]] = [
    ("msgs_per_s", 1, "1  64 B binary echo, 100 in flight", "msg/s", True),
    ("round_trips_per_s", 2, "2  64 B ping-pong", "round trips/s", True),
    ("mb_per_s", 3, "3  1 MiB binary echo, 4 in flight", "MB/s", True),
    ("msgs_per_s", 4, "4  16 KiB text echo, 20 in flight", "msg/s", True),
    ("kib_per_conn", 5, "5  idle connection memory (server RSS)", "KiB/conn", False),
    ("fanout_us", 6, "6  broadcast fan-out inside the server", "us", False),
    ("last_client_us", 6, "6  broadcast until the last client has it", "us", False),
]

#: Extra rows for scenario 6 measured only on our server (bare sock.send loop).
FLOOR_METRICS: list[tuple[str, str, str]] = [
    ("floor_fanout_us", "fanout_us", "floor: bare sock.send() loop"),
    ("floor_last_client_us", "last_client_us", "floor: bare sock.send() loop"),
]


def scaled(number: int, quick: bool, connections: Optional[int] = None) -> dict[str, Any]:
    """The parameters of scenario ``number``, with counts divided for --quick.

    ``connections`` caps the connection count of scenarios 5 and 6 (when the
    file descriptor limit is too low for the full count).
    """
    params = dict(SCENARIOS[number])
    if quick:
        for key in ("count", "warmup", "connections", "warmup_connections"):
            if key in params:
                params[key] = max(1, params[key] // QUICK_DIVISOR)
        if "rounds" in params:
            params["rounds"] = 3
            params["warmup_rounds"] = 1
    if connections is not None and "connections" in params:
        params["connections"] = min(params["connections"], connections)
    return params


def text_payload(size: int) -> bytes:
    """``size`` bytes of valid UTF-8 with some non-ASCII (2- and 3-byte sequences)."""
    unit = "WebSocket tornado-échange-данные-数据-ok ".encode()
    out = bytearray()
    while len(out) < size:
        out += unit
    # Cut back to a whole character so the payload stays valid UTF-8.
    data = bytes(out[:size])
    while True:
        try:
            data.decode("utf-8")
            break
        except UnicodeDecodeError:
            data = data[:-1]
    return data + b" " * (size - len(data))


def binary_payload(size: int) -> bytes:
    """``size`` bytes of deterministic binary data (every byte value appears)."""
    block = bytes(range(256))
    return (block * (size // 256 + 1))[:size]


def raise_nofile_limit(wanted: int = 1 << 20) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE up to ``wanted`` (never past the hard limit); return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of process ``pid`` from /proc/<pid>/stat, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # fields 14 and 15 of proc(5)


def proc_cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid`` (main thread) in seconds, to the nanosecond where /proc/<pid>/schedstat exists.

    /proc/<pid>/stat counts in clock ticks (10 ms); schedstat's first field
    is the scheduler's exact run time. The servers are single-threaded.
    """
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        user, system = proc_cpu_split(pid)
        return user + system


def system_cpu() -> dict[str, float]:
    """Machine-wide CPU time from the first line of /proc/stat, in seconds (all CPUs added)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    return {name: fields[i] / CLK_TCK for i, name in enumerate(names) if i < len(fields)}


def proc_rss_kib(pid: int) -> int:
    """VmRSS of process ``pid`` from /proc/<pid>/status, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
