"""What the server handler and the client connection share: one face for the application.

:class:`WebSocketEndpoint` holds sending, pinging and closing (callable from
any thread), pulling messages (``async for``), the close code and reason,
and the :class:`~tornado_websocket.connection.ConnectionOwner` callbacks.
:class:`~tornado_websocket.handler.WebSocketHandler` and
:class:`~tornado_websocket.client.WebSocketClientConnection` add what is
particular to each side.

As in Tornado, the calls go through the ``ws_connection`` attribute (the
client's ``protocol`` is the same object), so an application or a test
that replaces it, or sets it to ``None``, is obeyed.

Threads: ``write_message``, ``ping`` and ``close`` may be called from any
thread. Off the connection's event loop they are handed to the loop
(``call_soon_threadsafe``, so each thread's calls keep their order) and
return a :class:`concurrent.futures.Future` of the result instead of an
asyncio future (the annotations name the asyncio future, which is what
code on the loop awaits; ``.result(timeout)`` works on both once done).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable, Optional, TypeVar, Union, cast

from tornado.escape import json_encode, utf8
from tornado.log import gen_log

from tornado_websocket.connection import WebSocketConnection
from tornado_websocket.errors import WebSocketClosedError
from tornado_websocket.frames import CloseCode, cut_close_reason, is_valid_close_code
from tornado_websocket.inbox import Data, MessageInbox
from tornado_websocket.options import DEFAULT_MAX_QUEUED_MESSAGES

T = TypeVar("T")
_get_ident = threading.get_ident


def _from_other_thread(
    connection: WebSocketConnection, call: Callable[..., Any], *args: Any
) -> concurrent.futures.Future[Any]:
    """Run ``call(*args)`` on the connection's loop; a concurrent future of its result (awaited if a future)."""
    result: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        if not result.set_running_or_notify_cancel():
            return
        try:
            value = call(*args)
        except BaseException as exc:
            result.set_exception(exc)
            return
        if isinstance(value, asyncio.Future):
            value.add_done_callback(lambda f: _copy_outcome(f, result))
        else:
            result.set_result(value)

    connection.event_loop.call_soon_threadsafe(run)
    return result


def _check_stand_in_open(stand_in: Any) -> None:
    """Raise WebSocketClosedError if a stand-in put in ``ws_connection`` says it is closing (as Tornado asks it)."""
    is_closing = getattr(stand_in, "is_closing", None)
    if is_closing is not None and is_closing():
        raise WebSocketClosedError("the WebSocket is closed")


def sendable_close(code: Optional[int], reason: Optional[str]) -> tuple[int, str]:
    """The close code and reason to send for what the application asked.

    1000 by default, 1011 for a code that may not be sent, the reason cut to
    123 UTF-8 bytes (at a character boundary).
    """
    close_code = CloseCode.NORMAL_CLOSURE if code is None else code
    if not is_valid_close_code(close_code):
        gen_log.debug("close code %r may not be sent (RFC 6455 section 7.4); sending 1011", code)
        close_code = CloseCode.INTERNAL_ERROR
    return close_code, cut_close_reason(reason or "")


def _copy_outcome(source: asyncio.Future[Any], target: concurrent.futures.Future[Any]) -> None:
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())


class WebSocketEndpoint:
    """The application's side of one WebSocket connection; see the module docstring."""

    #: The connection while it is open (Tornado's name); ``None`` before the upgrade and after ``close()``.
    ws_connection: Optional[WebSocketConnection] = None
    #: The code and reason of the peer's Close frame, set when the connection is gone (``None`` if it sent none).
    close_code: Optional[int] = None
    close_reason: Optional[str] = None
    #: How many received messages wait for a pull consumer before reading pauses.
    max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES
    # The connection from the upgrade until the end, whatever ws_connection is set to.
    _connection: Optional[WebSocketConnection] = None
    _inbox: Optional[MessageInbox] = None  # made on first use: push consumers never need it

    # -- sending -------------------------------------------------------------

    def write_message(
        self, message: Union[str, bytes, dict[str, Any]], binary: bool = False, compress: bool = True
    ) -> asyncio.Future[None]:
        """Send a message: ``str`` as text, ``bytes`` as binary (or text unless ``binary``), dict as JSON.

        ``compress=False`` sends this one uncompressed where permessage-deflate was negotiated.

        Returns a future that completes when the frame is handed to the
        socket (from another thread: a ``concurrent.futures.Future``).
        Raises :class:`~tornado_websocket.errors.WebSocketClosedError` once
        the connection is closing or closed, ``TypeError`` for other types.
        """
        connection = self.ws_connection
        if type(connection) is WebSocketConnection:
            if _get_ident() == connection._thread:
                return connection.write_message(message, binary, compress)
            return _from_other_thread(connection, connection.write_message, message, binary, compress)  # type: ignore[return-value]
        if connection is None:
            raise WebSocketClosedError("the WebSocket is closed")
        # A stand-in an application or test assigned to ws_connection: what Tornado does.
        _check_stand_in_open(connection)
        if isinstance(message, dict):
            message = json_encode(message)
        return connection.write_message(message, binary=binary)

    send_message = write_message

    def ping(self, data: Union[str, bytes] = b"") -> asyncio.Future[float]:
        """Send a ping; the future gives the round-trip time in seconds when the pong arrives.

        Raises ``ValueError`` over 125 bytes and
        :class:`~tornado_websocket.errors.WebSocketClosedError` once closing.
        """
        connection = self.ws_connection
        if type(connection) is WebSocketConnection:
            if _get_ident() != connection._thread:
                return _from_other_thread(connection, connection.ping, data)  # type: ignore[return-value]
            return connection.ping(data)
        if connection is None:
            raise WebSocketClosedError("the WebSocket is closed")
        stand_in: Any = connection  # what Tornado does with it: no future (None)
        _check_stand_in_open(stand_in)
        return cast("asyncio.Future[float]", stand_in.write_ping(utf8(data)))

    def close(
        self, code: Optional[int] = None, reason: Optional[str] = None
    ) -> Optional[concurrent.futures.Future[None]]:
        """Start the close handshake (code 1000 by default); the socket closes when it completes.

        A no-op on a closing connection. A code that may not be sent (RFC
        6455 section 7.4, say 1005 or 10000) is replaced by 1011 (internal
        error) and a reason over 123 UTF-8 bytes is cut, rather than
        raising from what is often an error path. From another thread,
        returns a ``concurrent.futures.Future`` of the call.
        """
        connection = self.ws_connection
        if connection is None:
            return None
        self.ws_connection = None  # as Tornado: the endpoint no longer offers the connection
        if type(connection) is not WebSocketConnection:
            connection.close(code, reason)  # a stand-in: what Tornado does
            return None
        close_code, close_reason = sendable_close(code, reason)
        if _get_ident() != connection._thread:
            return _from_other_thread(connection, connection.close, close_code, close_reason)
        connection.close(close_code, close_reason)
        return None

    def is_closing(self) -> bool:
        """True once the close handshake began (either side) or the connection is gone, or before it opened."""
        connection = self.ws_connection
        return connection is None or connection.is_closing()

    @property
    def write_buffer_size(self) -> int:
        """Bytes written but not yet taken by the kernel (0 once closed)."""
        connection = self._connection
        return 0 if connection is None or connection.closed else connection.write_buffer_size

    def add_close_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(self)`` once when the connection is gone (at once if it is or never opened)."""
        connection = self._connection
        if connection is None:
            callback(self)
        else:
            connection.add_close_callback(lambda _: callback(self))

    def set_nodelay(self, value: bool) -> None:
        """Set TCP_NODELAY (on by default here: frames are already coalesced per write).

        Raises :class:`~tornado_websocket.errors.WebSocketClosedError` before the connection opened.
        """
        connection = self.ws_connection or self._connection
        if connection is None:
            raise WebSocketClosedError("set_nodelay needs an open connection")
        connection.set_nodelay(value)

    # -- receiving -------------------------------------------------------------

    def _pull_inbox(self) -> MessageInbox:
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = MessageInbox(self.max_queued_messages)
            if self._connection is not None and self._connection.closed:
                inbox.close()
        return inbox

    def __aiter__(self: T) -> T:
        return self

    async def __anext__(self) -> Data:
        message = await self._pull_inbox().get()
        if message is None:
            raise StopAsyncIteration
        return message

    # -- ConnectionOwner -------------------------------------------------------

    def _attach(self, connection: WebSocketConnection) -> None:
        self._connection = self.ws_connection = connection

    def _on_ws_message(self, message: Data) -> Any:
        return self._pull_inbox().put(message)

    def _on_ws_ping(self, payload: bytes) -> None:
        self.on_ping(payload)

    def _on_ws_pong(self, payload: bytes) -> None:
        self.on_pong(payload)

    def on_ping(self, data: bytes) -> None:
        """Called when a ping arrives (the pong is sent for you)."""

    def on_pong(self, data: bytes) -> None:
        """Called when a pong arrives."""

    def _ws_pull_pending(self) -> Optional[asyncio.Future[None]]:
        inbox = self._inbox
        return None if inbox is None else inbox.unanswered()

    def _on_ws_closed(self) -> None:
        connection = self._connection
        if connection is not None:
            self.close_code = connection.close_code
            self.close_reason = connection.close_reason
        self.ws_connection = None
        if self._inbox is not None:
            self._inbox.close()
        self._on_endpoint_closed()

    def _on_endpoint_closed(self) -> None:
        """The connection is gone (after the close code is set and pull consumers were woken)."""
