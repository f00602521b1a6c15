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

#: A message: ``str`` for text, ``bytes`` for binary.
Data = Union[str, bytes]


class MessageInbox:
    """Messages waiting for a consumer, and consumers waiting for a message."""

    __slots__ = ("max_size", "_loop", "_messages", "_waiters", "_space", "_closed", "_used", "_caught_up")

    def __init__(self, max_size: int = 32) -> None:
        self.max_size = max_size
        self._loop: asyncio.AbstractEventLoop = IOLoop.current().asyncio_loop  # type: ignore[attr-defined]
        self._messages: collections.deque[Data] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[Optional[Data]]] = collections.deque()
        self._space: Optional[asyncio.Future[None]] = None
        self._closed = False
        self._used = False  # a message was put
        self._caught_up: Optional[asyncio.Future[None]] = None  # see unanswered()

    def __len__(self) -> int:
        return len(self._messages)

    def put(self, message: Data) -> Optional[asyncio.Future[None]]:
        """Hand ``message`` to a waiting consumer or queue it.

        Returns a future to await before reading more when the queue is full,
        ``None`` otherwise.
        """
        self._used = True
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
            caught_up = self._caught_up
            if caught_up is not None:
                self._caught_up = None
                if not caught_up.done():
                    caught_up.set_result(None)
        return future

    def unanswered(self) -> Optional[asyncio.Future[None]]:
        """``None`` if the consumer is done with every message put so far, else a future for when it is.

        Done means: it asks for the next message while none is queued (so it
        has taken, and had its turn to answer, every earlier one), or the
        inbox is closed, or no message was ever put (nobody pulls).
        """
        if self._closed or not self._used:
            return None
        if not self._messages and any(not w.done() for w in self._waiters):
            return None
        if self._caught_up is None:
            self._caught_up = self._loop.create_future()
        return self._caught_up

    def drain(self) -> list[Data]:
        """Take every queued message at once."""
        messages = list(self._messages)
        self._messages.clear()
        self._release_space()
        return messages

    def close(self) -> None:
        """No more messages will come: waiting consumers get ``None``, a paused reader resumes."""
        self._closed = True
        caught_up, self._caught_up = self._caught_up, None
        if caught_up is not None and not caught_up.done():
            caught_up.set_result(None)
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
