"""Command-line client: ``python -m tornado_websocket ws://host:port/path``.

Each line typed on standard input is sent as a text message; every message
that arrives is printed (binary ones as ``[binary N bytes] <hex>``). End of
input or Ctrl-C closes the connection cleanly. Exits 0 after a clean close,
1 with a one-line reason when the connection fails or is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from typing import Optional

from tornado_websocket.client import WebSocketClientConnection, websocket_connect
from tornado_websocket.errors import WebSocketClosedError, WebSocketError


def _parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tornado_websocket",
        description="Interactive WebSocket client: sends each line of standard input as a text message "
        "and prints every message received (binary messages as [binary N bytes] followed by hex).",
        epilog="Exit status: 0 after a clean close, 1 when the connection fails or is refused.",
    )
    parser.add_argument("url", help="ws:// or wss:// URL to connect to")
    parser.add_argument("--subprotocol", action="append", default=None, help="offer a subprotocol (repeatable)")
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="extra request header")
    parser.add_argument("--compress", action="store_true", help="offer permessage-deflate")
    parser.add_argument("--timeout", type=float, default=10.0, help="connect timeout in seconds (default 10)")
    return parser.parse_args(argv)


def _show(message: object) -> None:
    if isinstance(message, bytes):
        print(f"[binary {len(message)} bytes] {message.hex()}", flush=True)
    else:
        print(message, flush=True)


def _start_stdin_reader(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[Optional[str]]:
    """Read standard input in a daemon thread (it never blocks the exit); ``None`` marks its end."""
    lines: asyncio.Queue[Optional[str]] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\r\n"))
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return lines


async def _pump_stdin(conn: WebSocketClientConnection, stop: asyncio.Event) -> None:
    lines = _start_stdin_reader(asyncio.get_running_loop())
    while True:
        line = await lines.get()
        if line is None:
            break
        try:
            await conn.write_message(line)
        except WebSocketClosedError:
            break
    stop.set()


async def _print_messages(conn: WebSocketClientConnection, stop: asyncio.Event) -> None:
    async for message in conn:
        _show(message)
    stop.set()


async def main(argv: Optional[list[str]] = None) -> int:
    args = _parse_args(argv)
    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep:
            print(f"error: --header needs NAME:VALUE, got {item!r}", file=sys.stderr)
            return 2
        headers[name.strip()] = value.strip()
    try:
        conn = await websocket_connect(
            args.url,
            subprotocols=args.subprotocol,
            headers=headers,
            connect_timeout=args.timeout,
            compression_options={} if args.compress else None,
        )
    except (WebSocketError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    except (NotImplementedError, RuntimeError):  # pragma: no cover - not on the main thread
        pass
    reader = asyncio.ensure_future(_print_messages(conn, stop))
    asyncio.ensure_future(_pump_stdin(conn, stop))
    await stop.wait()
    ended_by_peer = conn.closed
    conn.close(1000, "")
    try:
        await asyncio.wait_for(conn.wait_closed(), 10)
    except asyncio.TimeoutError:
        print("error: the server did not complete the close handshake", file=sys.stderr)
        return 1
    await asyncio.wait_for(reader, 5)
    if conn.close_code is None and ended_by_peer:
        print("error: the connection ended without a close handshake", file=sys.stderr)
        return 1
    if conn.close_code not in (1000, 1001, None):
        print(f"closed by the server with {conn.close_code} {conn.close_reason or ''}".rstrip(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
