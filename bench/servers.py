"""The benchmark's echo + broadcast servers, one library per ``--kind``.

``python bench/servers.py --kind ours`` binds 127.0.0.1 on a free port,
prints ``PORT <n>`` on stdout and serves until killed:

* ``/``: echo. Every text message comes back as text, every binary one as
  binary, written the way each library's documentation does it.
* ``/control``: text commands for the load generator, each answered with
  one text message:

  - ``COUNT``: how many echo connections the server holds now.
  - ``BROADCAST``: send one 128-byte binary message to every echo
    connection; the reply is the fan-out time measured inside the server
    with ``time.perf_counter`` around the loop, in microseconds, and how it
    was done (e.g. ``812.4 write_message-loop``).
  - ``FLOOR`` (ours only): the same fan-out as a bare loop of
    ``sock.send(frame)`` of one prebuilt frame on each connection's socket
    (``handler.ws_connection.stream.socket``), the floor any Python fan-out
    is measured against. Other kinds answer ``unsupported``.

Every kind accepts messages of up to 16 MiB, runs on the stock asyncio
event loop (``--loop uvloop``: on uvloop) and has keepalive pings off;
``--tls DIR`` serves wss:// with the certificate in DIR (TLS 1.3 only). Compression is off unless
``--compress`` is given (scenario 7): then the echo endpoint accepts
permessage-deflate with each library's default settings (ours and
tornado: ``get_compression_options()`` returns ``{}``; websockets:
``compression="deflate"``; aiohttp: ``compress=True``; picows has no
permessage-deflate and refuses to start).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import os
import signal
import socket
import sys
import time
import types
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scenarios import BROADCAST_PAYLOAD, MAX_MESSAGE_SIZE, raise_nofile_limit, server_tls_context  # noqa: E402

KINDS = ("ours", "tornado", "websockets", "aiohttp", "picows")


def listen_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(4096)  # capped by net.core.somaxconn
    sock.setblocking(False)
    return sock


def announce(sock: socket.socket) -> None:
    print(f"PORT {sock.getsockname()[1]}", flush=True)


def timed(loop: Callable[[], Any]) -> float:
    """Run ``loop()`` and return its duration in microseconds."""
    t0 = time.perf_counter()
    loop()
    return (time.perf_counter() - t0) * 1e6


# -- tornado_websocket ("ours") and tornado.websocket -------------------------


def find_broadcast(module: types.ModuleType) -> Optional[Callable[..., Any]]:
    """``tornado_websocket.broadcast(connections, message)`` if this version has one."""
    candidate: Any = getattr(module, "broadcast", None)
    if candidate is None:
        try:
            candidate = importlib.import_module(module.__name__ + ".broadcast")
        except ImportError:
            return None
    if isinstance(candidate, types.ModuleType):
        candidate = getattr(candidate, "broadcast", None)
    return candidate if callable(candidate) else None


async def serve_tornado_family(kind: str, sock: socket.socket, compress: bool, tls: Any) -> None:
    import tornado.httpserver
    import tornado.web

    if kind == "ours":
        import tornado_websocket as wsmod

        base: Any = wsmod.WebSocketHandler
        closed_error: Any = wsmod.WebSocketClosedError
        library_broadcast = find_broadcast(wsmod)
    else:
        import tornado.websocket as wsmod  # type: ignore[no-redef]

        base = wsmod.WebSocketHandler
        closed_error = wsmod.WebSocketClosedError
        library_broadcast = None

    clients: set[Any] = set()

    class EchoHandler(base):  # type: ignore[misc, valid-type]
        def get_compression_options(self) -> Optional[dict[str, Any]]:
            return {} if compress else None

        def open(self) -> None:
            clients.add(self)

        def on_message(self, m: Any) -> None:
            self.write_message(m, binary=isinstance(m, bytes))

        def on_close(self) -> None:
            clients.discard(self)

    broadcast_kwargs: dict[str, Any] = {}
    if library_broadcast is not None:
        try:
            if "binary" in inspect.signature(library_broadcast).parameters:
                broadcast_kwargs["binary"] = True
        except (TypeError, ValueError):
            pass

    def broadcast() -> str:
        if library_broadcast is not None:
            targets = list(clients)
            us = timed(lambda: library_broadcast(targets, BROADCAST_PAYLOAD, **broadcast_kwargs))
            return f"{us:.1f} tornado_websocket.broadcast()"

        def loop() -> None:
            for handler in list(clients):
                try:
                    handler.write_message(BROADCAST_PAYLOAD, binary=True)
                except closed_error:
                    pass

        return f"{timed(loop):.1f} write_message-loop"

    frame = b"\x82\x7e" + len(BROADCAST_PAYLOAD).to_bytes(2, "big") + BROADCAST_PAYLOAD

    def floor() -> str:
        if kind != "ours":
            return "unsupported"
        short = 0
        t0 = time.perf_counter()
        for handler in list(clients):
            connection = handler.ws_connection
            if connection is None:
                continue
            s = connection.stream.socket
            if s is None:
                continue
            try:
                n = s.send(frame)
            except BlockingIOError:
                n = 0
            except OSError:
                continue
            if n != len(frame):  # the socket buffer was full: let the stream send the rest
                short += 1
                connection.stream.write(frame[n:])
        us = (time.perf_counter() - t0) * 1e6
        return f"{us:.1f} sock.send-loop short={short}"

    def python_broadcast() -> str:
        """ours: broadcast() with the C send loop turned off (the pure-Python path, as without the extension)."""
        if kind != "ours" or library_broadcast is None:
            return "unsupported"
        import tornado_websocket.connection as connection_module

        saved = connection_module._send_frame_to_all
        connection_module._send_frame_to_all = None
        try:
            return broadcast().replace("broadcast()", "broadcast(), Python path")
        finally:
            connection_module._send_frame_to_all = saved

    class ControlHandler(base):  # type: ignore[misc, valid-type]
        def on_message(self, m: Any) -> None:
            if m == "COUNT":
                self.write_message(str(len(clients)))
            elif m == "BROADCAST":
                self.write_message(broadcast())
            elif m == "BROADCAST_PY":
                self.write_message(python_broadcast())
            elif m == "FLOOR":
                self.write_message(floor())
            else:
                self.write_message("unknown")

    app = tornado.web.Application(
        [(r"/", EchoHandler), (r"/control", ControlHandler)],
        websocket_max_message_size=MAX_MESSAGE_SIZE,
    )
    server = tornado.httpserver.HTTPServer(app, ssl_options=tls)
    server.add_socket(sock)
    announce(sock)
    await wait_for_signal()


# -- websockets -----------------------------------------------------------


async def serve_websockets(sock: socket.socket, compress: bool, tls: Any) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.exceptions import ConnectionClosed

    clients: set[ServerConnection] = set()

    async def control(ws: ServerConnection) -> None:
        async for m in ws:
            if m == "COUNT":
                await ws.send(str(len(clients)))
            elif m == "BROADCAST":
                us = timed(lambda: broadcast(clients, BROADCAST_PAYLOAD))
                await ws.send(f"{us:.1f} websockets.broadcast")
            elif m == "FLOOR":
                await ws.send("unsupported")
            else:
                await ws.send("unknown")

    async def handler(ws: ServerConnection) -> None:
        try:
            if ws.request is not None and ws.request.path == "/control":
                await control(ws)
                return
            clients.add(ws)
            try:
                async for m in ws:
                    await ws.send(m)
            finally:
                clients.discard(ws)
        except ConnectionClosed:
            pass

    async with serve(
        handler,
        sock=sock,
        max_size=MAX_MESSAGE_SIZE,
        compression="deflate" if compress else None,
        ping_interval=None,
        backlog=4096,
        ssl=tls,
    ):
        announce(sock)
        await wait_for_signal()


# -- aiohttp --------------------------------------------------------------


async def serve_aiohttp(sock: socket.socket, compress: bool, tls: Any) -> None:
    from aiohttp import WSMsgType, web

    clients: set[web.WebSocketResponse] = set()

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_SIZE, compress=compress)
        await ws.prepare(request)
        clients.add(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    await ws.send_str(msg.data)
        finally:
            clients.discard(ws)
        return ws

    async def fan_out() -> float:
        t0 = time.perf_counter()
        for ws in list(clients):
            try:
                # Returns without suspending unless the socket buffer is full.
                await ws.send_bytes(BROADCAST_PAYLOAD)
            except (ConnectionError, RuntimeError):
                pass
        return (time.perf_counter() - t0) * 1e6

    async def control(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_SIZE, compress=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            if msg.data == "COUNT":
                await ws.send_str(str(len(clients)))
            elif msg.data == "BROADCAST":
                us = await fan_out()
                await ws.send_str(f"{us:.1f} send_bytes-loop")
            elif msg.data == "FLOOR":
                await ws.send_str("unsupported")
            else:
                await ws.send_str("unknown")
        return ws

    app = web.Application(client_max_size=MAX_MESSAGE_SIZE)
    app.router.add_get("/", echo)
    app.router.add_get("/control", control)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock, backlog=4096, ssl_context=tls)
    await site.start()
    announce(sock)
    try:
        await wait_for_signal()
    finally:
        await runner.cleanup()


# -- picows ---------------------------------------------------------------


async def serve_picows(sock: socket.socket, tls: Any) -> None:
    from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

    clients: set[WSTransport] = set()

    class Echo(WSListener):  # type: ignore[misc]
        def on_ws_connected(self, transport: WSTransport) -> None:
            clients.add(transport)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            msg_type = frame.msg_type
            if msg_type == WSMsgType.BINARY:
                transport.send(WSMsgType.BINARY, frame.get_payload_as_memoryview())
            elif msg_type == WSMsgType.TEXT:
                # Decode (validating UTF-8) like the other libraries do before on_message.
                transport.send(WSMsgType.TEXT, frame.get_payload_as_utf8_text())
            elif msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            clients.discard(transport)

    def fan_out() -> None:
        for transport in list(clients):
            transport.send(WSMsgType.BINARY, BROADCAST_PAYLOAD)

    class Control(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(WSCloseCode.OK)
                transport.disconnect()
                return
            if frame.msg_type != WSMsgType.TEXT:
                return
            m = frame.get_payload_as_ascii_text()
            if m == "COUNT":
                reply = str(len(clients))
            elif m == "BROADCAST":
                reply = f"{timed(fan_out):.1f} transport.send-loop"
            elif m == "FLOOR":
                reply = "unsupported"
            else:
                reply = "unknown"
            transport.send(WSMsgType.TEXT, reply.encode())

    def factory(request: WSUpgradeRequest) -> WSListener:
        return Control() if request.path == b"/control" else Echo()

    server = await ws_create_server(
        factory,
        sock=sock,
        max_frame_size=MAX_MESSAGE_SIZE,
        websocket_handshake_timeout=30,
        backlog=4096,
        ssl=tls,
    )
    announce(sock)
    try:
        await wait_for_signal()
    finally:
        server.close()


# -- main -----------------------------------------------------------------


#: Seconds a server lives at most, so a forgotten one ends by itself (run.py kills it long before).
LIFETIME = 900.0


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), LIFETIME)
    except asyncio.TimeoutError:
        print(f"servers.py: exiting after {LIFETIME:.0f} s", file=sys.stderr)


async def main(kind: str, host: str, compress: bool, tls_dir: Optional[str]) -> None:
    if compress and kind == "picows":
        raise SystemExit("servers.py: picows has no permessage-deflate (--compress)")
    sock = listen_socket(host)
    tls = server_tls_context(tls_dir) if tls_dir else None
    if kind in ("ours", "tornado"):
        await serve_tornado_family(kind, sock, compress, tls)
    elif kind == "websockets":
        await serve_websockets(sock, compress, tls)
    elif kind == "aiohttp":
        await serve_aiohttp(sock, compress, tls)
    elif kind == "picows":
        await serve_picows(sock, tls)
    else:
        raise SystemExit(f"unknown kind {kind!r}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--lifetime", type=float, default=LIFETIME, help="exit after this many seconds")
    parser.add_argument("--compress", action="store_true", help="accept permessage-deflate on / (library defaults)")
    parser.add_argument("--tls", metavar="DIR", help="serve wss:// with DIR/server.pem (TLS 1.3 only)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="event loop (default asyncio)")
    args = parser.parse_args()
    LIFETIME = args.lifetime
    raise_nofile_limit()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args.kind, args.host, args.compress, args.tls))
    else:
        asyncio.run(main(args.kind, args.host, args.compress, args.tls))
