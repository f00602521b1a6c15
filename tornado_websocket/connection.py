"""Drives one WebSocket connection over the upgraded socket.

:class:`WebSocketConnection` gets what arrives from its transport (see
:mod:`tornado_websocket.transport`), feeds the Sans-I/O
:class:`~tornado_websocket.protocol.Protocol`, dispatches the events to its
owner (the server handler or the client) in order, and writes the frames
produced while handling one read in a single ``send``. It owns the close
handshake, its timeouts and the keepalive pings. Server and client share it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable, Optional, Union
from typing import Protocol as TypingProtocol

from tornado import gen
from tornado.escape import json_encode, utf8
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream
from tornado.log import app_log, gen_log

from tornado_websocket.errors import WebSocketClosedError, WebSocketError
from tornado_websocket.frames import CloseCode
from tornado_websocket.protocol import (
    RECENT_TEXT,
    CloseReceived,
    Event,
    Message,
    Ping,
    Pong,
    Protocol,
    ProtocolViolation,
)
from tornado_websocket.transport import (
    Buffer,
    DetachedStream,
    SocketTransport,
    StreamTransport,
    chain,
    make_transport,
    silence,
)

# Dispatching yields to the event loop (and pauses reading) after YIELD_AFTER_EVENTS events
# in a row: a read full of tiny frames cannot starve other connections.
YIELD_AFTER_EVENTS = 256
# Frames written while one read is dispatched leave together, but none waits longer than
# FLUSH_AFTER seconds behind the handling of later messages (see docs/architecture.md).
FLUSH_AFTER = 100e-6
_clock = time.perf_counter
# Payloads from this size on are written without joining them to their header
# (``sendmsg`` of both); a batch of at most MAX_GATHER frames holding this many
# bytes is written the same way instead of being joined.
GATHER_MIN_BYTES = 64 * 1024
MAX_GATHER = 64
DEFAULT_CLOSE_TIMEOUT = 5.0
DEFAULT_MAX_WRITE_BUFFER_SIZE = 16 * 1024 * 1024
MAX_PENDING_PINGS = 64  # pings awaiting a pong; past it the oldest fails

#: Every connection between ``start()`` and the end of its TCP connection (see :mod:`.shutdown`).
OPEN_CONNECTIONS: set[WebSocketConnection] = set()


class ConnectionOwner(TypingProtocol):
    """What a :class:`WebSocketConnection` reports to (the handler or the client)."""

    def _on_ws_message(self, message: Union[str, bytes]) -> Optional[Awaitable[Any]]:
        """A message arrived; an awaitable result pauses reading until it is done."""

    def _on_ws_ping(self, payload: bytes) -> None:
        """A ping arrived (the pong is already queued)."""

    def _on_ws_pong(self, payload: bytes) -> None:
        """A pong arrived."""

    def _on_ws_closed(self) -> None:
        """The connection is gone; called exactly once."""


class WebSocketConnection:
    """One open WebSocket over the upgraded ``stream`` (see :func:`make_transport`); see the module docstring.

    ``ping_interval`` (seconds, ``None`` or 0 for none) sends keepalive pings;
    when ``ping_timeout`` is positive a pong must follow each within that
    time or the connection is dropped. As in Tornado, ``ping_timeout``
    defaults to the interval and is capped to it; 0 disables it.
    ``close_timeout`` bounds how long a close handshake may take before TCP
    is dropped.
    """

    __slots__ = (
        "_stream",
        "transport",
        "protocol",
        "owner",
        "ping_interval",
        "ping_timeout",
        "close_timeout",
        "close_code",
        "close_reason",
        "_loop",
        "_aloop",
        "_failed",
        "_closed_waiter",
        "_close_callbacks",
        "max_write_buffer_size",
        "_batch",
        "_batch_future",
        "_closed",
        "_close_timer",
        "_ping_timer",
        "_pings",
        "__weakref__",
    )

    def __init__(
        self,
        stream: IOStream,
        protocol: Protocol,
        owner: ConnectionOwner,
        *,
        ping_interval: Optional[float] = None,
        ping_timeout: Optional[float] = None,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        max_write_buffer_size: Optional[int] = DEFAULT_MAX_WRITE_BUFFER_SIZE,
    ) -> None:
        self._stream: Optional[IOStream] = stream
        self.protocol = protocol
        self.owner = owner
        self.ping_interval = ping_interval or 0.0
        if ping_timeout is None:
            ping_timeout = self.ping_interval
        elif self.ping_interval and ping_timeout > self.ping_interval:
            gen_log.warning(
                "The WebSocket ping timeout (%s) cannot be longer than the ping interval (%s); using %s",
                ping_timeout,
                self.ping_interval,
                self.ping_interval,
            )
            ping_timeout = self.ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        #: The code and reason of the peer's Close frame (``None`` until one arrives).
        self.close_code: Optional[int] = None
        self.close_reason: Optional[str] = None
        self._loop = IOLoop.current()
        self._aloop: asyncio.AbstractEventLoop = self._loop.asyncio_loop  # type: ignore[attr-defined]
        self._failed = False  # user code raised: messages still queued from the same read are dropped
        self._closed_waiter: Optional[asyncio.Future[None]] = None
        self._close_callbacks: Optional[list[Callable[[WebSocketConnection], None]]] = None
        #: Unsent bytes a peer that does not read may leave waiting before the connection is dropped.
        self.max_write_buffer_size = max_write_buffer_size
        self._batch: Optional[list[bytes]] = None
        self._batch_future: Optional[asyncio.Future[None]] = None
        self._closed = False
        self._close_timer: Optional[object] = None
        self._ping_timer: Optional[object] = None
        # Pings we sent and wait a pong for: (payload, future, time sent).
        self._pings: list[tuple[bytes, asyncio.Future[float], float]] = []
        self.transport = make_transport(stream, self)
        if not isinstance(self.transport, StreamTransport):
            # The socket left the IOStream (plain TCP): nothing may use the stream again.
            self._stream = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start reading and, if configured, keepalive pings."""
        if self._closed:
            return  # the peer left while open() ran: on_close has run already
        OPEN_CONNECTIONS.add(self)
        self.transport.resume_reading()
        if self.ping_interval > 0:
            self._ping_timer = self._loop.call_later(self.ping_interval, self._keepalive)

    @property
    def stream(self) -> Union[IOStream, DetachedStream]:
        """Tornado's ``stream``: the IOStream of a TLS connection, else a stand-in for it.

        Over plain TCP the socket left the IOStream after the upgrade (see
        :func:`~tornado_websocket.transport.make_transport`);
        :class:`~tornado_websocket.transport.DetachedStream` keeps what
        applications use: ``socket``, ``close()``, ``closed()``, ``set_nodelay()``.
        """
        if self._stream is not None:
            return self._stream
        assert isinstance(self.transport, SocketTransport)
        return DetachedStream(self.transport)

    @property
    def event_loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop this connection runs on."""
        return self._aloop

    @property
    def closed(self) -> bool:
        """True once the TCP connection is gone."""
        return self._closed

    def is_closing(self) -> bool:
        """True once we sent a Close frame (ours or the echo of the peer's) or TCP is gone.

        Messages that arrived before the peer's Close frame can still be
        answered while they are dispatched.
        """
        return self._closed or self.protocol.close_sent

    # -- reading (called by the transport) ----------------------------------------

    def frame_space(self) -> Optional[memoryview]:
        """Where the rest of a large binary frame goes (see Protocol.frame_buffer_space)."""
        return self.protocol.frame_buffer_space()

    def frame_filled(self, n: int) -> None:
        """``n`` bytes were received into :meth:`frame_space`."""
        self._handle(self.protocol.frame_buffer_filled(n))

    def data_received(self, data: Buffer) -> None:
        """Feed what arrived (a view valid only during the call) and dispatch its events."""
        self._handle(self.protocol.feed(data))

    def connection_lost(self) -> None:
        self._teardown()

    def _handle(self, events: list[Event]) -> None:
        """Dispatch the events of one read; reading pauses while some wait for user code or the loop."""
        self._failed = False  # a user error drops the rest of its own read only
        if not events or self._dispatch(events, 0):
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def _dispatch(self, events: list[Event], start: int) -> bool:
        """Hand ``events[start:]`` to the owner in order; False when the rest waits (see :meth:`_pause`).

        The frames written meanwhile leave in one write at the end, or
        earlier once the batch is FLUSH_AFTER old.
        """
        protocol = self.protocol
        owner = self.owner
        recent = RECENT_TEXT
        clock = _clock
        flush_at = clock() + FLUSH_AFTER
        self._batch = []
        try:
            for index in range(start, len(events)):
                if self._closed:
                    return False  # TCP went away while user code ran: on_close has run
                event = events[index]
                cls = type(event)
                if cls is Message:
                    if self._failed:
                        continue  # user code failed and we closed with 1011: do not feed it more
                    utf8 = event.utf8  # type: ignore[union-attr]
                    if utf8 is not None:
                        recent.text = event.data  # type: ignore[union-attr, assignment]
                        recent.utf8 = utf8
                    try:
                        result = owner._on_ws_message(event.data)  # type: ignore[union-attr]
                    except (Exception, asyncio.CancelledError):
                        self._user_error("on_message")
                        continue
                    if result is not None and inspect.isawaitable(result):
                        self._pause(result, events, index + 1)
                        return False
                elif cls is Ping:
                    payload = event.payload  # type: ignore[union-attr]
                    if not protocol.close_sent:
                        self._write(protocol.encode_pong(payload))
                    try:
                        owner._on_ws_ping(payload)
                    except Exception:
                        self._user_error("on_ping")
                elif cls is Pong:
                    self._on_pong(event.payload)  # type: ignore[union-attr]
                elif cls is CloseReceived:
                    self._on_close_received(event)  # type: ignore[arg-type]
                else:
                    assert isinstance(event, ProtocolViolation)
                    self._on_violation(event)
                if self._batch and clock() >= flush_at:
                    # Slow handlers (compression, heavy user code): what is ready leaves now,
                    # so the peer works on it while we handle the rest of the read.
                    self._flush_batch()
                    self._batch = []
                    flush_at = clock() + FLUSH_AFTER
                if index + 1 - start >= YIELD_AFTER_EVENTS and index + 1 < len(events):
                    self._loop.add_callback(self._resume, events, index + 1)
                    return False
            return True
        finally:
            if self._batch:
                self._flush_batch()
            self._batch = None

    def _pause(self, awaitable: Awaitable[Any], events: list[Event], resume_at: int) -> None:
        """Dispatch the rest of ``events`` (then read on) once user code's awaitable is done."""
        future = gen.convert_yielded(awaitable)

        def done(f: asyncio.Future[Any]) -> None:
            try:
                f.result()
            except (Exception, asyncio.CancelledError):
                self._user_error("on_message")
            self._resume(events, resume_at)

        future.add_done_callback(done)

    def _resume(self, events: list[Event], resume_at: int) -> None:
        if not self._closed and self._dispatch(events, resume_at):
            self.transport.resume_reading()

    def _user_error(self, where: str) -> None:
        """Log an exception raised by user code and close with 1011; later messages are dropped."""
        app_log.error("Uncaught exception in WebSocket %s", where, exc_info=True)
        self._failed = True
        self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def _on_close_received(self, event: CloseReceived) -> None:
        self.close_code = event.code
        self.close_reason = event.reason or None  # as Tornado: None when the frame had no reason
        if not self.protocol.close_sent:
            self._write(self.protocol.encode_close(event.code, ""))
        self._finish_close_handshake()

    def _on_violation(self, event: ProtocolViolation) -> None:
        gen_log.debug("WebSocket peer broke the protocol: %s (closing with %d)", event.reason, event.code)
        if not self.protocol.close_sent:
            self._write(self.protocol.encode_close(event.code, event.reason[:123]))
        self._drop_after_flush()

    def _finish_close_handshake(self) -> None:
        """Both Close frames are out: the server drops TCP, the client waits for it to."""
        if self.protocol.is_client:
            self._start_close_timer()
        else:
            self._drop_after_flush()

    def _drop_after_flush(self) -> None:
        """Send what is queued, then half-close TCP and wait (bounded) for the peer's FIN."""
        future = self._flush_batch() if self._batch else self._send()
        future.add_done_callback(lambda _: self._shutdown_write())
        self._start_close_timer()

    def _shutdown_write(self) -> None:
        if not self._closed:
            self.transport.shutdown_write()

    def _start_close_timer(self) -> None:
        if self._close_timer is None and not self._closed:
            self._close_timer = self._loop.call_later(self.close_timeout, self.abort)

    def close(self, code: Optional[int] = CloseCode.NORMAL_CLOSURE, reason: Optional[str] = "") -> None:
        """Start (or complete) the close handshake; a no-op if we already sent a close.

        Raises ``ValueError`` for a code that may not be sent or a reason over
        123 UTF-8 bytes.
        """
        if self._closed or self.protocol.close_sent:
            return
        frame = self.protocol.encode_close(code, reason or "")
        self._write(frame)
        if self.protocol.close_received:
            self._finish_close_handshake()
        else:
            self._start_close_timer()

    def abort(self) -> None:
        """Drop the TCP connection at once, without a close handshake."""
        self.transport.abort()

    def add_close_callback(self, callback: Callable[[WebSocketConnection], None]) -> None:
        """Call ``callback(connection)`` once when the TCP connection is gone (at once if it is)."""
        if self._closed:
            callback(self)
            return
        if self._close_callbacks is None:
            self._close_callbacks = []
        self._close_callbacks.append(callback)

    def wait_closed(self) -> asyncio.Future[None]:
        """A future that completes when the TCP connection is gone (at once if it is)."""
        future = self._closed_waiter
        if future is None:
            future = self._closed_waiter = self._aloop.create_future()
            if self._closed:
                future.set_result(None)
        return future

    def _teardown(self) -> None:
        if self._closed:
            return
        self._closed = True
        OPEN_CONNECTIONS.discard(self)
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
        loop = self._loop
        if self._close_timer is not None:
            loop.remove_timeout(self._close_timer)
            self._close_timer = None
        if self._ping_timer is not None:
            loop.remove_timeout(self._ping_timer)
            self._ping_timer = None
        pings, self._pings = self._pings, []
        for _, future, _ in pings:
            if not future.done():
                future.set_exception(WebSocketClosedError("the connection closed before the pong"))
                silence(future)
        self.transport.abort()
        self.protocol.release()
        callbacks, self._close_callbacks = self._close_callbacks or [], None
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                app_log.error("Uncaught exception in a WebSocket close callback", exc_info=True)
        try:
            self.owner._on_ws_closed()
        except Exception:
            app_log.error("Uncaught exception in WebSocket on_close", exc_info=True)

    # -- writing -----------------------------------------------------------

    def _write(self, frame: bytes) -> asyncio.Future[None]:
        """Queue ``frame`` in the current batch, or send it now outside one."""
        batch = self._batch
        if batch is not None:
            batch.append(frame)
            future = self._batch_future
            if future is None:
                future = self._batch_future = self._aloop.create_future()
            return future
        return self._send(frame)

    def _flush_batch(self) -> asyncio.Future[None]:
        """Write the frames queued while handling a read with one system call."""
        batch = self._batch
        assert batch
        self._batch = None
        future = self._batch_future
        self._batch_future = None
        if len(batch) > 1 and (len(batch) > MAX_GATHER or sum(map(len, batch)) < GATHER_MIN_BYTES):
            batch = [b"".join(batch)]  # many small frames: one copy beats a long iovec
        sent = self._send(*batch)
        if future is None:
            return sent
        chain(sent, future)
        return future

    def _send(self, *parts: bytes) -> asyncio.Future[None]:
        """Write ``parts`` in order; the future fails with WebSocketClosedError if TCP is gone.

        The future completes when the kernel has the bytes; with no parts,
        when everything written so far has been handed to it.
        """
        transport = self.transport
        if not parts:
            return transport.flushed()
        future = transport.write(parts)
        if future is None:
            done: asyncio.Future[None] = self._aloop.create_future()
            done.set_result(None)
            return done
        self._write_buffer_overflows()
        return future

    @property
    def write_buffer_size(self) -> int:
        """Bytes written but not yet taken by the kernel (a peer that does not read makes it grow)."""
        return self.transport.buffered_bytes

    def _write_buffer_overflows(self) -> bool:
        """Drop the connection if the peer left more than ``max_write_buffer_size`` bytes unread."""
        limit = self.max_write_buffer_size
        buffered = self.transport.buffered_bytes
        if limit is None or buffered <= limit:
            return False
        gen_log.info(
            "WebSocket peer is not reading: %d bytes wait to be sent, over the %d-byte limit; dropping it",
            buffered,
            limit,
        )
        self.abort()
        return True

    def write_message(self, message: Union[str, bytes, dict[str, Any]], binary: bool = False) -> asyncio.Future[None]:
        """Send one message: ``str`` as text, ``bytes`` as binary if ``binary`` else text, a dict as JSON.

        The future completes when the frame is handed to the socket. Raises
        :class:`WebSocketClosedError` once closing, ``TypeError`` for other
        message types.
        """
        if self.is_closing():
            raise WebSocketClosedError("the WebSocket is closed")
        if isinstance(message, dict):
            message = json_encode(message)
        elif not isinstance(message, (str, bytes)):
            raise TypeError(f"cannot send {type(message).__name__}; send str, bytes or dict")
        if len(message) >= GATHER_MIN_BYTES:
            header, payload = self.protocol.encode_message_parts(message, binary)
            if self._batch is None:
                return self._send(header, payload)
            self._write(header)
            return self._write(payload)
        return self._write(self.protocol.encode_message(message, binary))

    def send_frame_nowait(self, frame: bytes) -> None:
        """Send an already encoded frame with no future (see :mod:`tornado_websocket.broadcast`).

        The caller checks :meth:`is_closing` first. Inside a dispatch the
        frame joins the batch, so it keeps its place after earlier writes.
        """
        batch = self._batch
        if batch is not None:
            batch.append(frame)
            return
        if self.transport.write((frame,)) is not None:
            self._write_buffer_overflows()

    def ping(self, data: Union[str, bytes] = b"") -> asyncio.Future[float]:
        """Send a ping; the future gives the round-trip time in seconds when the pong arrives.

        ``str`` data is UTF-8 encoded. Raises ``ValueError`` over 125 bytes
        and :class:`WebSocketClosedError` once closing.
        """
        if self.is_closing():
            raise WebSocketClosedError("the WebSocket is closed")
        data = utf8(data)
        frame = self.protocol.encode_ping(data)
        future: asyncio.Future[float] = self._aloop.create_future()
        pings = self._pings
        if len(pings) >= MAX_PENDING_PINGS:  # a peer that never answers: forget the oldest
            _, oldest, _ = pings.pop(0)
            if not oldest.done():
                oldest.set_exception(WebSocketError("no pong came before more pings were sent"))
                silence(oldest)
        pings.append((data, future, self._loop.time()))
        self._write(frame)
        return future

    def _on_pong(self, payload: bytes) -> None:
        pings = self._pings
        if any(p == payload for p, _, _ in pings):
            now = self._loop.time()
            # A pong acknowledges the ping it matches and every earlier one.
            while pings:
                sent_payload, future, sent_at = pings.pop(0)
                if not future.done():
                    future.set_result(now - sent_at)
                if sent_payload == payload:
                    break
        try:
            self.owner._on_ws_pong(payload)
        except Exception:
            self._user_error("on_pong")

    def _keepalive(self) -> None:
        """Send a keepalive ping; with a ping timeout, drop the peer if no pong follows."""
        self._ping_timer = None
        if self.is_closing():
            return
        future = self.ping(b"")
        if self.ping_timeout > 0:
            timer = self._loop.call_later(self.ping_timeout, self._ping_timed_out, future)
            future.add_done_callback(lambda _: self._loop.remove_timeout(timer))
        self._ping_timer = self._loop.call_later(self.ping_interval, self._keepalive)

    def _ping_timed_out(self, future: asyncio.Future[float]) -> None:
        if future.done() or self._closed:
            return
        gen_log.info("WebSocket peer did not answer a ping within %.1f s; dropping it", self.ping_timeout)
        if not self.protocol.close_sent:
            self._write(self.protocol.encode_close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout"))
        self.abort()

    def set_nodelay(self, value: bool) -> None:
        """Set TCP_NODELAY on the socket (see ``IOStream.set_nodelay``)."""
        self.transport.set_nodelay(value)

