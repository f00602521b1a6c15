"""Graceful shutdown: drain, stop accepting, close every WebSocket with 1001, wait for the handshakes.

::

    server = app.listen(8888)
    ...
    await tornado_websocket.shutdown(server, drain_delay=10)   # e.g. on SIGTERM

While :func:`shutdown` runs the process is *draining* (:func:`is_draining`):
:class:`~tornado_websocket.health.HealthHandler` answers 503 so that a load
balancer stops sending new clients, and new upgrades are refused with 503 and
``Retry-After`` (:func:`tornado_websocket.limits.admit`).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterable
from typing import Any

from tornado_websocket.connection import OPEN_CONNECTIONS
from tornado_websocket.frames import CloseCode

DEFAULT_RETRY_AFTER = 5


class _DrainState:
    """Whether :func:`shutdown` is running in this process, and the ``Retry-After`` it asks of new clients."""

    __slots__ = ("runs", "retry_after")

    def __init__(self) -> None:
        self.runs = 0  # shutdown() calls in progress (nested or on several loops)
        self.retry_after = DEFAULT_RETRY_AFTER


_DRAIN = _DrainState()


def is_draining() -> bool:
    """True while :func:`shutdown` runs in this process."""
    return _DRAIN.runs > 0


def retry_after() -> int:
    """Seconds a client refused while draining is asked to wait (``Retry-After``)."""
    return _DRAIN.retry_after


async def shutdown(
    *servers: Any,
    code: int = CloseCode.GOING_AWAY,
    reason: str = "server shutting down",
    timeout: float = 5.0,
    include_clients: bool = False,
    drain_delay: float = 0.0,
    retry_after: int = DEFAULT_RETRY_AFTER,
) -> int:
    """Drain, stop ``servers`` accepting, close every open server-side WebSocket, wait up to ``timeout``.

    The process drains from the call until it returns (:func:`is_draining`):
    health checks answer 503 and new upgrades are refused with 503 and
    ``Retry-After: retry_after``. For ``drain_delay`` seconds the servers
    still accept (so a load balancer sees the 503s of the health check and
    takes this process out) and open connections carry on; then ``servers``
    are stopped and the connections closed. ``servers`` are objects with a
    ``stop()`` method (``tornado.httpserver.HTTPServer`` as returned by
    ``Application.listen``). Each open connection gets a Close
    frame with ``code`` and ``reason``; the call returns once every one has
    completed its close handshake, or after ``timeout`` seconds, when those
    still open are dropped (their ``on_close`` has run when it returns). Only
    connections of the running event loop are touched. Client connections are closed too with
    ``include_clients``. Returns how many connections were closed. Raises
    ``ValueError`` for a code that may not be sent.
    """
    _DRAIN.runs += 1
    _DRAIN.retry_after = retry_after
    try:
        if drain_delay > 0:
            await asyncio.sleep(drain_delay)
        return await _close_all(servers, code, reason, timeout, include_clients)
    finally:
        _DRAIN.runs -= 1


async def _close_all(servers: tuple[Any, ...], code: int, reason: str, timeout: float, include_clients: bool) -> int:
    for server in servers:
        server.stop()
    loop = asyncio.get_running_loop()
    connections = [
        c
        for c in list(OPEN_CONNECTIONS)
        if c.event_loop is loop and not c.closed and (include_clients or not c.protocol.is_client)
    ]
    for connection in connections:
        connection.close(code, reason)
    waiters: Iterable[asyncio.Future[None]] = [c.wait_closed() for c in connections]
    if connections:
        _, pending = await asyncio.wait(waiters, timeout=timeout)
        if pending:
            for connection in connections:
                if not connection.closed:
                    connection.abort()
            # The stream runs its close callbacks (and so on_close) on the next loop turn.
            await asyncio.wait(pending, timeout=1.0)
    return len(connections)


async def shutdown_on_signal(
    *servers: Any, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM), **options: Any
) -> int:
    """Wait for one of ``signals`` (SIGINT, SIGTERM), then :func:`shutdown` ``servers``.

    ``options`` go to :func:`shutdown`; returns what it returns. Must run on
    the main thread (signal handlers are installed on the running loop).
    """
    loop = asyncio.get_running_loop()
    received = asyncio.Event()
    installed = list(signals)
    for sig in installed:
        loop.add_signal_handler(sig, received.set)
    try:
        await received.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return await shutdown(*servers, **options)
