"""The cost of recovery: N ChannelsClient subscribers come back and each recovers M messages it missed.

::

    PYTHONPATH=. python bench/channels_recovery.py                     # 1,000 clients, 100 missed, in-process hub
    PYTHONPATH=. python bench/channels_recovery.py --backend redis     # the same through a real redis-server
    PYTHONPATH=. python bench/channels_recovery.py --clients 100 --repeat 1   # a smoke run

A ChannelsHandler server runs in its own process (this script with
``--serve``). Each repetition: N ``ChannelsClient`` subscribe to one
channel, remember their (epoch, offset) and disconnect; a publisher
publishes M messages (acknowledged); then N clients reconnect at once, each
subscribing with its offset and epoch, and the clock runs until every one of
them has received all M messages (checked: each once, in order,
``recovered`` true). Printed: the wall time for all N (median over the
repetitions), per-client time to full recovery (p50, p99), and recovered
messages a second. Counts and time are bounded (``--timeout``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

CHANNEL = "bench"


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the server process ----------------------------------------------------------------


async def serve(redis_url: Optional[str]) -> None:
    import tornado.httpserver
    import tornado.netutil
    import tornado.web

    from tornado_websocket import ChannelsHandler, Hub

    if redis_url:
        from tornado_websocket.channels_redis import RedisBackend

        hub = Hub(RedisBackend(redis_url))
    else:
        hub = Hub()
    options = {"hub": hub, "publish_rate": 1e6, "publish_burst": 10**6}
    app = tornado.web.Application([(r"/channels", ChannelsHandler, options)])
    server = tornado.httpserver.HTTPServer(app)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1", backlog=4096)
    server.add_sockets(sockets)
    os.write(1, f"PORT {sockets[0].getsockname()[1]}\n".encode())
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)  # until the parent closes stdin


# -- the load ------------------------------------------------------------------------------


async def connect_all(url: str, count: int) -> list[Any]:
    from tornado_websocket.channels_client import ChannelsClient

    clients = [ChannelsClient(url, reconnect_min=0.05, reconnect_max=1.0, connect_timeout=30) for _ in range(count)]

    async def one(client: Any) -> None:
        await client.connect(60)
        await client.subscribe(CHANNEL)

    await asyncio.gather(*(one(client) for client in clients))
    return clients


def cpu_seconds(pid: Optional[int] = None) -> float:
    """User + system CPU seconds of this process (or of ``pid``, from /proc)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_round(url: str, clients_n: int, missed: int, timeout: float, server_pid: int) -> dict[str, float]:
    from tornado_websocket.channels_client import ChannelMessage, ChannelsClient

    first = await connect_all(url, clients_n)
    publisher = ChannelsClient(url)
    await publisher.connect(30)
    await publisher.publish(CHANNEL, "warm-up")
    for client in first:
        event = await client.next_event(timeout)
        assert isinstance(event, ChannelMessage)
    positions: list[tuple[str, int]] = []
    for client in first:
        epoch, offset = client.position(CHANNEL)
        assert epoch is not None and offset is not None
        positions.append((epoch, offset))
        await client.close()
    start_offset = positions[0][1]
    for i in range(missed):
        await publisher.publish(CHANNEL, {"n": i})

    from tornado_websocket.channels_client import ChannelsClient as Client

    done_at: list[float] = []
    second = [Client(url, reconnect_min=0.05, reconnect_max=1.0, connect_timeout=30) for _ in range(clients_n)]
    started = time.perf_counter()
    cpu_client, cpu_server = cpu_seconds(), cpu_seconds(server_pid)

    async def recover(i: int) -> None:
        client = second[i]
        epoch, offset = positions[i]
        await client.connect(60)
        head = await client.subscribe(CHANNEL, since=offset, epoch=epoch)
        assert head["recovered"], head
        for n in range(missed):
            event = await client.next_event(timeout)
            assert isinstance(event, ChannelMessage) and event.offset == start_offset + 1 + n, event
        done_at.append(time.perf_counter() - started)

    await asyncio.wait_for(asyncio.gather(*(recover(i) for i in range(clients_n))), timeout)
    total = time.perf_counter() - started
    cpu_client, cpu_server = cpu_seconds() - cpu_client, cpu_seconds(server_pid) - cpu_server
    for client in [*second, publisher]:
        await client.close()
    done_at.sort()
    return {
        "total_s": total,
        "client_p50_s": done_at[len(done_at) // 2],
        "client_p99_s": done_at[min(len(done_at) - 1, int(len(done_at) * 0.99))],
        "recovered_msgs_per_s": clients_n * missed / total,
        "server_cpu_s": cpu_server,
        "clients_cpu_s": cpu_client,
    }


def start_redis() -> tuple[subprocess.Popen[bytes], str, str]:
    executable = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench_redis_")
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, f"redis://127.0.0.1:{port}/0", workdir
        except OSError:
            time.sleep(0.05)  # polls readiness (bounded)
    process.kill()
    raise RuntimeError("redis-server did not start")


async def main(args: argparse.Namespace) -> None:
    redis: Optional[tuple[subprocess.Popen[bytes], str, str]] = start_redis() if args.backend == "redis" else None
    command = [sys.executable, os.path.abspath(__file__), "--serve"]
    if redis:
        command += ["--redis-url", redis[1]]
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith(b"PORT "), line
        url = f"ws://127.0.0.1:{int(line.split()[1])}/channels"
        rounds = []
        for i in range(args.repeat):
            result = await one_round(url, args.clients, args.missed, args.timeout, server.pid)
            print(f"round {i + 1}: " + ", ".join(f"{k}={v:.3f}" for k, v in result.items()), flush=True)
            rounds.append(result)
        summary = {
            "backend": args.backend,
            "clients": args.clients,
            "missed_each": args.missed,
            "repeat": args.repeat,
            **{f"median_{k}": statistics.median(r[k] for r in rounds) for k in rounds[0]},
            "rounds": rounds,
        }
        print(json.dumps(summary, indent=2))
        if args.output:
            with open(args.output, "w") as f:
                json.dump(summary, f, indent=2)
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        if redis:
            redis[0].kill()
            redis[0].wait(5)
            shutil.rmtree(redis[2], ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--missed", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", choices=("memory", "redis"), default="memory")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--output")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    raise_fd_limit()
    if arguments.serve:
        asyncio.run(serve(arguments.redis_url))
    else:
        asyncio.run(main(arguments))
