"""Real proxies for the client's tests: tinyproxy (HTTP CONNECT) and microsocks (SOCKS5), Debian packages.

Each runs in the foreground on a free 127.0.0.1 port with its own config and
log in a temporary directory, and is stopped (SIGTERM, then SIGKILL) after
the test. ``scripts/ci/ops.sh`` installs both when they are missing; the
tests that need one are skipped when it is not on the machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Optional

import pytest
import tornado.testing

START_TIMEOUT = 10.0


def _free_port() -> int:
    sock, port = tornado.testing.bind_unused_port()
    sock.close()
    return port


def _wait_listening(process: subprocess.Popen[bytes], port: int, what: str) -> None:
    """Return once ``port`` accepts connections; raise if ``process`` exits or START_TIMEOUT passes."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)  # a readiness poll of an outside process, bounded by START_TIMEOUT
    raise RuntimeError(f"{what} did not listen on {port} within {START_TIMEOUT} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class Tinyproxy:
    """One tinyproxy: ``basic_auth=(user, password)`` requires credentials; ``connect_ports`` limits
    CONNECT to those ports (others get 403)."""

    def __init__(
        self,
        directory: str,
        basic_auth: Optional[tuple[str, str]] = None,
        connect_ports: Optional[list[int]] = None,
    ) -> None:
        self.port = _free_port()
        self.log_path = os.path.join(directory, f"tinyproxy-{self.port}.log")
        config = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            "MaxClients 50",
            f'LogFile "{self.log_path}"',
            "LogLevel Connect",
            "Allow 127.0.0.1",
        ]
        if basic_auth is not None:
            config.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
        for port in connect_ports or []:
            config.append(f"ConnectPort {port}")
        self.config_path = os.path.join(directory, f"tinyproxy-{self.port}.conf")
        with open(self.config_path, "w") as f:
            f.write("\n".join(config) + "\n")
        self.process = subprocess.Popen(
            ["tinyproxy", "-d", "-c", self.config_path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_listening(self.process, self.port, "tinyproxy")

    def url(self, user: Optional[str] = None, password: Optional[str] = None) -> str:
        credentials = f"{user}:{password}@" if user is not None else ""
        return f"http://{credentials}127.0.0.1:{self.port}"

    def connect_requests(self) -> list[str]:
        """The ``CONNECT host:port`` requests tinyproxy logged so far."""
        with open(self.log_path, errors="replace") as f:
            return [line.split("): ", 1)[1].strip() for line in f if "Request (file descriptor" in line]

    def stop(self) -> None:
        _stop(self.process)


class Microsocks:
    """One microsocks SOCKS5 server, with ``user``/``password`` required when given."""

    def __init__(self, user: Optional[str] = None, password: Optional[str] = None) -> None:
        self.port = _free_port()
        command = ["microsocks", "-i", "127.0.0.1", "-p", str(self.port)]
        if user is not None:
            command += ["-u", user, "-P", password or ""]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(self.process, self.port, "microsocks")

    def url(self, user: Optional[str] = None, password: Optional[str] = None, scheme: str = "socks5") -> str:
        credentials = f"{user}:{password}@" if user is not None else ""
        return f"{scheme}://{credentials}127.0.0.1:{self.port}"

    def stop(self) -> None:
        _stop(self.process)


class Proxies:
    """Starts proxies for one test and stops them all after it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.running: list[Tinyproxy | Microsocks] = []

    def tinyproxy(
        self, basic_auth: Optional[tuple[str, str]] = None, connect_ports: Optional[list[int]] = None
    ) -> Tinyproxy:
        if shutil.which("tinyproxy") is None:
            pytest.skip("tinyproxy is not installed (scripts/ci/ops.sh installs it)")
        proxy = Tinyproxy(self.directory, basic_auth, connect_ports)
        self.running.append(proxy)
        return proxy

    def microsocks(self, user: Optional[str] = None, password: Optional[str] = None) -> Microsocks:
        if shutil.which("microsocks") is None:
            pytest.skip("microsocks is not installed (scripts/ci/ops.sh installs it)")
        proxy = Microsocks(user, password)
        self.running.append(proxy)
        return proxy

    def stop(self) -> None:
        for proxy in self.running:
            proxy.stop()


@pytest.fixture(name="proxies")
def proxies_fixture() -> Iterator[Proxies]:
    """Proxies started by the test (``proxies.tinyproxy(...)``, ``proxies.microsocks(...)``), stopped after it."""
    with tempfile.TemporaryDirectory(prefix="tw-proxy-") as directory:
        started = Proxies(directory)
        try:
            yield started
        finally:
            started.stop()
