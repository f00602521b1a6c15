"""A real ``redis-server`` on a free 127.0.0.1 port, for the hub tests.

``RedisServer`` starts the Debian ``redis-server`` with no persistence
(``--save "" --appendonly no``), waits (bounded) until it answers ``PING``,
and can be stopped and started again on the same port to simulate an
outage. Whoever starts it must call :meth:`RedisServer.kill` (the
``redis_server`` fixture of ``test_hub.py`` does so at teardown).
``appendonly=True`` turns AOF on (``appendfsync always``), so that a restart
keeps the data.

``RedisCluster`` starts three such servers with ``--cluster-enabled yes``
and joins them with ``redis-cli --cluster create`` (no replicas).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Optional

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def find_redis_server() -> Optional[str]:
    """The path of ``redis-server`` (``$REDIS_SERVER`` first, then ``PATH``, then /usr/bin), or None."""
    candidates = [os.environ.get("REDIS_SERVER"), shutil.which("redis-server"), "/usr/bin/redis-server"]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ping(port: int, timeout: float = 0.5) -> bool:
    """True if a Redis server on 127.0.0.1:``port`` answers PING with PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            answer = b""
            while not answer.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    return False
                answer += chunk
            return answer == b"+PONG\r\n"
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; see the module docstring."""

    def __init__(self, executable: str, port: Optional[int] = None, *, appendonly: bool = False) -> None:
        self.executable = executable
        self.port = port or free_port()
        self.appendonly = appendonly
        self.process: Optional[subprocess.Popen[bytes]] = None
        self._dir = tempfile.mkdtemp(prefix="tornado_websocket_redis_")
        self._log_path = os.path.join(self._dir, "redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, size: int = 4000) -> str:
        try:
            with open(self._log_path, "rb") as f:
                return f.read()[-size:].decode("utf-8", "replace")
        except OSError:
            return ""

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server (on the same port as before) and wait until it answers PING."""
        assert not self.running, "redis-server is already running"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                # (Re)spawn: a start can fail while the previous process still holds the port.
                self.process = subprocess.Popen(
                    self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            if ping(self.port):
                return
            time.sleep(0.02)  # polls the server's readiness (bounded by the deadline)
        self.kill()
        raise RuntimeError(f"redis-server did not answer PING within {timeout} s:\n{self.log_tail()}")

    def _command(self) -> list[str]:
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--dir", self._dir,
            "--logfile", self._log_path,
        ]  # fmt: skip

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait until the port no longer answers."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        deadline = time.monotonic() + timeout
        while ping(self.port, timeout=0.2):
            if time.monotonic() > deadline:
                raise RuntimeError(f"something still answers on port {self.port} after redis-server stopped")
            time.sleep(0.02)

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """Kill the server at once (teardown); never raises."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)


def find_redis_cli() -> Optional[str]:
    """The path of ``redis-cli`` (next to redis-server, then ``PATH``), or None."""
    server = find_redis_server()
    candidates = [os.path.join(os.path.dirname(server), "redis-cli") if server else None, shutil.which("redis-cli")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """Send one command to 127.0.0.1:``port``; return the raw first reply (enough for status and bulk strings)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(b"".join(parts))
        answer = sock.recv(65536)
        if answer.startswith(b"$"):
            size = int(answer[1 : answer.index(b"\r\n")])
            while len(answer) < size + len(str(size)) + 5:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        return answer


def free_cluster_port() -> int:
    """A free port P <= 55535 whose cluster bus port P + 10000 is free too."""
    for _ in range(200):
        port = 20000 + secrets.randbelow(30000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


class ClusterNode(RedisServer):
    def __init__(self, executable: str) -> None:
        super().__init__(executable, free_cluster_port())

    def _command(self) -> list[str]:
        return [
            *super()._command(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", os.path.join(self._dir, "nodes.conf"),
            "--cluster-node-timeout", "2000",
        ]  # fmt: skip


class RedisCluster:
    """Three cluster-enabled ``redis-server`` processes on free 127.0.0.1 ports, joined by ``redis-cli``."""

    def __init__(self, executable: str, cli: str, size: int = 3) -> None:
        self.cli = cli
        self.nodes = [ClusterNode(executable) for _ in range(size)]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes), "--cluster-yes"],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while not all(b"cluster_state:ok" in command(n.port, "CLUSTER", "INFO") for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.05)  # polls the cluster's state (bounded by the deadline)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
