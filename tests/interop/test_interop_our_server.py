"""Our server (tornado_websocket.WebSocketHandler) with other projects' clients.

Each client runs the script described in interop_util.py against our
RecordingHandler; the test then checks both what the client saw and what our
handler recorded (messages, pings, pongs, close code and reason).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional

import pytest

from .interop_util import (
    BIG_BINARY,
    BIG_TEXT,
    BINARY,
    CHROMIUM,
    CHROMIUM_ARGS,
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
    OurServer,
    check_server_record_after_exchange,
    chromium_version,
    describe,
    dist_version,
    node_ws_version,
    our_server,
    require_chromium,
    require_module,
    require_node,
    run,
    within,
)

DIRECTION = "our_server_their_client"

Report = dict[str, Any]


def _echo_fields(text: Any, binary: Any, big_binary: Any, big_text: Any) -> Report:
    """Normalise what a Python client got back for the four echoed messages."""
    return {
        "text": text if isinstance(text, str) else describe(text),
        "binary_ok": type(binary) is bytes and binary == BINARY,
        "binary_got": describe(binary),
        "big_binary_ok": type(big_binary) is bytes and big_binary == BIG_BINARY,
        "big_binary_got": describe(big_binary),
        "big_text_ok": type(big_text) is str and big_text == BIG_TEXT,
        "big_text_got": describe(big_text),
    }


# -- the clients ---------------------------------------------------------------------


class Client:
    name = ""
    can_ping = True  # can this client send a ping (a browser page cannot)?

    def require(self) -> None:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    async def exchange(self, server: OurServer) -> Report:
        raise NotImplementedError

    async def server_close(self, server: OurServer) -> Report:
        raise NotImplementedError


class WebsocketsClient(Client):
    name = "websockets"

    def require(self) -> None:
        require_module("websockets.asyncio.client", "websockets")

    def version(self) -> str:
        return dist_version("websockets")

    def _connect(self, url: str) -> Any:
        from websockets.asyncio.client import connect

        return connect(
            url, max_size=MAX_SIZE, open_timeout=STEP_TIMEOUT, close_timeout=STEP_TIMEOUT, ping_interval=None
        )

    async def exchange(self, server: OurServer) -> Report:
        async with self._connect(server.ws_url) as ws:
            got = []
            for message in (TEXT, BINARY, BIG_BINARY, BIG_TEXT):
                await within(ws.send(message), "sending a message")
                got.append(await within(ws.recv(), f"the echo of {describe(message)}"))
            report = _echo_fields(*got)
            pong_waiter = await within(ws.ping(CLIENT_PING), "sending the ping")
            await within(pong_waiter, "the pong")  # websockets matches it by payload
            report["pong"] = CLIENT_PING.decode()
            await within(ws.send(CMD_PING), "sending cmd:ping")
            report["server_ping"] = await within(ws.recv(), "the answer to cmd:ping")
            await within(ws.close(CLOSE_CODE, CLIENT_REASON), "the close handshake")
            rcvd = ws.protocol.close_rcvd  # the Close frame the server sent
            report["close"] = {"code": rcvd and rcvd.code, "reason": rcvd and rcvd.reason}
            return report

    async def server_close(self, server: OurServer) -> Report:
        from websockets.exceptions import ConnectionClosed

        async with self._connect(server.ws_url) as ws:
            await within(ws.send(CMD_CLOSE), "sending cmd:close")
            try:
                extra = await within(ws.recv(), "the close")
                return {"error": f"got a message instead of the close: {describe(extra)}"}
            except ConnectionClosed:
                pass
            await within(ws.wait_closed(), "the connection to close")
            rcvd = ws.protocol.close_rcvd  # the Close frame the server sent
            return {"code": rcvd and rcvd.code, "reason": rcvd and rcvd.reason}


class AiohttpClient(Client):
    name = "aiohttp"

    def require(self) -> None:
        require_module("aiohttp", "aiohttp")

    def version(self) -> str:
        return dist_version("aiohttp")

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

    async def exchange(self, server: OurServer) -> Report:
        import aiohttp

        pings: list[bytes] = []
        async with aiohttp.ClientSession() as session:
            ws = await within(
                session.ws_connect(server.ws_url, max_msg_size=MAX_SIZE, autoping=False, heartbeat=None),
                "the opening handshake",
            )
            try:
                got = []
                for message in (TEXT, BINARY, BIG_BINARY, BIG_TEXT):
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

    async def server_close(self, server: OurServer) -> Report:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            ws = await within(session.ws_connect(server.ws_url, heartbeat=None), "the opening handshake")
            try:
                await within(ws.send_str(CMD_CLOSE), "sending cmd:close")
                msg = await within(ws.receive(), "the close")
                if msg.type is not aiohttp.WSMsgType.CLOSE:
                    return {"error": f"expected a CLOSE message, got {msg!r}"}
                return {"code": msg.data, "reason": msg.extra, "close_code": ws.close_code}
            finally:
                await within(ws.close(), "closing")


class AutobahnClient(Client):
    name = "autobahn"

    def require(self) -> None:
        require_module("autobahn.asyncio.websocket", "autobahn")

    def version(self) -> str:
        return dist_version("autobahn")

    async def _open(self, url: str) -> tuple[Any, asyncio.Queue[tuple[Any, ...]], Any]:
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

        factory = WebSocketClientFactory(url)
        factory.protocol = Protocol
        factory.setProtocolOptions(
            maxFramePayloadSize=MAX_SIZE,
            maxMessagePayloadSize=MAX_SIZE,
            autoPingInterval=0,
            closeHandshakeTimeout=STEP_TIMEOUT,
        )
        loop = asyncio.get_running_loop()
        transport, protocol = await within(
            loop.create_connection(factory, "127.0.0.1", server_port(url)), "the TCP connection"
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

    async def exchange(self, server: OurServer) -> Report:
        protocol, events, transport = await self._open(server.ws_url)
        try:
            got = []
            for message in (TEXT, BINARY, BIG_BINARY, BIG_TEXT):
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

    async def server_close(self, server: OurServer) -> Report:
        protocol, events, transport = await self._open(server.ws_url)
        try:
            protocol.sendMessage(CMD_CLOSE.encode(), isBinary=False)
            _, clean, code, reason = await self._expect(events, "close", "the close")
            return {"code": code, "reason": reason, "wasClean": clean}
        finally:
            transport.close()


class WebsocketClientClient(Client):
    """websocket-client: blocking, run in a thread; its socket timeout bounds every call."""

    name = "websocket-client"

    def require(self) -> None:
        require_module("websocket", "websocket-client")

    def version(self) -> str:
        return dist_version("websocket-client")

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
            for message in (TEXT, BINARY, BIG_BINARY, BIG_TEXT):
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

    async def exchange(self, server: OurServer) -> Report:
        report: Report = await within(asyncio.to_thread(self._exchange_sync, server.ws_url), "the client thread", 45)
        return report

    async def server_close(self, server: OurServer) -> Report:
        report: Report = await within(asyncio.to_thread(self._server_close_sync, server.ws_url), "the client thread")
        return report


class NodeWsClient(Client):
    name = "ws (Node.js)"

    def require(self) -> None:
        self.node = require_node()

    def version(self) -> str:
        return node_ws_version()

    async def _run(self, url: str, mode: str) -> Report:
        proc = await asyncio.create_subprocess_exec(
            self.node,
            str(NODE_DIR / "client.js"),
            url,
            mode,
            cwd=str(NODE_DIR),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await within(proc.communicate(), f"the node client ({mode})", 50)
        finally:
            if proc.returncode is None:
                proc.kill()
                await within(proc.wait(), "the killed node client", 10)
        lines = out.decode("utf-8", "replace").strip().splitlines()
        try:
            report: Report = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise AssertionError(f"node client printed no report: rc={proc.returncode} stdout={out!r} stderr={err!r}")
        if proc.returncode != 0:
            report.setdefault("error", f"node client exited {proc.returncode}: {err.decode(errors='replace')}")
        return report

    async def exchange(self, server: OurServer) -> Report:
        return await self._run(server.ws_url, "exchange")

    async def server_close(self, server: OurServer) -> Report:
        return await self._run(server.ws_url, "server-close")


class ChromiumClient(Client):
    """Headless Chromium (Debian's, never a downloaded one) driven by Playwright."""

    name = "Chromium"
    can_ping = False  # a page's WebSocket cannot send pings; it answers ours

    def require(self) -> None:
        require_chromium()

    def version(self) -> str:
        return chromium_version()

    async def _run(self, server: OurServer, function: str) -> Report:
        from playwright.async_api import async_playwright

        async with async_playwright() as p:  # its driver talks over pipes; the scenario bounds it
            browser = await within(
                p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30000),
                "Chromium to start",
                30,
            )
            try:
                page = await within(browser.new_page(), "a new page")
                console: list[str] = []
                page.on("console", lambda m: console.append(m.text))
                await within(page.goto(server.page_url, timeout=20000), "the page to load")
                await within(page.wait_for_function("window.interop !== undefined", timeout=20000), "the script")
                try:
                    report: Report = await within(
                        page.evaluate(f"url => window.interop.{function}(url)", server.ws_url),
                        f"the page's {function}()",
                        40,
                    )
                except Exception as exc:
                    report = {"error": f"{exc}; console: {console}"}
                return report
            finally:
                await within(browser.close(), "Chromium to close")

    async def exchange(self, server: OurServer) -> Report:
        return await self._run(server, "exchange")

    async def server_close(self, server: OurServer) -> Report:
        return await self._run(server, "serverClose")


def server_port(url: str) -> int:
    from urllib.parse import urlsplit

    port = urlsplit(url).port
    assert port is not None
    return port


CLIENTS: dict[str, Client] = {
    c.name: c
    for c in (
        WebsocketsClient(),
        AiohttpClient(),
        AutobahnClient(),
        WebsocketClientClient(),
        NodeWsClient(),
        ChromiumClient(),
    )
}

IDS = {
    "websockets": "websockets",
    "aiohttp": "aiohttp",
    "autobahn": "autobahn",
    "websocket-client": "websocket-client",
    "ws (Node.js)": "node-ws",
    "Chromium": "chromium",
}

# Pairings that show a bug in tornado_websocket: {(peer, test): "BUG: ..."}.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def pairings(test: str) -> list[Any]:
    params = []
    for name in CLIENTS:
        marks = [pytest.mark.interop(peer=name, direction=DIRECTION)]
        bug = KNOWN_BUGS.get((name, test))
        if bug:
            marks.append(pytest.mark.xfail(strict=True, reason=bug))
        params.append(pytest.param(name, id=IDS[name], marks=marks))
    return params


# -- the tests -----------------------------------------------------------------------


@pytest.mark.parametrize("peer", pairings("exchange"))
def test_exchange_and_client_close(peer: str, record_property: Any) -> None:
    """Text, binary, 4 MiB binary and text, pings both ways, then the client closes with 4000."""
    client = CLIENTS[peer]
    record_property("peer_version", client.version())
    client.require()

    async def scenario() -> tuple[Report, Any]:
        async with our_server() as server:
            report = await client.exchange(server)
            record = await server.recorder.next_connection()
            await within(record.closed.wait(), "our handler's on_close")
            return report, record

    report, record = run(scenario())
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
    close = report.get("close")
    if close is not None:
        # Our reply to the client's Close echoes its code (the reason is optional).
        assert close.get("code") == CLOSE_CODE, f"{peer} saw our close reply as {close!r}"
        if "wasClean" in close:
            assert close["wasClean"] is True, f"{peer} saw an unclean close: {close!r}"


@pytest.mark.parametrize("peer", pairings("server_close"))
def test_server_close(peer: str, record_property: Any) -> None:
    """Our server closes with 4000 and a reason; the client must see both."""
    client = CLIENTS[peer]
    record_property("peer_version", client.version())
    client.require()

    async def scenario() -> tuple[Report, Optional[int], Any]:
        async with our_server() as server:
            report = await client.server_close(server)
            record = await server.recorder.next_connection()
            await within(record.closed.wait(), "our handler's on_close")
            return report, record.close_code, record

    report, code_from_client, record = run(scenario())
    assert "error" not in report, f"{peer} client failed: {report['error']}"
    assert (report["code"], report["reason"]) == (CLOSE_CODE, SERVER_REASON), f"{peer} saw the close as {report!r}"
    if "wasClean" in report:
        assert report["wasClean"] is True, f"{peer} saw an unclean close: {report!r}"
    assert record.messages == [CMD_CLOSE]
    assert not record.errors, record.errors
    # The client's reply may carry any code; record what it was for the log.
    print(f"{peer}: client replied to our close with code {code_from_client!r}")
