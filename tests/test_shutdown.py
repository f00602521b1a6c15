"""Draining: while shutdown() runs, HealthHandler answers 503, admit() refuses upgrades with 503 and
Retry-After, and open connections get 1001 with the configured reason; all over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import test_nginx
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


# -- nginx in front of a draining process ------------------------------------------------------

DEPLOYMENT_DOC = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"
NEXT_UPSTREAM_LINES = ("proxy_next_upstream error timeout http_503;", "proxy_next_upstream_tries 2;")

NGINX_SITE = """\
map $http_upgrade $connection_upgrade {{
    default upgrade;
    ''      close;
}}
upstream tornado_websocket {{
    server 127.0.0.1:{draining};
    server 127.0.0.1:{healthy};
}}
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://tornado_websocket;
        proxy_http_version 1.1;
        proxy_set_header Upgrade    $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_set_header Host       $http_host;
{extra}
    }}
}}
"""


class AnswersAsDraining(tornado.web.RequestHandler):
    """What a draining process answers to an upgrade (limits.admit's refusal), for a process that is not."""

    hits = 0

    def get(self) -> None:
        AnswersAsDraining.hits += 1
        self.set_status(503)
        self.set_header("Retry-After", "5")
        self.finish("the server is shutting down\n")


@contextlib.contextmanager
def nginx_in_front(directory: Path, draining: int, healthy: int, extra_lines: tuple[str, ...]) -> Iterator[int]:
    nginx = test_nginx.find_nginx()
    port = test_nginx.free_port()
    extra = "\n".join(" " * 8 + line for line in extra_lines)
    (directory / "tornado_websocket.conf").write_text(
        NGINX_SITE.format(draining=draining, healthy=healthy, port=port, extra=extra)
    )
    main = directory / "nginx.conf"
    main.write_text(test_nginx.MAIN_CONF.format(prefix=directory))
    service = test_nginx.Service(
        "nginx", [nginx, "-p", str(directory), "-c", str(main)], directory / "nginx.out", [port], signal.SIGQUIT
    )
    service.start()
    try:
        yield port
    finally:
        service.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("next_upstream", [True, False], ids=["proxy_next_upstream", "default"])
async def test_nginx_sends_upgrades_refused_while_draining_to_another_process(
    harness: Any, tmp_path: Path, next_upstream: bool
) -> None:
    doc = DEPLOYMENT_DOC.read_text()
    assert all(line in doc for line in NEXT_UPSTREAM_LINES), "docs/deployment.md shows the lines this test runs"
    AnswersAsDraining.hits = 0
    draining = harness.serve([(r"/ws", AnswersAsDraining)])
    healthy = harness.serve([(r"/ws", AdmittedEcho)])
    extra = NEXT_UPSTREAM_LINES if next_upstream else ()
    with nginx_in_front(tmp_path, draining, healthy, extra) as port:
        service_ready = asyncio.get_running_loop().run_in_executor(None, wait_listening, port)
        await bounded(service_ready, test_nginx.STARTUP_TIMEOUT)
        outcomes = []
        for _ in range(4):
            try:
                client = await bounded(websocket_connect(f"ws://127.0.0.1:{port}/ws", connect_timeout=5))
            except WebSocketHandshakeError as exc:
                outcomes.append(exc.code)
                continue
            assert (await bounded(client.read_message())).startswith("remote_ip=")
            outcomes.append(101)
            client.close()
            await bounded(client.wait_closed())
    assert AnswersAsDraining.hits >= 1  # nginx did try the draining process
    if next_upstream:
        assert outcomes == [101] * 4
    else:
        assert 503 in outcomes


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + test_nginx.STARTUP_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # readiness poll of an outside process, bounded


# -- HAProxy in front of a draining process -----------------------------------------------------

HAPROXY_SERVERS = (
    "server ws1 127.0.0.1:8001 check inter 2s fall 2 rise 3",
    "server ws2 127.0.0.1:8002 check inter 2s fall 2 rise 3",
)


def haproxy_config(directory: Path, port: int, draining: int, healthy: int, checks: bool) -> str:
    """The HAProxy block of docs/deployment.md with this test's ports (and quicker checks), plus what
    a whole file needs around it: ``global`` with a stats socket, and a ``frontend``."""
    doc = DEPLOYMENT_DOC.read_text()
    block = doc.split("```haproxy\n", 1)[1].split("```", 1)[0]
    for line, backend in zip(HAPROXY_SERVERS, (draining, healthy)):
        assert block.count(line) == 1, f"docs/deployment.md's HAProxy example should contain {line!r}"
        name = line.split()[1]
        replacement = f"server {name} 127.0.0.1:{backend}" + (" check inter 100ms fall 1 rise 1" if checks else "")
        block = block.replace(line, replacement)
    head = f"global\n    stats socket {directory}/haproxy.sock level admin\n\n"
    tail = f"\nfrontend websocket\n    bind 127.0.0.1:{port}\n    default_backend tornado_websocket\n"
    return head + block + tail


class DrainingHealth(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_status(503)
        self.finish("draining\n")


async def server_states(directory: Path) -> dict[str, str]:
    """HAProxy's view of its servers ({name: "UP"/"DOWN"...}), through its stats socket."""
    reader, writer = await bounded(asyncio.open_unix_connection(str(directory / "haproxy.sock")))
    writer.write(b"show stat\n")
    data = await bounded(reader.read())
    writer.close()
    states = {}
    for row in data.decode().splitlines():
        fields = row.split(",")
        if len(fields) > 17 and fields[0] == "tornado_websocket" and fields[1] not in ("BACKEND",):
            states[fields[1]] = fields[17]
    return states


@contextlib.contextmanager
def haproxy_running(directory: Path, config: str, port: int) -> Iterator[None]:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.access(haproxy, os.X_OK):
        pytest.skip("haproxy is not installed (scripts/ci/ops.sh installs it)")
    (directory / "haproxy.cfg").write_text(config)
    service = test_nginx.Service(
        "haproxy",
        [haproxy, "-db", "-f", str(directory / "haproxy.cfg")],
        directory / "haproxy.out",
        [port],
        signal.SIGUSR1,
    )
    service.start()
    try:
        yield
    finally:
        service.stop()


async def connect_through(port: int, n: int) -> list[int]:
    outcomes = []
    for _ in range(n):
        try:
            client = await bounded(websocket_connect(f"ws://127.0.0.1:{port}/ws", connect_timeout=5))
        except WebSocketHandshakeError as exc:
            outcomes.append(exc.code)
            continue
        assert (await bounded(client.read_message())).startswith("remote_ip=")
        outcomes.append(101)
        client.close()
        await bounded(client.wait_closed())
    return outcomes


@pytest.mark.asyncio
async def test_haproxy_retries_an_upgrade_refused_while_draining(harness: Any, tmp_path: Path) -> None:
    AnswersAsDraining.hits = 0
    draining = harness.serve([(r"/ws", AnswersAsDraining)])
    healthy = harness.serve([(r"/ws", AdmittedEcho)])
    port = test_nginx.free_port()
    with haproxy_running(tmp_path, haproxy_config(tmp_path, port, draining, healthy, checks=False), port):
        await bounded(asyncio.get_running_loop().run_in_executor(None, wait_listening, port), 30)
        outcomes = await connect_through(port, 4)
    assert outcomes == [101] * 4
    assert AnswersAsDraining.hits >= 1  # HAProxy tried the draining process, then another


@pytest.mark.asyncio
async def test_haproxy_health_check_takes_a_draining_process_out(harness: Any, tmp_path: Path) -> None:
    AnswersAsDraining.hits = 0
    draining = harness.serve([(r"/ws", AnswersAsDraining), (r"/healthz", DrainingHealth)])
    healthy = harness.serve([(r"/ws", AdmittedEcho), (r"/healthz", HealthHandler)])
    port = test_nginx.free_port()
    with haproxy_running(tmp_path, haproxy_config(tmp_path, port, draining, healthy, checks=True), port):
        await bounded(asyncio.get_running_loop().run_in_executor(None, wait_listening, port), 30)

        async def until_marked_down() -> None:
            states: dict[str, str] = {}
            while states != {"ws1": "DOWN", "ws2": "UP"}:
                await asyncio.sleep(0.05)  # polls HAProxy's state, bounded below
                with contextlib.suppress(OSError):  # the stats socket may come after the port
                    states = await server_states(tmp_path)

        await bounded(until_marked_down(), 10)
        outcomes = await connect_through(port, 4)
    assert outcomes == [101] * 4
    assert AnswersAsDraining.hits == 0  # once down, it is not even tried
