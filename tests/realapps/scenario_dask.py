"""dask.distributed over ws://: a Scheduler, a Worker and a Client, all three talking WebSocket.

distributed's ws:// comm (``distributed/comm/ws.py``) is a ``WebSocketHandler``
subclass on the listening side and ``websocket_connect`` on the connecting
side. The scenario computes on the worker, moves a 12 MB array between worker
and client (sharded into several WebSocket messages), and reports what came back.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from switch import install_from_argv  # noqa: E402  (must run before the application is imported)

websocket, args = install_from_argv()

import dask  # noqa: E402
from distributed import Client, Scheduler, Worker  # noqa: E402
from distributed.comm import ws as distributed_ws  # noqa: E402
from scenario import run  # noqa: E402


def square(x: int) -> int:
    return x * x


async def main() -> dict[str, Any]:
    with dask.config.set({"distributed.comm.timeouts.connect": "10s", "distributed.scheduler.work-stealing": False}):
        async with Scheduler(protocol="ws://", host="127.0.0.1", port=0, dashboard=False) as scheduler:
            async with Worker(scheduler.address, host="127.0.0.1", nthreads=1, protocol="ws://") as worker:
                async with Client(scheduler.address, asynchronous=True) as client:
                    squares = await client.gather(client.map(square, range(20)))
                    payload = bytes(range(256)) * (12 * 4096)  # 12 MiB: several shards
                    [remote] = await client.scatter([payload], workers=[worker.address])
                    length = await client.submit(len, remote)
                    back = await client.gather(remote)
                    workers_seen = sorted(scheduler.workers)
    return {
        "websocket_module": websocket.__name__,
        "handler_module": distributed_ws.WebSocketHandler.__module__,
        "scheduler_address": scheduler.address,
        "worker_address": worker.address,
        "workers_seen": workers_seen,
        "squares": squares,
        "length": length,
        "roundtrip_equal": back == payload,
    }


run(main, args.timeout)
