"""Helpers for the chat demo's tests: a real redis-server, chat processes, a chat client.

Everything listens on 127.0.0.1 on free ports, every wait is bounded, and
:class:`Processes` kills whatever is left at teardown. Locally a missing
redis-server (or Chromium) skips the test; with ``CI`` set it fails.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

import tornado_websocket

REPO = Path(__file__).resolve().parents[1]
CHAT = REPO / "demos" / "chat" / "chat.py"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 15.0  # a process must be serving within this
STOP_TIMEOUT = 10.0  # a process must exit within this after SIGTERM, or it is killed
STEP = 10.0  # one protocol step (a reply, a broadcast)


def missing(what: str) -> None:
    """Something the test needs is not installed: skip locally, fail under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(what)


def require_redis_server() -> str:
    if not os.access(REDIS_SERVER, os.X_OK):
        missing("redis-server is not installed (apt-get install redis-server)")
    try:
        import redis  # noqa: F401  (the demo's --redis mode needs the client)
    except ImportError:
        missing("the redis package is not installed (pip install redis)")
    return REDIS_SERVER


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Process:
    """A subprocess whose output goes to a log file; stopped (bounded) or killed at teardown."""

    def __init__(self, name: str, argv: list[str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")

    def stop(self) -> Optional[int]:
        """SIGTERM, wait (bounded), SIGKILL if it hangs; return the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
                raise AssertionError(f"{self.name} did not stop within {STOP_TIMEOUT:.0f} s of SIGTERM") from None
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, as far as everyone else can tell."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


class RedisServer(Process):
    """A throwaway redis-server on a free port: no RDB snapshots, no AOF."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = [
            require_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(log_dir),
        ]  # fmt: skip
        super().__init__(f"redis-{self.port}", argv, log_dir)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        super().start()

        def ready() -> bool:
            self.check_alive()
            return self.ping()

        wait_until(ready, START_TIMEOUT, f"redis-server on port {self.port}")


class ChatServer(Process):
    """``python demos/chat/chat.py --port P --address 127.0.0.1 [--redis URL] [extra...]``."""

    def __init__(self, log_dir: Path, redis_url: Optional[str] = None, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        argv = [sys.executable, str(CHAT), "--port", str(self.port), "--address", "127.0.0.1"]
        if redis_url:
            argv += ["--redis", redis_url]
        argv += list(extra)
        super().__init__(f"chat-{self.port}", argv, log_dir)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/channels"

    def serves_page(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2.0)
        try:
            connection.request("GET", "/")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def start(self) -> None:
        super().start()

        def ready() -> bool:
            self.check_alive()
            return self.serves_page()

        wait_until(ready, START_TIMEOUT, f"the chat server on port {self.port}")


class Processes:
    """Starts redis-servers and chat servers for one test; :meth:`close` ends them all."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="chat-test-")
        self.log_dir = Path(self._tmp.name)
        self.all: list[Process] = []

    def redis(self) -> RedisServer:
        server = RedisServer(self.log_dir)
        self.all.append(server)
        server.start()
        return server

    def chat(self, redis_url: Optional[str] = None, *extra: str) -> ChatServer:
        server = ChatServer(self.log_dir, redis_url, extra)
        self.all.append(server)
        server.start()
        return server

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} -----\n{p.log()[-3000:]}" for p in self.all)

    def close(self) -> None:
        for process in reversed(self.all):  # chat servers first, then Redis
            try:
                process.stop()
            except AssertionError:
                pass  # killed after the timeout; nothing more to do
        self._tmp.cleanup()


# -- a chat client over tornado_websocket.websocket_connect -------------------------------------


class ChatClient:
    """One connection to ``/channels`` in a room's channel, speaking the channels protocol.

    :meth:`recv` keeps ``members`` (member id -> nickname) up to date from the
    presence events and ``offset`` / ``epoch`` from the messages, so that
    :meth:`resume` can subscribe again (on any process) from where it stood.
    """

    def __init__(self, conn: tornado_websocket.WebSocketClientConnection, room: str) -> None:
        self.conn = conn
        self.room = room
        self.channel = f"room:{room}"
        self.nick = ""
        self.subscribed: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.members_info: dict[str, dict[str, Any]] = {}  # member id -> presence info
        self.offset: Optional[int] = None
        self.epoch: Optional[str] = None

    @classmethod
    async def connect(cls, server: ChatServer, room: str = "lobby") -> ChatClient:
        conn = await tornado_websocket.websocket_connect(server.ws_url(), connect_timeout=STEP)
        return cls(conn, room)

    @classmethod
    async def join(cls, server: ChatServer, nick: str, room: str = "lobby") -> ChatClient:
        """Connect and subscribe with ``since: 0`` and presence, as the page does; read the history."""
        client = await cls.connect(server, room)
        await client.subscribe(nick, since=0)
        return client

    async def subscribe(self, nick: str, since: Optional[int] = None, epoch: Optional[str] = None) -> None:
        """Subscribe (with presence as ``nick``); wait for ``subscribed`` and the history it announces."""
        request: dict[str, Any] = {"op": "subscribe", "channel": self.channel, "presence": True, "info": {"nick": nick}}
        if since is not None:
            request["since"] = since
        if epoch is not None:
            request["epoch"] = epoch
        await self.send(request)
        self.subscribed = await self.expect("subscribed")
        latest = self.subscribed["offset"]
        self.epoch = self.subscribed["epoch"]
        self.history = []
        if since is None:
            self.offset = latest
            return
        self.offset = since if epoch in (None, self.epoch) else 0
        while self.offset < latest:  # the history: what follows `since`, up to the latest
            self.history.append((await self.expect("message"))["data"])

    @classmethod
    async def resume(cls, server: ChatServer, old: ChatClient, nick: str) -> ChatClient:
        """A new connection to ``server`` that subscribes from where ``old`` stood (its offset and epoch)."""
        client = await cls.connect(server, old.room)
        await client.subscribe(nick, since=old.offset or 0, epoch=old.epoch)
        return client

    @property
    def members(self) -> dict[str, str]:
        """Member id -> nickname."""
        return {member_id: info["nick"] for member_id, info in self.members_info.items()}

    def users(self) -> list[str]:
        return sorted(set(self.members.values()))

    async def send(self, obj: dict[str, Any]) -> None:
        await asyncio.wait_for(self.conn.write_message(json.dumps(obj)), STEP)

    async def say(self, text: str, **extra: Any) -> None:
        await self.send({"op": "publish", "channel": self.channel, "data": {"text": text, **extra}})

    async def recv(self, timeout: float = STEP) -> Optional[dict[str, Any]]:
        """The next message (decoded; presence and offsets noted), ``None`` once the connection is closed."""
        raw = await asyncio.wait_for(self.conn.read_message(), timeout)
        if raw is None:
            return None
        data: dict[str, Any] = json.loads(raw)
        op = data.get("op")
        if op == "presence":
            self.members_info = {m["id"]: m["info"] for m in data["members"]}
        elif op == "join":
            self.members_info[data["member"]["id"]] = data["member"]["info"]
        elif op == "leave":
            self.members_info.pop(data["member"]["id"], None)
        elif op == "message":
            self.offset, self.epoch = data["offset"], data["epoch"]
        return data

    async def expect(
        self, op: str, where: Optional[Callable[[dict[str, Any]], bool]] = None, timeout: float = STEP
    ) -> dict[str, Any]:
        """Read until a message with this ``op`` (and matching ``where``) arrives; skip the others."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"no {op!r} message within {timeout:.0f} s")
            try:
                data = await self.recv(remaining)
            except asyncio.TimeoutError:
                raise AssertionError(f"no {op!r} message within {timeout:.0f} s") from None
            if data is None:
                raise AssertionError(
                    f"closed ({self.conn.close_code} {self.conn.close_reason!r}) while waiting for {op!r}"
                )
            if data.get("op") == op and (where is None or where(data)):
                return data

    async def expect_users(self, *nicks: str, timeout: float = STEP) -> None:
        """Read until the room's presence is exactly ``nicks``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.users() != sorted(nicks):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"presence is {self.users()}, not {sorted(nicks)}, after {timeout:.0f} s")
            try:
                data = await self.recv(remaining)
            except asyncio.TimeoutError:
                continue
            if data is None:
                raise AssertionError("closed while waiting for presence")

    async def expect_closed(self, timeout: float = STEP) -> Optional[int]:
        """Read (and drop) messages until the server closes; return its close code."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"the connection was not closed within {timeout:.0f} s")
            try:
                if await self.recv(remaining) is None:
                    break
            except asyncio.TimeoutError:
                continue
        await asyncio.wait_for(self.conn.wait_closed(), timeout)
        return self.conn.close_code

    async def close(self) -> None:
        if not self.conn.closed:
            self.conn.close()
            try:
                await asyncio.wait_for(self.conn.wait_closed(), 5.0)
            except asyncio.TimeoutError:
                pass
