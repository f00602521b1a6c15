"""The closing handshake (RFC 6455 section 7) of one connection, and its timeout.

:class:`CloseHandshake` decides what to send and when to end TCP: our Close
frame or the echo of the peer's, then the server ends TCP: at once when the
kernel took the frames and nothing unread waits, else it half-closes once
they are out and waits for the client's FIN; the client waits for the
server to end TCP. A protocol violation sends a Close with its code and
half-closes at once. Whatever happens, TCP is dropped ``timeout`` seconds
after the handshake began. It is made when closing begins, so an open
connection pays nothing for it.
"""

from __future__ import annotations

import asyncio
from typing import Optional
from typing import Protocol as TypingProtocol

from tornado.ioloop import IOLoop

from tornado_websocket.frames import cut_close_reason
from tornado_websocket.protocol import CloseReceived, Protocol, ProtocolViolation, Side


class CloseIO(TypingProtocol):
    """What the handshake needs from its connection."""

    def write_frame(self, frame: bytes) -> asyncio.Future[None]:
        """Send ``frame`` after everything written before it."""

    def flushed(self) -> asyncio.Future[None]:
        """A future for when everything written so far is in the kernel."""

    def shutdown_write(self) -> None:
        """Half-close TCP (a no-op once it is gone)."""

    def abort(self) -> None:
        """Drop TCP at once."""

    def close_if_drained(self) -> bool:
        """Send what is written, then end TCP now if nothing waits to be sent or read; True if it ended."""


class CloseHandshake:
    """Runs one connection's closing handshake; see the module docstring."""

    __slots__ = ("_protocol", "_io", "_loop", "timeout", "_timer")

    def __init__(self, protocol: Protocol, io: CloseIO, loop: IOLoop, timeout: float) -> None:
        self._protocol = protocol
        self._io = io
        self._loop = loop
        self.timeout = timeout
        self._timer: Optional[object] = None

    def close(self, code: Optional[int], reason: str) -> None:
        """Send our Close frame (a no-op if one was sent).

        Raises ``ValueError`` for a code or reason that may not be sent.
        """
        protocol = self._protocol
        if protocol.close_sent is not None:
            return
        self._io.write_frame(protocol.encode_close(code, reason))
        if protocol.close_received is not None:
            self._both_sent()
        else:
            self._start_timer()

    def close_received(self, event: CloseReceived) -> None:
        """The peer's Close arrived: echo its code (unless ours went already) and finish."""
        protocol = self._protocol
        if protocol.close_sent is None:
            self._io.write_frame(protocol.encode_close(event.code, ""))
        self._both_sent()

    def violation(self, event: ProtocolViolation) -> None:
        """The peer broke the protocol: send a Close with the code (unless one went), then end TCP."""
        protocol = self._protocol
        if protocol.close_sent is None:
            self._io.write_frame(protocol.encode_close(event.code, cut_close_reason(event.reason)))
        self._end_tcp()

    def cancel(self) -> None:
        """TCP is gone: stop the timer."""
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
            self._timer = None

    def _both_sent(self) -> None:
        """Both Close frames are out: the server ends TCP (RFC 6455 section 7.1.1), the client waits for it to.

        The server closes the socket at once when the kernel took its Close
        and the client sent nothing after its own (the usual case); else it
        half-closes and waits for the client's FIN.
        """
        if self._protocol.side is Side.CLIENT:
            self._start_timer()
        elif not self._io.close_if_drained():
            self._end_tcp()

    def _end_tcp(self) -> None:
        """Send what is queued, then half-close TCP and wait (bounded) for the peer's FIN."""
        io = self._io
        io.flushed().add_done_callback(lambda _: io.shutdown_write())
        self._start_timer()

    def _start_timer(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_later(self.timeout, self._io.abort)
