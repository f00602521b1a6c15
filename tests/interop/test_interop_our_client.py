"""Our client (tornado_websocket.websocket_connect) with other projects' servers.

Each server echoes and obeys cmd:ping / cmd:close (see interop_util.py) and
reports what it saw (the client's close code and reason, the pings) in a
PeerServerLog; the test checks that and what our client saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, AsyncIterator, Optional

import pytest

import tornado_websocket

from .interop_util import (
    BIG_BINARY,
    BIG_TEXT,
    BINARY,
    CLIENT_PING,
    CLIENT_REASON,
    CLOSE_CODE,
    CMD_CLOSE,
    CMD_PING,
    MAX_SIZE,
    NODE_DIR,
    PING_REPLY,
    SERVER_PING,
    SERVER_REASON,
    STEP_TIMEOUT,
    TEXT,
    PeerServerLog,
    check_echo,
    dist_version,
    node_ws_version,
    require_module,
    require_node,
    run,
    within,
)

DIRECTION = "their_server_our_client"


# -- the servers ---------------------------------------------------------------------
#
# Each is an async context manager yielding (ws URL, PeerServerLog).


class Server:
    name = ""
    reports_pings = True  # does the server let us see the pings it received?

    def require(self) -> None:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def serve(self) -> Any:
        raise NotImplementedError


class WebsocketsServer(Server):
    name = "websockets"
    reports_pings = False  # websockets answers pings internally

    def require(self) -> None:
        require_module("websockets.asyncio.server", "websockets")

    def version(self) -> str:
        return dist_version("websockets")

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[tuple[str, PeerServerLog]]:
        from websockets.asyncio.server import serve
        from websockets.exceptions import ConnectionClosed

        log = PeerServerLog()

        async def handler(ws: Any) -> None:
            try:
                async for message in ws:
                    if message == CMD_PING:
                        waiter = await ws.ping(SERVER_PING)
                        await asyncio.wait_for(waiter, STEP_TIMEOUT)
                        await ws.send(PING_REPLY)
                    elif message == CMD_CLOSE:
                        await ws.close(CLOSE_CODE, SERVER_REASON)
                    else:
                        await ws.send(message)
            except ConnectionClosed:
                pass
            except Exception as exc:
                log.notes.append(f"handler error: {exc!r}")
            finally:
                await asyncio.wait_for(ws.wait_closed(), STEP_TIMEOUT)
                rcvd = ws.protocol.close_rcvd  # the Close frame our client sent
                log.closes.put_nowait((rcvd and rcvd.code, rcvd and rcvd.reason))

        server = await within(
            serve(handler, "127.0.0.1", 0, max_size=MAX_SIZE, ping_interval=None, close_timeout=STEP_TIMEOUT),
            "the websockets server to start",
        )
        try:
            port = server.sockets[0].getsockname()[1]
            yield f"ws://127.0.0.1:{port}/", log
        finally:
            server.close()
            await within(server.wait_closed(), "the websockets server to stop")


class AiohttpServer(Server):
    name = "aiohttp"

    def require(self) -> None:
        require_module("aiohttp.web", "aiohttp")

    def version(self) -> str:
        return dist_version("aiohttp")

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[tuple[str, PeerServerLog]]:
        from aiohttp import WSMsgType, web

        log = PeerServerLog()

        async def handler(request: web.Request) -> web.WebSocketResponse:
            # autoping off so that the pings and pongs are seen here.
            ws = web.WebSocketResponse(max_msg_size=MAX_SIZE, autoping=False, heartbeat=None)
            await ws.prepare(request)
            waiting_pong = False
            try:
                while True:
                    msg = await asyncio.wait_for(ws.receive(), STEP_TIMEOUT * 2)
                    if msg.type is WSMsgType.TEXT:
                        if msg.data == CMD_PING:
                            waiting_pong = True
                            await ws.ping(SERVER_PING)
                        elif msg.data == CMD_CLOSE:
                            await ws.close(code=CLOSE_CODE, message=SERVER_REASON.encode("utf-8"))
                        else:
                            await ws.send_str(msg.data)
                    elif msg.type is WSMsgType.BINARY:
                        await ws.send_bytes(msg.data)
                    elif msg.type is WSMsgType.PING:
                        log.pings.append(msg.data)
                        await ws.pong(msg.data)
                    elif msg.type is WSMsgType.PONG:
                        if waiting_pong and msg.data == SERVER_PING:
                            waiting_pong = False
                            await ws.send_str(PING_REPLY)
                    elif msg.type is WSMsgType.CLOSE:
                        log.closes.put_nowait((msg.data, msg.extra))
                        break
                    else:  # CLOSING, CLOSED (after our own close), ERROR
                        if msg.type is WSMsgType.ERROR:
                            log.notes.append(f"error: {ws.exception()!r}")
                        log.closes.put_nowait((ws.close_code, None))
                        break
            except Exception as exc:
                log.notes.append(f"handler error: {exc!r}")
                log.closes.put_nowait((None, repr(exc)))
            return ws

        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app, handle_signals=False)
        await within(runner.setup(), "the aiohttp app to start")
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await within(site.start(), "the aiohttp site to start")
        try:
            port = runner.addresses[0][1]
            yield f"ws://127.0.0.1:{port}/", log
        finally:
            await within(runner.cleanup(), "the aiohttp server to stop")


class AutobahnServer(Server):
    name = "autobahn"

    def require(self) -> None:
        require_module("autobahn.asyncio.websocket", "autobahn")

    def version(self) -> str:
        return dist_version("autobahn")

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[tuple[str, PeerServerLog]]:
        import txaio

        txaio.use_asyncio()
        from autobahn.asyncio.websocket import WebSocketServerFactory, WebSocketServerProtocol

        log = PeerServerLog()

        class Protocol(WebSocketServerProtocol):  # type: ignore[misc]
            waiting_pong = False

            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                if not isBinary and payload == CMD_PING.encode():
                    self.waiting_pong = True
                    self.sendPing(SERVER_PING)
                elif not isBinary and payload == CMD_CLOSE.encode():
                    self.sendClose(CLOSE_CODE, SERVER_REASON)
                else:
                    self.sendMessage(payload, isBinary)

            def onPing(self, payload: bytes) -> None:
                log.pings.append(payload)
                super().onPing(payload)  # answers with a pong

            def onPong(self, payload: bytes) -> None:
                if self.waiting_pong and payload == SERVER_PING:
                    self.waiting_pong = False
                    self.sendMessage(PING_REPLY.encode(), False)

            def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
                if not wasClean:
                    log.notes.append(f"unclean close: {reason!r}")
                log.closes.put_nowait((code, reason))

        factory = WebSocketServerFactory("ws://127.0.0.1")
        factory.protocol = Protocol
        factory.setProtocolOptions(
            maxFramePayloadSize=MAX_SIZE,
            maxMessagePayloadSize=MAX_SIZE,
            autoPingInterval=0,
            closeHandshakeTimeout=STEP_TIMEOUT,
        )
        loop = asyncio.get_running_loop()
        server = await within(loop.create_server(factory, "127.0.0.1", 0), "the autobahn server to start")
        try:
            port = server.sockets[0].getsockname()[1]
            yield f"ws://127.0.0.1:{port}/", log
        finally:
            server.close()
            await within(server.wait_closed(), "the autobahn server to stop")


class TornadoServer(Server):
    """Tornado's own tornado.websocket.WebSocketHandler."""

    name = "tornado.websocket"

    def require(self) -> None:
        require_module("tornado.websocket", "tornado")

    def version(self) -> str:
        return dist_version("tornado")

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[tuple[str, PeerServerLog]]:
        import tornado.web
        import tornado.websocket
        from tornado.httpserver import HTTPServer
        from tornado.netutil import bind_sockets

        log = PeerServerLog()

        class Handler(tornado.websocket.WebSocketHandler):
            waiting_pong = False

            def on_message(self, message: Any) -> None:
                if message == CMD_PING:
                    self.waiting_pong = True
                    self.ping(SERVER_PING)
                elif message == CMD_CLOSE:
                    self.close(CLOSE_CODE, SERVER_REASON)
                else:
                    self.write_message(message, binary=isinstance(message, bytes))

            def on_ping(self, data: bytes) -> None:
                log.pings.append(data)

            def on_pong(self, data: bytes) -> None:
                if self.waiting_pong and data == SERVER_PING:
                    self.waiting_pong = False
                    self.write_message(PING_REPLY)

            def on_close(self) -> None:
                log.closes.put_nowait((self.close_code, self.close_reason))

        app = tornado.web.Application([(r"/", Handler)], websocket_max_message_size=MAX_SIZE)
        sockets = bind_sockets(0, "127.0.0.1")
        server = HTTPServer(app)
        server.add_sockets(sockets)
        try:
            yield f"ws://127.0.0.1:{sockets[0].getsockname()[1]}/", log
        finally:
            server.stop()
            await within(server.close_all_connections(), "the tornado server to stop", 10)


class NodeWsServer(Server):
    name = "ws (Node.js)"

    def require(self) -> None:
        self.node = require_node()

    def version(self) -> str:
        return node_ws_version()

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[tuple[str, PeerServerLog]]:
        log = PeerServerLog()
        proc = await asyncio.create_subprocess_exec(
            self.node,
            str(NODE_DIR / "server.js"),
            cwd=str(NODE_DIR),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stdin is not None
        reader: Optional[asyncio.Task[None]] = None
        try:
            line = await within(proc.stdout.readline(), "the node server to print its port")
            try:
                first = json.loads(line)
                port = int(first["port"])
            except (ValueError, KeyError, TypeError):
                stderr = await within(proc.stderr.read(), "the node server's stderr") if proc.stderr else b""
                raise AssertionError(f"node server did not start: {line!r} {stderr!r}")

            async def read_events() -> None:
                assert proc.stdout is not None
                while True:
                    raw = await proc.stdout.readline()
                    if not raw:
                        return
                    event = json.loads(raw)
                    if event["event"] == "close":
                        log.closes.put_nowait((event["code"], event["reason"]))
                    elif event["event"] == "ping":
                        log.pings.append(event["data"].encode("utf-8"))
                    elif event["event"] == "error":
                        log.notes.append(event["message"])

            reader = asyncio.ensure_future(read_events())
            yield f"ws://127.0.0.1:{port}/", log
        finally:
            proc.stdin.close()  # the server exits when stdin closes
            try:
                await within(proc.wait(), "the node server to exit", 10)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await within(proc.wait(), "the killed node server", 10)
                if reader is not None:
                    await within(reader, "the node server's output to end", 10)


SERVERS: dict[str, Server] = {
    s.name: s for s in (WebsocketsServer(), AiohttpServer(), AutobahnServer(), NodeWsServer(), TornadoServer())
}

IDS = {
    "websockets": "websockets",
    "aiohttp": "aiohttp",
    "autobahn": "autobahn",
    "ws (Node.js)": "node-ws",
    "tornado.websocket": "tornado",
}

# Pairings that show a bug in tornado_websocket: {(peer, test): "BUG: ..."}.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def pairings(test: str) -> list[Any]:
    params = []
    for name in SERVERS:
        marks = [pytest.mark.interop(peer=name, direction=DIRECTION)]
        bug = KNOWN_BUGS.get((name, test))
        if bug:
            marks.append(pytest.mark.xfail(strict=True, reason=bug))
        params.append(pytest.param(name, id=IDS[name], marks=marks))
    return params


async def connect(url: str) -> tornado_websocket.WebSocketClientConnection:
    conn: tornado_websocket.WebSocketClientConnection = await within(
        tornado_websocket.websocket_connect(url, max_message_size=MAX_SIZE, connect_timeout=STEP_TIMEOUT),
        "our client's opening handshake",
    )
    return conn


# -- the tests -----------------------------------------------------------------------


@pytest.mark.parametrize("peer", pairings("exchange"))
def test_exchange_and_client_close(peer: str, record_property: Any) -> None:
    """Text, binary, 4 MiB binary and text, pings both ways, then our client closes with 4000."""
    server = SERVERS[peer]
    record_property("peer_version", server.version())
    server.require()

    async def scenario() -> None:
        async with server.serve() as (url, log):
            conn = await connect(url)
            for message in (TEXT, BINARY, BIG_BINARY, BIG_TEXT):
                await within(conn.write_message(message, binary=isinstance(message, bytes)), "sending a message")
                check_echo(message, await within(conn.read_message(), "the echo"), f"{peer} echo")
            rtt = await within(conn.ping(CLIENT_PING), "the pong to our ping")
            assert isinstance(rtt, float) and rtt >= 0, rtt
            await within(conn.write_message(CMD_PING), "sending cmd:ping")
            answer = await within(conn.read_message(), "the answer to cmd:ping")
            assert answer == PING_REPLY, f"{peer} did not get our pong: it answered {answer!r}"
            conn.close(CLOSE_CODE, CLIENT_REASON)
            await within(conn.wait_closed(), "our client to close")
            code, reason = await within(log.closes.get(), f"{peer} to report the close")
            assert (code, reason) == (CLOSE_CODE, CLIENT_REASON), (
                f"{peer} saw our close as code {code!r} reason {reason!r} (notes: {log.notes})"
            )
            if server.reports_pings:
                assert log.pings == [CLIENT_PING], f"{peer} saw pings {log.pings!r}"
            # The server replied to our Close (with any code: aiohttp and autobahn say 1000, others echo 4000).
            assert conn.close_code is not None, f"our client got no close reply from {peer}"
            assert not log.notes, log.notes

    run(scenario())


@pytest.mark.parametrize("peer", pairings("server_close"))
def test_server_close(peer: str, record_property: Any) -> None:
    """The peer server closes with 4000 and a reason; our client must see both."""
    server = SERVERS[peer]
    record_property("peer_version", server.version())
    server.require()

    async def scenario() -> None:
        async with server.serve() as (url, log):
            conn = await connect(url)
            await within(conn.write_message(CMD_CLOSE), "sending cmd:close")
            message = await within(conn.read_message(), "the end of the messages")
            assert message is None, f"got {message!r} instead of the close"
            await within(conn.wait_closed(), "our client to close")
            assert (conn.close_code, conn.close_reason) == (CLOSE_CODE, SERVER_REASON), (
                f"our client saw {peer}'s close as code {conn.close_code!r} reason {conn.close_reason!r}"
            )
            code, reason = await within(log.closes.get(), f"{peer} to report the close")
            print(f"{peer} saw our close reply as code {code!r} reason {reason!r}")
            assert code is not None, f"{peer} got no close reply from our client (notes: {log.notes})"

    run(scenario())
