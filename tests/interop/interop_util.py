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
from typing import Any, AsyncIterator, Optional, Union

import pytest
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

import tornado_websocket

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "node"
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


class Recorder:
    def __init__(self) -> None:
        self.connections: asyncio.Queue[ServerRecord] = asyncio.Queue()

    async def next_connection(self) -> ServerRecord:
        record: ServerRecord = await within(self.connections.get(), "the connection to reach our server")
        return record


class RecordingHandler(tornado_websocket.WebSocketHandler):
    """Our server: echo, record, and obey cmd:ping / cmd:close."""

    def open(self) -> None:
        self.record = ServerRecord()
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
        self.write((HERE / "browser_client.js").read_text(encoding="utf-8"))


@dataclass
class OurServer:
    port: int
    recorder: Recorder

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def page_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@contextlib.asynccontextmanager
async def our_server() -> AsyncIterator[OurServer]:
    """Our tornado_websocket server on a free 127.0.0.1 port."""
    recorder = Recorder()
    app = tornado.web.Application(
        [
            (r"/", PageHandler),
            (r"/interop.js", ScriptHandler),
            (r"/favicon.ico", NoContentHandler),
            (r"/ws", RecordingHandler),
        ],
        recorder=recorder,
        websocket_max_message_size=MAX_SIZE,
    )
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    try:
        yield OurServer(sockets[0].getsockname()[1], recorder)
    finally:
        server.stop()
        await within(server.close_all_connections(), "our server to close its connections", 10)


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


# -- a peer server's log (for our client) ---------------------------------------------


@dataclass
class PeerServerLog:
    """What a peer server saw: closes as (code, reason), pings as payloads."""

    closes: asyncio.Queue[tuple[Optional[int], Optional[str]]] = field(default_factory=asyncio.Queue)
    pings: list[bytes] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
