"""Draining: while shutdown() runs, HealthHandler answers 503, admit() refuses upgrades with 503 and
Retry-After, and open connections get 1001 with the configured reason; all over real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import pytest_asyncio
import tornado.httpclient
import tornado.web
from conftest import bounded
from test_limits import AdmittedEcho, handler_admits

from tornado_websocket import shutdown
from tornado_websocket.client import websocket_connect
from tornado_websocket.connection import OPEN_CONNECTIONS
from tornado_websocket.errors import WebSocketHandshakeError
from tornado_websocket.handler import WebSocketHandler
from tornado_websocket.health import HealthHandler
from tornado_websocket.metrics import STATS
from tornado_websocket.shutdown import is_draining


@pytest_asyncio.fixture
async def own_connections_only() -> Any:
    """shutdown() acts on every open connection of the loop: set aside those other tests left behind."""
    loop = asyncio.get_running_loop()
    foreign = {c for c in OPEN_CONNECTIONS if c.event_loop is not loop or c.closed}
    OPEN_CONNECTIONS.difference_update(foreign)
    STATS.reset()
    try:
        yield
    finally:
        OPEN_CONNECTIONS.update(foreign)
        STATS.reset()


class PlainHandler(WebSocketHandler):
    pass


def app() -> tornado.web.Application:
    return tornado.web.Application([(r"/ws", AdmittedEcho), (r"/healthz", HealthHandler)])


async def health(port: int) -> tornado.httpclient.HTTPResponse:
    client = tornado.httpclient.AsyncHTTPClient()
    response = await bounded(client.fetch(f"http://127.0.0.1:{port}/healthz", raise_error=False))
    return response


async def upgrade_refusal(port: int) -> WebSocketHandshakeError:
    with pytest.raises(WebSocketHandshakeError) as info:
        await bounded(websocket_connect(f"ws://127.0.0.1:{port}/ws", connect_timeout=5))
    return info.value


@pytest.mark.asyncio
async def test_health_and_upgrades_while_shutdown_waits_for_the_close_handshakes(
    harness: Any, own_connections_only: None
) -> None:
    public = harness.serve(app())
    public_server = harness.servers[-1]
    admin = harness.serve(app())  # a second listener (an admin port) that is not shut down
    assert not is_draining()
    assert (await health(admin)).code == 200
    raw = await harness.raw_ws("/ws", port=public)
    assert (await raw.read_message())[1].startswith(b"remote_ip=")

    task = asyncio.ensure_future(shutdown(public_server, reason="deploy 42", retry_after=7, timeout=10))
    # The raw client does not answer the Close yet, so shutdown() is still waiting: the process drains.
    close = await raw.read_close()
    assert (close.close_code, close.close_reason) == (1001, b"deploy 42")
    assert is_draining()
    answer = await health(admin)
    assert (answer.code, answer.body, answer.headers["Retry-After"]) == (503, b"draining\n", "7")
    error = await upgrade_refusal(admin)
    assert (error.code, error.headers["Retry-After"]) == (503, "7")
    assert b"shutting down" in error.body
    assert STATS.handshakes_refused == {"draining": 1}

    await raw.send_close(1001)
    await raw.expect_eof()
    await raw.close()  # the server waits for our FIN after its own
    assert await bounded(task) == 1
    assert not is_draining()
    assert (await health(admin)).code == 200


@pytest.mark.asyncio
async def test_drain_delay_keeps_serving_while_health_checks_fail(harness: Any, own_connections_only: None) -> None:
    port = harness.serve(app())
    server = harness.servers[-1]
    client = await bounded(websocket_connect(f"ws://127.0.0.1:{port}/ws"))
    assert (await bounded(client.read_message())).startswith("remote_ip=")

    task = asyncio.ensure_future(shutdown(server, drain_delay=3.0, timeout=5))
    await asyncio.sleep(0)  # let shutdown() start
    assert is_draining()
    # Within the delay the same listener still answers: the health check says 503, upgrades are refused ...
    assert (await health(port)).code == 503
    assert (await upgrade_refusal(port)).code == 503
    # ... and the open connection still works.
    await bounded(client.write_message("still here"))
    assert await bounded(client.read_message()) == "still here"
    assert not task.done()
    assert await bounded(task, 10) == 1
    assert await bounded(client.read_message()) is None
    assert client.close_code == 1001
    assert not is_draining()


@pytest.mark.asyncio
async def test_health_handler_head(harness: Any) -> None:
    port = harness.serve(app())
    client = tornado.httpclient.AsyncHTTPClient()
    response = await bounded(client.fetch(f"http://127.0.0.1:{port}/healthz", method="HEAD"))
    assert response.code == 200


@handler_admits
@pytest.mark.asyncio
async def test_a_plain_handler_refuses_upgrades_while_draining(harness: Any, own_connections_only: None) -> None:
    public = harness.serve([(r"/ws", PlainHandler)])
    admin = harness.serve([(r"/ws", PlainHandler)])
    raw = await harness.raw_ws("/ws", port=public)
    task = asyncio.ensure_future(shutdown(harness.servers[0], retry_after=3, timeout=10))
    assert (await raw.read_close()).close_code == 1001
    error = await upgrade_refusal(admin)
    assert (error.code, error.headers["Retry-After"]) == (503, "3")
    await raw.send_close(1001)
    await raw.expect_eof()
    await raw.close()
    assert await bounded(task) == 1
