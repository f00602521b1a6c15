"""Write batching: the frames produced while one read is dispatched leave together.

While a connection dispatches the events of one read, every frame it
writes joins a :class:`WriteBatch`; at the end of the read (or once the
batch is :data:`FLUSH_AFTER` old, so that slow handlers do not hold finished
replies back) the batch leaves with one system call: joined into one
``bytes`` when that is cheaper than a gather, else as one ``sendmsg`` of
its parts. Every frame of a batch shares one future, which completes when
the kernel has the bytes.

The rule for fairness is elsewhere and single: a connection dispatches at
most ``YIELD_AFTER_EVENTS`` events before yielding to the event loop (see
:mod:`tornado_websocket.connection`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Optional

from tornado_websocket.transport import MAX_IOVEC

#: No frame waits in a batch longer than this (seconds) behind the handling of later messages.
FLUSH_AFTER = 100e-6
#: Payloads from this size on are written without joining them to their header, and a batch
#: holding this many bytes in at most MAX_IOVEC parts is gathered instead of joined.
GATHER_MIN_BYTES = 64 * 1024

clock = time.perf_counter


class WriteBatch(list[bytes]):
    """The frames (``bytes``) written during one dispatch, in order; a list, so adding one is ``append``.

    ``future`` is the future every frame of the batch returned (made on
    first need, see :meth:`future_for`); ``flush_at`` the
    :data:`clock` time after which the batch should leave.
    """

    __slots__ = ("future", "flush_at")

    def __init__(self) -> None:
        super().__init__()
        self.future: Optional[asyncio.Future[None]] = None
        self.flush_at = clock() + FLUSH_AFTER

    def future_for(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """The future shared by the frames of this batch."""
        future = self.future
        if future is None:
            future = self.future = loop.create_future()
        return future

    def is_due(self) -> bool:
        """True when frames wait and the batch is :data:`FLUSH_AFTER` old."""
        return bool(self) and clock() >= self.flush_at

    def parts(self) -> list[bytes]:
        """What to hand to the transport: the frames joined into one, or as they are when gathering is cheaper."""
        if len(self) > 1 and (len(self) > MAX_IOVEC or sum(map(len, self)) < GATHER_MIN_BYTES):
            return [b"".join(self)]  # many small frames: one copy beats a long iovec
        return list(self)
