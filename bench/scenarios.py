"""Scenario and metric definitions shared by run.py, loadgen.py and plot.py.

Nothing here does I/O: it only says what each scenario sends and how its
result is named, measured and compared.
"""

from __future__ import annotations

import json
import os
import random
import resource
from typing import Any, Optional

#: Largest message every server and the load generator accept (16 MiB).
MAX_MESSAGE_SIZE = 16 * 1024 * 1024

#: Payload of the scenario-6 broadcast message (128 bytes, binary).
BROADCAST_PAYLOAD = bytes(range(128))

#: Every server kind run.py knows, in table order; "tornado" is the baseline for ratios.
SERVERS = ["ours", "ours-zlib", "tornado", "websockets", "aiohttp", "picows"]
BASELINE = "tornado"

SERVER_LABELS = {
    "ours": "tornado_websocket",
    "ours-zlib": "tornado_websocket, stdlib zlib",
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
    7: {
        "title": "4 KiB JSON text echo, permessage-deflate, 20 in flight",
        "kind": "deflate",
        "size": 4096,
        "window": 20,
        "count": 20_000,
        "warmup": 1_000,
        # Distinct messages, sent in turn: far more than the largest deflate window (32 KiB = 8 messages) holds.
        "pool": 512,
        "compress": True,
    },
    8: {
        "title": "wss:// 64 B binary echo, 100 in flight",
        "kind": "pipeline",
        "size": 64,
        "text": False,
        "window": 100,
        "count": 100_000,
        "warmup": 5_000,
        "tls": True,
    },
    9: {
        "title": "wss:// 1 MiB binary echo, 4 in flight",
        "kind": "pipeline",
        "size": 1024 * 1024,
        "text": False,
        "window": 4,
        "count": 400,
        "warmup": 20,
        "tls": True,
    },
    10: {
        "title": "connection churn: connect, handshake, one 64 B echo, clean close; 10 clients in parallel",
        "kind": "churn",
        "size": 64,
        "parallel": 10,
        "count": 3_000,
        "warmup": 200,
    },
}

#: Servers a scenario cannot run on, and why (shown as "n/a" in the table).
NOT_APPLICABLE: dict[int, dict[str, str]] = {
    7: {"picows": "no permessage-deflate in picows"},
}

#: Servers that run only some scenarios (elsewhere they would repeat another server's row).
ONLY_SCENARIOS: dict[str, set[int]] = {
    # ours with TORNADO_WEBSOCKET_STDLIB_ZLIB=1: differs from "ours" only where deflate runs.
    "ours-zlib": {7},
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
    ("msgs_per_s", 7, "7  4 KiB JSON echo, deflate, 20 in flight", "msg/s", True),
    ("echo_compression", 7, "7  deflate: echoes' payload / wire bytes", "x", True),
    ("msgs_per_s", 8, "8  wss:// 64 B binary echo, 100 in flight", "msg/s", True),
    ("mb_per_s", 9, "9  wss:// 1 MiB binary echo, 4 in flight", "MB/s", True),
    ("handshakes_per_s", 10, "10 connection churn (connect+echo+close)", "handshakes/s", True),
]

#: Rows that describe a measurement above them rather than a speed (no CPU / "limited by" columns).
INFO_METRICS = {"echo_compression"}

#: Extra rows for scenario 6 measured only on our server (bare sock.send loop).
FLOOR_METRICS: list[tuple[str, str, str]] = [
    ("floor_fanout_us", "fanout_us", "floor: bare sock.send() loop"),
    ("python_fanout_us", "fanout_us", "pure-Python broadcast path"),
    ("floor_last_client_us", "last_client_us", "floor: bare sock.send() loop"),
    ("python_last_client_us", "last_client_us", "pure-Python broadcast path"),
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


_WORDS = (
    "the a to and of in is it you that for on this with we are be have can not just will do at so "
    "deploy build test release merge review branch commit fix bug issue ticket customer order invoice payment "
    "shipping refund account login password session token cache server client request response timeout retry "
    "latency error warning update version config database query index schema migration backup restore "
    "meeting tomorrow today yesterday morning afternoon lunch coffee thanks please sorry great good nice "
    "looks works broken again still already maybe probably definitely soon later now ok yes no sure "
    "dashboard metrics alert graph spike traffic region cluster node pod container image registry "
    "café naïve résumé über straße déjà-vu 東京 数据 данные привет 🙂 👍 🚀 ✅"
).split()
_ASCII_WORDS = [w for w in _WORDS if w.isascii()]
_NAMES = [
    "Alice Martin",
    "Bob Chen",
    "Zoë Müller",
    "Chloé Dubois",
    "Дмитрий Иванов",
    "田中 花子",
    "Ravi Patel",
    "Sofía García",
    "Liam O'Brien",
    "Noah Kim",
    "Emma Rossi",
    "Olivia Smith",
    "Lucas Silva",
    "Mia Johansson",
    "Ethan Brown",
    "Ava Nowak",
    "Mateo López",
    "Isla Wilson",
    "Yusuf Demir",
    "Hana Sato",
]
_CHANNELS = ["general", "random", "engineering", "support-é", "releases", "oncall", "design", "sales"]
_ULID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _dump_json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def json_payload(index: int, size: int = 4096) -> bytes:
    """Message ``index`` of a chat API: a JSON batch of chat messages, exactly ``size`` bytes of UTF-8.

    Deterministic (seeded by ``index``) and different for every index: the
    keys repeat from message to message (what a deflate window shared across
    messages exploits) while ids, timestamps, users and texts vary; texts mix
    ASCII with 2-, 3- and 4-byte characters. A ``summary`` string of ASCII
    words fills the batch up to ``size`` exactly. Compresses about 2.8x on
    its own and about 4-5x with the window kept from the previous messages.
    """
    rnd = random.Random(index)
    ts = 1_790_000_000_000 + index * 1733
    channel = rnd.randrange(len(_CHANNELS))
    batch: dict[str, Any] = {
        "type": "message.batch",
        "seq": index,
        "channel": {"id": f"C{channel:04d}", "name": _CHANNELS[channel]},
        "messages": [],
        "summary": "",
    }
    messages: list[dict[str, Any]] = batch["messages"]
    while True:
        user = rnd.randrange(len(_NAMES))
        messages.append(
            {
                "id": "01J" + "".join(rnd.choice(_ULID_ALPHABET) for _ in range(23)),
                "ts": ts + len(messages) * 211,
                "user": {
                    "id": f"U{user:05d}",
                    "name": _NAMES[user],
                    "avatar": f"https://cdn.example.com/avatars/U{user:05d}/64.png",
                    "online": rnd.random() < 0.7,
                },
                "text": " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(4, 28))),
                "edited": rnd.random() < 0.1,
                "reactions": [
                    {"emoji": rnd.choice(["👍", "🎉", "❤️", "😂", "👀"]), "count": rnd.randint(1, 9)}
                    for _ in range(rnd.choice([0, 0, 1, 2]))
                ],
                "reply_count": rnd.choice([0, 0, 0, 1, 2, 5]),
            }
        )
        if len(_dump_json(batch)) > size:
            messages.pop()
            break
    room = size - len(_dump_json(batch))
    if room < 0:
        raise ValueError(f"size {size} is too small for a message batch")
    words: list[str] = []
    while len(" ".join(words)) < room:
        words.append(rnd.choice(_ASCII_WORDS))
    batch["summary"] = " ".join(words)[:room]
    data = _dump_json(batch)
    assert len(data) == size
    return data


#: TLS scenarios (8, 9): TLS 1.3 only, so every library negotiates the same cipher suite with the same OpenSSL.
TLS_CA_FILE = "ca.pem"
TLS_CERT_FILE = "server.pem"  # certificate chain and private key


def make_tls_files(directory: str) -> None:
    """Write a trustme CA (``ca.pem``) and a certificate for 127.0.0.1 signed by it (``server.pem``)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    os.makedirs(directory, exist_ok=True)
    ca.cert_pem.write_to_path(os.path.join(directory, TLS_CA_FILE))
    cert.private_key_and_cert_chain_pem.write_to_path(os.path.join(directory, TLS_CERT_FILE))


def server_tls_context(directory: str) -> Any:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(os.path.join(directory, TLS_CERT_FILE))
    return context


def client_tls_context(directory: str) -> Any:
    import ssl

    context = ssl.create_default_context(cafile=os.path.join(directory, TLS_CA_FILE))
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


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
