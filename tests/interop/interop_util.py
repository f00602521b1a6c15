"""Shared pieces of the interoperability matrix (tests/interop).

Every pairing speaks the same tiny script over one WebSocket:

* a text message, a binary message, a 4 MiB binary and a 4 MiB text message
  are echoed back unchanged (same type, same content);
* the client pings with ``CLIENT_PING`` and must get the matching pong;
* the text command ``cmd:ping`` makes the server ping the client with
  ``SERVER_PING``; once the client's pong arrives the server answers the
  text ``pong:server-ping``;
* the client closes with ``CLOSE_CODE`` / ``CLIENT_REASON`` and the server
  must report exactly that code and reason;
* on a second connection the text command ``cmd:close`` makes the server
  close with ``CLOSE_CODE`` / ``SERVER_REASON``, and the client must report
  exactly that code and reason.

Every wait is bounded (``asyncio.wait_for`` or a socket/subprocess timeout);
every server listens on 127.0.0.1 only.

The permessage-deflate tests (test_interop_deflate.py) run a script of their
own but share the rest: the peers that both the plain and the deflate tests
pair with (the websockets, aiohttp and Node ws servers, the Node ws and
Chromium clients), our server, and the checks of how a close went. The
JavaScript clients (Node and the browser page) run the scenarios written once
in interop_client.js, with the payloads of payloads.js.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Optional, TypeVar, Union

import pytest
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

import tornado_websocket

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "node"
FIREFOX_DIR = HERE / "firefox"  # run.js and puppeteer-core (npm ci there: scripts/ci/firefox.sh)
FIREFOX = os.environ.get("INTEROP_FIREFOX", "/usr/bin/firefox-esr")
CHROMIUM = os.environ.get("INTEROP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

MAX_SIZE = 16 * 1024 * 1024
STEP_TIMEOUT = 20.0  # one send/receive/close step
TEST_TIMEOUT = 55.0  # a whole scenario: under pytest-timeout (60 s in pyproject, 120 s on the command line)

TEXT = "hello, wörld ✓ — interop 🚀"
BINARY = bytes(range(256)) * 4 + b"\x00\xff"
BIG_SIZE = 4 * 1024 * 1024
# 4 MiB of random bytes (seeded: the same on every run).
BIG_BINARY = random.Random(6455).randbytes(BIG_SIZE)
# Exactly 4 MiB of UTF-8 mixing 1-, 2-, 3- and 4-byte sequences, so that
# multi-byte characters straddle every frame and read boundary.
BIG_TEXT = "aé✓😀" * (BIG_SIZE // 10) + "😀"
assert len(BIG_TEXT.encode("utf-8")) == BIG_SIZE

CLIENT_PING = b"client-ping"
SERVER_PING = b"server-ping"
PING_REPLY = "pong:server-ping"
CMD_PING = "cmd:ping"
CMD_CLOSE = "cmd:close"
CLOSE_CODE = 4000
CLIENT_REASON = "client says goodbye ✓"
SERVER_REASON = "server says goodbye ✓"

Message = Union[str, bytes]
Report = dict[str, Any]  # what a client (theirs) saw, as it reports it

# The echoed messages of the plain script, in order, named as in the reports.
MESSAGES: list[tuple[str, Message]] = [
    ("text", TEXT),
    ("binary", BINARY),
    ("big_binary", BIG_BINARY),
    ("big_text", BIG_TEXT),
]


# -- peers that may be missing -------------------------------------------------


def missing(what: str, why: str) -> None:
    """A peer is not there: fail under CI (CI env var set), skip locally."""
    message = f"interop peer {what} unavailable: {why}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set, so a missing peer is a failure)", pytrace=False)
    pytest.skip(message)


def require_module(name: str, dist: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as exc:  # ImportError, or a broken install
        missing(dist, f"cannot import {name}: {exc!r}; pip install {dist}")
        raise AssertionError("unreachable")


def dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        missing("ws (Node.js)", "no `node` on PATH; apt-get install nodejs npm")
    if not (NODE_DIR / "node_modules" / "ws" / "package.json").is_file():
        missing("ws (Node.js)", f"the ws package is not installed; run `npm ci` in {NODE_DIR}")
    assert node is not None
    return node


def node_ws_version() -> str:
    try:
        ws = json.loads((NODE_DIR / "node_modules" / "ws" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "not installed"
    node = shutil.which("node")
    return f"{ws} (node {_node_version(node)})" if node else ws


def _node_version(node: str) -> str:
    import subprocess

    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def require_chromium() -> None:
    require_module("playwright.async_api", "playwright")
    if not os.access(CHROMIUM, os.X_OK):
        missing("Chromium", f"{CHROMIUM} not found; apt-get install chromium (never a downloaded browser)")


def chromium_version() -> str:
    import subprocess

    if not os.access(CHROMIUM, os.X_OK):
        return "not installed"
    try:
        out = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    words = out.stdout.split()
    return next((w for w in words if w[:1].isdigit()), out.stdout.strip() or "?")


def require_firefox() -> str:
    """Node, puppeteer-core (installed from FIREFOX_DIR's lock file) and Debian's firefox-esr; node's path."""
    node = shutil.which("node")
    if node is None:
        missing("Firefox", "no `node` on PATH; apt-get install nodejs npm")
    if not (FIREFOX_DIR / "node_modules" / "puppeteer-core" / "package.json").is_file():
        missing("Firefox", f"puppeteer-core is not installed; bash scripts/ci/firefox.sh (npm ci in {FIREFOX_DIR})")
    if not os.access(FIREFOX, os.X_OK):
        missing("Firefox", f"{FIREFOX} not found; apt-get install firefox-esr (never a downloaded browser)")
    assert node is not None
    return node


def firefox_version() -> str:
    import subprocess

    if not os.access(FIREFOX, os.X_OK):
        return "not installed"
    try:
        out = subprocess.run([FIREFOX, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    words = out.stdout.split()  # "Mozilla Firefox 153.8.0esr"
    return next((w for w in words if w[:1].isdigit()), out.stdout.strip() or "?")


# -- small async helpers ---------------------------------------------------------


async def within(awaitable: Any, what: str, timeout: float = STEP_TIMEOUT) -> Any:
    """Await with a bound; a timeout names the step that hung."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


def run(coro: Any, timeout: float = TEST_TIMEOUT) -> Any:
    """Run one scenario on a fresh event loop, bounded as a whole."""

    async def bounded() -> Any:
        return await within(coro, "the whole scenario", timeout)

    return asyncio.run(bounded())


def describe(value: Any) -> str:
    """Short description of a received message, for assertion messages."""
    if isinstance(value, (bytes, bytearray)):
        return f"bytes[{len(value)}]" + (f" {bytes(value)[:40]!r}" if len(value) <= 300 else "")
    if isinstance(value, str):
        return f"str[{len(value)}]" + (f" {value[:60]!r}" if len(value) <= 300 else "")
    return repr(value)


def check_echo(sent: Message, got: Any, what: str) -> None:
    assert type(got) is type(sent), f"{what}: sent {describe(sent)}, got back {describe(got)}"
    assert got == sent, f"{what}: sent {describe(sent)}, got back different content {describe(got)}"


def echo_field(report: Report, key: str, sent: Message, got: Any) -> None:
    """Record in a Python client's report whether an echo came back unchanged (as the JS clients do)."""
    report[f"{key}_ok"] = type(got) is type(sent) and got == sent
    report[f"{key}_got"] = describe(got)


# -- the peers and the pairings ----------------------------------------------------------


PeerT = TypeVar("PeerT", bound="Peer")


class Peer:
    """One peer of the matrix: ``peer`` names its row (see matrix.py), ``id`` its tests' pytest id.

    The peers that the plain and the deflate tests share are instantiated once
    per test module, with the row name (``peer``) that module reports them under
    and, for the Node and browser peers, ``deflate`` to turn permessage-deflate on.
    """

    peer = ""
    id = ""

    def __init__(self, peer: str = "", deflate: bool = False) -> None:
        if peer:
            self.peer = peer
        self.deflate = deflate

    def require(self) -> None:
        """Skip the test (fail it under CI) when the peer is not installed."""
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def start(self: PeerT, record_property: Any) -> PeerT:
        """A test's first step: record the peer's version for the matrix, then require the peer."""
        record_property("peer_version", self.version())
        self.require()
        return self


class PythonPeer(Peer):
    """A peer written in Python: ``module`` of the distribution ``dist`` must import."""

    module = ""
    dist = ""

    def require(self) -> None:
        require_module(self.module, self.dist)

    def version(self) -> str:
        return dist_version(self.dist)


class NodePeer(Peer):
    node = ""

    def require(self) -> None:
        self.node = require_node()

    def version(self) -> str:
        return node_ws_version()


class ChromiumPeer(Peer):
    """Headless Chromium (Debian's, never a downloaded one) driven by Playwright."""

    def require(self) -> None:
        require_chromium()

    def version(self) -> str:
        return chromium_version()


class FirefoxPeer(Peer):
    """Headless firefox-esr (Debian's) driven through WebDriver BiDi by puppeteer-core (firefox/run.js)."""

    node = ""

    def require(self) -> None:
        self.node = require_firefox()

    def version(self) -> str:
        return firefox_version()


def pairings(peers: Iterable[Peer], direction: str, known_bugs: Mapping[str, str]) -> list[Any]:
    """pytest params for one test: each peer's id, marked as its pairing of the matrix.

    ``known_bugs`` maps a peer id to the reason of a strict xfail (a bug of ours).
    """
    params = []
    for peer in peers:
        marks = [pytest.mark.interop(peer=peer.peer, direction=direction)]
        bug = known_bugs.get(peer.id)
        if bug:
            marks.append(pytest.mark.xfail(strict=True, reason=bug))
        params.append(pytest.param(peer.id, id=peer.id, marks=marks))
    return params


# -- our server ----------------------------------------------------------------------


@dataclass
class ServerRecord:
    """What our server-side handler saw on one connection."""

    messages: list[Message] = field(default_factory=list)
    pings: list[bytes] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    close_code: Optional[int] = None
    close_reason: Optional[str] = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    offered: Optional[str] = None  # the Sec-WebSocket-Extensions of the client's request


class Recorder:
    def __init__(self) -> None:
        self.connections: asyncio.Queue[ServerRecord] = asyncio.Queue()

    async def next_connection(self) -> ServerRecord:
        record: ServerRecord = await within(self.connections.get(), "the connection to reach our server")
        return record


class RecordingHandler(tornado_websocket.WebSocketHandler):
    """Our server: echo, record, and obey cmd:ping / cmd:close."""

    def open(self) -> None:
        self.start_record(ServerRecord(offered=self.request.headers.get("Sec-WebSocket-Extensions")))

    def start_record(self, record: ServerRecord) -> None:
        self.record = record
        self._tasks: set[asyncio.Task[None]] = set()
        self.settings["recorder"].connections.put_nowait(self.record)

    def on_message(self, message: Message) -> None:
        self.record.messages.append(message)
        if message == CMD_PING:
            # Not awaited here: reading must go on so that the pong is read.
            task = asyncio.ensure_future(self._ping_then_report())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif message == CMD_CLOSE:
            self.close(CLOSE_CODE, SERVER_REASON)
        else:
            self.write_message(message, binary=isinstance(message, bytes))

    async def _ping_then_report(self) -> None:
        try:
            await asyncio.wait_for(self.ping(SERVER_PING), STEP_TIMEOUT)
            self.write_message(PING_REPLY)
        except Exception as exc:  # recorded and asserted by the test
            self.record.errors.append(f"server ping failed: {exc!r}")

    def on_ping(self, data: bytes) -> None:
        self.record.pings.append(bytes(data))

    def on_pong(self, data: bytes) -> None:
        self.record.pongs.append(bytes(data))

    def on_close(self) -> None:
        self.record.close_code = self.close_code
        self.record.close_reason = self.close_reason
        self.record.closed.set()


BROWSER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>interop</title></head><body>
<script src="/interop.js"></script>
</body></html>
"""

# What /interop.js serves, in order: the page's side of every scenario.
BROWSER_SCRIPTS = ("payloads.js", "interop_client.js", "browser_client.js")


class PageHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(BROWSER_PAGE)


class NoContentHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_status(204)  # the browser's /favicon.ico


class ScriptHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/javascript; charset=utf-8")
        for name in BROWSER_SCRIPTS:
            self.write((HERE / name).read_text(encoding="utf-8") + "\n")


@dataclass
class Endpoint:
    """Where a client (theirs) goes: a port on 127.0.0.1, our server's or a relay's in front of it."""

    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def page_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@dataclass
class OurServer(Endpoint):
    recorder: Recorder

    async def finished_record(self) -> ServerRecord:
        """What our handler saw on the next connection, once its on_close has run."""
        record = await self.recorder.next_connection()
        await within(record.closed.wait(), "our handler's on_close")
        return record


@contextlib.asynccontextmanager
async def tornado_listening(app: tornado.web.Application, what: str) -> AsyncIterator[int]:
    """``app`` served on a free 127.0.0.1 port (yielded); every connection closed on the way out."""
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    try:
        yield sockets[0].getsockname()[1]
    finally:
        server.stop()
        await within(server.close_all_connections(), f"{what} to close its connections", 10)


@contextlib.asynccontextmanager
async def listening(starting: Awaitable[Any], what: str) -> AsyncIterator[int]:
    """The port of a server that ``starting`` starts on 127.0.0.1 (an asyncio or a websockets
    server, anything with ``sockets``, ``close()`` and ``wait_closed()``); closed on the way out."""
    server = await within(starting, f"{what} to start")
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await within(server.wait_closed(), f"{what} to stop", 10)


@contextlib.asynccontextmanager
async def our_server(handler: type[RecordingHandler] = RecordingHandler) -> AsyncIterator[OurServer]:
    """Our tornado_websocket server on a free 127.0.0.1 port, with the browser's page."""
    recorder = Recorder()
    app = tornado.web.Application(
        [
            (r"/", PageHandler),
            (r"/interop.js", ScriptHandler),
            (r"/favicon.ico", NoContentHandler),
            (r"/ws", handler),
        ],
        recorder=recorder,
        websocket_max_message_size=MAX_SIZE,
    )
    async with tornado_listening(app, "our server") as port:
        yield OurServer(port, recorder)


async def against_our_server(
    client_run: Callable[[Endpoint], Awaitable[Report]], handler: type[RecordingHandler] = RecordingHandler
) -> tuple[Report, ServerRecord]:
    """A client's report of one scenario (``client_run``) against our server, and what our handler saw."""
    async with our_server(handler) as server:
        report = await client_run(server)
        return report, await server.finished_record()


def check_server_record_after_exchange(
    record: ServerRecord, *, client_can_ping: bool = True, big_binary_sha256: Optional[str] = None
) -> None:
    """What our server must have seen once a client ran the exchange and closed.

    Clients outside Python send their own random 4 MiB binary and report its
    SHA-256 as ``big_binary_sha256``.
    """
    assert not record.errors, record.errors
    seen = [describe(m) for m in record.messages]
    assert len(record.messages) == 5 and record.messages[4] == CMD_PING, seen
    assert record.messages[:2] == [TEXT, BINARY], seen
    big = record.messages[2]
    assert isinstance(big, bytes), seen
    if big_binary_sha256 is None:
        assert big == BIG_BINARY, seen
    else:
        assert hashlib.sha256(big).hexdigest() == big_binary_sha256, f"4 MiB binary differs: {seen}"
    assert record.messages[3] == BIG_TEXT, seen
    if client_can_ping:
        assert record.pings == [CLIENT_PING], f"our server saw pings {record.pings!r}"
    assert SERVER_PING in record.pongs, f"our server saw pongs {record.pongs!r}"
    assert (record.close_code, record.close_reason) == (CLOSE_CODE, CLIENT_REASON), (
        f"our server saw close code {record.close_code!r} reason {record.close_reason!r}"
    )


def check_close_report(peer: str, close: Mapping[str, Any], reason: Optional[str] = None) -> None:
    """How a client (theirs) reported the Close frame it got from our server.

    Code 4000; and ``reason`` when it is given (after cmd:close): our reply
    to the client's own Close echoes its code, the reason is optional.
    """
    if reason is None:
        assert close.get("code") == CLOSE_CODE, f"{peer} saw our close reply as {close!r}"
    else:
        assert (close.get("code"), close.get("reason")) == (CLOSE_CODE, reason), f"{peer} saw the close as {close!r}"
    if "wasClean" in close:
        assert close["wasClean"] is True, f"{peer} saw an unclean close: {close!r}"


# -- their clients (against our server) -----------------------------------------------


class Client(Peer):
    can_ping = True  # can this client send a ping (a browser page cannot)?
    # Does it offer permessage-deflate to our plain server (which declines)? None: not checked.
    offers_deflate: Optional[bool] = None

    async def exchange(self, target: Endpoint) -> Report:
        raise NotImplementedError

    async def server_close(self, target: Endpoint) -> Report:
        raise NotImplementedError


class ScriptClient(Client):
    """A JavaScript client: it runs the scenarios of interop_client.js (the deflate ones if ``deflate``)."""

    async def run_scenario(self, target: Endpoint, scenario: str) -> Report:
        raise NotImplementedError

    async def exchange(self, target: Endpoint) -> Report:
        return await self.run_scenario(target, "deflateExchange" if self.deflate else "exchange")

    async def server_close(self, target: Endpoint) -> Report:
        return await self.run_scenario(target, "deflateServerClose" if self.deflate else "serverClose")


class NodeWsClient(ScriptClient, NodePeer):
    """node/client.js, Node's ws package; one process a scenario."""

    peer = "ws (Node.js)"
    id = "node-ws"

    async def run_scenario(self, target: Endpoint, scenario: str) -> Report:
        proc = await asyncio.create_subprocess_exec(
            self.node,
            str(NODE_DIR / "client.js"),
            target.ws_url,
            scenario,
            cwd=str(NODE_DIR),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await within(proc.communicate(), f"the node client ({scenario})", 50)
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


class ChromiumClient(ScriptClient, ChromiumPeer):
    """A page our server serves (browser_client.js), in a fresh headless Chromium a scenario."""

    peer = "Chromium"
    id = "chromium"
    can_ping = False  # a page's WebSocket cannot send pings; it answers ours
    offers_deflate = True  # on every connection

    async def run_scenario(self, target: Endpoint, scenario: str) -> Report:
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
                await within(page.goto(target.page_url, timeout=20000), "the page to load")
                await within(page.wait_for_function("window.interop !== undefined", timeout=20000), "the script")
                try:
                    report: Report = await within(
                        page.evaluate(f"url => window.interop.{scenario}(url)", target.ws_url),
                        f"the page's {scenario}()",
                        40,
                    )
                except Exception as exc:
                    report = {"error": f"{exc}; console: {console}"}
                return report
            finally:
                await within(browser.close(), "Chromium to close")


class FirefoxClient(ScriptClient, FirefoxPeer):
    """A page our server serves (browser_client.js), in a fresh headless firefox-esr a scenario (firefox/run.js).

    Firefox offers permessage-deflate on every connection (the setting that turned the offer off is
    gone from current releases): the plain tests' server declines it, the deflate tests' accepts it.
    """

    peer = "Firefox"
    id = "firefox"
    can_ping = False  # a page's WebSocket cannot send pings; it answers ours
    offers_deflate = True

    async def run_scenario(self, target: Endpoint, scenario: str) -> Report:
        proc = await asyncio.create_subprocess_exec(
            self.node,
            str(FIREFOX_DIR / "run.js"),
            target.page_url,
            target.ws_url,
            scenario,
            cwd=str(FIREFOX_DIR),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await within(proc.communicate(), f"firefox's {scenario}()", 50)
        finally:
            if proc.returncode is None:
                proc.kill()
                await within(proc.wait(), "the killed firefox runner", 10)
        lines = out.decode("utf-8", "replace").strip().splitlines()
        try:
            report: Report = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise AssertionError(f"firefox/run.js printed no report: rc={proc.returncode} {out!r} {err!r}")
        if proc.returncode != 0:
            report.setdefault("error", f"firefox/run.js exited {proc.returncode}: {err.decode(errors='replace')}")
        return report


class WebsocketsClientBase(Client, PythonPeer):
    """The websockets client; the plain and the deflate tests each write its scenarios."""

    peer = id = dist = "websockets"
    module = "websockets.asyncio.client"

    @staticmethod
    def connect(url: str) -> Any:
        from websockets.asyncio.client import connect

        return connect(
            url,
            compression="deflate",  # the default, said out loud: offered, and declined by our plain server
            max_size=MAX_SIZE,
            open_timeout=STEP_TIMEOUT,
            close_timeout=STEP_TIMEOUT,
            ping_interval=None,
        )

    @staticmethod
    def close_frame(ws: Any) -> dict[str, Any]:
        rcvd = ws.protocol.close_rcvd  # the Close frame the server sent
        return {"code": rcvd and rcvd.code, "reason": rcvd and rcvd.reason}

    async def await_server_close(self, ws: Any) -> Report:
        """After cmd:close: {"close": the server's Close frame}, or {"error": ...} if a message came first."""
        from websockets.exceptions import ConnectionClosed

        try:
            extra = await within(ws.recv(), "the close")
            return {"error": f"got a message instead of the close: {describe(extra)}"}
        except ConnectionClosed:
            pass
        await within(ws.wait_closed(), "the connection to close")
        return {"close": self.close_frame(ws)}


# -- their servers (for our client) ---------------------------------------------------


@dataclass
class PeerServerLog:
    """What a peer server saw: closes as (code, reason), pings as payloads, and per connection
    the Sec-WebSocket-Extensions it answered (``accepted``) and its own view of the extensions."""

    closes: asyncio.Queue[tuple[Optional[int], Optional[str]]] = field(default_factory=asyncio.Queue)
    pings: list[bytes] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    accepted: asyncio.Queue[Optional[str]] = field(default_factory=asyncio.Queue)
    views: list[Any] = field(default_factory=list)

    def connected(self, accepted: Optional[str], view: Any) -> None:
        self.accepted.put_nowait(accepted)
        self.views.append(view)


class Server(Peer):
    reports_pings = True  # does the server let us see the pings it received?

    def serve(self) -> Any:
        """An async context manager yielding (port, PeerServerLog).

        The server listens on 127.0.0.1 and serves /ws; it echoes, obeys
        cmd:ping and cmd:close (see this module's docstring) and logs what it saw.
        """
        raise NotImplementedError


class WebsocketsServer(Server, PythonPeer):
    peer = id = dist = "websockets"
    module = "websockets.asyncio.server"
    reports_pings = False  # websockets answers pings internally

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[tuple[int, PeerServerLog]]:
        from websockets.asyncio.server import serve
        from websockets.exceptions import ConnectionClosed

        log = PeerServerLog()

        async def handler(ws: Any) -> None:
            log.connected(
                ws.response.headers.get("Sec-WebSocket-Extensions"),
                [getattr(e, "name", type(e).__name__) for e in ws.protocol.extensions],
            )
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

        starting = serve(
            handler,
            "127.0.0.1",
            0,
            compression="deflate",  # the default, said out loud
            max_size=MAX_SIZE,
            ping_interval=None,
            close_timeout=STEP_TIMEOUT,
        )
        async with listening(starting, "the websockets server") as port:
            yield port, log


class AiohttpServer(Server, PythonPeer):
    peer = id = dist = "aiohttp"
    module = "aiohttp.web"

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[tuple[int, PeerServerLog]]:
        from aiohttp import WSMsgType, web

        log = PeerServerLog()

        async def handler(request: web.Request) -> web.WebSocketResponse:
            # autoping off so that the pings and pongs are seen here.
            ws = web.WebSocketResponse(compress=True, max_msg_size=MAX_SIZE, autoping=False, heartbeat=None)
            await ws.prepare(request)
            log.connected(ws.headers.get("Sec-WebSocket-Extensions"), {"compress": ws.compress})
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
        app.router.add_get("/ws", handler)
        runner = web.AppRunner(app, handle_signals=False)
        await within(runner.setup(), "the aiohttp app to start")
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await within(site.start(), "the aiohttp site to start")
        try:
            yield runner.addresses[0][1], log
        finally:
            await within(runner.cleanup(), "the aiohttp server to stop")


class NodeWsServer(Server, NodePeer):
    """node/server.js, Node's ws package; permessage-deflate on if ``deflate``."""

    peer = "ws (Node.js)"
    id = "node-ws"

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[tuple[int, PeerServerLog]]:
        log = PeerServerLog()
        proc = await asyncio.create_subprocess_exec(
            self.node,
            str(NODE_DIR / "server.js"),
            *(["deflate"] if self.deflate else []),
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
                port = int(json.loads(line)["port"])
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
                    if event["event"] == "connection":
                        log.connected(
                            event["accepted"], {"offered": event["offered"], "negotiated": event["negotiated"]}
                        )
                    elif event["event"] == "close":
                        log.closes.put_nowait((event["code"], event["reason"]))
                    elif event["event"] == "ping":
                        log.pings.append(event["data"].encode("utf-8"))
                    elif event["event"] == "error":
                        log.notes.append(event["message"])

            reader = asyncio.ensure_future(read_events())
            yield port, log
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


# -- our client ------------------------------------------------------------------------


async def our_client(port: int, **options: Any) -> tornado_websocket.WebSocketClientConnection:
    """Our client, connected to ws://127.0.0.1:port/ws (``options`` go to websocket_connect)."""
    conn: tornado_websocket.WebSocketClientConnection = await within(
        tornado_websocket.websocket_connect(
            f"ws://127.0.0.1:{port}/ws", max_message_size=MAX_SIZE, connect_timeout=STEP_TIMEOUT, **options
        ),
        "our client's opening handshake",
    )
    return conn


async def echo_through(
    conn: tornado_websocket.WebSocketClientConnection, messages: Iterable[tuple[str, Message]], peer: str
) -> None:
    """Each message, sent by our client, must come back unchanged before the next is sent."""
    for what, message in messages:
        await within(conn.write_message(message, binary=isinstance(message, bytes)), f"sending {what}")
        check_echo(message, await within(conn.read_message(), f"the echo of {what}"), f"{peer}: {what} echo")


async def close_from_our_client(
    conn: tornado_websocket.WebSocketClientConnection, log: PeerServerLog, peer: str
) -> None:
    """Our client closes with 4000: the peer server must report that code and reason, and reply."""
    conn.close(CLOSE_CODE, CLIENT_REASON)
    await within(conn.wait_closed(), "our client to close")
    code, reason = await within(log.closes.get(), f"{peer} to report the close")
    assert (code, reason) == (CLOSE_CODE, CLIENT_REASON), (
        f"{peer} saw our close as code {code!r} reason {reason!r} (notes: {log.notes})"
    )
    # The server replied to our Close (with any code: aiohttp and autobahn say 1000, others echo 4000).
    assert conn.close_code is not None, f"our client got no close reply from {peer}"
    assert not log.notes, log.notes


async def close_from_peer_server(
    conn: tornado_websocket.WebSocketClientConnection, log: PeerServerLog, peer: str
) -> None:
    """cmd:close: the peer server closes with 4000 and a reason, our client must see both, and reply."""
    await within(conn.write_message(CMD_CLOSE), "sending cmd:close")
    message = await within(conn.read_message(), "the end of the messages")
    assert message is None, f"got {describe(message)} instead of the close"
    await within(conn.wait_closed(), "our client to close")
    assert (conn.close_code, conn.close_reason) == (CLOSE_CODE, SERVER_REASON), (
        f"our client saw {peer}'s close as code {conn.close_code!r} reason {conn.close_reason!r}"
    )
    code, reason = await within(log.closes.get(), f"{peer} to report the close")
    print(f"{peer} saw our close reply as code {code!r} reason {reason!r}")
    assert code is not None, f"{peer} got no close reply from our client (notes: {log.notes})"
