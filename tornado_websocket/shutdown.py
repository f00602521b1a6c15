"""Graceful shutdown: stop accepting, close every WebSocket with 1001, wait for the handshakes.

::

    server = app.listen(8888)
    ...
    await tornado_websocket.shutdown(server)   # e.g. on SIGTERM
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterable
from typing import Any

from tornado_websocket.connection import OPEN_CONNECTIONS
from tornado_websocket.frames import CloseCode


async def shutdown(
    *servers: Any,
    code: int = CloseCode.GOING_AWAY,
    reason: str = "server shutting down",
    timeout: float = 5.0,
    include_clients: bool = False,
) -> int:
    """Stop ``servers`` accepting, close every open server-side WebSocket, wait up to ``timeout``.

    ``servers`` are objects with a ``stop()`` method (``tornado.httpserver.HTTPServer``
    as returned by ``Application.listen``). Each open connection gets a Close
    frame with ``code`` and ``reason``; the call returns once every one has
    completed its close handshake, or after ``timeout`` seconds, when those
    still open are dropped (their ``on_close`` has run when it returns). Only
    connections of the running event loop are touched. Client connections are closed too with
    ``include_clients``. Returns how many connections were closed. Raises
    ``ValueError`` for a code that may not be sent.
    """
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
