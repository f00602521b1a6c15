"""The echo demo: the original EchoWebSocket on a normal Tornado Application.

Run ``python demos/echo.py`` and open http://localhost:8888/ .
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import tornado.web

import tornado_websocket

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tornado_websocket echo</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}#log{white-space:pre-wrap;border:1px solid #ccc;padding:.5em;min-height:10em}</style>
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


class PageHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(PAGE)


def make_app() -> tornado.web.Application:
    return tornado.web.Application([(r"/", PageHandler), (r"/websocket", EchoWebSocket)])


async def main() -> None:
    parser = argparse.ArgumentParser(description="tornado_websocket echo demo")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--address", default="127.0.0.1")
    args = parser.parse_args()
    server = make_app().listen(args.port, args.address)
    print(f"Echo demo on http://{args.address}:{args.port}/ (WebSocket at /websocket)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()


if __name__ == "__main__":
    asyncio.run(main())
