"""A Tornado server sharing a Redis-backed Hub, run as a separate OS process by ``test_hub.py``.

Usage: ``python hub_echo_server.py REDIS_URL``

Each WebSocket on ``/ws/<room>`` is subscribed to ``<room>``; once Redis
confirmed the subscription the connection is sent ``"ready"``, and every
message it sends is published to ``<room>`` (so it reaches the subscribers
of every process). The server listens on a free 127.0.0.1 port and prints
``PORT <n>`` once it accepts connections. It exits on SIGTERM, or when its
stdin closes (so it does not outlive a test process that died).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any, Union

import tornado.httpserver
import tornado.netutil
import tornado.web

from tornado_websocket import WebSocketHandler
from tornado_websocket.hub import Hub, RedisBackend


class RoomHandler(WebSocketHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub
        self.room = ""

    async def open(self, room: str) -> None:  # type: ignore[override]
        self.room = room
        await self.hub.subscribe(room, self)
        self.write_message("ready")

    async def on_message(self, message: Union[str, bytes]) -> None:  # type: ignore[override]
        await self.hub.publish(self.room, message)


async def main(redis_url: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def watch_stdin() -> None:
        sys.stdin.buffer.read()  # returns at EOF: the parent closed the pipe or died
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()

    hub = Hub(RedisBackend(redis_url, reconnect_min=0.05, reconnect_max=0.5))
    app = tornado.web.Application([(r"/ws/(\w+)", RoomHandler, {"hub": hub})])
    sockets: list[Any] = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    print(f"PORT {sockets[0].getsockname()[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        server.stop()
        await hub.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
