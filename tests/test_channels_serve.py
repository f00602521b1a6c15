"""``serve(app, port, processes=N)``: N real worker processes on one port sharing channels through Redis.

Runs ``channels_server.py --processes 2`` (which calls ``tornado_websocket.serve``)
against a real ``redis-server``; connections made one after another land on
both workers (SO_REUSEPORT), a message published through one worker reaches
subscribers on both, a killed worker is started again, and SIGTERM to the
parent stops every worker. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

import pytest
from redis_server import RedisServer, find_redis_server, free_port
from tornado.httpclient import AsyncHTTPClient

from tornado_websocket.channels_client import ChannelMessage, ChannelsClient

pytestmark = pytest.mark.asyncio

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "channels_server.py")


@pytest.fixture
def redis_server():
    executable = find_redis_server()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (required when CI is set)")
        pytest.skip("redis-server is not installed")
    server = RedisServer(executable)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def read_worker(process: asyncio.subprocess.Process) -> tuple[int, int]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 20)
    assert line.startswith(b"WORKER "), line
    assert len(line.split()) == 3, line
    _, task_id, pid = line.split()
    return int(task_id), int(pid)


async def test_two_worker_processes_share_the_port_and_the_channels(redis_server):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    process = await asyncio.create_subprocess_exec(
        sys.executable, SERVER, "--redis", redis_server.url, "--port", str(port), "--processes", "2",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    clients: list[ChannelsClient] = []
    try:
        workers = dict([await read_worker(process), await read_worker(process)])
        assert sorted(workers) == [0, 1] and len(set(workers.values())) == 2

        http = AsyncHTTPClient(force_instance=True)
        seen: set[int] = set()
        for _ in range(40):  # a new connection each time (no keep-alive across force_instance requests)
            response = await asyncio.wait_for(
                http.fetch(f"http://127.0.0.1:{port}/pid", headers={"Connection": "close"}), 10
            )
            seen.add(int(response.body))
            if len(seen) == 2:
                break
        http.close()
        assert seen == set(workers.values()), "connections did not reach both workers"

        url = f"ws://127.0.0.1:{port}/channels"
        for _ in range(8):
            client = ChannelsClient(url)
            clients.append(client)
            await client.connect(10)
            await asyncio.wait_for(client.subscribe("room"), 10)
        offset = await clients[0].publish("room", "hello from one worker")
        for client in clients:
            event = await client.next_event(10)
            assert isinstance(event, ChannelMessage) and (event.data, event.offset) == ("hello from one worker", offset)

        # A worker killed from outside is started again, with the same task id.
        os.kill(workers[1], signal.SIGKILL)
        task_id, pid = await read_worker(process)
        assert task_id == 1 and pid != workers[1]
        workers[1] = pid

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0

        async def gone() -> None:
            while any(alive(pid) for pid in workers.values()):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(gone(), 10)
    finally:
        for client in clients:
            await client.close()
        if process.returncode is None:
            process.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(process.wait(), 5)
        for pid in workers.values() if "workers" in locals() else ():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_one_process_serves_in_the_foreground_and_stops_on_sigterm():
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    process = await asyncio.create_subprocess_exec(
        sys.executable, SERVER, "--port", str(port), "--processes", "1",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        task_id, pid = await read_worker(process)
        assert (task_id, pid) == (0, process.pid)  # no fork with one process
        client = ChannelsClient(f"ws://127.0.0.1:{port}/channels")
        await client.connect(10)
        await asyncio.wait_for(client.subscribe("room"), 10)
        await client.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), 5)


async def test_serve_checks_its_arguments():
    import tornado.web

    from tornado_websocket import serve

    with pytest.raises(ValueError, match="processes"):
        serve(tornado.web.Application([]), 0, processes=0)
