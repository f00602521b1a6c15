"""Pings and their pongs: round-trip times, the keepalive timer and its timeout.

A :class:`Keepalive` belongs to one connection and is made the first time
it is needed (a ``ping()`` call, or a ping interval), so an idle connection
without keepalive pays nothing for it. It never writes: it asks its
connection to send a ping and tells it when a pong is overdue.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Optional

from tornado.ioloop import IOLoop

from tornado_websocket.errors import WebSocketClosedError, WebSocketError
from tornado_websocket.metrics import STATS
from tornado_websocket.transport import silence

#: Pings that may wait for a pong at once; past it the oldest fails.
MAX_PENDING_PINGS = 64


class Keepalive:
    """The pings of one connection that wait for a pong, and its keepalive timer.

    ``send_ping()`` sends an empty ping through the connection and returns
    the future :meth:`expect_pong` gave for it, or ``None`` when the
    connection is closing (the timer then stops). ``timed_out()`` is called
    when a keepalive ping got no pong within ``timeout`` seconds.
    """

    __slots__ = ("_loop", "interval", "timeout", "_send_ping", "_timed_out", "_pings", "_timer")

    def __init__(
        self,
        loop: IOLoop,
        interval: float,
        timeout: float,
        send_ping: Callable[[], Optional[asyncio.Future[float]]],
        timed_out: Callable[[], None],
    ) -> None:
        self._loop = loop
        self.interval = interval
        self.timeout = timeout
        self._send_ping = send_ping
        self._timed_out = timed_out
        # Pings sent that wait for a pong: (payload, future, time sent).
        self._pings: list[tuple[bytes, asyncio.Future[float], float]] = []
        self._timer: Optional[object] = None

    @property
    def pending(self) -> int:
        """How many pings wait for a pong."""
        return len(self._pings)

    def start(self) -> None:
        """Send a ping every ``interval`` seconds from now on (nothing if the interval is 0)."""
        if self.interval > 0 and self._timer is None:
            self._timer = self._loop.call_later(self.interval, self._tick)

    def expect_pong(self, payload: bytes) -> asyncio.Future[float]:
        """Record a ping with ``payload`` that is being sent; the future gives its round-trip time in seconds.

        When :data:`MAX_PENDING_PINGS` already wait, the oldest fails with
        :class:`~tornado_websocket.errors.WebSocketError`.
        """
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        pings = self._pings
        if len(pings) >= MAX_PENDING_PINGS:  # a peer that never answers: forget the oldest
            _, oldest, _ = pings.pop(0)
            if not oldest.done():
                oldest.set_exception(WebSocketError("no pong came before more pings were sent"))
                silence(oldest)
        pings.append((payload, future, self._loop.time()))
        return future

    def pong_received(self, payload: bytes) -> None:
        """A pong arrived: it answers the ping it matches and every earlier one (unsolicited pongs answer none)."""
        pings = self._pings
        if not any(sent == payload for sent, _, _ in pings):
            return
        now = self._loop.time()
        while pings:
            sent, future, sent_at = pings.pop(0)
            if not future.done():
                future.set_result(now - sent_at)
                STATS.observe_ping_rtt(now - sent_at)
            if sent == payload:
                break

    def stop(self) -> None:
        """The connection is gone: stop the timer; waiting pings fail with WebSocketClosedError."""
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
            self._timer = None
        pings, self._pings = self._pings, []
        for _, future, _ in pings:
            if not future.done():
                future.set_exception(WebSocketClosedError("the connection closed before the pong"))
                silence(future)

    def _tick(self) -> None:
        self._timer = None
        future = self._send_ping()
        if future is None:
            return  # closing: no more keepalive
        if self.timeout > 0:
            deadline = self._loop.call_later(self.timeout, self._check_answered, future)
            future.add_done_callback(lambda _: self._loop.remove_timeout(deadline))
        self._timer = self._loop.call_later(self.interval, self._tick)

    def _check_answered(self, future: asyncio.Future[float]) -> None:
        if not future.done():
            self._timed_out()
