"""Soak test: 10,000 concurrent WebSocket connections held against our echo server.

``python bench/soak.py [--duration 60]`` (not run by pytest) starts

* the server: ``tornado_websocket`` echo on 127.0.0.1 (a free port), in its own process;
* ``--procs`` load processes (picows clients), which open ``--connections``
  connections between them (spread over source addresses 127.0.0.10, .11, ...)
  and hold them for ``--duration`` seconds while ``--active`` of them (all in
  the first load process) exchange messages continuously: send
  ``--size`` bytes, wait for the echo, check it, wait ``--interval`` s, again.

``--storm``: after the hold, every connection drops (TCP closed, no Close
frame) and reconnects at once; it reports the seconds until all are back
and the server holds as many sockets as before, and fails if one did not
come back. ``--connections`` above the file-descriptor limit (the hard
``RLIMIT_NOFILE``, which an unprivileged process cannot raise) is cut to
the most the limit allows, and says so.

It reports the server's RSS (``/proc/<pid>/status``) at start, after every
connection is up, at its peak and at the end of the hold; the server's RSS
per connection; how many connections failed or dropped; and the round-trip
latency percentiles (p50/p90/p99/max) of the active connections. It exits 1
if a connection failed or dropped or an echo was wrong.

Everything stays on the loopback interface; every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import time
from array import array
from typing import Any, Optional

HOST = "127.0.0.1"
CONNECT_CONCURRENCY = 200  # handshakes in flight per load process
CONNECT_TIMEOUT = 180.0  # the whole connect phase of one load process
REPLY_TIMEOUT = 10.0  # one echo
EXIT_TIMEOUT = 60.0  # closing every connection at the end
SERVER_FD_MARGIN = 300  # the server's own files, listening sockets, and old sockets still closing in a storm


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def socket_fds(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the server -----------------------------------------------------------------------------


def run_server(ping_interval: float) -> None:
    import tornado.httpserver
    import tornado.ioloop
    import tornado.netutil
    import tornado.web

    import tornado_websocket

    class Echo(tornado_websocket.WebSocketHandler):
        def on_message(self, message: Any) -> None:
            self.write_message(message, binary=isinstance(message, bytes))

    raise_nofile_limit()

    async def main() -> None:
        settings: dict[str, Any] = {"websocket_ping_interval": ping_interval or None}
        app = tornado.web.Application([(r"/", Echo)], **settings)
        sockets = tornado.netutil.bind_sockets(0, HOST, backlog=4096)
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        print(f"PORT {sockets[0].getsockname()[1]}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.stop()

    asyncio.run(main())


# -- a load process ----------------------------------------------------------------------------


async def run_load(args: argparse.Namespace) -> None:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    raise_nofile_limit()
    loop = asyncio.get_running_loop()
    url = f"ws://{HOST}:{args.port}/"
    dropped = 0
    holding = False

    class Conn(WSListener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.transport: Optional[WSTransport] = None
            self.waiter: Optional[asyncio.Future[bytes]] = None

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.transport = transport

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.BINARY and self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(frame.get_payload_as_bytes())

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            nonlocal dropped
            if holding:
                dropped += 1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(ConnectionError("disconnected"))

    conns: list[Conn] = []
    failed = 0
    first_error = ""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect_one() -> None:
        nonlocal failed, first_error
        async with gate:
            try:
                _, listener = await ws_connect(Conn, url, websocket_handshake_timeout=30, local_addr=(args.source, 0))
                conns.append(listener)
            except Exception as exc:  # counted and reported
                failed += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(connect_one() for _ in range(args.connections))), CONNECT_TIMEOUT)
    connect_s = time.monotonic() - started
    print(
        f"CONNECTED {json.dumps({'ok': len(conns), 'failed': failed, 'seconds': connect_s, 'error': first_error})}",
        flush=True,
    )

    # Wait for the go (bounded), then run the hold.
    line = await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), CONNECT_TIMEOUT * 2)
    if line.strip() != "START":
        raise SystemExit(f"expected START, got {line!r}")
    holding = True
    latencies = array("d")
    errors = 0
    first_bad = ""
    deadline = time.monotonic() + args.duration

    async def exchange(conn: Conn, index: int) -> None:
        nonlocal errors, first_bad
        n = 0
        filler = bytes((index % 256,)) * max(0, args.size - 12)
        while time.monotonic() < deadline:
            payload = index.to_bytes(4, "big") + n.to_bytes(8, "big") + filler
            conn.waiter = loop.create_future()
            t0 = time.perf_counter()
            try:
                assert conn.transport is not None
                conn.transport.send(WSMsgType.BINARY, payload)
                echo = await asyncio.wait_for(conn.waiter, REPLY_TIMEOUT)
            except Exception as exc:
                errors += 1
                first_bad = first_bad or f"{type(exc).__name__}: {exc}"
                return
            latencies.append(time.perf_counter() - t0)
            if echo != payload:
                errors += 1
                first_bad = first_bad or f"echo {n} of connection {index} differs"
                return
            n += 1
            if args.interval > 0:
                await asyncio.sleep(args.interval)  # the pace of an active connection

    active = conns[: args.active]
    t_hold = time.monotonic()
    if active:
        await asyncio.wait_for(
            asyncio.gather(*(exchange(c, i) for i, c in enumerate(active))), args.duration + 2 * REPLY_TIMEOUT
        )
    else:
        await asyncio.sleep(args.duration)  # idle connections only: the hold itself
    hold_s = time.monotonic() - t_hold
    still_open = sum(1 for c in conns if c.transport is not None and not c.transport.is_disconnected)
    ordered = sorted(latencies)

    def pct(p: float) -> Optional[float]:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1e3 if ordered else None

    result = {
        "connections": len(conns),
        "still_open": still_open,
        "dropped": dropped,
        "active": len(active),
        "round_trips": len(ordered),
        "hold_seconds": hold_s,
        "errors": errors,
        "first_error": first_bad,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": ordered[-1] * 1e3 if ordered else None,
    }
    print(f"RESULT {json.dumps(result)}", flush=True)

    line = await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), EXIT_TIMEOUT * 4)
    holding = False
    if line.strip() == "STORM":
        # A reconnect storm: every connection drops (TCP closed, no Close frame, as when a deploy cuts them)
        # and comes straight back, CONNECT_CONCURRENCY handshakes in flight at a time.
        wanted = len(conns)
        t_storm = time.monotonic()
        for conn in conns:
            if conn.transport is not None:
                conn.transport.disconnect()
        await asyncio.wait_for(
            asyncio.gather(*(c.transport.wait_disconnected() for c in conns if c.transport is not None)),
            EXIT_TIMEOUT,
        )
        dropped_s = time.monotonic() - t_storm
        conns.clear()
        failed = 0
        first_error = ""
        await asyncio.wait_for(asyncio.gather(*(connect_one() for _ in range(wanted))), CONNECT_TIMEOUT)
        storm = {
            "ok": len(conns),
            "failed": failed,
            "error": first_error,
            "seconds": time.monotonic() - t_storm,
            "drop_seconds": dropped_s,
        }
        print(f"STORMED {json.dumps(storm)}", flush=True)
        line = await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), EXIT_TIMEOUT * 4)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.disconnect()
    await asyncio.wait_for(
        asyncio.gather(*(c.transport.wait_disconnected() for c in conns if c.transport is not None)), EXIT_TIMEOUT
    )


# -- the driver ----------------------------------------------------------------------------------


def read_tagged(proc: subprocess.Popen[str], tag: str, timeout: float) -> str:
    """The rest of the first stdout line of ``proc`` that starts with ``tag``; fail after ``timeout`` s."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise TimeoutError(f"no {tag} line from pid {proc.pid} within {timeout:.0f} s")
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"pid {proc.pid} exited (code {proc.wait()}) before printing {tag}")
            if line.startswith(tag + " "):
                return line[len(tag) + 1 :].strip()
            sys.stderr.write(line)


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def drive(args: argparse.Namespace) -> int:
    soft = raise_nofile_limit()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    most = soft - SERVER_FD_MARGIN
    if args.connections > most:
        # The server holds one socket per connection, and its fd limit cannot go past the hard limit.
        print(
            f"soak: RLIMIT_NOFILE hard limit is {hard} here (raising it needs CAP_SYS_RESOURCE outside this "
            f"process's reach): the server can hold at most {most} connections; measuring {most} instead of "
            f"{args.connections}",
            flush=True,
        )
        args.connections = most
    per_proc = -(-args.connections // args.procs)
    if per_proc + 100 > soft:
        raise SystemExit(f"{per_proc} connections per load process need more than RLIMIT_NOFILE {soft}: raise --procs")
    me = os.path.abspath(__file__)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = subprocess.Popen(
        [sys.executable, me, "--role", "server", "--ping-interval", str(args.ping_interval)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    loads: list[subprocess.Popen[str]] = []
    try:
        port = int(read_tagged(server, "PORT", 30))
        rss_start = rss_kib(server.pid)
        sockets_start = socket_fds(server.pid)
        keepalive = f"every {args.ping_interval:g} s" if args.ping_interval else "off"
        print(
            f"soak: {args.connections} connections from {args.procs} load processes, {args.active} active "
            f"({args.size}-byte echo, then {args.interval * 1e3:g} ms pause), held {args.duration:g} s; "
            f"server keepalive pings {keepalive}",
            flush=True,
        )
        started = time.monotonic()
        remaining = args.connections
        for k in range(args.procs):
            n = min(per_proc, remaining)
            remaining -= n
            loads.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        me,
                        "--role",
                        "load",
                        "--port",
                        str(port),
                        "--connections",
                        str(n),
                        "--active",
                        str(args.active if k == 0 else 0),
                        "--duration",
                        str(args.duration),
                        "--interval",
                        str(args.interval),
                        "--size",
                        str(args.size),
                        "--source",
                        f"127.0.0.{10 + k}",
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
        connected = [json.loads(read_tagged(p, "CONNECTED", CONNECT_TIMEOUT + 30)) for p in loads]
        connect_s = time.monotonic() - started
        ok = sum(c["ok"] for c in connected)
        failed = sum(c["failed"] for c in connected)
        rss_connected = rss_kib(server.pid)
        sockets_connected = socket_fds(server.pid) - sockets_start
        cpu_before = cpu_seconds(server.pid)

        for p in loads:
            assert p.stdin is not None
            p.stdin.write("START\n")
            p.stdin.flush()
        hold_started = time.monotonic()
        rss_peak = rss_connected
        # Sample the server's RSS once a second while the load processes hold (bounded by --duration).
        while time.monotonic() - hold_started < args.duration:
            time.sleep(min(1.0, max(0.0, args.duration - (time.monotonic() - hold_started))))
            rss_peak = max(rss_peak, rss_kib(server.pid))
        results = [json.loads(read_tagged(p, "RESULT", 2 * REPLY_TIMEOUT + 30)) for p in loads]
        rss_end = rss_kib(server.pid)
        rss_peak = max(rss_peak, rss_end)
        sockets_end = socket_fds(server.pid) - sockets_start
        cpu_hold = cpu_seconds(server.pid) - cpu_before
        hold_s = time.monotonic() - hold_started

        storm: Optional[dict[str, Any]] = None
        if args.storm:
            storm_started = time.monotonic()
            for p in loads:
                assert p.stdin is not None
                p.stdin.write("STORM\n")
                p.stdin.flush()
            stormed = [json.loads(read_tagged(p, "STORMED", CONNECT_TIMEOUT + EXIT_TIMEOUT + 30)) for p in loads]
            back_s = time.monotonic() - storm_started
            # The server has all of them back once it holds as many sockets as before (the old ones closed).
            settle_deadline = time.monotonic() + 60
            while socket_fds(server.pid) - sockets_start != sockets_connected and time.monotonic() < settle_deadline:
                time.sleep(0.05)
            storm = {
                "ok": sum(s["ok"] for s in stormed),
                "failed": sum(s["failed"] for s in stormed),
                "error": next((s["error"] for s in stormed if s["error"]), ""),
                "back_s": back_s,
                "drop_s": max(s["drop_seconds"] for s in stormed),
                "server_settled_s": time.monotonic() - storm_started,
                "server_sockets": socket_fds(server.pid) - sockets_start,
                "rss_kib": rss_kib(server.pid),
            }
        for p in loads:
            assert p.stdin is not None
            p.stdin.write("EXIT\n")
            p.stdin.flush()
        for p in loads:
            p.wait(EXIT_TIMEOUT + 30)
    finally:
        for p in loads:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)

    active = results[0]
    still_open = sum(r["still_open"] for r in results)
    dropped = sum(r["dropped"] for r in results)
    errors = sum(r["errors"] for r in results)
    per_conn = (rss_connected - rss_start) / max(ok, 1)

    def ms(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.2f}"

    print(
        f"connect:        {ok} connected, {failed} failed in {connect_s:.1f} s"
        + (f" (first error: {connected[0]['error'] or connected[-1]['error']})" if failed else "")
    )
    print(f"server sockets: {sockets_connected} after connect, {sockets_end} at the end of the hold")
    print(
        f"server RSS:     start {mib(rss_start)}, after connect {mib(rss_connected)}, "
        f"peak {mib(rss_peak)}, end {mib(rss_end)}"
    )
    print(
        f"per connection: {per_conn:.1f} KiB (RSS after connect - start, / {ok}); "
        f"hold growth {rss_end - rss_connected:+d} KiB"
    )
    print(
        f"hold:           {hold_s:.1f} s, {still_open} connections still open, {dropped} dropped, "
        f"server CPU {cpu_hold:.1f} s ({100 * cpu_hold / max(hold_s, 1e-9):.0f} % of a core)"
    )
    print(
        f"active:         {active['active']} connections, {active['round_trips']} round trips "
        f"({active['round_trips'] / max(active['hold_seconds'], 1e-9):.0f}/s), {errors} errors"
        + (f" (first: {active['first_error']})" if errors else "")
    )
    print(
        f"latency ms:     p50 {ms(active['p50_ms'])}  p90 {ms(active['p90_ms'])}  "
        f"p99 {ms(active['p99_ms'])}  max {ms(active['max_ms'])}"
    )
    healthy = failed == 0 and dropped == 0 and errors == 0 and still_open == ok == args.connections
    if storm is not None:
        print(
            f"storm:          all {args.connections} dropped and reconnected: {storm['ok']} back, "
            f"{storm['failed']} failed, in {storm['back_s']:.1f} s (drops took {storm['drop_s']:.1f} s); "
            f"server holds {storm['server_sockets']} sockets after {storm['server_settled_s']:.1f} s, "
            f"RSS {mib(storm['rss_kib'])}" + (f" (first error: {storm['error']})" if storm["failed"] else "")
        )
        healthy = healthy and storm["failed"] == 0 and storm["ok"] == args.connections
    print("result:         " + ("OK" if healthy else "FAILED"))
    return 0 if healthy else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--active", type=int, default=100, help="connections that exchange messages")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to hold the connections")
    parser.add_argument("--procs", type=int, default=2, help="load processes")
    parser.add_argument("--interval", type=float, default=0.01, help="pause of an active connection between echoes")
    parser.add_argument("--size", type=int, default=64, help="bytes per message (at least 12)")
    parser.add_argument("--ping-interval", type=float, default=20.0, help="server keepalive pings (0: off)")
    parser.add_argument(
        "--storm", action="store_true", help="after the hold: drop every connection, time until all are back"
    )
    parser.add_argument("--role", choices=("driver", "server", "load"), default="driver", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--source", default=HOST, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "server":
        run_server(args.ping_interval)
    elif args.role == "load":
        asyncio.run(run_load(args))
    else:
        if args.size < 12:
            parser.error("--size must be at least 12")
        sys.exit(drive(args))


if __name__ == "__main__":
    main()
