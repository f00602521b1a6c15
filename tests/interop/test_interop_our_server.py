"""Our server (tornado_websocket.WebSocketHandler) with other projects' clients.

Each client runs the script described in interop_util.py against our
RecordingHandler; the test then checks both what the client saw and what our
handler recorded (messages, pings, pongs, close code and reason).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from .interop_util import (
    CLIENT_PING,
    CLIENT_REASON,
    CLOSE_CODE,
    CMD_CLOSE,
    CMD_PING,
    MAX_SIZE,
    MESSAGES,
    PING_REPLY,
    SERVER_PING,
    SERVER_REASON,
    STEP_TIMEOUT,
    TEXT,
    ChromiumClient,
    Client,
    Endpoint,
    FirefoxClient,
    NodeWsClient,
    PythonPeer,
    Report,
    WebsocketsClientBase,
    against_our_server,
    check_close_report,
    check_server_record_after_exchange,
    describe,
    echo_field,
    pairings,
    run,
    within,
)

DIRECTION = "our_server_their_client"


def _echo_fields(text: Any, binary: Any, big_binary: Any, big_text: Any) -> Report:
    """Normalise what a Python client got back for the four echoed messages."""
    report: Report = {"text": text if isinstance(text, str) else describe(text)}
    for (key, sent), got in zip(MESSAGES[1:], (binary, big_binary, big_text)):
        echo_field(report, key, sent, got)
    return report


# -- the clients (those of Node and Chromium are in interop_util.py) -----------------


class WebsocketsClient(WebsocketsClientBase):
    async def exchange(self, target: Endpoint) -> Report:
        async with self.connect(target.ws_url) as ws:
            got = []
            for _, message in MESSAGES:
                await within(ws.send(message), "sending a message")
                got.append(await within(ws.recv(), f"the echo of {describe(message)}"))
            report = _echo_fields(*got)
            pong_waiter = await within(ws.ping(CLIENT_PING), "sending the ping")
            await within(pong_waiter, "the pong")  # websockets matches it by payload
            report["pong"] = CLIENT_PING.decode()
            await within(ws.send(CMD_PING), "sending cmd:ping")
            report["server_ping"] = await within(ws.recv(), "the answer to cmd:ping")
            await within(ws.close(CLOSE_CODE, CLIENT_REASON), "the close handshake")
            report["close"] = self.close_frame(ws)
            return report

    async def server_close(self, target: Endpoint) -> Report:
        async with self.connect(target.ws_url) as ws:
            await within(ws.send(CMD_CLOSE), "sending cmd:close")
            report = await self.await_server_close(ws)
            return report.get("close", report)


class AiohttpClient(Client, PythonPeer):
    peer = id = module = dist = "aiohttp"

    async def _receive(self, ws: Any, what: str, pings: list[bytes]) -> Any:
        """The next message; pings are answered (autoping is off, to see the pongs)."""
        import aiohttp

        while True:
            msg = await within(ws.receive(), what)
            if msg.type is aiohttp.WSMsgType.PING:
                pings.append(msg.data)
                await within(ws.pong(msg.data), "sending a pong")
                continue
            return msg

    async def exchange(self, target: Endpoint) -> Report:
        import aiohttp

        pings: list[bytes] = []
        async with aiohttp.ClientSession() as session:
            ws = await within(
                session.ws_connect(target.ws_url, max_msg_size=MAX_SIZE, autoping=False, heartbeat=None),
                "the opening handshake",
            )
            try:
                got = []
                for _, message in MESSAGES:
                    if isinstance(message, str):
                        await within(ws.send_str(message), "sending text")
                    else:
                        await within(ws.send_bytes(message), "sending binary")
                    msg = await self._receive(ws, f"the echo of {describe(message)}", pings)
                    got.append(msg.data if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY) else msg)
                report = _echo_fields(*got)
                await within(ws.ping(CLIENT_PING), "sending the ping")
                msg = await self._receive(ws, "the pong", pings)
                report["pong"] = msg.data.decode() if msg.type is aiohttp.WSMsgType.PONG else repr(msg)
                await within(ws.send_str(CMD_PING), "sending cmd:ping")
                msg = await self._receive(ws, "the answer to cmd:ping", pings)
                report["server_ping"] = msg.data if msg.type is aiohttp.WSMsgType.TEXT else repr(msg)
                report["pings_seen"] = pings
                await within(ws.close(code=CLOSE_CODE, message=CLIENT_REASON.encode()), "the close handshake")
                report["close"] = {"code": ws.close_code}
                return report
            finally:
                await within(ws.close(), "closing")

    async def server_close(self, target: Endpoint) -> Report:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            ws = await within(session.ws_connect(target.ws_url, heartbeat=None), "the opening handshake")
            try:
                await within(ws.send_str(CMD_CLOSE), "sending cmd:close")
                msg = await within(ws.receive(), "the close")
                if msg.type is not aiohttp.WSMsgType.CLOSE:
                    return {"error": f"expected a CLOSE message, got {msg!r}"}
                return {"code": msg.data, "reason": msg.extra, "close_code": ws.close_code}
            finally:
                await within(ws.close(), "closing")


class AutobahnClient(Client, PythonPeer):
    peer = id = dist = "autobahn"
    module = "autobahn.asyncio.websocket"

    async def _open(self, target: Endpoint) -> tuple[Any, asyncio.Queue[tuple[Any, ...]], Any]:
        import txaio

        txaio.use_asyncio()
        from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol

        events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

        class Protocol(WebSocketClientProtocol):  # type: ignore[misc]
            def onOpen(self) -> None:
                events.put_nowait(("open",))

            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                events.put_nowait(("message", payload if isBinary else payload.decode("utf-8")))

            def onPing(self, payload: bytes) -> None:
                events.put_nowait(("ping", payload))
                super().onPing(payload)  # answers with a pong

            def onPong(self, payload: bytes) -> None:
                events.put_nowait(("pong", payload))

            def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
                events.put_nowait(("close", wasClean, code, reason))

        factory = WebSocketClientFactory(target.ws_url)
        factory.protocol = Protocol
        factory.setProtocolOptions(
            maxFramePayloadSize=MAX_SIZE,
            maxMessagePayloadSize=MAX_SIZE,
            autoPingInterval=0,
            closeHandshakeTimeout=STEP_TIMEOUT,
        )
        loop = asyncio.get_running_loop()
        transport, protocol = await within(
            loop.create_connection(factory, "127.0.0.1", target.port), "the TCP connection"
        )
        await self._expect(events, "open", "the opening handshake")
        return protocol, events, transport

    async def _expect(self, events: asyncio.Queue[tuple[Any, ...]], kind: str, what: str) -> tuple[Any, ...]:
        while True:
            event = await within(events.get(), what)
            if event[0] == "ping" and kind != "ping":
                continue
            if event[0] != kind:
                raise AssertionError(f"autobahn client: waiting for {what}, got {event!r}")
            return event

    async def exchange(self, target: Endpoint) -> Report:
        protocol, events, transport = await self._open(target)
        try:
            got = []
            for _, message in MESSAGES:
                if isinstance(message, str):
                    protocol.sendMessage(message.encode("utf-8"), isBinary=False)
                else:
                    protocol.sendMessage(message, isBinary=True)
                got.append((await self._expect(events, "message", f"the echo of {describe(message)}"))[1])
            report = _echo_fields(*got)
            protocol.sendPing(CLIENT_PING)
            report["pong"] = (await self._expect(events, "pong", "the pong"))[1].decode()
            protocol.sendMessage(CMD_PING.encode(), isBinary=False)
            report["server_ping"] = (await self._expect(events, "message", "the answer to cmd:ping"))[1]
            protocol.sendClose(CLOSE_CODE, CLIENT_REASON)
            _, clean, code, reason = await self._expect(events, "close", "the close handshake")
            report["close"] = {"code": code, "reason": reason, "wasClean": clean}
            return report
        finally:
            transport.close()

    async def server_close(self, target: Endpoint) -> Report:
        protocol, events, transport = await self._open(target)
        try:
            protocol.sendMessage(CMD_CLOSE.encode(), isBinary=False)
            _, clean, code, reason = await self._expect(events, "close", "the close")
            return {"code": code, "reason": reason, "wasClean": clean}
        finally:
            transport.close()


class WebsocketClientClient(Client, PythonPeer):
    """websocket-client: blocking, run in a thread; its socket timeout bounds every call."""

    peer = id = dist = "websocket-client"
    module = "websocket"

    @staticmethod
    def _recv(ws: Any, pings: list[bytes]) -> tuple[int, Any]:
        import websocket

        while True:
            opcode, frame = ws.recv_data_frame(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_PING:
                pings.append(frame.data)  # recv_data_frame has already answered with a pong
                continue
            if opcode == websocket.ABNF.OPCODE_TEXT:
                return opcode, frame.data.decode("utf-8")
            return opcode, frame.data

    def _exchange_sync(self, url: str) -> Report:
        import websocket

        pings: list[bytes] = []
        ws = websocket.create_connection(url, timeout=STEP_TIMEOUT)
        try:
            got = []
            for _, message in MESSAGES:
                if isinstance(message, str):
                    ws.send(message)
                else:
                    ws.send_binary(message)
                got.append(self._recv(ws, pings)[1])
            report = _echo_fields(*got)
            ws.ping(CLIENT_PING)
            opcode, data = self._recv(ws, pings)
            report["pong"] = data.decode() if opcode == websocket.ABNF.OPCODE_PONG else f"opcode {opcode}: {data!r}"
            ws.send(CMD_PING)
            report["server_ping"] = self._recv(ws, pings)[1]
            report["pings_seen"] = pings
            ws.close(status=CLOSE_CODE, reason=CLIENT_REASON.encode("utf-8"), timeout=STEP_TIMEOUT)
            return report
        finally:
            ws.shutdown()

    def _server_close_sync(self, url: str) -> Report:
        import websocket

        ws = websocket.create_connection(url, timeout=STEP_TIMEOUT)
        try:
            ws.send(CMD_CLOSE)
            opcode, data = self._recv(ws, [])
            if opcode != websocket.ABNF.OPCODE_CLOSE:
                return {"error": f"expected a close frame, got opcode {opcode}: {data!r}"}
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            return {"code": code, "reason": data[2:].decode("utf-8")}
        finally:
            ws.shutdown()

    async def exchange(self, target: Endpoint) -> Report:
        report: Report = await within(asyncio.to_thread(self._exchange_sync, target.ws_url), "the client thread", 45)
        return report

    async def server_close(self, target: Endpoint) -> Report:
        report: Report = await within(asyncio.to_thread(self._server_close_sync, target.ws_url), "the client thread")
        return report


CLIENTS: dict[str, Client] = {
    c.id: c
    for c in (
        WebsocketsClient(),
        AiohttpClient(),
        AutobahnClient(),
        WebsocketClientClient(),
        NodeWsClient(),
        ChromiumClient(),
        FirefoxClient(),
    )
}

# Pairings that show a bug in tornado_websocket: {test: {client id: "BUG: ..."}}, test "exchange" or "server_close".
KNOWN_BUGS: dict[str, dict[str, str]] = {}


# -- the tests -----------------------------------------------------------------------


@pytest.mark.parametrize("key", pairings(CLIENTS.values(), DIRECTION, KNOWN_BUGS.get("exchange", {})))
def test_exchange_and_client_close(key: str, record_property: Any) -> None:
    """Text, binary, 4 MiB binary and text, pings both ways, then the client closes with 4000."""
    client = CLIENTS[key].start(record_property)
    peer = client.peer
    report, record = run(against_our_server(client.exchange))
    assert "error" not in report, f"{peer} client failed: {report['error']}"
    assert report["text"] == TEXT, f"{peer} got back text {report['text']!r}"
    assert report["binary_ok"], f"{peer}: binary echo differs: {report.get('binary_got')}"
    assert report["big_binary_ok"], f"{peer}: 4 MiB binary echo differs: {report.get('big_binary_got')}"
    assert report["big_text_ok"], f"{peer}: 4 MiB text echo differs: {report.get('big_text_got')}"
    if client.can_ping:
        assert report["pong"] == CLIENT_PING.decode(), f"{peer} got pong {report['pong']!r}"
    assert report["server_ping"] == PING_REPLY, f"{peer}: our ping was not answered: {report['server_ping']!r}"
    if "pings_seen" in report:
        assert report["pings_seen"] == [SERVER_PING], f"{peer} saw pings {report['pings_seen']!r}"
    check_server_record_after_exchange(
        record, client_can_ping=client.can_ping, big_binary_sha256=report.get("big_binary_sha256")
    )
    if client.offers_deflate is not None:
        offered = "permessage-deflate" in (record.offered or "")
        assert offered == client.offers_deflate, f"{peer} offered {record.offered!r} to our (plain) server"
    close = report.get("close")
    if close is not None:
        check_close_report(peer, close)


@pytest.mark.parametrize("key", pairings(CLIENTS.values(), DIRECTION, KNOWN_BUGS.get("server_close", {})))
def test_server_close(key: str, record_property: Any) -> None:
    """Our server closes with 4000 and a reason; the client must see both."""
    client = CLIENTS[key].start(record_property)
    peer = client.peer
    report, record = run(against_our_server(client.server_close))
    assert "error" not in report, f"{peer} client failed: {report['error']}"
    check_close_report(peer, report, SERVER_REASON)
    assert record.messages == [CMD_CLOSE]
    assert not record.errors, record.errors
    # The client's reply may carry any code; record what it was for the log.
    print(f"{peer}: client replied to our close with code {record.close_code!r}")
