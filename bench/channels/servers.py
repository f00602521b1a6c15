"""Scenario 11's servers: one process of either library, sharing one channel through Redis.

``python bench/channels/servers.py --kind ours|socketio --redis URL`` binds
127.0.0.1 on a free port (or ``--port``), prints ``PORT <n>`` once listening
and serves until killed (or ``--max-seconds`` pass). Both run on Tornado's
stock asyncio event loop with WebSocket keepalive off and log warnings only.

* ``ours``: :class:`tornado_websocket.channels.ChannelsHandler` at
  ``/channels`` on a Redis hub: clients send ``{"op": "subscribe",
  "channel": "bench"}`` and ``{"op": "publish", "channel": "bench", "data":
  ...}``.
* ``socketio``: ``socketio.AsyncServer(async_mode="tornado",
  client_manager=socketio.AsyncRedisManager(url))`` at ``/socket.io/``
  (WebSocket transport only): the event ``subscribe`` enters the room
  ``bench`` and answers ``subscribed``; the event ``publish`` does
  ``await sio.emit("message", data, room="bench")``, which reaches the
  room's members in every process through Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

import tornado.web

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scenarios import raise_nofile_limit  # type: ignore[import-not-found]  # noqa: E402

CHANNEL = "bench"
KINDS = ("ours", "socketio")


def ours_app(redis_url: str) -> tornado.web.Application:
    from tornado_websocket.channels import ChannelsHandler
    from tornado_websocket.channels_redis import RedisBackend
    from tornado_websocket.hub import Hub

    hub = Hub(RedisBackend(redis_url, prefix="bench11:"))
    # The publisher sends far more than a chat user: lift the per-connection publish limit.
    limits = {"hub": hub, "publish_rate": 1e9, "publish_burst": 1_000_000}
    return tornado.web.Application([(r"/channels", ChannelsHandler, limits)], websocket_ping_interval=0)


def socketio_app(redis_url: str) -> tornado.web.Application:
    import socketio  # type: ignore[import-untyped]

    manager = socketio.AsyncRedisManager(redis_url, channel="bench11-socketio")
    sio = socketio.AsyncServer(
        async_mode="tornado",
        client_manager=manager,
        transports=["websocket"],
        cors_allowed_origins="*",
        max_http_buffer_size=1 << 20,
    )

    @sio.on("subscribe")  # type: ignore[untyped-decorator,unused-ignore]
    async def subscribe(sid: str, room: Any) -> None:
        await sio.enter_room(sid, CHANNEL)
        await sio.emit("subscribed", CHANNEL, to=sid)

    @sio.on("publish")  # type: ignore[untyped-decorator,unused-ignore]
    async def publish(sid: str, data: Any) -> None:
        await sio.emit("message", data, room=CHANNEL)

    return tornado.web.Application([(r"/socket.io/", socketio.get_tornado_handler(sio))])


async def serve(kind: str, redis_url: str, port: int, max_seconds: float) -> None:
    app = ours_app(redis_url) if kind == "ours" else socketio_app(redis_url)
    server = app.listen(port, "127.0.0.1", backlog=4096)
    bound = next(iter(server._sockets.values())).getsockname()[1]
    print(f"PORT {bound}", flush=True)
    await asyncio.sleep(max_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--redis", required=True, metavar="URL")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=900.0, help="exit by then even if nobody kills us")
    args = parser.parse_args()
    raise_nofile_limit()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.kind, args.redis, args.port, args.max_seconds))


if __name__ == "__main__":
    main()
