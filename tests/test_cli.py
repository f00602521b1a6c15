"""The command-line client, ``python -m tornado_websocket URL``, run as a subprocess.

The server runs on the test's own event loop (see conftest.py), so it keeps
serving while the test awaits the subprocess's output. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal as signals
import socket
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import pytest_asyncio
from conftest import OP_CLOSE, OP_TEXT, bounded, build_frame, close_payload, xor_mask
from tornado.httputil import HTTPHeaders

import tornado_websocket
from tornado_websocket.handshake import accept_key

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parent.parent
PROCESS_TIMEOUT = 15.0  # a fresh interpreter importing Tornado can be slow on a busy machine
# How long the process may take to exit once its connection is closed (it needs about 0.1 s).
EXIT_TIMEOUT = 5.0


class CliEcho(tornado_websocket.WebSocketHandler):
    """Answers ``echo: <line>``; a few lines are commands."""

    def initialize(self, signal: Any) -> None:
        self.signal = signal

    def open(self) -> None:
        self.signal.fire("open", self)

    def select_subprotocol(self, subprotocols: list[str]) -> Optional[str]:
        return subprotocols[-1] if subprotocols else None

    def on_message(self, message: Any) -> None:
        self.signal.fire("message", message)
        if message == "binary please":
            self.write_message(b"\x00\x01\xfe\xff", binary=True)
        elif message == "empty binary":
            self.write_message(b"", binary=True)
        elif message == "two lines":
            self.write_message("first")
            self.write_message("second")
        elif message == "bye":
            self.close(1000, "bye")
        elif message == "go away":
            self.close(4001, "go away")
        else:
            self.write_message("echo: " + message)

    def on_close(self) -> None:
        self.signal.fire("close", (self.close_code, self.close_reason))


class CompressedCliEcho(CliEcho):
    def get_compression_options(self) -> Optional[dict[str, Any]]:
        return {}


@pytest.fixture
def url(harness, signal) -> str:
    harness.serve([(r"/ws", CliEcho, {"signal": signal}), (r"/z", CompressedCliEcho, {"signal": signal})])
    return harness.url()


@pytest_asyncio.fixture
async def cli():
    """Start ``python -m tornado_websocket ARGS``; every process is killed (if still running) after the test."""
    processes: list[asyncio.subprocess.Process] = []

    async def start(*args: str) -> asyncio.subprocess.Process:
        process = await bounded(
            asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tornado_websocket",
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=str(ROOT),
                env={**os.environ, "PYTHONIOENCODING": "utf-8"},
            )
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(process.wait(), 5)


async def send_line(process: asyncio.subprocess.Process, line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(line.encode("utf-8") + b"\n")
    await bounded(process.stdin.drain())


async def read_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = await bounded(process.stdout.readline(), PROCESS_TIMEOUT)
    assert line, "the client's stdout ended"
    return line.decode("utf-8").rstrip("\r\n")


async def finish(process: asyncio.subprocess.Process, timeout: float = PROCESS_TIMEOUT) -> tuple[int, str, str]:
    """Wait (bounded) for the process to exit; return its exit code, the rest of stdout and stderr."""
    assert process.stdout is not None and process.stderr is not None
    out, err = await bounded(asyncio.gather(process.stdout.read(), process.stderr.read()), timeout)
    code = await bounded(process.wait(), timeout)
    return code, out.decode("utf-8"), err.decode("utf-8")


def end_input(process: asyncio.subprocess.Process) -> None:
    assert process.stdin is not None
    process.stdin.close()


async def test_lines_are_sent_and_replies_printed(url, cli, signal):
    process = await cli(url)
    for line in ["hello", "second line", "ünïcödé ☃", "  spaced  ", ""]:
        await send_line(process, line)
        assert await read_line(process) == f"echo: {line}"
    assert signal.values["message"] == ["hello", "second line", "ünïcödé ☃", "  spaced  ", ""]
    await send_line(process, "two lines")
    assert await read_line(process) == "first"
    assert await read_line(process) == "second"
    end_input(process)
    code, rest, err = await finish(process)
    assert code == 0, err
    assert rest == ""
    assert err == ""


async def test_binary_messages_printed_as_hex(url, cli):
    process = await cli(url)
    await send_line(process, "binary please")
    assert await read_line(process) == "[binary 4 bytes] 0001feff"
    await send_line(process, "empty binary")
    assert (await read_line(process)).rstrip() == "[binary 0 bytes]"
    end_input(process)
    code, _, err = await finish(process)
    assert code == 0, err


async def test_end_of_input_closes_cleanly(url, cli, signal):
    process = await cli(url)
    await send_line(process, "one")
    assert await read_line(process) == "echo: one"
    end_input(process)
    code, rest, err = await finish(process)
    assert (await signal.wait("close", timeout=PROCESS_TIMEOUT))[0] == (1000, None)
    assert code == 0, err
    assert rest == "" and err == ""


async def test_end_of_input_right_away_closes_cleanly(url, cli, signal):
    process = await cli(url)
    end_input(process)
    code, out, err = await finish(process)
    assert code == 0, err
    assert out == "" and err == ""
    assert (await signal.wait("close", timeout=PROCESS_TIMEOUT))[0] == (1000, None)
    assert signal.count("message") == 0


async def raw_server_replying_after_close(lines: int, frames: list[bytes]) -> tuple[asyncio.AbstractServer, int]:
    """A raw server that reads ``lines`` text frames and the client's Close, then answers them.

    A server is allowed to send data frames until its own Close (RFC 6455
    section 1.4): this one answers late, after the client already closed.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await bounded(reader.readuntil(b"\r\n\r\n"))
            key = HTTPHeaders.parse(head.decode("latin-1").partition("\r\n")[2])["Sec-WebSocket-Key"]
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode()
            )
            received = []
            while True:
                b0, b1 = await bounded(reader.readexactly(2), PROCESS_TIMEOUT)
                assert b1 & 0x80 and (b1 & 0x7F) < 126
                mask = await bounded(reader.readexactly(4))
                payload = xor_mask(mask, await bounded(reader.readexactly(b1 & 0x7F)))
                frames.append(bytes([b0]) + payload)
                if b0 & 0x0F == OP_CLOSE:
                    break
                received.append(payload)
            assert len(received) == lines
            for payload in received:
                writer.write(build_frame(OP_TEXT, b"echo: " + payload, mask=False))
            writer.write(build_frame(OP_CLOSE, payload, mask=False))
            await bounded(writer.drain())
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_replies_arriving_after_end_of_input_are_printed(cli):
    frames: list[bytes] = []
    server, port = await raw_server_replying_after_close(2, frames)
    try:
        process = await cli(f"ws://127.0.0.1:{port}/ws")
        assert process.stdin is not None
        process.stdin.write(b"a\nb\n")
        await bounded(process.stdin.drain())
        end_input(process)
        code, out, err = await finish(process)
    finally:
        server.close()
        await bounded(server.wait_closed())
    assert frames == [b"\x81a", b"\x81b", b"\x88" + close_payload(1000)]
    assert code == 0, err
    assert out.splitlines() == ["echo: a", "echo: b"]


async def test_refused_connection_exits_1_with_one_line(cli):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        port = sock.getsockname()[1]
        process = await cli(f"ws://127.0.0.1:{port}/ws", "--timeout", "5")
        end_input(process)
        code, out, err = await finish(process)
    finally:
        sock.close()
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:")
    assert f"127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in err


async def test_handshake_refused_exits_1_with_one_line(url, cli):
    process = await cli(url.replace("/ws", "/nowhere"))
    end_input(process)
    code, out, err = await finish(process)
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and "404" in lines[0], err


async def test_bad_url_exits_1(cli):
    process = await cli("http//not a url")
    end_input(process)
    code, out, err = await finish(process)
    assert code == 1
    assert len(err.splitlines()) == 1, err


async def test_help_exits_0_and_mentions_stdin(cli):
    process = await cli("--help")
    end_input(process)
    code, out, err = await finish(process)
    assert code == 0
    assert err == ""
    text = " ".join(out.split()).lower()
    assert "stdin" in text or "standard input" in text
    assert "usage" in text and "url" in text


async def test_server_close_while_input_is_open_exits_0(url, cli, signal):
    process = await cli(url)
    await send_line(process, "hello")
    assert await read_line(process) == "echo: hello"
    await send_line(process, "bye")
    assert (await signal.wait("close", timeout=PROCESS_TIMEOUT))[0] == (1000, None)
    # stdin stays open: the process must still end once the server closed.
    code, out, err = await finish(process, EXIT_TIMEOUT)
    assert code == 0, err
    assert out == ""


async def test_server_close_then_end_of_input_exits_0(url, cli, signal):
    process = await cli(url)
    await send_line(process, "bye")
    assert (await signal.wait("close", timeout=PROCESS_TIMEOUT))[0] == (1000, None)
    end_input(process)
    code, out, err = await finish(process)
    assert code == 0, err
    assert out == "" and err == ""


async def test_server_close_with_error_code_exits_1(url, cli, signal):
    process = await cli(url)
    await send_line(process, "go away")
    assert (await signal.wait("close", timeout=PROCESS_TIMEOUT))[0] == (4001, None)
    # stdin stays open.
    code, out, err = await finish(process, EXIT_TIMEOUT)
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and "4001" in lines[0] and "go away" in lines[0], err


async def test_sigint_closes_cleanly_and_exits_0(url, cli, signal):
    process = await cli(url)
    await send_line(process, "hello")
    assert await read_line(process) == "echo: hello"
    process.send_signal(signals.SIGINT)
    assert (await signal.wait("close", timeout=PROCESS_TIMEOUT))[0] == (1000, None)
    code, out, err = await finish(process, EXIT_TIMEOUT)
    assert code == 0, err


async def test_header_and_subprotocol_options(url, cli, signal):
    process = await cli(url, "--header", "X-Token: abc 123", "--subprotocol", "one", "--subprotocol", "two")
    await send_line(process, "hi")
    assert await read_line(process) == "echo: hi"
    handler = (await signal.wait("open", timeout=PROCESS_TIMEOUT))[0]
    assert handler.request.headers["X-Token"] == "abc 123"
    assert handler.request.headers["Sec-WebSocket-Protocol"] == "one, two"
    assert handler.selected_subprotocol == "two"
    end_input(process)
    code, _, err = await finish(process)
    assert code == 0, err


async def test_malformed_header_option_exits_2(url, cli):
    process = await cli(url, "--header", "no-colon")
    end_input(process)
    code, _, err = await finish(process)
    assert code == 2
    assert len(err.splitlines()) == 1, err


async def test_compress_option(url, cli, signal):
    process = await cli(url.replace("/ws", "/z"), "--compress")
    line = "compress me " * 50
    await send_line(process, line)
    assert await read_line(process) == "echo: " + line
    handler = (await signal.wait("open", timeout=PROCESS_TIMEOUT))[0]
    assert handler.request.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
    end_input(process)
    code, _, err = await finish(process)
    assert code == 0, err
