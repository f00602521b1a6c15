"""The bounded queue behind the pull API (``await receive_message()``, ``async for``).

Shared by the server handler and the client connection. When it holds
``max_size`` messages, :meth:`MessageInbox.put` returns a future that
completes once a message is taken, and the connection pauses reading from
the socket until then.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Optional, Union

from tornado.ioloop import IOLoop

Data = Union[str, bytes]


class MessageInbox:
    """Messages waiting for a consumer, and consumers waiting for a message."""

    __slots__ = ("max_size", "_loop", "_messages", "_waiters", "_space", "_closed")

    def __init__(self, max_size: int = 32) -> None:
        self.max_size = max_size
        self._loop: asyncio.AbstractEventLoop = IOLoop.current().asyncio_loop  # type: ignore[attr-defined]
        self._messages: collections.deque[Data] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[Optional[Data]]] = collections.deque()
        self._space: Optional[asyncio.Future[None]] = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._messages)

    def put(self, message: Data) -> Optional[asyncio.Future[None]]:
        """Hand ``message`` to a waiting consumer or queue it.

        Returns a future to await before reading more when the queue is full,
        ``None`` otherwise.
        """
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(message)
                return None
        self._messages.append(message)
        if len(self._messages) >= self.max_size:
            if self._space is None or self._space.done():
                self._space = self._loop.create_future()
            return self._space
        return None

    def get(self) -> asyncio.Future[Optional[Data]]:
        """A future of the next message; of ``None`` once closed and drained."""
        future: asyncio.Future[Optional[Data]] = self._loop.create_future()
        if self._messages:
            future.set_result(self._messages.popleft())
            self._release_space()
        elif self._closed:
            future.set_result(None)
        else:
            waiters = self._waiters
            while waiters and waiters[0].done():  # readers that gave up (a timeout cancelled them)
                waiters.popleft()
            waiters.append(future)
        return future

    def drain(self) -> list[Data]:
        """Take every queued message at once."""
        messages = list(self._messages)
        self._messages.clear()
        self._release_space()
        return messages

    def close(self) -> None:
        """No more messages will come: waiting consumers get ``None``, a paused reader resumes."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        space = self._space
        self._space = None
        if space is not None and not space.done():
            space.set_result(None)

    def _release_space(self) -> None:
        space = self._space
        if space is not None and len(self._messages) < self.max_size:
            self._space = None
            if not space.done():
                space.set_result(None)
