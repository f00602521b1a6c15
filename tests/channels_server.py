"""A ChannelsHandler server run as a separate OS process by the channels fault tests.

Usage: ``python channels_server.py [--redis URL] [--presence-ttl S] [--address A] [--port P ...] [--processes N]``

Serves ``ChannelsHandler`` on ``/channels`` with a Redis backend (or the
in-process one without ``--redis``), on each ``--port`` (0 by default: a
free one) of ``--address`` (127.0.0.1 by default; the lossy-link test runs
it inside a network namespace). Prints ``PORTS p1 p2...`` once it accepts
connections. Exits on SIGTERM (closing clients with 1001), or when its stdin
closes (so it does not outlive a test that died); SIGKILL is the fault the
tests inject. With ``--processes N`` it runs ``tornado_websocket.serve`` on
the one ``--port`` instead: each worker prints ``WORKER <task id> <pid>``,
and SIGTERM to the parent stops them all. ``GET /pid`` answers the pid of
the process that served it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading

import tornado.httpserver
import tornado.netutil
import tornado.web

import tornado_websocket
from tornado_websocket import ChannelsHandler, Hub
from tornado_websocket.shutdown import shutdown


class PidHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish(str(os.getpid()))


def make_hub(args: argparse.Namespace) -> Hub:
    if args.redis:
        from tornado_websocket.channels_redis import RedisBackend

        return Hub(RedisBackend(args.redis, reconnect_min=0.05, reconnect_max=0.5, presence_ttl=args.presence_ttl))
    return Hub()


def make_app(hub: Hub) -> tornado.web.Application:
    options = {"hub": hub, "publish_rate": 1e6, "publish_burst": 10**6}
    return tornado.web.Application([(r"/channels", ChannelsHandler, options), (r"/pid", PidHandler)])


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def watch_stdin() -> None:
        sys.stdin.buffer.read()  # returns at EOF: the parent closed the pipe or died
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)

    hub = make_hub(args)
    app = make_app(hub)
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
    parser.add_argument("--processes", type=int, default=0)
    arguments = parser.parse_args()
    if arguments.processes:

        def started(server: tornado.httpserver.HTTPServer, task_id: int) -> None:
            os.write(1, f"WORKER {task_id} {os.getpid()}\n".encode())  # one write: workers share the pipe

        tornado_websocket.serve(
            make_app(make_hub(arguments)),
            arguments.port[0],
            processes=arguments.processes,
            address=arguments.address,
            on_start=started,
        )
    else:
        asyncio.run(main(arguments))
