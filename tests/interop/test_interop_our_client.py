"""Our client (tornado_websocket.websocket_connect) with other projects' servers.

Each server echoes and obeys cmd:ping / cmd:close (see interop_util.py) and
reports what it saw (the client's close code and reason, the pings) in a
PeerServerLog; the test checks that and what our client saw.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator

import pytest

from .interop_util import (
    CLIENT_PING,
    CLOSE_CODE,
    CMD_CLOSE,
    CMD_PING,
    MAX_SIZE,
    MESSAGES,
    PING_REPLY,
    SERVER_PING,
    SERVER_REASON,
    STEP_TIMEOUT,
    AiohttpServer,
    NodeWsServer,
    PeerServerLog,
    PythonPeer,
    Server,
    WebsocketsServer,
    close_from_our_client,
    close_from_peer_server,
    echo_through,
    listening,
    our_client,
    pairings,
    run,
    tornado_listening,
    within,
)

DIRECTION = "their_server_our_client"


# -- the servers (those of websockets, aiohttp and Node are in interop_util.py) -----------


class AutobahnServer(Server, PythonPeer):
    peer = id = dist = "autobahn"
    module = "autobahn.asyncio.websocket"

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[tuple[int, PeerServerLog]]:
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
        async with listening(loop.create_server(factory, "127.0.0.1", 0), "the autobahn server") as port:
            yield port, log


class TornadoServer(Server, PythonPeer):
    """Tornado's own tornado.websocket.WebSocketHandler."""

    peer = "tornado.websocket"
    id = "tornado"
    module = "tornado.websocket"
    dist = "tornado"

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[tuple[int, PeerServerLog]]:
        import tornado.web
        import tornado.websocket

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

        app = tornado.web.Application([(r"/ws", Handler)], websocket_max_message_size=MAX_SIZE)
        async with tornado_listening(app, "the tornado server") as port:
            yield port, log


SERVERS: dict[str, Server] = {
    s.id: s for s in (WebsocketsServer(), AiohttpServer(), AutobahnServer(), NodeWsServer(), TornadoServer())
}

# Pairings that show a bug in tornado_websocket: {test: {server id: "BUG: ..."}}, test "exchange" or "server_close".
KNOWN_BUGS: dict[str, dict[str, str]] = {}


# -- the tests -----------------------------------------------------------------------


@pytest.mark.parametrize("key", pairings(SERVERS.values(), DIRECTION, KNOWN_BUGS.get("exchange", {})))
def test_exchange_and_client_close(key: str, record_property: Any) -> None:
    """Text, binary, 4 MiB binary and text, pings both ways, then our client closes with 4000."""
    server = SERVERS[key].start(record_property)
    peer = server.peer

    async def scenario() -> None:
        async with server.serve() as (port, log):
            conn = await our_client(port)
            await echo_through(conn, MESSAGES, peer)
            rtt = await within(conn.ping(CLIENT_PING), "the pong to our ping")
            assert isinstance(rtt, float) and rtt >= 0, rtt
            await within(conn.write_message(CMD_PING), "sending cmd:ping")
            answer = await within(conn.read_message(), "the answer to cmd:ping")
            assert answer == PING_REPLY, f"{peer} did not get our pong: it answered {answer!r}"
            await close_from_our_client(conn, log, peer)
            if server.reports_pings:
                assert log.pings == [CLIENT_PING], f"{peer} saw pings {log.pings!r}"

    run(scenario())


@pytest.mark.parametrize("key", pairings(SERVERS.values(), DIRECTION, KNOWN_BUGS.get("server_close", {})))
def test_server_close(key: str, record_property: Any) -> None:
    """The peer server closes with 4000 and a reason; our client must see both."""
    server = SERVERS[key].start(record_property)

    async def scenario() -> None:
        async with server.serve() as (port, log):
            conn = await our_client(port)
            await close_from_peer_server(conn, log, server.peer)

    run(scenario())
