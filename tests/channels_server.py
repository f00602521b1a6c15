"""A ChannelsHandler server run as a separate OS process by the channels fault tests.

Usage: ``python channels_server.py [--redis URL] [--presence-ttl S] [--address A] [--port P ...]``

Serves ``ChannelsHandler`` on ``/channels`` with a Redis backend (or the
in-process one without ``--redis``), on each ``--port`` (0 by default: a
free one) of ``--address`` (127.0.0.1 by default; the lossy-link test runs
it inside a network namespace). Prints ``PORTS p1 p2...`` once it accepts
connections. Exits on SIGTERM (closing clients with 1001), or when its stdin
closes (so it does not outlive a test that died); SIGKILL is the fault the
tests inject.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading

import tornado.httpserver
import tornado.netutil
import tornado.web

from tornado_websocket import ChannelsHandler, Hub
from tornado_websocket.shutdown import shutdown


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def watch_stdin() -> None:
        sys.stdin.buffer.read()  # returns at EOF: the parent closed the pipe or died
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)

    if args.redis:
        from tornado_websocket.channels_redis import RedisBackend

        hub = Hub(RedisBackend(args.redis, reconnect_min=0.05, reconnect_max=0.5, presence_ttl=args.presence_ttl))
    else:
        hub = Hub()
    options = {"hub": hub, "publish_rate": 1e6, "publish_burst": 10**6}
    app = tornado.web.Application([(r"/channels", ChannelsHandler, options)])
    server = tornado.httpserver.HTTPServer(app)
    ports = []
    for port in args.port or [0]:
        sockets = tornado.netutil.bind_sockets(port, args.address)
        server.add_sockets(sockets)
        ports.append(sockets[0].getsockname()[1])
    print("PORTS " + " ".join(map(str, ports)), flush=True)
    try:
        await stop.wait()
    finally:
        await shutdown(server, timeout=2)
        await hub.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis")
    parser.add_argument("--presence-ttl", type=float, default=1.0)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, action="append")
    asyncio.run(main(parser.parse_args()))
