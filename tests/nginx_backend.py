"""A test-only backend for tests/test_nginx.py: the echo demo behind ``HTTPServer(app, xheaders=True)``.

Serves the handlers of ``demos/echo.py`` (its ``make_app()``, loaded from the
file) plus ``/whoami``: a WebSocket that sends one JSON message saying what
the handler sees of the request (``remote_ip``, the ``X-Real-IP``,
``X-Forwarded-For`` and ``X-Forwarded-Proto`` headers, ``request.protocol``,
``Host``, the address of the TCP peer, the process id). When a ``/whoami``
connection closes, one JSON line with the close code and reason the server
received goes to standard output.

Run ``python tests/nginx_backend.py --port P [--address 127.0.0.1]``; SIGTERM
or SIGINT shuts it down gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import tornado.httpserver
import tornado.web

import tornado_websocket

ROOT = Path(__file__).resolve().parent.parent


def load_demo() -> ModuleType:
    """Import ``demos/echo.py`` as a module (it is not part of a package)."""
    spec = importlib.util.spec_from_file_location("echo_demo", ROOT / "demos" / "echo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WhoAmI(tornado_websocket.WebSocketHandler):
    """Tells the client what the server sees of its request, then echoes like the demo."""

    peer: Optional[str] = None

    def prepare(self) -> None:
        # The HTTP connection (and with it the socket's address) is released at the upgrade.
        context = getattr(self.request.connection, "context", None)
        address = getattr(context, "address", None)
        self.peer = address[0] if isinstance(address, tuple) and address else None

    def open(self) -> None:
        request = self.request
        self.write_message(
            {
                "remote_ip": request.remote_ip,
                "x_real_ip": request.headers.get("X-Real-IP"),
                "x_forwarded_for": request.headers.get("X-Forwarded-For"),
                "x_forwarded_proto": request.headers.get("X-Forwarded-Proto"),
                "protocol": request.protocol,
                "host": request.headers.get("Host"),
                "peer": self.peer,
                "pid": os.getpid(),
            }
        )

    def on_message(self, message: Any) -> None:
        self.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        line = {"event": "close", "pid": os.getpid(), "code": self.close_code, "reason": self.close_reason}
        print(json.dumps(line), flush=True)


def make_app() -> tornado.web.Application:
    app: tornado.web.Application = load_demo().make_app()
    app.wildcard_router.add_rules([(r"/whoami", WhoAmI)])
    return app


async def main() -> None:
    parser = argparse.ArgumentParser(description="the echo demo with xheaders=True, for tests/test_nginx.py")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", default="127.0.0.1")
    args = parser.parse_args()
    server = tornado.httpserver.HTTPServer(make_app(), xheaders=True)
    server.listen(args.port, args.address)
    print(f"nginx backend (pid {os.getpid()}) on http://{args.address}:{args.port}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await tornado_websocket.shutdown(server, timeout=2.0)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
