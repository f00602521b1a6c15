"""permessage-deflate (RFC 7692) interoperability, compression on at both ends.

Our server (a handler whose ``get_compression_options()`` returns ``{}``)
with the websockets, aiohttp, Node ws, headless Chromium and headless Firefox clients, and our
client (``compression_options={}``) with the websockets, aiohttp and Node ws
servers. Each pairing, on one connection:

* echoes a text message, a binary message, 1 MiB of repetitive JSON text,
  1 MiB of random bytes (fresh on every run) and a "window probe" (128 KiB
  whose only redundancy lies 16 KiB back, beyond the negotiated LZ77
  windows: a sender compressing with a larger window than agreed produces
  back-references the receiver cannot inflate);
* holds a context-takeover conversation: the client sends 100 JSON chat
  messages with the same keys and much the same text, all before reading,
  and every echo must equal what was sent, in order;
* ends with the client closing with 4000, which the server must report.

On a second connection the server closes with 4000 after one compressed
echo, and the client must report 4000 and the reason.

That compression was really negotiated is checked three ways: the
``Sec-WebSocket-Extensions`` header the client offered and the one the
server answered, as they crossed the wire; the client's and the server's own
view of the negotiated extension; and the byte count of the exchange, each
way, which must stay well under what the JSON megabyte would cost
uncompressed (so both ends did compress). The wire is observed by a small
counting TCP relay (``WireCounter``) between the two peers, on 127.0.0.1.

Pairings are registered with peer names such as ``websockets (deflate)`` so
that they get their own rows in ``matrix.py``. As in the rest of the matrix,
every wait is bounded, everything listens on 127.0.0.1 only, and a missing
peer is skipped locally but fails when ``CI`` is set.

The Node client and the browser page run the deflate scenarios of
``interop_client.js`` (built from the same payloads, in ``payloads.js``),
and the Node server is ``node/server.js deflate``. What the peers share with
the plain tests (the peer servers, the Node, Chromium and Firefox clients, the
websockets client's connection) is in interop_util.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

import pytest

from .interop_util import (
    BINARY,
    CLIENT_REASON,
    CLOSE_CODE,
    CMD_CLOSE,
    MAX_SIZE,
    SERVER_REASON,
    STEP_TIMEOUT,
    AiohttpServer,
    ChromiumClient,
    Client,
    Endpoint,
    FirefoxClient,
    Message,
    NodeWsClient,
    NodeWsServer,
    PeerServerLog,
    PythonPeer,
    RecordingHandler,
    Report,
    ServerRecord,
    WebsocketsClientBase,
    WebsocketsServer,
    against_our_server,
    check_close_report,
    check_echo,
    close_from_our_client,
    close_from_peer_server,
    describe,
    echo_field,
    echo_through,
    our_client,
    our_server,
    pairings,
    run,
    within,
)

OUR_SERVER = "our_server_their_client"
OUR_CLIENT = "their_server_our_client"

# -- the payloads (payloads.js builds the same ones for Node and the browser) ---------------------

TEXT = "hello, wörld ✓ — deflate interop 🚀"
BIG_SIZE = 1024 * 1024
CONVERSATION = 100
EXTENSION = "permessage-deflate"
# What one direction of the exchange may cost on the wire: the random
# megabyte and the window probe do not compress (within the negotiated
# windows), the JSON megabyte must. Sent uncompressed, it would take one
# direction past 2 MiB.
WIRE_LIMIT = BIG_SIZE + BIG_SIZE // 2


def _json(value: Any) -> str:
    """JSON as JavaScript's JSON.stringify writes it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _record(i: int) -> str:
    return _json(
        {
            "seq": i,
            "user": f"user-{i % 16}",
            "room": "interop",
            "text": "the quick brown fox ✓ jumps over the lazy dog",
            "ok": i % 3 == 0,
        }
    )


def _big_json() -> str:
    """Exactly 1 MiB of UTF-8: ``{"records":[...],"pad":"xx..."}``, very compressible."""
    head, tail0, tail1 = '{"records":[', '],"pad":"', '"}'
    size = len((head + tail0 + tail1).encode("utf-8"))
    parts: list[str] = []
    i = 0
    while True:
        rec = _record(i)
        add = len(rec.encode("utf-8")) + (1 if parts else 0)
        if size + add > BIG_SIZE:
            break
        parts.append(rec)
        size += add
        i += 1
    document = head + ",".join(parts) + tail0 + "x" * (BIG_SIZE - size) + tail1
    assert len(document.encode("utf-8")) == BIG_SIZE
    json.loads(document)
    return document


BIG_JSON = _big_json()


PROBE_BLOCK = 16 * 1024
PROBE_REPEAT = 8


def _window_probe() -> bytes:
    """A 16 KiB xorshift32 block repeated 8 times (see windowProbe() in payloads.js)."""
    mask = 0xFFFFFFFF
    x = 2463534242
    block = bytearray(PROBE_BLOCK)
    for i in range(PROBE_BLOCK):
        x ^= (x << 13) & mask
        x ^= x >> 17
        x ^= (x << 5) & mask
        block[i] = x & 0xFF
    return bytes(block) * PROBE_REPEAT


WINDOW_PROBE = _window_probe()


def chat(i: int, sender: str) -> str:
    """One message of the conversation: same keys, much the same text every time."""
    return _json(
        {
            "type": "chat",
            "room": "interop",
            "from": sender,
            "seq": i,
            "text": f"message {i} from {sender}: hello, wörld ✓",
            "tags": ["deflate", "context-takeover"],
        }
    )


def conversation() -> list[str]:
    return [chat(i, "client") for i in range(CONVERSATION)]


def exchange_messages(random: bytes) -> list[tuple[str, Message]]:
    """The single messages of the exchange, in order, named as in the reports."""
    return [
        ("text", TEXT),
        ("binary", BINARY),
        ("big_json", BIG_JSON),
        ("big_random", random),
        ("window_probe", WINDOW_PROBE),
    ]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- what the checks share ------------------------------------------------------------


def check_deflate_header(value: Optional[str], who: str) -> None:
    """``value`` is a Sec-WebSocket-Extensions answer that accepts permessage-deflate, with context takeover."""
    assert value, f"{who}: no Sec-WebSocket-Extensions in the answer, so no compression"
    names = [item.split(";")[0].strip().lower() for item in value.split(",")]
    assert names == [EXTENSION], f"{who}: the answer accepts {value!r}, not permessage-deflate alone"
    # Neither side may forget its window between messages, or the conversation
    # would not exercise context takeover.
    assert "no_context_takeover" not in value, f"{who}: context takeover not negotiated: {value!r}"


def same_header(a: Optional[str], b: Optional[str]) -> bool:
    def norm(v: Optional[str]) -> str:
        return "".join((v or "").split()).lower()

    return norm(a) == norm(b)


def conversation_fields(report: Report, sent: list[str], got: list[Any]) -> None:
    report["conversation_ok"] = got == sent
    report["conversation_detail"] = next(
        (f"echo {i} differs: {describe(g)}" for i, (s, g) in enumerate(zip(sent, got)) if g != s),
        "" if len(got) == len(sent) else f"{len(got)} echoes for {len(sent)} messages",
    )


def check_client_report(peer: str, report: Report) -> None:
    """What a client (theirs) saw of the exchange."""
    assert "error" not in report, f"{peer} client failed: {report['error']}"
    for key, what in (
        ("text", "text"),
        ("binary", "binary"),
        ("big_json", "1 MiB JSON text"),
        ("big_random", "1 MiB random binary"),
        ("window_probe", "window probe"),
    ):
        assert report.get(f"{key}_ok") is True, f"{peer}: {what} echo differs: got {report.get(f'{key}_got')}"
    assert report.get("conversation_ok") is True, f"{peer}: conversation: {report.get('conversation_detail')}"


# -- the wire: a counting relay between the peers --------------------------------------


def _head_header(head: bytes, name: str) -> Optional[str]:
    """A header of an HTTP head (several lines joined with ', '), ``None`` if absent."""
    values = []
    for line in head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name.lower():
            values.append(value.strip())
    return ", ".join(values) if values else None


@dataclass
class WireConnection:
    """One relayed TCP connection: bytes each way and the start of each direction."""

    up: int = 0  # client -> server
    down: int = 0  # server -> client
    up_start: bytes = b""
    down_start: bytes = b""
    done: asyncio.Event = field(default_factory=asyncio.Event)

    KEEP = 16 * 1024

    def add(self, up: bool, data: bytes) -> None:
        if up:
            self.up += len(data)
            if len(self.up_start) < self.KEEP:
                self.up_start += data[: self.KEEP - len(self.up_start)]
        else:
            self.down += len(data)
            if len(self.down_start) < self.KEEP:
                self.down_start += data[: self.KEEP - len(self.down_start)]

    @property
    def is_websocket(self) -> bool:
        return (_head_header(self.up_start, "Upgrade") or "").lower() == "websocket"

    @property
    def offered(self) -> Optional[str]:
        return _head_header(self.up_start, "Sec-WebSocket-Extensions")

    @property
    def accepted(self) -> Optional[str]:
        if not self.down_start.startswith(b"HTTP/1.1 101"):
            return None
        return _head_header(self.down_start, "Sec-WebSocket-Extensions")


class WireCounter:
    """A TCP relay on 127.0.0.1 in front of a server's port, counting what crosses it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections: list[WireConnection] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._server: Optional[asyncio.AbstractServer] = None

    async def start(self) -> None:
        self._server = await within(asyncio.start_server(self._handle, "127.0.0.1", 0), "the wire relay to start")
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await within(self._server.wait_closed(), "the wire relay to stop", 10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        wire = WireConnection()
        self.connections.append(wire)
        self._writers.append(writer)
        try:
            target = asyncio.open_connection("127.0.0.1", self.target_port)
            server_reader, server_writer = await asyncio.wait_for(target, STEP_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            writer.transport.abort()
            wire.done.set()
            return
        self._writers.append(server_writer)
        try:
            await asyncio.gather(
                self._pipe(reader, server_writer, wire, True), self._pipe(server_reader, writer, wire, False)
            )
        finally:
            writer.close()
            server_writer.close()
            wire.done.set()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: WireConnection, up: bool) -> None:
        """Copy one direction until EOF, then pass the EOF on (a half close, as TCP does)."""
        try:
            while True:
                data = await reader.read(256 * 1024)
                if not data:
                    break
                wire.add(up, data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):  # a reset, or a write after the other end went away
            writer.transport.abort()

    async def websocket(self) -> WireConnection:
        """The one WebSocket connection relayed (pages a browser loaded are not), once it is over."""
        found = [c for c in self.connections if c.is_websocket]
        assert len(found) == 1, f"expected one WebSocket connection through the relay, saw {len(found)}"
        await within(found[0].done.wait(), "the WebSocket's TCP connection to end")
        return found[0]


@contextlib.asynccontextmanager
async def wire_counter(target_port: int) -> AsyncIterator[WireCounter]:
    counter = WireCounter(target_port)
    await counter.start()
    try:
        yield counter
    finally:
        await counter.stop()


def check_wire(peer: str, wire: WireConnection) -> None:
    """permessage-deflate was offered and accepted on the wire, and both ends compressed."""
    offered = wire.offered
    assert offered and EXTENSION in offered.lower(), f"{peer}: the client offered no permessage-deflate: {offered!r}"
    check_deflate_header(wire.accepted, f"{peer} (on the wire)")
    print(f"{peer}: offered {offered!r}, accepted {wire.accepted!r}; {wire.up} bytes up, {wire.down} down")
    # The random megabyte went both ways, so the counts are real ...
    assert wire.up > BIG_SIZE and wire.down > BIG_SIZE, (wire.up, wire.down)
    # ... and the JSON megabyte did not go uncompressed either way.
    assert wire.up < WIRE_LIMIT, f"{peer}: the client sent {wire.up} bytes: it did not compress"
    assert wire.down < WIRE_LIMIT, f"{peer}: the server sent {wire.down} bytes: it did not compress"


# -- our server, with compression on -------------------------------------------------


@dataclass
class DeflateRecord(ServerRecord):
    """What our handler saw, with what was negotiated."""

    offered: str = ""  # the request's Sec-WebSocket-Extensions
    accepted: str = ""  # our 101 response's Sec-WebSocket-Extensions
    negotiated: bool = False  # does the connection's protocol run permessage-deflate?


class DeflateHandler(RecordingHandler):
    """RecordingHandler (echo, cmd:close closes with 4000) with permessage-deflate on."""

    _accepted = ""

    def get_compression_options(self) -> Optional[dict[str, Any]]:
        return {}

    def set_header(self, name: str, value: Any) -> None:
        # Catch the Sec-WebSocket-Extensions our handler puts in its 101 answer
        # (the handler does not keep its response headers after the upgrade).
        super().set_header(name, value)
        if name.lower() == "sec-websocket-extensions":
            self._accepted = str(value)

    def open(self) -> None:
        connection = self.ws_connection
        self.start_record(
            DeflateRecord(
                offered=", ".join(self.request.headers.get_list("Sec-WebSocket-Extensions")),
                accepted=self._accepted,
                negotiated=connection is not None and connection.protocol.deflate is not None,
            )
        )


def check_negotiated_by_our_server(peer: str, record: DeflateRecord) -> None:
    assert EXTENSION in record.offered.lower(), f"{peer} offered no permessage-deflate: {record.offered!r}"
    check_deflate_header(record.accepted, f"our server's answer to {peer}")
    assert record.negotiated, f"our server answered {record.accepted!r} but runs {peer}'s connection uncompressed"


# -- their clients (against our server; those of Node and Chromium are in interop_util.py) ------
#
# exchange(): run the exchange, close with 4000; report what came back (see check_client_report).
# server_close(): send one chat message and cmd:close; report the close the server sent.


class WebsocketsClient(WebsocketsClientBase):
    @staticmethod
    def _view(ws: Any) -> Report:
        return {
            "extensions": ws.response.headers.get("Sec-WebSocket-Extensions"),
            "negotiated": [getattr(e, "name", type(e).__name__) for e in ws.protocol.extensions],
        }

    async def exchange(self, target: Endpoint) -> Report:
        async with self.connect(target.ws_url) as ws:
            report = self._view(ws)
            random = os.urandom(BIG_SIZE)
            report["big_random_sha256"] = sha256(random)
            for key, message in exchange_messages(random):
                await within(ws.send(message), f"sending {key}")
                echo_field(report, key, message, await within(ws.recv(), f"the echo of {key}"))
            sent = conversation()
            for message in sent:
                await within(ws.send(message), "sending a conversation message")
            got = [await within(ws.recv(), f"conversation echo {i}") for i in range(len(sent))]
            conversation_fields(report, sent, got)
            await within(ws.close(CLOSE_CODE, CLIENT_REASON), "the close handshake")
            report["close"] = self.close_frame(ws)
            return report

    async def server_close(self, target: Endpoint) -> Report:
        async with self.connect(target.ws_url) as ws:
            report = self._view(ws)
            await within(ws.send(chat(0, "client")), "sending a chat message")
            report["echo_ok"] = await within(ws.recv(), "its echo") == chat(0, "client")
            await within(ws.send(CMD_CLOSE), "sending cmd:close")
            report.update(await self.await_server_close(ws))
            return report


class AiohttpClient(Client, PythonPeer):
    id = dist = module = "aiohttp"

    @contextlib.asynccontextmanager
    async def _connect(self, url: str) -> AsyncIterator[tuple[Any, Report]]:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            ws = await within(
                session.ws_connect(url, compress=15, max_msg_size=MAX_SIZE, heartbeat=None),
                "the opening handshake",
            )
            try:
                response = getattr(ws, "_response", None)  # aiohttp keeps the 101 response here
                view = {
                    "extensions": response.headers.get("Sec-WebSocket-Extensions") if response is not None else None,
                    "compress": ws.compress,  # the negotiated window bits; 0: no compression
                }
                yield ws, view
            finally:
                await within(ws.close(), "closing")

    @staticmethod
    async def _receive(ws: Any, what: str) -> Any:
        import aiohttp

        msg = await within(ws.receive(), what)
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return msg.data
        return msg

    async def exchange(self, target: Endpoint) -> Report:
        async with self._connect(target.ws_url) as (ws, report):
            random = os.urandom(BIG_SIZE)
            report["big_random_sha256"] = sha256(random)
            for key, message in exchange_messages(random):
                if isinstance(message, str):
                    await within(ws.send_str(message), f"sending {key}")
                else:
                    await within(ws.send_bytes(message), f"sending {key}")
                echo_field(report, key, message, await self._receive(ws, f"the echo of {key}"))
            sent = conversation()
            for message in sent:
                await within(ws.send_str(message), "sending a conversation message")
            got = [await self._receive(ws, f"conversation echo {i}") for i in range(len(sent))]
            conversation_fields(report, sent, got)
            await within(ws.close(code=CLOSE_CODE, message=CLIENT_REASON.encode("utf-8")), "the close handshake")
            report["close"] = {"code": ws.close_code}
            return report

    async def server_close(self, target: Endpoint) -> Report:
        import aiohttp

        async with self._connect(target.ws_url) as (ws, report):
            await within(ws.send_str(chat(0, "client")), "sending a chat message")
            report["echo_ok"] = await self._receive(ws, "its echo") == chat(0, "client")
            await within(ws.send_str(CMD_CLOSE), "sending cmd:close")
            msg = await within(ws.receive(), "the close")
            if msg.type is not aiohttp.WSMsgType.CLOSE:
                report["error"] = f"expected a CLOSE message, got {msg!r}"
            else:
                report["close"] = {"code": msg.data, "reason": msg.extra}
            return report


# Each under its own row of the matrix; Chromium always offers permessage-deflate, Firefox by default.
CLIENTS: dict[str, Client] = {
    c.id: c
    for c in (
        WebsocketsClient("websockets (deflate)"),
        AiohttpClient("aiohttp (deflate)"),
        NodeWsClient("ws (Node.js, deflate)", deflate=True),
        ChromiumClient("Chromium (deflate)", deflate=True),
        FirefoxClient("Firefox (deflate)", deflate=True),
    )
}


# -- their servers (for our client; all in interop_util.py) ----------------------------------

SERVERS = {
    s.id: s
    for s in (
        WebsocketsServer("websockets (deflate)"),
        AiohttpServer("aiohttp (deflate)"),
        NodeWsServer("ws (Node.js, deflate)", deflate=True),
    )
}


async def accepted_by(log: PeerServerLog, peer: str) -> Optional[str]:
    """The Sec-WebSocket-Extensions answer the peer server reported for its only connection."""
    accepted: Optional[str] = await within(log.accepted.get(), f"{peer} to report the connection")
    assert log.accepted.empty(), f"{peer} reported more than one connection"
    return accepted


# -- the pairings ------------------------------------------------------------------------

# Pairings that show a bug in tornado_websocket: {(direction, test): {peer id: "BUG: ..."}}.
KNOWN_BUGS: dict[tuple[str, str], dict[str, str]] = {}


def deflate_pairings(direction: str, test: str) -> list[Any]:
    peers = CLIENTS if direction == OUR_SERVER else SERVERS
    return pairings(peers.values(), direction, KNOWN_BUGS.get((direction, test), {}))


# -- our server, their clients ---------------------------------------------------------------


@pytest.mark.parametrize("key", deflate_pairings(OUR_SERVER, "exchange"))
def test_our_server_deflate_exchange(key: str, record_property: Any) -> None:
    """Text, binary, 1 MiB JSON, 1 MiB random, window probe, 100-message conversation; client closes with 4000."""
    client = CLIENTS[key].start(record_property)
    peer = client.peer

    async def scenario() -> tuple[Report, ServerRecord, WireConnection]:
        async with our_server(DeflateHandler) as server, wire_counter(server.port) as relay:
            report = await client.exchange(Endpoint(relay.port))
            record = await server.finished_record()
            wire = await relay.websocket()
            return report, record, wire

    report, record, wire = run(scenario())
    assert isinstance(record, DeflateRecord)
    check_client_report(peer, report)
    view = {k: v for k, v in report.items() if k in ("extensions", "negotiated", "compress")}
    print(f"{peer} client's view: {view}")

    # Negotiated, as each side and the wire saw it.
    check_negotiated_by_our_server(peer, record)
    check_wire(peer, wire)
    assert same_header(wire.offered, record.offered), (wire.offered, record.offered)
    assert same_header(wire.accepted, record.accepted), (wire.accepted, record.accepted)
    if key == "aiohttp":
        assert report["compress"], f"aiohttp client runs uncompressed (compress={report['compress']!r})"
    if key == "firefox":  # Firefox's WebSocket.extensions names the extension, without its parameters
        assert report.get("extensions") == EXTENSION, f"{peer} client saw the answer as {report.get('extensions')!r}"
    elif report.get("extensions") is not None or key != "aiohttp":
        assert same_header(report.get("extensions"), wire.accepted), (
            f"{peer} client saw the answer as {report.get('extensions')!r}, the wire carried {wire.accepted!r}"
        )
    if "negotiated" in report:
        assert EXTENSION in str(report["negotiated"]).lower(), f"{peer} client runs {report['negotiated']!r}"

    # What our server received, in order.
    assert not record.errors, record.errors
    messages = record.messages
    assert len(messages) == 5 + CONVERSATION, (
        f"our server got {len(messages)} messages: {[describe(m) for m in messages[:8]]}"
    )
    check_echo(TEXT, messages[0], "text as our server received it")
    check_echo(BINARY, messages[1], "binary as our server received it")
    check_echo(BIG_JSON, messages[2], "1 MiB JSON as our server received it")
    random = messages[3]
    assert isinstance(random, bytes) and len(random) == BIG_SIZE, describe(random)
    assert sha256(random) == report["big_random_sha256"], "the 1 MiB random binary differs at our server"
    check_echo(WINDOW_PROBE, messages[4], "window probe as our server received it")
    for i, (sent, got) in enumerate(zip(conversation(), messages[5:])):
        check_echo(sent, got, f"conversation message {i} as our server received it")

    # The clean close, seen by our server.
    assert (record.close_code, record.close_reason) == (CLOSE_CODE, CLIENT_REASON), (
        f"our server saw {peer}'s close as code {record.close_code!r} reason {record.close_reason!r}"
    )
    check_close_report(peer, report.get("close") or {})


@pytest.mark.parametrize("key", deflate_pairings(OUR_SERVER, "server_close"))
def test_our_server_deflate_server_close(key: str, record_property: Any) -> None:
    """After a compressed echo our server closes with 4000; the client must see the code and reason."""
    client = CLIENTS[key].start(record_property)
    peer = client.peer

    report, record = run(against_our_server(client.server_close, DeflateHandler))
    assert isinstance(record, DeflateRecord)
    assert "error" not in report, f"{peer} client failed: {report['error']}"
    check_negotiated_by_our_server(peer, record)
    if report.get("extensions") is not None:
        check_deflate_header(report["extensions"], f"{peer} client's view")
    assert report.get("echo_ok") is True, f"{peer}: the chat message did not come back unchanged"
    assert record.messages == [chat(0, "client"), CMD_CLOSE], [describe(m) for m in record.messages]
    assert not record.errors, record.errors
    check_close_report(peer, report.get("close") or {}, SERVER_REASON)
    print(f"{peer}: replied to our close with code {record.close_code!r}")


# -- their servers, our client ---------------------------------------------------------------


@pytest.mark.parametrize("key", deflate_pairings(OUR_CLIENT, "exchange"))
def test_our_client_deflate_exchange(key: str, record_property: Any) -> None:
    """Text, binary, 1 MiB JSON, 1 MiB random, window probe, 100-message conversation; we close with 4000."""
    server = SERVERS[key].start(record_property)
    peer = server.peer

    async def scenario() -> tuple[Optional[str], Optional[str], Any, WireConnection]:
        async with server.serve() as (port, log), wire_counter(port) as relay:
            conn = await our_client(relay.port, compression_options={})
            client_view = conn.headers.get("Sec-WebSocket-Extensions")
            await echo_through(conn, exchange_messages(os.urandom(BIG_SIZE)), peer)
            sent = conversation()
            for message in sent:
                await within(conn.write_message(message), "sending a conversation message")
            for i, message in enumerate(sent):
                got = await within(conn.read_message(), f"conversation echo {i}")
                check_echo(message, got, f"{peer}: conversation echo {i}")
            await close_from_our_client(conn, log, peer)
            wire = await relay.websocket()
            return client_view, await accepted_by(log, peer), log.views, wire

    client_view, server_view, views, wire = run(scenario())
    print(f"{peer} server's view: {views!r}")
    check_deflate_header(client_view, f"our client's view of {peer}'s answer")
    check_deflate_header(server_view, f"{peer} server's own answer")
    check_wire(peer, wire)
    assert same_header(client_view, wire.accepted), (client_view, wire.accepted)
    assert same_header(server_view, wire.accepted), (server_view, wire.accepted)


@pytest.mark.parametrize("key", deflate_pairings(OUR_CLIENT, "server_close"))
def test_our_client_deflate_server_close(key: str, record_property: Any) -> None:
    """After a compressed echo the peer server closes with 4000; our client must see the code and reason."""
    server = SERVERS[key].start(record_property)
    peer = server.peer

    async def scenario() -> None:
        async with server.serve() as (port, log):
            conn = await our_client(port, compression_options={})
            check_deflate_header(conn.headers.get("Sec-WebSocket-Extensions"), f"our client's view of {peer}'s answer")
            check_deflate_header(await accepted_by(log, peer), f"{peer} server's own answer")
            await echo_through(conn, [("chat message", chat(0, "client"))], peer)
            await close_from_peer_server(conn, log, peer)
            assert not log.notes, log.notes

    run(scenario())
