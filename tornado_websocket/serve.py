"""``serve(app, port, processes=N)``: run an application in N processes sharing one port.

::

    hub = Hub(RedisBackend("redis://127.0.0.1:6379/0"))
    app = Application([(r"/channels", ChannelsHandler, {"hub": hub})])
    serve(app, 8888, processes=4)          # blocks until SIGINT or SIGTERM

The port is bound first in the parent (``bind_sockets(reuse_port=True)``,
which also resolves port 0), then N workers are forked, as with Tornado's
``fork_processes``; each binds its own ``SO_REUSEPORT`` socket on that port,
so the kernel spreads new connections evenly over them. The parent forwards SIGINT
and SIGTERM to the workers, and starts a worker again when one dies from
anything else (at most ``max_restarts`` times). Each worker runs its own
event loop and, on SIGINT or SIGTERM, :func:`~tornado_websocket.shutdown.shutdown`
(1001 to every client, which reconnects elsewhere).

With N > 1 every hub the application uses (``channels_hub`` in its settings,
or a ``hub`` in a route's arguments; :class:`~tornado_websocket.channels.ChannelsHandler`
without one uses the in-process default) must have a shared backend (Redis):
in-process hubs would split the clients into N separate worlds.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import sys
from typing import Any, Awaitable, Callable, Optional

import tornado.httpserver
import tornado.netutil
import tornado.web

from tornado_websocket.shutdown import shutdown_on_signal

OnStart = Callable[[tornado.httpserver.HTTPServer, int], Optional[Awaitable[None]]]


def _hubs(app: tornado.web.Application) -> tuple[list[Any], bool]:
    """The hubs ``app`` names, and whether a ChannelsHandler route uses the default (in-process) hub."""
    from tornado_websocket.channels import ChannelsHandler
    from tornado_websocket.hub import Hub

    hubs: list[Any] = []
    uses_default = False
    setting = app.settings.get("channels_hub")
    if isinstance(setting, Hub):
        hubs.append(setting)
    pending = [app.wildcard_router, app.default_router]
    while pending:
        router = pending.pop()
        for rule in getattr(router, "rules", []):
            target = rule.target
            if hasattr(target, "rules"):
                pending.append(target)
                continue
            kwargs = rule.target_kwargs or {}
            found = [value for value in kwargs.values() if isinstance(value, Hub)]
            hubs.extend(found)
            if isinstance(target, type) and issubclass(target, ChannelsHandler) and not found and setting is None:
                uses_default = True
    return hubs, uses_default


def check_shared(app: tornado.web.Application, processes: int) -> None:
    """Raise ``ValueError`` if ``processes`` > 1 and a hub of ``app`` is not shared between processes."""
    if processes <= 1:
        return
    hubs, uses_default = _hubs(app)
    if uses_default:
        raise ValueError(
            f"processes={processes} needs a shared backend: a ChannelsHandler route has no hub "
            "(give it hub=Hub(RedisBackend(url)) or set channels_hub)"
        )
    for hub in hubs:
        if not getattr(hub.backend, "shared", False):
            raise ValueError(
                f"processes={processes} needs a shared backend, but a hub uses {type(hub.backend).__name__} "
                "(in-process); use tornado_websocket.channels_redis.RedisBackend"
            )


async def _worker(app: tornado.web.Application, sockets: list[socket.socket], task_id: int, on_start: Any) -> None:
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    if on_start is not None:
        result = on_start(server, task_id)
        if result is not None:
            await result
    await shutdown_on_signal(server)


def serve(
    app: tornado.web.Application,
    port: int,
    processes: int = 1,
    address: str = "127.0.0.1",
    *,
    max_restarts: int = 100,
    on_start: Optional[OnStart] = None,
) -> None:
    """Serve ``app`` on ``address:port`` in ``processes`` processes until SIGINT or SIGTERM (blocks).

    ``on_start(server, task_id)`` (may be async) runs in each worker once it
    listens; ``task_id`` is 0 to N-1 (0 with one process). Call it before
    any event loop runs (it forks). Raises ``ValueError`` when N > 1 and a
    hub is in-process (see the module docstring), ``OSError`` when the port
    cannot be bound, and ``RuntimeError`` when workers died more than
    ``max_restarts`` times.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, not {processes}")
    check_shared(app, processes)
    sockets = tornado.netutil.bind_sockets(port, address, reuse_port=processes > 1)
    if processes == 1:
        asyncio.run(_worker(app, sockets, 0, on_start))
        return
    port = sockets[0].getsockname()[1]  # port 0 chose one: every worker takes the same
    task_id = _fork(processes, max_restarts, sockets)
    if task_id is None:
        return
    # Each worker listens on its own SO_REUSEPORT socket: the kernel spreads new connections evenly.
    own = tornado.netutil.bind_sockets(port, address, reuse_port=True)
    for sock in sockets:
        sock.close()
    asyncio.run(_worker(app, own, task_id, on_start))
    sys.exit(0)


def _fork(processes: int, max_restarts: int, sockets: list[socket.socket]) -> Optional[int]:
    """Fork the workers; in a worker return its task id, in the parent supervise and return None once all ended.

    The parent closes ``sockets`` once the first workers are forked (they bind their own).
    """
    children: dict[int, int] = {}
    stopping = False

    def start(task_id: int) -> bool:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            return True
        children[pid] = task_id
        return False

    def forward(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for task_id in range(processes):
            if start(task_id):
                return task_id
        for sock in sockets:
            sock.close()  # the workers bound their own; connections must not wait in this one
        restarts = 0
        while children:
            try:
                pid, status = os.wait()
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            task_id = children.pop(pid, -1)
            if task_id < 0 or stopping:
                continue
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                continue
            restarts += 1
            if restarts > max_restarts:
                forward(signal.SIGTERM, None)
                raise RuntimeError(f"workers died {restarts} times; giving up")
            if start(task_id):
                return task_id
        return None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
