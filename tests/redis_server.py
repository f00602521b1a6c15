"""A real ``redis-server`` on a free 127.0.0.1 port, for the hub tests.

``RedisServer`` starts the Debian ``redis-server`` with no persistence
(``--save "" --appendonly no``), waits (bounded) until it answers ``PING``,
and can be stopped and started again on the same port to simulate an
outage. Whoever starts it must call :meth:`RedisServer.kill` (the
``redis_server`` fixture of ``test_hub.py`` does so at teardown).
"""

from __future__ import annotations

import os
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

    def __init__(self, executable: str, port: Optional[int] = None) -> None:
        self.executable = executable
        self.port = port or free_port()
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
            "--appendonly", "no",
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
