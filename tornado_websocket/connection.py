"""Drives one WebSocket connection over the upgraded socket.

:class:`WebSocketConnection` gets what arrives from its transport (see
:mod:`tornado_websocket.transport`), feeds the Sans-I/O
:class:`~tornado_websocket.protocol.Protocol`, dispatches the events to its
owner (the server handler or the client) in order, and writes what it
produces. Its named parts do the rest: :mod:`~tornado_websocket.batching`
(the frames of one read leave in one write),
:mod:`~tornado_websocket.closing` (the closing handshake and its timeout),
:mod:`~tornado_websocket.keepalive` (pings, pongs, round-trip times). Server
and client share it; it never imports either.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from typing import Any, Awaitable, Callable, Iterable, Optional, Union
from typing import Protocol as TypingProtocol

from tornado import gen
from tornado.escape import json_encode, utf8
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream
from tornado.log import app_log, gen_log

from tornado_websocket.batching import GATHER_MIN_BYTES, WriteBatch
from tornado_websocket.buffers import frame_buffers
from tornado_websocket.closing import CloseHandshake
from tornado_websocket.errors import WebSocketClosedError
from tornado_websocket.frames import NO_SPEEDUPS, OP_BINARY, OP_TEXT, CloseCode, encode_frame
from tornado_websocket.handshake import accept_key
from tornado_websocket.keepalive import Keepalive
from tornado_websocket.metrics import STATS, log_close
from tornado_websocket.options import ConnectionOptions
from tornado_websocket.protocol import (
    CloseReceived,
    Event,
    Message,
    Ping,
    Pong,
    Protocol,
    ProtocolViolation,
    Side,
    State,
)
from tornado_websocket.transport import (
    Buffer,
    DetachedStream,
    SocketTransport,
    StreamTransport,
    chain,
    make_transport,
)

#: The one fairness rule: after this many events of one read in a row, dispatching yields to
#: the event loop (and reading pauses), so a read full of tiny frames cannot starve others.
YIELD_AFTER_EVENTS = 256
#: How long a close or a protocol violation waits for a pull consumer (``await
#: receive_message()``, ``read_message()``, ``async for``) to take and answer the messages
#: that arrived before it, in seconds; one that never reads cannot hold a broken connection.
PULL_GRACE = 1.0

_CLOSED = State.CLOSED
_SERVER = Side.SERVER
_get_ident = threading.get_ident

try:
    if NO_SPEEDUPS:
        raise ImportError("TORNADO_WEBSOCKET_NO_SPEEDUPS is set")
    from tornado_websocket import _speedups

    _send_frame_to_all: Optional[Callable[[list[int], bytes], list[tuple[int, int]]]] = _speedups.send_frame_to_all
except ImportError:
    _send_frame_to_all = None

#: Every connection between ``start()`` and the end of its TCP connection (see :mod:`.shutdown`).
OPEN_CONNECTIONS: set[WebSocketConnection] = set()


class _ReceivedText(threading.local):
    """The text message being handed to user code on this thread, with the UTF-8 bytes it came as.

    Sending that very ``str`` object back (an echo, a relay) reuses the
    bytes instead of encoding it anew. Matched by identity while the
    message handler runs, and cleared when it returns, so no other string
    can match and nothing outlives the call.
    """

    def __init__(self) -> None:
        self.text: Union[str, bytes, None] = None
        self.utf8: Optional[bytes] = None


_RECEIVED_TEXT = _ReceivedText()


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

    def _ws_pull_pending(self) -> Optional[asyncio.Future[None]]:
        """None if no pull consumer has messages to answer, else a future for when it has taken them all."""


class PreparedMessage:
    """A message encoded once for many connections (see :func:`~tornado_websocket.broadcast`).

    Servers without compression share one frame, built on first use;
    clients (which mask) and compressing connections encode ``payload``
    themselves.
    """

    __slots__ = ("payload", "binary", "_frame")

    def __init__(self, payload: bytes, binary: bool) -> None:
        self.payload = payload
        self.binary = binary
        self._frame: Optional[bytes] = None

    @property
    def frame(self) -> bytes:
        """The unmasked, uncompressed frame."""
        frame = self._frame
        if frame is None:
            frame = self._frame = encode_frame(OP_BINARY if self.binary else OP_TEXT, self.payload)
        return frame


class WebSocketConnection:
    """One open WebSocket over the upgraded ``stream``; see the module docstring.

    ``options`` (:class:`~tornado_websocket.options.ConnectionOptions`) says
    how it behaves. Made by the handler or the client after the opening
    handshake; :meth:`start` begins reading.
    """

    __slots__ = (
        "_stream",
        "transport",
        "protocol",
        "owner",
        "options",
        "close_code",
        "close_reason",
        "_loop",
        "_aloop",
        "_thread",
        "_failed",
        "_closed_waiter",
        "_close_callbacks",
        "_batch",
        "_closing",
        "_keepalive",
        "_started_at",
        "_generation",
        "__weakref__",
    )

    def __init__(
        self, stream: IOStream, protocol: Protocol, owner: ConnectionOwner, options: ConnectionOptions
    ) -> None:
        self._stream: Optional[IOStream] = stream
        self.protocol = protocol
        if protocol.buffers is None:
            protocol.buffers = frame_buffers()
        self.owner = owner
        self.options = options
        #: The code and reason of the peer's Close frame (``None`` until one arrives).
        self.close_code: Optional[int] = None
        self.close_reason: Optional[str] = None
        self._loop = IOLoop.current()
        self._aloop: asyncio.AbstractEventLoop = self._loop.asyncio_loop  # type: ignore[attr-defined]
        self._thread = _get_ident()  # the event loop's thread: other threads hand their calls to it
        self._failed = False  # user code raised: messages still queued from the same read are dropped
        self._closed_waiter: Optional[asyncio.Future[None]] = None
        self._close_callbacks: Optional[list[Callable[[WebSocketConnection], None]]] = None
        self._batch: Optional[WriteBatch] = None  # while the events of one read are dispatched
        self._closing: Optional[CloseHandshake] = None  # made when closing begins
        self._keepalive: Optional[Keepalive] = None  # made on the first ping
        self._started_at = 0.0  # loop time of start(); 0 until then
        self._generation = -1  # STATS.generation at start(): what stats() counts
        self.transport = make_transport(stream, self)
        if not isinstance(self.transport, StreamTransport):
            # The socket left the IOStream (plain TCP): nothing may use the stream again.
            self._stream = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start reading and, if configured, keepalive pings."""
        if self.closed:
            return  # the peer left while open() ran: on_close has run already
        OPEN_CONNECTIONS.add(self)
        self._started_at = self._loop.time()
        self._generation = STATS.generation
        STATS.open_connections += 1
        self.transport.resume_reading()
        if self.options.ping_interval > 0:
            self._keepalive_part().start()

    @property
    def stream(self) -> Union[IOStream, DetachedStream]:
        """Tornado's ``stream``: a stand-in for the IOStream the socket left, else that IOStream.

        After the upgrade the socket leaves the IOStream, over plain TCP and
        over TLS alike (see :func:`~tornado_websocket.transport.make_transport`);
        :class:`~tornado_websocket.transport.DetachedStream` keeps what
        applications use: ``socket`` (an ``ssl.SSLSocket`` over TLS, so
        ``getpeercert()`` works), ``close()``, ``closed()``, ``set_nodelay()``.
        Where the stream could not be taken over it is returned itself.
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
    def side(self) -> Side:
        """``Side.SERVER`` or ``Side.CLIENT``."""
        return self.protocol.side

    @property
    def closed(self) -> bool:
        """True once the TCP connection is gone."""
        return self.protocol.state is _CLOSED

    def is_closing(self) -> bool:
        """True once we sent a Close frame (ours or the echo of the peer's) or TCP is gone.

        Messages that arrived before the peer's Close frame can still be
        answered while they are dispatched.
        """
        protocol = self.protocol
        return protocol.close_sent is not None or protocol.state is _CLOSED

    ping_interval = property(lambda self: self.options.ping_interval, doc="Seconds between keepalive pings (0: none).")
    ping_timeout = property(lambda self: self.options.ping_timeout, doc="Seconds a keepalive pong may take (0: none).")
    max_write_buffer_size = property(
        lambda self: self.options.max_write_buffer_size,
        doc="Unsent bytes allowed before a peer that does not read is dropped.",
    )

    @property
    def pending_pings(self) -> int:
        """Pings sent that wait for a pong."""
        return 0 if self._keepalive is None else self._keepalive.pending

    # -- what Tornado's WebSocketProtocol13 offers and applications use -----------

    @staticmethod
    def compute_accept_value(key: Union[str, bytes]) -> str:
        """The ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key`` (Tornado's static method)."""
        return accept_key(key if isinstance(key, str) else key.decode("ascii"))

    @property
    def client_terminated(self) -> bool:
        """True once the peer's Close frame arrived or TCP is gone (Tornado's flag, read-only here)."""
        protocol = self.protocol
        return protocol.close_received is not None or protocol.state is _CLOSED

    @property
    def server_terminated(self) -> bool:
        """True once we sent a Close frame or TCP is gone (Tornado's flag, read-only here)."""
        return self.is_closing()

    @property
    def selected_subprotocol(self) -> Optional[str]:
        """The subprotocol of this connection (the owner's), or ``None``."""
        value: Optional[str] = getattr(self.owner, "selected_subprotocol", None)
        return value

    # Tornado's private counters, which its own tests (and some applications) read.
    _message_bytes_in = property(lambda self: self.protocol.message_bytes_received)
    _message_bytes_out = property(lambda self: self.protocol.message_bytes_sent)
    _wire_bytes_in = property(lambda self: self.protocol.bytes_received)
    _wire_bytes_out = property(lambda self: self.protocol.bytes_sent)

    def write_ping(self, data: bytes = b"") -> None:
        """Send a ping without waiting for its pong (Tornado's method; a no-op once closing).

        Raises ``ValueError`` for a payload over 125 bytes.
        """
        if not self.is_closing():
            self._write(self.protocol.encode_ping(utf8(data)))

    # -- reading (called by the transport) ----------------------------------------

    def frame_space(self) -> Optional[memoryview]:
        """Where the rest of a large binary frame goes (see Protocol.frame_buffer_space)."""
        return self.protocol.frame_buffer_space()

    def frame_filled(self, n: int) -> None:
        """``n`` bytes were received into :meth:`frame_space`."""
        self._handle(self.protocol.frame_buffer_filled(n))

    def data_received(self, data: Buffer) -> None:
        """Feed what arrived (a view valid only during the call) and dispatch its events."""
        events = self.protocol.feed(data)
        self._failed = False  # as in _handle, inline: this is the hot path
        # A transport is not paused while it delivers, so unless the dispatch stops, it reads on by itself.
        if events and not self._dispatch(events, 0):
            self.transport.pause_reading()

    def connection_lost(self) -> None:
        """The transport's TCP connection is gone."""
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
        earlier once the batch is due (see :mod:`~tornado_websocket.batching`).
        """
        protocol = self.protocol
        owner = self.owner
        received = _RECEIVED_TEXT
        self._batch = WriteBatch()
        try:
            for index in range(start, len(events)):
                if protocol.state is _CLOSED:
                    return False  # TCP went away while user code ran: on_close has run
                event = events[index]
                if type(event) is Message:
                    if self._failed:
                        continue  # user code failed and we closed with 1011: do not feed it more
                    utf8 = event.utf8  # None for binary messages: nothing to remember for them
                    if utf8 is not None:
                        received.text = event.data
                        received.utf8 = utf8
                    try:
                        result = owner._on_ws_message(event.data)
                    except (Exception, asyncio.CancelledError):
                        self._user_error("on_message")
                        continue
                    finally:
                        if utf8 is not None:
                            received.text = received.utf8 = None
                    if result is not None and inspect.isawaitable(result):
                        self._pause(result, events, index + 1)
                        return False
                elif type(event) is Ping:
                    if protocol.close_sent is None:
                        self._write(protocol.encode_pong(event.payload))
                    try:
                        owner._on_ws_ping(event.payload)
                    except Exception:
                        self._user_error("on_ping")
                elif type(event) is Pong:
                    self._on_pong(event.payload)
                else:
                    assert isinstance(event, (CloseReceived, ProtocolViolation))
                    pending = None if protocol.close_sent is not None else owner._ws_pull_pending()
                    if pending is not None:
                        # A pull consumer has not taken (and answered) the messages in front.
                        self._wait_for_consumer(pending, events, index)
                        return False
                    self._close_event(event)
                if index + 1 == len(events):
                    return True  # the last one: the batch leaves in the finally clause
                batch = self._batch  # None once a close flushed it: later frames go straight out
                if batch is not None and batch.is_due():
                    # Slow handlers (compression, heavy user code): what is ready leaves now,
                    # so the peer works on it while we handle the rest of the read.
                    self._flush_batch()
                    self._batch = WriteBatch()
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

    def _wait_for_consumer(self, pending: asyncio.Future[None], events: list[Event], resume_at: int) -> None:
        """Resume at ``events[resume_at]`` (a close or violation) once the pull consumer caught up, or after a grace."""
        resumed = False

        def resume() -> None:
            nonlocal resumed
            if not resumed:
                resumed = True
                self._loop.remove_timeout(timer)
                self._resume(events, resume_at, consumer_waited=True)

        timer = self._loop.call_later(PULL_GRACE, resume)
        pending.add_done_callback(lambda _: self._loop.add_callback(resume))

    def _resume(self, events: list[Event], resume_at: int, consumer_waited: bool = False) -> None:
        if self.closed:
            return
        if consumer_waited:
            event = events[resume_at]
            assert isinstance(event, (CloseReceived, ProtocolViolation))
            self._close_event(event)
            resume_at += 1
        if self._dispatch(events, resume_at):
            self.transport.resume_reading()

    def _close_event(self, event: Union[CloseReceived, ProtocolViolation]) -> None:
        """The peer's Close frame or a protocol violation, reached in order: answer it."""
        if type(event) is CloseReceived:
            self.close_code = event.code
            self.close_reason = event.reason or None  # as Tornado: None when the frame had no reason
            self._closing_part().close_received(event)
        else:
            assert isinstance(event, ProtocolViolation)
            gen_log.debug("WebSocket peer broke the protocol: %s (closing with %d)", event.reason, event.code)
            self._closing_part().violation(event)

    def _user_error(self, where: str) -> None:
        """Log an exception raised by user code and close with 1011; later messages are dropped."""
        app_log.error("Uncaught exception in WebSocket %s", where, exc_info=True)
        self._failed = True
        self.close(CloseCode.INTERNAL_ERROR, "internal error")

    # -- closing -----------------------------------------------------------

    def _closing_part(self) -> CloseHandshake:
        closing = self._closing
        if closing is None:
            closing = self._closing = CloseHandshake(self.protocol, self, self._loop, self.options.close_timeout)
        return closing

    def close(self, code: Optional[int] = CloseCode.NORMAL_CLOSURE, reason: Optional[str] = "") -> None:
        """Start (or complete) the close handshake; a no-op once we sent a close or TCP is gone.

        Raises ``ValueError`` for a code that may not be sent or a reason over
        123 UTF-8 bytes.
        """
        if not self.is_closing():
            self._closing_part().close(code, reason or "")

    def _peer(self) -> Union[str, tuple[Any, ...], None]:
        """The remote address, for the log (the handler's ``request.remote_ip`` when there is one)."""
        request = getattr(self.owner, "request", None)
        remote = getattr(request, "remote_ip", None)
        if isinstance(remote, str):
            return remote
        sock = self.transport.socket
        try:
            return None if sock is None else tuple(sock.getpeername())
        except OSError:
            return None

    def abort(self) -> None:
        """Drop the TCP connection at once, without a close handshake."""
        self.transport.abort()

    def close_if_drained(self) -> bool:
        """Send the current batch, then close TCP now if nothing waits to be sent or read; True if TCP is gone.

        See :meth:`SocketTransport.close_if_drained`.
        """
        if self._batch and self._flush_batch() is not None:
            return False
        return self.transport.close_if_drained()

    def shutdown_write(self) -> None:
        """Half-close TCP once what is written has left (a no-op once TCP is gone)."""
        if not self.closed:
            self.transport.shutdown_write()

    def add_close_callback(self, callback: Callable[[WebSocketConnection], None]) -> None:
        """Call ``callback(connection)`` once when the TCP connection is gone (at once if it is)."""
        if self.closed:
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
            if self.closed:
                future.set_result(None)
        return future

    def _teardown(self) -> None:
        if self.closed:
            return
        protocol = self.protocol
        protocol.connection_lost()
        OPEN_CONNECTIONS.discard(self)
        if self._started_at:
            if self._generation == STATS.generation:
                STATS.connection_finished(protocol, self.close_code)
            if gen_log.isEnabledFor(logging.DEBUG):
                log_close(
                    self._peer(),
                    self._loop.time() - self._started_at,
                    self.close_code,
                    self.close_reason,
                    protocol.bytes_received,
                    protocol.bytes_sent,
                )
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
        if self._closing is not None:
            self._closing.cancel()
        if self._keepalive is not None:
            self._keepalive.stop()
        self.transport.abort()
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
            return batch.future_for(self._aloop)
        return self._send(frame)

    write_frame = _write

    def flushed(self) -> asyncio.Future[None]:
        """A future for when everything written so far (the current batch included) is with the kernel."""
        if self._batch:
            pending = self._flush_batch()
            return pending if pending is not None else _done_future(self._aloop)
        return self.transport.flushed()

    def _flush_batch(self) -> Optional[asyncio.Future[None]]:
        """Write the frames queued while handling a read with one system call.

        Returns None when the kernel took them all (the batch's future, if
        a write asked for one, is then already done: nothing waits for a
        loop turn), else a future for when it has them.
        """
        batch = self._batch
        assert batch
        self._batch = None
        pending = self.transport.write(batch if len(batch) == 1 else batch.parts())  # the batch is done with
        if pending is not None:
            self._write_buffer_overflows()
        future = batch.future
        if future is None:
            return pending
        if pending is None:
            if not future.done():  # a caller may have cancelled the future write_message gave it
                future.set_result(None)
            return None
        chain(pending, future)
        return future

    def _send(self, *parts: bytes) -> asyncio.Future[None]:
        """Write ``parts`` in order; the future fails with WebSocketClosedError if TCP is gone.

        The future completes when the kernel has the bytes.
        """
        future = self.transport.write(parts)
        if future is None:
            return _done_future(self._aloop)
        self._write_buffer_overflows()
        return future

    @property
    def write_buffer_size(self) -> int:
        """Bytes written but not yet taken by the kernel (a peer that does not read makes it grow)."""
        return self.transport.buffered_bytes

    def _write_buffer_overflows(self) -> bool:
        """Drop the connection if the peer left more than ``max_write_buffer_size`` bytes unread."""
        limit = self.options.max_write_buffer_size
        buffered = self.transport.buffered_bytes
        if limit is None or buffered <= limit:
            return False
        gen_log.debug(
            "WebSocket peer is not reading: %d bytes wait to be sent, over the %d-byte limit; dropping it",
            buffered,
            limit,
        )
        STATS.writes_dropped += 1
        self.abort()
        return True

    def write_message(
        self, message: Union[str, bytes, dict[str, Any]], binary: bool = False, compress: bool = True
    ) -> asyncio.Future[None]:
        """Send one message: ``str`` as text, ``bytes`` as binary if ``binary`` else text, a dict as JSON.

        ``compress=False`` sends it uncompressed on a connection that
        negotiated permessage-deflate (already compressed data, tiny messages).

        The future completes when the frame is handed to the socket. Raises
        :class:`WebSocketClosedError` once closing, ``TypeError`` for other
        message types. Call it on the connection's event loop (the handler
        and the client hand calls from other threads over).
        """
        protocol = self.protocol
        if protocol.close_sent is not None or protocol.state is _CLOSED:
            raise WebSocketClosedError("the WebSocket is closed")
        if type(message) is str:
            received = _RECEIVED_TEXT
            utf8_bytes = received.utf8 if message is received.text else None
        elif isinstance(message, (bytes, str)):
            utf8_bytes = None
        elif isinstance(message, dict):
            message = json_encode(message)
            utf8_bytes = None
        else:
            raise TypeError(f"cannot send {type(message).__name__}; send str, bytes or dict")
        if len(message) >= GATHER_MIN_BYTES:
            header, payload = protocol.encode_message_parts(message, binary, utf8_bytes, compress)
            if self._batch is None:
                return self._send(header, payload)
            self._write(header)
            return self._write(payload)
        return self._write(protocol.encode_message(message, binary, utf8_bytes, compress))

    def send_prepared(self, message: PreparedMessage) -> None:
        """Send a :class:`PreparedMessage`, with no future; a no-op once closing.

        Servers without compression get its shared frame; the others encode
        it for themselves. Inside a dispatch the frame joins the batch, so it
        keeps its place after earlier writes.
        """
        protocol = self.protocol
        if protocol.close_sent is not None or protocol.state is _CLOSED:
            return
        if protocol.deflate is not None or protocol.side is Side.CLIENT:
            self.write_message(message.payload, message.binary)
            return
        frame = message.frame
        protocol.count_sent_message(len(message.payload), len(frame))
        batch = self._batch
        if batch is not None:
            batch.append(frame)
        elif self.transport.write((frame,)) is not None:
            self._write_buffer_overflows()

    # -- pings ---------------------------------------------------------------

    def _keepalive_part(self) -> Keepalive:
        keepalive = self._keepalive
        if keepalive is None:
            options = self.options
            keepalive = self._keepalive = Keepalive(
                self._loop, options.ping_interval, options.ping_timeout, self._keepalive_ping, self._ping_timed_out
            )
        return keepalive

    def ping(self, data: Union[str, bytes] = b"") -> asyncio.Future[float]:
        """Send a ping; the future gives the round-trip time in seconds when the pong arrives.

        ``str`` data is UTF-8 encoded. Raises ``ValueError`` over 125 bytes
        and :class:`WebSocketClosedError` once closing.
        """
        if self.is_closing():
            raise WebSocketClosedError("the WebSocket is closed")
        payload = utf8(data)
        frame = self.protocol.encode_ping(payload)
        future = self._keepalive_part().expect_pong(payload)
        self._write(frame)
        return future

    def _keepalive_ping(self) -> Optional[asyncio.Future[float]]:
        return None if self.is_closing() else self.ping(b"")

    def _on_pong(self, payload: bytes) -> None:
        if self._keepalive is not None:
            self._keepalive.pong_received(payload)
        try:
            self.owner._on_ws_pong(payload)
        except Exception:
            self._user_error("on_pong")

    def _ping_timed_out(self) -> None:
        if self.closed:
            return
        gen_log.debug("WebSocket peer did not answer a ping within %.1f s; dropping it", self.options.ping_timeout)
        if self.protocol.close_sent is None:
            self._write(self.protocol.encode_close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout"))
        self.abort()

    def set_nodelay(self, value: bool) -> None:
        """Set TCP_NODELAY on the socket (see ``IOStream.set_nodelay``)."""
        self.transport.set_nodelay(value)


def _done_future(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """A future that is already done (what a write the kernel took at once returns)."""
    future: asyncio.Future[None] = loop.create_future()
    future.set_result(None)
    return future


def send_prepared_to_all(connections: Iterable[Any], message: PreparedMessage) -> int:
    """:meth:`WebSocketConnection.send_prepared` to every connection that is not closing; return how many.

    ``connections`` holds ``WebSocketConnection`` objects, or owners with a
    ``ws_connection`` attribute (handlers, clients; ``None`` is skipped).
    With the C extension, the plain-TCP server connections with nothing
    queued and no batch open get the shared frame from one C loop of
    ``send()`` calls; a socket that takes only part of it (or fails) gets
    the rest through its transport, as a ``send_prepared`` would. Every
    other connection is handed to ``send_prepared``.
    """
    send_all = _send_frame_to_all
    frame = message.frame
    frame_len = len(frame)
    payload_len = len(message.payload)
    # The server's frame header beyond the 2 bytes that bytes_sent counts per message (see Protocol.bytes_sent).
    header_extra = frame_len - payload_len - 2
    direct: list[WebSocketConnection] = []
    fds: list[int] = []
    add_direct = direct.append
    add_fd = fds.append
    sent = 0
    for item in connections:
        connection = item if type(item) is WebSocketConnection else item.ws_connection
        if connection is None:
            continue
        protocol = connection.protocol
        if protocol.close_sent is not None or protocol.state is _CLOSED:
            continue
        sent += 1
        transport = connection.transport
        if (
            send_all is not None
            and type(transport) is SocketTransport
            and transport._pending is None
            and connection._batch is None
            and protocol.deflate is None
            and protocol.side is _SERVER
        ):
            protocol.messages_sent += 1  # what count_sent_message does, inline: this loop runs per connection
            protocol.message_bytes_sent += payload_len
            if header_extra:
                protocol._sent_extra += header_extra
            add_direct(connection)
            add_fd(transport._fd)
        else:
            connection.send_prepared(message)
    if fds:
        assert send_all is not None
        for index, taken in send_all(fds, frame):
            connection = direct[index]
            # The rest (or all of it, after an error the transport then meets itself) goes the usual way.
            if connection.transport.write((frame[taken:] if taken > 0 else frame,)) is not None:
                connection._write_buffer_overflows()
    return sent


#: Tornado's names for the object behind ``ws_connection`` (``isinstance`` checks, ``compute_accept_value``).
WebSocketProtocol = WebSocketProtocol13 = WebSocketConnection
