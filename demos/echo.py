"""The echo demo: the original EchoWebSocket on a normal Tornado Application.

Run ``python demos/echo.py`` and open http://localhost:8888/ . The page talks
to the seed's ``EchoWebSocket`` at ``/websocket``; ``/echo`` (and ``/`` for a
WebSocket client) echo messages exactly, for conformance suites such as
Autobahn|Testsuite.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import tornado.web

import tornado_websocket

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tornado_websocket echo</title>
<style>
body { font-family: sans-serif; max-width: 40em; margin: 2em auto }
#log { white-space: pre-wrap; border: 1px solid #ccc; padding: .5em; min-height: 10em }
</style>
</head><body>
<h1>Echo</h1>
<form id="form"><input id="text" size="40" autofocus placeholder="Type a message"> <button>Send</button></form>
<p id="status">connecting…</p>
<div id="log"></div>
<script>
const log = document.getElementById("log");
const status = document.getElementById("status");
function show(line) { log.textContent += line + "\\n"; }
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/websocket");
ws.onopen = () => { status.textContent = "connected"; };
ws.onclose = (e) => { status.textContent = "closed (" + e.code + ")"; };
ws.onmessage = (e) => show(e.data);
document.getElementById("form").onsubmit = (e) => {
  e.preventDefault();
  const input = document.getElementById("text");
  if (ws.readyState === WebSocket.OPEN && input.value) { ws.send(input.value); input.value = ""; }
};
</script>
</body></html>
"""


class EchoWebSocket(tornado_websocket.WebSocketHandler):
    def open(self):
        self.receive_message(self.on_message)

    def on_message(self, message):
        self.write_message("You said: " + message)


class ExactEcho(tornado_websocket.WebSocketHandler):
    """Sends back every message as it came (text as text, binary as binary), for conformance suites.

    permessage-deflate is accepted, and messages up to 64 MiB.
    """

    def get_compression_options(self) -> dict[str, Any]:
        return {}

    @property
    def max_message_size(self) -> int:
        return 64 * 1024 * 1024

    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


class CallbackEcho(ExactEcho):
    """The exact echo, receiving with the seed's ``receive_message(callback)``."""

    def open(self) -> None:
        self.receive_message(self.echo)

    def echo(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


class CoroutineEcho(ExactEcho):
    """The exact echo with a coroutine ``on_message`` that awaits each write."""

    async def on_message(self, message: str | bytes) -> None:  # type: ignore[override]
        await self.write_message(message, binary=isinstance(message, bytes))


class PullEcho(ExactEcho):
    """The exact echo pulling with ``await self.receive_message()`` in a task started by ``open()``."""

    def open(self) -> None:
        self.task = asyncio.ensure_future(self.pump())

    async def pump(self) -> None:
        while (message := await self.receive_message()) is not None:
            await self.write_message(message, binary=isinstance(message, bytes))

    on_message = tornado_websocket.WebSocketHandler.on_message  # the default: queue for receive_message()


class AsyncForEcho(PullEcho):
    """The exact echo pulling with ``async for message in self``."""

    async def pump(self) -> None:
        async for message in self:
            await self.write_message(message, binary=isinstance(message, bytes))


#: The exact echo in every way of receiving messages: ``/echo/<mode>``.
ECHO_MODES = {
    "push": ExactEcho,
    "callback": CallbackEcho,
    "coroutine": CoroutineEcho,
    "pull": PullEcho,
    "async-for": AsyncForEcho,
}


class PageOrEcho(ExactEcho):
    """``/``: the demo page for a browser, the exact echo for a WebSocket client."""

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if self.request.headers.get("Upgrade", "").lower() == "websocket":
            await super().get(*args, **kwargs)
            return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(PAGE)


def make_app() -> tornado.web.Application:
    routes: list[Any] = [
        (r"/", PageOrEcho),
        (r"/websocket", EchoWebSocket),
        (r"/echo", ExactEcho),
        (r"/metrics", tornado_websocket.MetricsHandler),  # Prometheus text format
        (r"/health", tornado_websocket.HealthHandler),  # 503 while shutting down
    ]
    routes += [(rf"/echo/{mode}", handler) for mode, handler in ECHO_MODES.items()]
    return tornado.web.Application(routes)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="tornado_websocket echo demo")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--address", default="localhost", help="address to listen on (default: localhost)")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio", help="the event loop")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    server = make_app().listen(args.port, args.address)
    print(
        f"Echo demo on http://{args.address}:{args.port}/ : the seed EchoWebSocket at /websocket, "
        "an exact echo (permessage-deflate, 64 MiB messages) at /echo and at / for WebSocket clients, "
        "and at /echo/{" + ",".join(ECHO_MODES) + "} in each way of receiving; /metrics, /health",
        flush=True,
    )
    closed = await tornado_websocket.shutdown_on_signal(server, timeout=5.0)
    print(f"Stopped; closed {closed} WebSocket connection(s) with 1001", flush=True)


def run_on(loop: str, main: Any) -> None:
    """Run the coroutine ``main`` on ``loop``, ``asyncio`` or ``uvloop`` (which must be installed)."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


if __name__ == "__main__":
    arguments = parse_arguments()
    run_on(arguments.loop, main(arguments))
