"""Moves bytes between a :class:`~tornado_websocket.connection.WebSocketConnection` and its socket.

After the HTTP upgrade the connection no longer needs Tornado's IOStream,
whose read path allocates and zero-fills a fresh buffer for every read and
copies the data twice more before handing it out. For plain TCP,
:func:`make_transport` takes the socket over from the IOStream and a
:class:`SocketTransport` reads it with ``recv_into`` into one receive
buffer per thread (or straight into the payload buffer of a large frame),
and writes with ``send``/``sendmsg``, queueing only what the kernel does
not take. TLS connections are taken over the same way once their handshake
is done: a :class:`TLSTransport` reads and writes the non-blocking
``ssl.SSLSocket``. Streams that cannot be taken over (a write or read still
pending, event loops without ``add_reader``) keep their IOStream behind a
:class:`StreamTransport` with the same interface.

The transport calls its sink (the connection) with what arrived; the
sink pauses and resumes reading while user code runs.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import threading
from typing import Any, Optional, Protocol, Sequence, Union, cast

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError

from tornado_websocket.errors import WebSocketClosedError
from tornado_websocket.frames import NO_SPEEDUPS

#: Size of the per-thread receive buffer and of IOStream reads.
READ_CHUNK_SIZE = 256 * 1024
#: Most pieces given to one ``sendmsg`` (the kernel's IOV_MAX is 1024).
MAX_IOVEC = 64
#: Bytes a paused SocketTransport still reads ahead, to see the peer leave (then it stops reading).
PAUSED_READ_AHEAD = 256 * 1024
# StreamTransport yields to the event loop after this many bytes read in one go.
YIELD_AFTER_BYTES = 4 * 1024 * 1024

Buffer = Union[bytes, bytearray, memoryview]

_HAS_SENDMSG = hasattr(socket.socket, "sendmsg")


class TransportSink(Protocol):
    """What a transport calls: the connection."""

    def frame_space(self) -> Optional[memoryview]:
        """Where the next bytes should go (a large frame's payload buffer), or None for any buffer."""

    def frame_filled(self, n: int) -> None:
        """``n`` bytes were received into the last :meth:`frame_space`."""

    def data_received(self, data: Buffer) -> None:
        """Bytes arrived; ``data`` may be a view of a shared buffer, valid only during the call."""

    def connection_lost(self) -> None:
        """The TCP connection is gone (called once, from the event loop)."""


def silence(future: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """Mark a failed ``future``'s exception as retrieved (asyncio then does not log it); return it."""
    if not future.cancelled():
        future.exception()
    return future


def _failed_future(aloop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """An already failed (and silenced) future: what writing to a closed connection returns."""
    future: asyncio.Future[None] = aloop.create_future()
    future.set_exception(WebSocketClosedError("the connection is closed"))
    silence(future)
    return future


class _ThreadBuffers(threading.local):
    def __init__(self) -> None:
        self.receive = memoryview(bytearray(READ_CHUNK_SIZE))


_THREAD = _ThreadBuffers()


class SocketTransport:
    """A plain TCP socket read and written directly on the event loop."""

    __slots__ = (
        "sink",
        "socket",
        "_fd",
        "_receive",
        "_selector",
        "_aloop",
        "_reading",
        "_paused",
        "_backlog",
        "_closed",
        "_pending",
        "_queued",
        "_sent",
        "_waiters",
        "_shutdown_pending",
        "_eof",
    )

    def __init__(
        self,
        sock: socket.socket,
        sink: TransportSink,
        selector: Any,
        aloop: asyncio.AbstractEventLoop,
        received: bytes = b"",
    ) -> None:
        """Start paused (reading ahead, see resume_reading); ``received`` is what came before."""
        self.sink = sink
        self.socket = sock
        self._fd = sock.fileno()
        self._receive = _THREAD.receive  # this thread's receive buffer (the transport lives on its loop's thread)
        self._selector = selector  # the loop whose add_reader/add_writer serve this fd
        self._aloop = aloop
        self._reading = True  # registered for readability
        self._paused = True  # what arrives goes to _backlog rather than the sink
        self._backlog: Optional[bytearray] = bytearray(received) if received else None
        self._closed = False
        self._pending: Optional[collections.deque[memoryview]] = None  # unsent bytes, None when none
        self._queued = 0  # bytes ever queued in _pending
        self._sent = 0  # of those, bytes handed to the kernel
        # Futures of writes that had to wait, with the _queued count each waits for.
        self._waiters: Optional[collections.deque[tuple[int, asyncio.Future[None]]]] = None
        self._shutdown_pending = False
        self._eof = False  # the peer ended TCP while paused; _backlog is delivered first
        selector.add_reader(self._fd, self._read_ready)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buffered_bytes(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self._queued - self._sent

    # -- reading -------------------------------------------------------------

    # While paused (user code runs, or fairness), up to PAUSED_READ_AHEAD bytes are
    # still read and kept, as the IOStream did: a peer that leaves is noticed at once.
    # If it leaves after sending, what it sent is still delivered (on resume), then it ends.

    def resume_reading(self) -> None:
        """Deliver what was read ahead while paused, then read on (or end, if the peer has left)."""
        if self._closed:
            return
        self._paused = False
        backlog = self._backlog
        if backlog is not None:
            self._backlog = None
            self.sink.data_received(backlog)
            if self._paused or self._closed:
                return
        if self._eof:
            self.abort()
            return
        if not self._reading:
            self._reading = True
            self._selector.add_reader(self._fd, self._read_ready)

    def pause_reading(self) -> None:
        """Hold what arrives (up to a bounded read-ahead) instead of handing it to the sink."""
        self._paused = True

    def _read_ahead(self) -> None:
        """Readable while paused: keep the bytes (bounded) and notice the end of the connection."""
        buf = self._receive
        room = PAUSED_READ_AHEAD - (0 if self._backlog is None else len(self._backlog))
        n = self._recv(buf, max(room, 1))
        if n < 0:
            return
        if not n:
            if self._backlog is None:
                self.abort()
            else:  # keep what came before the end: resume_reading delivers it, then ends
                self._eof = True
                self._reading = False
                self._selector.remove_reader(self._fd)
            return
        if self._backlog is None:
            self._backlog = bytearray(buf[:n])
        else:
            self._backlog += buf[:n]
        if len(self._backlog) >= PAUSED_READ_AHEAD:
            self._reading = False  # enough: let TCP flow control hold the peer
            self._selector.remove_reader(self._fd)

    def _read_ready(self) -> None:
        if self._paused:
            self._read_ahead()
            return
        sink = self.sink
        space = sink.frame_space()
        buf = self._receive if space is None else space
        try:  # the body of _recv, inlined: this is the hot path
            n = self.socket.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return  # nothing there after all
        except OSError:
            n = 0  # reset: the same as the peer closing, for us
        if not n:
            self.abort()
        elif space is None:
            sink.data_received(buf[:n])
        else:
            sink.frame_filled(n)

    def _recv(self, buf: memoryview, size: int = 0) -> int:
        """One ``recv_into`` (``size`` 0: all of ``buf``): the count, -1 when nothing is there, 0 at the end."""
        try:
            return self.socket.recv_into(buf, size)
        except (BlockingIOError, InterruptedError):
            return -1
        except OSError:
            return 0  # reset: the same as the peer closing, for us

    # -- writing -------------------------------------------------------------

    def write(self, parts: Sequence[bytes]) -> Optional[asyncio.Future[None]]:
        """Send ``parts`` in order; None if the kernel took them all, else a future for when it has.

        The future fails with :class:`WebSocketClosedError` if the connection
        closes first (also returned, already failed, once closed).
        """
        if self._closed:
            return _failed_future(self._aloop)
        pending = self._pending
        sent = 0
        if pending is None:
            try:
                sent = self._send_parts(parts if len(parts) <= MAX_IOVEC else parts[:MAX_IOVEC])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.abort()
                return _failed_future(self._aloop)
        for part in parts:
            size = len(part)
            if sent >= size:
                sent -= size
                continue
            if pending is None:
                # What the kernel did not take waits here, as views of the caller's bytes.
                pending = self._pending = collections.deque()
                self._selector.add_writer(self._fd, self._write_ready)
            view = memoryview(part)
            pending.append(view[sent:] if sent else view)
            self._queued += size - sent
            sent = 0
        if pending is None:
            return None
        return self._waiter()

    def _waiter(self) -> asyncio.Future[None]:
        """A future for when everything queued so far has been sent."""
        future: asyncio.Future[None] = self._aloop.create_future()
        if self._waiters is None:
            self._waiters = collections.deque()
        self._waiters.append((self._queued, future))
        return future

    def _send_parts(self, parts: Sequence[Buffer]) -> int:
        """One system call for ``parts``; raises OSError (BlockingIOError when the kernel is full)."""
        if len(parts) == 1:
            return self.socket.send(parts[0])
        if _HAS_SENDMSG:
            return self.socket.sendmsg(parts)
        return self.socket.send(b"".join(parts))  # pragma: no cover - Windows has no sendmsg

    def flushed(self) -> asyncio.Future[None]:
        """A future that completes once everything written so far is with the kernel."""
        if self._closed:
            return _failed_future(self._aloop)
        if self._pending is not None:
            return self._waiter()
        future: asyncio.Future[None] = self._aloop.create_future()
        future.set_result(None)
        return future

    def _write_ready(self) -> None:
        pending = self._pending
        assert pending is not None
        try:
            sent = self._send_parts([pending[i] for i in range(min(len(pending), MAX_IOVEC))])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        self._sent += sent
        while sent:
            head = pending[0]
            if sent >= len(head):
                sent -= len(head)
                pending.popleft()
            else:
                pending[0] = head[sent:]
                sent = 0
        waiters = self._waiters
        if waiters is not None:
            while waiters and waiters[0][0] <= self._sent:
                future = waiters.popleft()[1]
                if not future.done():
                    future.set_result(None)
            if not waiters:
                self._waiters = None
        if not pending:
            self._pending = None  # an idle connection keeps no queue (a deque is 760 bytes)
            self._selector.remove_writer(self._fd)
            if self._shutdown_pending:
                self._shutdown_now()

    def shutdown_write(self) -> None:
        """Half-close TCP (send FIN) once everything written has left."""
        if self._closed:
            return
        if self._pending is not None:
            self._shutdown_pending = True
        else:
            self._shutdown_now()

    def _shutdown_now(self) -> None:
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            self.abort()

    # -- closing ---------------------------------------------------------------

    def close_if_drained(self) -> bool:
        """Close the socket now if the kernel has all that was written and nothing unread waits; True if closed.

        What the kernel has still goes out, then FIN. A socket closed with
        unread bytes sends RST instead, which can destroy what the peer has
        not read yet: while the kernel holds unread bytes (or writes wait
        here) this returns False and changes nothing.
        """
        if self._closed:
            return True
        if self._pending is not None or self._backlog:
            return False
        try:
            unread = socket.socket.recv(self.socket, 1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            unread = b""  # nothing has arrived
        except OSError:
            unread = b""  # reset by the peer: nothing left to protect
        if unread:
            return False
        self.abort()
        return True

    def abort(self) -> None:
        """Close the socket now; unsent data is dropped and the sink hears of it on the next loop turn."""
        if self._closed:
            return
        self._closed = True
        self._backlog = None
        if self._reading:
            self._selector.remove_reader(self._fd)
        if self._pending is not None:
            self._selector.remove_writer(self._fd)
        self._reading = False
        self._pending = None
        waiters, self._waiters = self._waiters or (), None
        for _, future in waiters:
            if not future.done():
                future.set_exception(WebSocketClosedError("the connection closed before the write"))
                silence(future)
        try:
            self.socket.close()
        except OSError:  # pragma: no cover
            pass
        self._aloop.call_soon(self.sink.connection_lost)

    def set_nodelay(self, value: bool) -> None:
        """Set or clear ``TCP_NODELAY`` (ignored once closed or if the socket refuses it)."""
        if not self._closed:
            try:
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if value else 0)
            except OSError:
                pass


#: A TLS write of parts that add up to less than this joins them (one record); larger ones go part by part.
TLS_JOIN_BELOW = 64 * 1024


class TLSTransport(SocketTransport):
    """A TLS connection: the non-blocking ``ssl.SSLSocket`` read and written directly, as :class:`SocketTransport`.

    OpenSSL decrypts a record at a time and may hold decrypted bytes that the
    selector cannot see, so a read goes on until OpenSSL wants more from the
    socket (or the buffer is full, and then another read is scheduled).
    ``SSLWantReadError``/``SSLWantWriteError`` mean "not now", as
    ``BlockingIOError`` does for TCP. ``shutdown_write`` ends TCP (FIN) without
    a TLS close_notify, as Tornado's IOStream closing a TLS stream does.
    """

    __slots__ = ()

    def __init__(
        self,
        sock: ssl.SSLSocket,
        sink: TransportSink,
        selector: Any,
        aloop: asyncio.AbstractEventLoop,
        received: bytes = b"",
    ) -> None:
        super().__init__(sock, sink, selector, aloop, received)
        _speedups_read_ahead(sock)
        if sock.pending():  # decrypted bytes the IOStream left in OpenSSL
            aloop.call_soon(self._read_ready)

    def resume_reading(self) -> None:
        was_paused = self._paused
        super().resume_reading()
        if was_paused and not self._paused and not self._closed:
            # OpenSSL may hold whole records that the read-ahead left (the selector cannot see them).
            self._aloop.call_soon(self._read_ready)

    def close_if_drained(self) -> bool:
        """False: OpenSSL may hold records the kernel's queue does not show, so TLS keeps the half-close."""
        return self._closed

    def _recv(self, buf: memoryview, size: int = 0) -> int:
        try:
            return self.socket.recv_into(buf, size or len(buf))
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            return -1
        except OSError:
            return 0  # reset, or a TLS error: the end of the connection

    def _read_ahead(self) -> None:
        """As SocketTransport's, reading on until OpenSSL wants more from the socket (or the bound is reached)."""
        while self._reading and not self._closed:
            backlog = self._backlog
            if backlog is not None and len(backlog) >= PAUSED_READ_AHEAD:
                return
            before = 0 if backlog is None else len(backlog)
            super()._read_ahead()
            after = 0 if self._backlog is None else len(self._backlog)
            if after == before:  # OpenSSL wants more from the socket, or the peer has left
                return

    def _read_ready(self) -> None:
        if self._closed:
            return
        if self._paused:
            self._read_ahead()
            return
        sink = self.sink
        space = sink.frame_space()
        buf = self._receive if space is None else space
        size = len(buf)
        got = 0
        ended = False
        while got < size:
            n = self._recv(buf[got:] if got else buf)
            if n < 0:
                break
            if not n:
                ended = True
                break
            got += n
        if got:
            if space is None:
                sink.data_received(buf[:got])
            else:
                sink.frame_filled(got)
        if ended:
            self.abort()
        elif got == size and not self._closed:
            self._aloop.call_soon(self._read_ready)  # OpenSSL may hold more than the buffer took

    def _send_parts(self, parts: Sequence[Buffer]) -> int:
        """Send ``parts``, runs of small ones joined; the count taken (0 when OpenSSL must wait); OSError on errors.

        After OpenSSL had to wait, it must be given the same bytes again, at
        least as many: the runs are cut the same way from the same first
        part, so a retry starts with the same chunk or a longer one.
        """
        sock = self.socket
        sent = 0
        i = 0
        count = len(parts)
        try:
            while i < count:
                size = len(parts[i])
                j = i + 1
                while j < count and size + len(parts[j]) <= TLS_JOIN_BELOW:
                    size += len(parts[j])
                    j += 1
                n = sock.send(parts[i] if j == i + 1 else b"".join(parts[i:j]))
                sent += n
                if n < size:
                    break
                i = j
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            pass
        return sent

    def _shutdown_now(self) -> None:
        try:
            # TCP's FIN under TLS: SSLSocket.shutdown would drop the TLS state that reading still needs.
            socket.socket.shutdown(self.socket, socket.SHUT_WR)
        except OSError:
            self.abort()


def _no_read_ahead(sock: ssl.SSLSocket) -> bool:
    """Without the C extension OpenSSL keeps its default (no read-ahead): False."""
    return False


try:
    if NO_SPEEDUPS:
        raise ImportError("TORNADO_WEBSOCKET_NO_SPEEDUPS is set")
    from tornado_websocket._speedups import ssl_read_ahead as _speedups_read_ahead
except ImportError:
    _speedups_read_ahead = _no_read_ahead


class DetachedStream:
    """Stands in for the IOStream a :class:`SocketTransport` took the socket from.

    Applications written for ``tornado.websocket`` reach for
    ``ws_connection.stream`` (or the client's ``stream``) to get the socket
    or to drop the connection; those keep working. Reading and writing go
    through the WebSocket connection only.
    """

    __slots__ = ("_transport",)

    def __init__(self, transport: SocketTransport) -> None:
        self._transport = transport

    @property
    def socket(self) -> Optional[socket.socket]:
        """The socket; ``None`` once the connection is closed, as on an IOStream."""
        return None if self._transport.closed else self._transport.socket

    @property
    def error(self) -> Optional[BaseException]:
        """As ``IOStream.error``; always ``None``: the cause of a closed connection is not kept."""
        return None

    def fileno(self) -> int:
        """The socket's file descriptor (as ``IOStream.fileno``)."""
        return self._transport.socket.fileno()

    def close(self, exc_info: Any = False) -> None:
        """Drop the TCP connection (as ``IOStream.close``)."""
        self._transport.abort()

    def closed(self) -> bool:
        """Whether the connection is gone (as ``IOStream.closed``)."""
        return self._transport.closed

    def set_nodelay(self, value: bool) -> None:
        """Set or clear ``TCP_NODELAY`` on the connection (as ``IOStream.set_nodelay``)."""
        self._transport.set_nodelay(value)


class StreamTransport:
    """A Tornado IOStream (TLS, or where the socket cannot be taken over) behind the same interface."""

    __slots__ = ("sink", "stream", "_aloop", "_paused", "_read_pending", "_into_frame", "_closed")

    def __init__(self, stream: IOStream, sink: TransportSink, aloop: asyncio.AbstractEventLoop):
        self.sink = sink
        self.stream = stream
        self._aloop = aloop
        self._paused = True
        self._read_pending = False
        self._into_frame = False
        self._closed = False
        stream.set_close_callback(self._on_close)
        if stream.closed():  # closed before us (the peer left during the upgrade): IOStream will not call back
            aloop.call_soon(self._on_close)

    @property
    def socket(self) -> Optional[socket.socket]:
        return self.stream.socket

    @property
    def closed(self) -> bool:
        return self._closed or self.stream.closed()

    @property
    def buffered_bytes(self) -> int:
        buffered = self.stream._write_buffer  # None once the stream is closed
        return 0 if buffered is None else len(buffered)

    def resume_reading(self) -> None:
        """Hand what arrives to the sink again, starting with what arrived while paused."""
        if self._paused:
            self._paused = False
            if not self._read_pending:
                self._read_more()

    def pause_reading(self) -> None:
        """Stop handing what arrives to the sink (the IOStream then stops reading)."""
        self._paused = True

    def _read_more(self) -> None:
        stream = self.stream
        work = 0
        while not self._paused and not self.closed:
            if work >= YIELD_AFTER_BYTES:
                # A flood must not keep the event loop to itself.
                self._read_pending = True
                IOLoop.current().add_callback(self._resume_after_yield)
                return
            space = self.sink.frame_space()
            self._into_frame = space is not None
            try:
                if space is not None:
                    future = cast("asyncio.Future[Any]", stream.read_into(space, partial=True))  # type: ignore[arg-type]
                else:
                    future = cast("asyncio.Future[Any]", stream.read_bytes(READ_CHUNK_SIZE, partial=True))
            except StreamClosedError:
                return  # the close callback tells the sink
            if not future.done():
                self._read_pending = True
                future.add_done_callback(self._on_read)
                return
            work += self._deliver(future)

    def _resume_after_yield(self) -> None:
        self._read_pending = False
        self._read_more()

    def _on_read(self, future: asyncio.Future[Any]) -> None:
        self._read_pending = False
        self._deliver(future)
        self._read_more()

    def _deliver(self, future: asyncio.Future[Any]) -> int:
        """Hand one completed read to the sink; return how many bytes it brought."""
        try:
            data = future.result()
        except StreamClosedError:
            return 0
        if self._into_frame:
            self.sink.frame_filled(data)
            return int(data)
        self.sink.data_received(data)
        return len(data)

    def write(self, parts: Sequence[bytes]) -> Optional[asyncio.Future[None]]:
        """As :meth:`SocketTransport.write`; the IOStream decides when bytes leave."""
        try:
            for part in parts[:-1]:
                self.stream.write(part)
            written = self.stream.write(parts[-1])
        except StreamClosedError:
            return _failed_future(self._aloop)
        if written.done() and written.exception() is None:
            return None
        return _closed_as_websocket(written, self._aloop)

    def flushed(self) -> asyncio.Future[None]:
        """A future that completes once everything written so far is with the kernel."""
        if self.closed:
            return _failed_future(self._aloop)
        return _closed_as_websocket(self.stream.write(b""), self._aloop)

    def shutdown_write(self) -> None:
        """TLS cannot half-close under an IOStream: close the connection."""
        sock = self.stream.socket
        if self.closed or sock is None:
            return
        if isinstance(self.stream, SSLIOStream):
            self.abort()
            return
        self.flushed().add_done_callback(lambda _: self._shutdown_now())

    def _shutdown_now(self) -> None:
        sock = self.stream.socket
        if sock is None or self.stream.closed():
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.abort()

    def close_if_drained(self) -> bool:
        """False (the IOStream decides when bytes leave): the half-close path is taken instead."""
        return self.closed

    def abort(self) -> None:
        """Drop the connection now, without flushing (closes the IOStream)."""
        self.stream.close()

    def _on_close(self) -> None:
        if not self._closed:
            self._closed = True
            self.sink.connection_lost()

    def set_nodelay(self, value: bool) -> None:
        """Set or clear ``TCP_NODELAY`` (``IOStream.set_nodelay``)."""
        self.stream.set_nodelay(value)


def chain(source: asyncio.Future[Any], target: asyncio.Future[None]) -> None:
    """Complete ``target`` when ``source`` does; any error becomes WebSocketClosedError."""

    def copy(f: asyncio.Future[Any]) -> None:
        if target.done():
            return
        if f.cancelled() or f.exception() is not None:
            target.set_exception(WebSocketClosedError("the connection closed before the write"))
            silence(target)
        else:
            target.set_result(None)

    source.add_done_callback(copy)


def _closed_as_websocket(source: asyncio.Future[Any], aloop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """A future completing with ``source``; a stream error becomes WebSocketClosedError."""
    target: asyncio.Future[None] = aloop.create_future()
    chain(source, target)
    return target


Transport = Union[SocketTransport, TLSTransport, StreamTransport]


def make_transport(stream: IOStream, sink: TransportSink) -> Transport:
    """The transport for an upgraded ``stream``, paused until ``resume_reading()``.

    A stream with nothing left to read or write is taken over: its socket
    and the bytes it had read past the handshake leave the IOStream (which
    must not be used again) for a :class:`SocketTransport`, or for a
    :class:`TLSTransport` when it is a TLS stream whose handshake is done.
    Otherwise the stream stays, behind a :class:`StreamTransport`.
    """
    io_loop = IOLoop.current()
    aloop: asyncio.AbstractEventLoop = io_loop.asyncio_loop  # type: ignore[attr-defined]
    # Tornado's own registry: on a proactor loop (Windows) this is its selector thread.
    selector = getattr(io_loop, "selector_loop", aloop)
    buffered = getattr(stream, "_read_buffer_size", None)
    sock = stream.socket
    tls = isinstance(stream, SSLIOStream)
    if (
        (tls and (getattr(stream, "_ssl_accepting", True) or not isinstance(sock, ssl.SSLSocket)))
        or type(buffered) is not int
        or sock is None
        or stream.closed()
        or stream.reading()
        or stream.writing()
        or not hasattr(selector, "add_reader")
    ):
        return StreamTransport(stream, sink, aloop)
    leftover = b""
    if buffered:
        # Completes at once, from the stream's buffer.
        leftover = cast("asyncio.Future[bytes]", stream.read_bytes(buffered)).result()
    io_loop.remove_handler(sock.fileno())
    if tls:
        return TLSTransport(cast(ssl.SSLSocket, sock), sink, selector, aloop, leftover)
    return SocketTransport(sock, sink, selector, aloop, leftover)
