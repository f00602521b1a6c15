"""The echo demo as a user runs it: a real process, the seed handler, the exact echo, and SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

import tornado_websocket

DEMO = Path(__file__).resolve().parents[1] / "demos" / "echo.py"
TIMEOUT = 10.0


def free_port() -> int:
    sock, port = bind_unused_port()
    sock.close()
    return port


@pytest.mark.asyncio
async def test_echo_demo_serves_and_shuts_down_with_1001_on_sigterm() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DEMO),
        "--port",
        str(port),
        "--address",
        "127.0.0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        banner = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)  # printed once listening
        assert b"Echo demo on" in banner
        seed = await asyncio.wait_for(tornado_websocket.websocket_connect(f"ws://127.0.0.1:{port}/websocket"), TIMEOUT)
        await seed.write_message("hello")
        assert await asyncio.wait_for(seed.read_message(), TIMEOUT) == "You said: hello"
        exact = await asyncio.wait_for(
            tornado_websocket.websocket_connect(f"ws://127.0.0.1:{port}/", compression_options={}), TIMEOUT
        )
        assert "permessage-deflate" in exact.headers.get("Sec-WebSocket-Extensions", "")
        await exact.write_message(b"\x00\x01", binary=True)
        assert await asyncio.wait_for(exact.read_message(), TIMEOUT) == b"\x00\x01"

        # /metrics counts what just happened; /health says the process takes traffic.
        http = AsyncHTTPClient()
        metrics = (await asyncio.wait_for(http.fetch(f"http://127.0.0.1:{port}/metrics"), TIMEOUT)).body.decode()
        values = {line.split()[0]: float(line.split()[-1]) for line in metrics.splitlines() if line[:1] != "#"}
        assert values["tornado_websocket_open_connections"] == 2
        assert values["tornado_websocket_messages_received_total"] == 2
        assert values["tornado_websocket_messages_sent_total"] == 2
        health = await asyncio.wait_for(http.fetch(f"http://127.0.0.1:{port}/health"), TIMEOUT)
        assert health.code == 200

        proc.send_signal(signal.SIGTERM)
        for conn in (seed, exact):
            assert await asyncio.wait_for(conn.read_message(), TIMEOUT) is None
            assert conn.close_code == 1001
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
        output = await asyncio.wait_for(proc.stdout.read(), TIMEOUT)
        assert b"closed 2 WebSocket connection(s) with 1001" in output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["push", "pull", "async-for"])
async def test_echo_demo_on_uvloop_in_each_way_of_receiving(mode: str) -> None:
    pytest.importorskip("uvloop")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DEMO),
        "--port",
        str(port),
        "--address",
        "127.0.0.1",
        "--loop",
        "uvloop",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert b"Echo demo on" in await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
        conn = await asyncio.wait_for(
            tornado_websocket.websocket_connect(f"ws://127.0.0.1:{port}/echo/{mode}"), TIMEOUT
        )
        for i in range(50):
            await conn.write_message(f"m{i}")
        assert [await asyncio.wait_for(conn.read_message(), TIMEOUT) for _ in range(50)] == [f"m{i}" for i in range(50)]
        conn.close()
        await asyncio.wait_for(conn.wait_closed(), TIMEOUT)
        assert conn.close_code == 1000
    finally:
        proc.kill()
        await proc.wait()
