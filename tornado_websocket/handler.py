"""``WebSocketHandler``: a ``tornado.web.RequestHandler`` that upgrades to WebSocket.

``get()`` validates the upgrade request (after ``prepare()``, so
authentication and ``@tornado.web.authenticated`` can refuse it), answers
``101``, detaches the IOStream and hands it to a
:class:`~tornado_websocket.connection.WebSocketConnection`. The methods are
those of :class:`tornado.websocket.WebSocketHandler`, plus the pull API
(``await receive_message()``, ``async for``) and the seed API
(``receive_message(callback)``).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any, Awaitable, Callable, NoReturn, Optional, Union

import tornado.web
from tornado.httputil import HTTPHeaders
from tornado.iostream import IOStream
from tornado.log import app_log, gen_log

from tornado_websocket import deflate, handshake, limits
from tornado_websocket.connection import WebSocketConnection
from tornado_websocket.endpoint import WebSocketEndpoint
from tornado_websocket.errors import HandshakeError
from tornado_websocket.frames import CloseCode
from tornado_websocket.metrics import STATS, refusal_kind
from tornado_websocket.options import (
    DEFAULT_MAX_WRITE_BUFFER_SIZE,
    ConnectionOptions,
    warn_unknown_compression_options,
)
from tornado_websocket.protocol import DEFAULT_MAX_MESSAGE_SIZE, Protocol, Side

MessageCallback = Callable[[Union[str, bytes]], Optional[Awaitable[Any]]]


def _not_supported() -> NoReturn:
    raise RuntimeError("Method not supported for Web Sockets")


_NO_HEADERS = HTTPHeaders()


def _setting(name: str, default: Any, doc: str) -> Any:
    """A read-only handler property that gives the Application setting ``name`` (``default`` if unset)."""
    return property(lambda self: self.settings.get(name, default), doc=doc)


class _DetachedHTTPConnection:
    """What ``request.connection`` becomes after the upgrade, for every handler: as in Tornado, ``stream`` is None.

    Tornado's ``HTTP1Connection`` stays with ``stream = None`` after
    ``detach()``; applications test ``request.connection.stream`` (and its
    ``closed()``). One shared object keeps that without keeping the real
    connection for the life of the WebSocket.
    """

    __slots__ = ()
    stream = None

    def set_close_callback(self, callback: Optional[Callable[[], None]]) -> None:
        """Nothing to watch: the WebSocket connection reports its own end (``on_close``)."""


_DETACHED_HTTP_CONNECTION = _DetachedHTTPConnection()


class WebSocketHandler(tornado.web.RequestHandler, WebSocketEndpoint):
    """Subclass this and map it to a URL to serve WebSocket connections.

    Receive messages in one of three ways: override :meth:`on_message`
    (push), call ``self.receive_message(callback)`` (every later message
    goes to ``callback``), or pull with ``await self.receive_message()`` /
    ``async for message in self``. Send with :meth:`write_message`; the
    sending, pinging and closing methods are those of
    :class:`~tornado_websocket.endpoint.WebSocketEndpoint`.
    """

    # True once the 101 answer is sent (a class default: set_header runs inside __init__).
    _upgraded = False
    open_args: tuple[Any, ...] = ()
    open_kwargs: dict[str, Any] = {}  # noqa: RUF012 - replaced, never mutated
    _selected_subprotocol: Optional[str] = None
    _on_close_called = False
    _message_callback: Optional[MessageCallback] = None
    _admission: Optional[limits.Admission] = None  # this connection's share of the limits

    # -- the opening handshake ---------------------------------------------

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Validate the upgrade request, answer 101 and start the connection."""
        self.open_args = args
        self.open_kwargs = kwargs
        request = self.request
        try:
            key = handshake.validate_request(request.method or "", request.version, request.headers)
        except HandshakeError as exc:
            self._refuse(exc.status, exc.reason, exc.headers)
            return
        origin_error = self._origin_error()
        if origin_error is not None:
            self._refuse(403, f"Cross origin websockets not allowed: {origin_error}")
            return

        subprotocols = handshake.parse_token_list(request.headers, "Sec-WebSocket-Protocol")
        selected = self.select_subprotocol(subprotocols)
        if selected is not None and selected not in subprotocols:
            raise ValueError(f"select_subprotocol returned {selected!r}, which was not offered")
        self._selected_subprotocol = selected

        extension_header: Optional[str] = None
        compressor: Optional[deflate.PerMessageDeflate] = None
        options = self.get_compression_options()
        if options is not None:
            warn_unknown_compression_options(options)
            try:
                offers = handshake.parse_extension_list(request.headers)
            except ValueError as exc:
                self._refuse(400, f"malformed Sec-WebSocket-Extensions header: {exc}")
                return
            accepted = deflate.negotiate_server(offers, options)
            if accepted is not None:
                extension_header, compressor = accepted

        outcome = limits.admit(self)  # draining and the limits; no await between this and the 101
        if isinstance(outcome, limits.Refusal):
            self._refuse(outcome.status, outcome.reason, outcome.headers, counted=True)
            return
        self._admission = outcome
        STATS.handshakes_accepted += 1
        self.set_status(101)
        for name, value in handshake.response_headers(key, selected, extension_header).items():
            self.set_header(name, value)
        self.clear_header("Content-Type")
        self.finish()
        stream = self._detach_stream()

        max_message_size = self.max_message_size
        connection = WebSocketConnection(
            stream, Protocol(Side.SERVER, max_message_size, compressor), self, self._connection_options()
        )
        self._attach(connection)
        connection.set_nodelay(True)
        try:
            result = self.open(*args, **kwargs)
            if result is not None:
                await result
        except (Exception, asyncio.CancelledError):
            app_log.error("Uncaught exception in WebSocket open", exc_info=True)
            connection.close(CloseCode.INTERNAL_ERROR, "internal error")
        connection.start()

    def _refuse(
        self, status: int, reason: str, headers: Optional[dict[str, str]] = None, counted: bool = False
    ) -> None:
        if not counted:  # limits.admit() counts its own refusals
            STATS.handshake_refused(refusal_kind(status))
        gen_log.debug("Refused WebSocket upgrade with %d: %s", status, reason)
        self.set_status(status)
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(reason + "\n")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors before the upgrade are answered in plain text, as handshake refusals are."""
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        if status_code == 405:
            self.set_header("Allow", "GET")
        self.finish(f"{status_code}: {self._reason}\n")

    def _origin_error(self) -> Optional[str]:
        """Apply the same-origin policy; return why the request is refused, or None."""
        headers = self.request.headers
        origin = headers.get("Origin") or headers.get("Sec-WebSocket-Origin")
        fetch_site = headers.get("Sec-Fetch-Site")
        if fetch_site in ("same-origin", "none"):
            return None
        if fetch_site is None:
            if origin is None:
                return None  # not a browser
            netloc = urllib.parse.urlsplit(origin).netloc.lower()
            if netloc == headers.get("Host", "").lower() or self.check_origin(origin):
                return None
            return f"Origin {origin!r} not allowed"
        if origin and self.check_origin(origin):
            return None
        return f"Sec-Fetch-Site {fetch_site} and Origin {origin!r} not allowed"

    def check_origin(self, origin: str) -> bool:
        """Decide on a cross-origin request; by default only ``trusted_origins`` pass.

        Called after ``prepare()`` and only for requests that look
        cross-origin (an ``Origin`` that differs from ``Host``). Override to
        allow more origins; see ``docs/security.md`` before returning True.
        """
        check_trusted = getattr(self, "check_trusted_origin", None)  # Tornado 6.6+
        if check_trusted is not None:
            return bool(check_trusted(origin))
        trusted: Any = self.settings.get("trusted_origins", [])
        return origin in trusted

    def select_subprotocol(self, subprotocols: list[str]) -> Optional[str]:
        """Pick one of the offered subprotocols (or ``None`` for none). Default: none."""
        return None

    @property
    def selected_subprotocol(self) -> Optional[str]:
        """The subprotocol chosen by :meth:`select_subprotocol`."""
        return self._selected_subprotocol

    def get_compression_options(self) -> Optional[dict[str, Any]]:
        """Return a dict (``{}`` for defaults) to offer permessage-deflate; ``None`` disables it.

        Keys: see :class:`tornado_websocket.deflate.DeflateOptions`.
        """
        return None

    # Tornado's overridable properties, each reading one Application setting.
    ping_interval = _setting(
        "websocket_ping_interval", None, "Seconds between keepalive pings (``websocket_ping_interval``; 0/None: off)."
    )
    ping_timeout = _setting(
        "websocket_ping_timeout",
        None,
        "Seconds a pong may take (``websocket_ping_timeout``; default: the interval; 0: no timeout).",
    )
    max_message_size = _setting(
        "websocket_max_message_size",
        DEFAULT_MAX_MESSAGE_SIZE,
        "Largest message accepted, in bytes (``websocket_max_message_size``, default 10 MiB).",
    )
    max_write_buffer_size = _setting(
        "websocket_max_write_buffer_size",
        DEFAULT_MAX_WRITE_BUFFER_SIZE,
        "Unsent bytes allowed for a peer that does not read (``websocket_max_write_buffer_size``, default "
        "16 MiB); past it the connection is dropped. ``await write_message()`` to stay under it.",
    )
    close_timeout = _setting(
        "websocket_close_timeout",
        None,
        "Seconds the close handshake may take before TCP is dropped (``websocket_close_timeout``, default 5).",
    )

    def _connection_options(self) -> ConnectionOptions:
        """The options of this handler's connection, from its properties (which read the settings)."""
        return ConnectionOptions.create(
            max_message_size=self.max_message_size,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=self.close_timeout,
            max_write_buffer_size=self.max_write_buffer_size,
            max_queued_messages=self.max_queued_messages,
        )

    def _detach_stream(self) -> IOStream:
        stream = self.detach()
        self._upgraded = True
        # The 101 answer is sent and the HTTP/1.1 connection object is done with:
        # keep neither for the life of the WebSocket (memory per idle connection).
        self._headers = _NO_HEADERS
        self.request.connection = _DETACHED_HTTP_CONNECTION  # type: ignore[assignment]
        self.request.server_connection = None  # it holds the IOStream, which the socket may leave
        return stream

    # HTTP response methods make no sense once the connection is a WebSocket.

    def write(self, chunk: Union[str, bytes, dict[str, Any]]) -> None:
        if self._upgraded:
            _not_supported()
        super().write(chunk)

    def redirect(self, url: str, permanent: bool = False, status: Optional[int] = None) -> None:
        if self._upgraded:
            _not_supported()
        super().redirect(url, permanent, status)

    def set_header(self, name: str, value: Any) -> None:
        if self._upgraded:
            _not_supported()
        super().set_header(name, value)

    def add_header(self, name: str, value: Any) -> None:
        if self._upgraded:
            _not_supported()
        super().add_header(name, value)

    def clear_header(self, name: str) -> None:
        if self._upgraded:
            _not_supported()
        super().clear_header(name)

    def set_cookie(self, name: str, value: Union[str, bytes], *args: Any, **kwargs: Any) -> None:
        if self._upgraded:
            _not_supported()
        super().set_cookie(name, value, *args, **kwargs)

    def set_status(self, status_code: int, reason: Optional[str] = None) -> None:
        if self._upgraded:
            _not_supported()
        super().set_status(status_code, reason)

    def flush(self, include_footers: bool = False) -> asyncio.Future[None]:
        if self._upgraded:
            _not_supported()
        return super().flush(include_footers)

    def finish(self, chunk: Optional[Union[str, bytes, dict[str, Any]]] = None) -> asyncio.Future[None]:
        if self._upgraded:
            _not_supported()
        return super().finish(chunk)

    def _break_cycles(self) -> None:
        # finish() runs at the upgrade; keep the handler usable until the socket closes.
        if self.get_status() != 101 or self._on_close_called:
            super()._break_cycles()

    # -- the user API --------------------------------------------------------

    def open(self, *args: Any, **kwargs: Any) -> Optional[Awaitable[None]]:
        """Called once the connection is open, with the URL's path arguments. May be a coroutine."""
        return None

    def on_message(self, message: Union[str, bytes]) -> Optional[Awaitable[None]]:
        """Called for each message unless a callback was given to :meth:`receive_message`.

        May be a coroutine: reading pauses until it finishes. The default
        queues the message for ``await receive_message()`` / ``async for``.
        """
        return self._pull_inbox().put(message)

    def receive_message(
        self, callback: Optional[MessageCallback] = None
    ) -> Optional[asyncio.Future[Optional[Union[str, bytes]]]]:
        """Receive messages: ``callback`` gets every later one; without it, await the next.

        Without a callback, returns a future of the next message, ``None``
        once the connection is closed and every queued message was taken.
        """
        if callback is not None:
            self._message_callback = callback
            for message in self._pull_inbox().drain():
                callback(message)
            return None
        return self._pull_inbox().get()

    def on_close(self) -> None:
        """Called exactly once when the connection is gone, on every path.

        ``close_code`` and ``close_reason`` hold what the peer's Close frame
        said (``None`` if it sent none).
        """

    # -- ConnectionOwner -------------------------------------------------------

    def _on_ws_message(self, message: Union[str, bytes]) -> Optional[Awaitable[Any]]:
        callback = self._message_callback
        if callback is not None:
            return callback(message)
        return self.on_message(message)

    def _on_endpoint_closed(self) -> None:
        if self._admission is not None:
            self._admission.release()
        if not self._on_close_called:
            self._on_close_called = True
            self._message_callback = None  # often a bound method of self: break the cycle
            try:
                self.on_close()
            finally:
                self._break_cycles()

    def on_connection_close(self) -> None:
        """The HTTP connection closed before the upgrade completed."""
        if self._connection is None and not self._on_close_called:
            super().on_connection_close()
