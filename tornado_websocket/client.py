"""The WebSocket client: ``websocket_connect()`` and ``WebSocketClientConnection``.

It opens TCP (or TLS for ``wss://``) with Tornado's ``TCPClient``, sends the
upgrade request, checks the answer with :mod:`tornado_websocket.handshake`
and runs the same :class:`~tornado_websocket.connection.WebSocketConnection`
and Sans-I/O protocol as the server, with every frame masked.
"""

from __future__ import annotations

import asyncio
import copy
import ssl
import urllib.parse
import warnings
from typing import Any, Awaitable, Callable, Optional, Union

from tornado.httpclient import HTTPRequest
from tornado.httputil import HTTPHeaders, parse_response_start_line
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from tornado.log import app_log
from tornado.netutil import Resolver
from tornado.tcpclient import TCPClient

from tornado_websocket import deflate, handshake
from tornado_websocket.connection import WebSocketConnection
from tornado_websocket.errors import (
    WebSocketClosedError,
    WebSocketConnectError,
    WebSocketHandshakeError,
    WebSocketTimeoutError,
)
from tornado_websocket.frames import CloseCode
from tornado_websocket.inbox import Data, MessageInbox
from tornado_websocket.protocol import DEFAULT_MAX_MESSAGE_SIZE, Protocol
from tornado_websocket.transport import DetachedStream

MAX_RESPONSE_HEAD = 64 * 1024
MAX_ERROR_BODY = 64 * 1024


class WebSocketClientConnection:
    """A client WebSocket; made by :func:`websocket_connect`, not directly.

    Read with ``await read_message()`` (``None`` once closed) or ``async
    for``, or pass ``on_message_callback`` to :func:`websocket_connect`.
    """

    def __init__(
        self,
        request: HTTPRequest,
        headers: HTTPHeaders,
        subprotocol: Optional[str],
        on_message_callback: Optional[Callable[[Optional[Data]], Any]],
        max_queued_messages: int = 32,
    ) -> None:
        self.request = request
        #: The headers of the server's ``101`` answer.
        self.headers = headers
        self._selected_subprotocol = subprotocol
        self._on_message_callback = on_message_callback
        self._inbox = MessageInbox(max_queued_messages)
        self._connection: Optional[WebSocketConnection] = None
        self.close_code: Optional[int] = None
        self.close_reason: Optional[str] = None

    def _attach(self, connection: WebSocketConnection) -> None:
        self._connection = connection

    def _start(self) -> None:
        """Start dispatching (see _start_connection)."""
        if self._connection is not None:
            self._connection.start()

    @property
    def protocol(self) -> Optional[WebSocketConnection]:
        """The connection while it is open, ``None`` once closed (Tornado's client has the same check)."""
        connection = self._connection
        return None if connection is None or connection.closed else connection

    @property
    def stream(self) -> Optional[Union[IOStream, DetachedStream]]:
        """As on Tornado's client: ``None`` before the handshake, else see :attr:`WebSocketConnection.stream`."""
        return self._connection.stream if self._connection is not None else None

    @property
    def selected_subprotocol(self) -> Optional[str]:
        """The subprotocol the server chose, or ``None``."""
        return self._selected_subprotocol

    @property
    def closed(self) -> bool:
        """True once the TCP connection is gone."""
        return self._connection is None or self._connection.closed

    def read_message(
        self, callback: Optional[Callable[[asyncio.Future[Optional[Data]]], None]] = None
    ) -> asyncio.Future[Optional[Data]]:
        """A future of the next message; ``None`` once the connection is closed and drained.

        ``callback``, if given, is called with that future when it completes
        (as in Tornado).
        """
        future = self._inbox.get()
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def __aiter__(self) -> WebSocketClientConnection:
        return self

    async def __anext__(self) -> Data:
        message = await self.read_message()
        if message is None:
            raise StopAsyncIteration
        return message

    def write_message(self, message: Union[str, bytes, dict[str, Any]], binary: bool = False) -> asyncio.Future[None]:
        """Send a message (``str`` text, ``bytes`` binary if ``binary`` else text, dict as JSON).

        Returns a future that completes when the frame is handed to the
        socket. Raises :class:`WebSocketClosedError` once closing.
        """
        if self._connection is None:
            raise WebSocketClosedError("the WebSocket is not open")
        return self._connection.write_message(message, binary)

    send_message = write_message

    def ping(self, data: Union[str, bytes] = b"") -> asyncio.Future[float]:
        """Send a ping; the future gives the round-trip time in seconds.

        Raises ``ValueError`` over 125 bytes, :class:`WebSocketClosedError` once closing.
        """
        if self._connection is None:
            raise WebSocketClosedError("the WebSocket is not open")
        return self._connection.ping(data)

    def close(self, code: Optional[int] = None, reason: Optional[str] = None) -> None:
        """Start the close handshake (1000 by default); a no-op once closing.

        Raises ``ValueError`` for a code that may not be sent or a reason over 123 bytes.
        """
        if self._connection is not None:
            self._connection.close(CloseCode.NORMAL_CLOSURE if code is None else code, reason or "")

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is gone (after :meth:`close` or a close by the server)."""
        if self._connection is not None:
            await self._connection.wait_closed()

    def set_nodelay(self, value: bool) -> None:
        """Set TCP_NODELAY on the socket (on by default)."""
        assert self._connection is not None
        self._connection.set_nodelay(value)

    # -- ConnectionOwner -------------------------------------------------

    def _on_ws_message(self, message: Data) -> Optional[Awaitable[Any]]:
        callback = self._on_message_callback
        if callback is not None:
            result: Optional[Awaitable[Any]] = callback(message)
            return result
        return self._inbox.put(message)

    def _on_ws_ping(self, payload: bytes) -> None:
        pass

    def _on_ws_pong(self, payload: bytes) -> None:
        pass

    def _on_ws_closed(self) -> None:
        connection = self._connection
        if connection is not None:
            self.close_code = connection.close_code
            self.close_reason = connection.close_reason
        self._inbox.close()
        if self._on_message_callback is not None:
            try:
                self._on_message_callback(None)
            except Exception:
                app_log.error("Uncaught exception in on_message_callback(None)", exc_info=True)


def websocket_connect(
    url: Union[str, HTTPRequest],
    callback: Optional[Callable[[asyncio.Future[WebSocketClientConnection]], None]] = None,
    *,
    subprotocols: Optional[list[str]] = None,
    headers: Optional[Union[dict[str, str], HTTPHeaders]] = None,
    connect_timeout: Optional[float] = 20.0,
    max_message_size: Optional[int] = DEFAULT_MAX_MESSAGE_SIZE,
    ping_interval: Optional[float] = None,
    ping_timeout: Optional[float] = None,
    compression_options: Optional[dict[str, Any]] = None,
    on_message_callback: Optional[Callable[[Optional[Data]], Any]] = None,
    ssl_options: Optional[Union[dict[str, Any], ssl.SSLContext]] = None,
    resolver: Optional[Resolver] = None,
) -> asyncio.Future[WebSocketClientConnection]:
    """Open a client WebSocket to a ``ws://`` or ``wss://`` URL (or a ``tornado.httpclient.HTTPRequest``).

    Returns a future of the :class:`WebSocketClientConnection`. It fails with
    :class:`WebSocketHandshakeError` when the server answers anything but a
    valid ``101`` (``code``, ``headers`` and ``body`` say what it sent), with
    :class:`WebSocketConnectError` (an ``OSError``) when TCP or TLS fails,
    and with :class:`WebSocketTimeoutError` after ``connect_timeout``
    seconds without a complete handshake. ``callback`` (deprecated, as in
    Tornado) is called with the future. ``compression_options`` (a dict,
    ``{}`` for defaults) offers permessage-deflate.
    """
    future = asyncio.ensure_future(
        _connect(
            url,
            subprotocols=subprotocols,
            headers=headers,
            connect_timeout=connect_timeout,
            max_message_size=max_message_size,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            compression_options=compression_options,
            on_message_callback=on_message_callback,
            ssl_options=ssl_options,
            resolver=resolver,
        )
    )
    if callback is not None:
        warnings.warn("the callback argument is deprecated, await the result instead", DeprecationWarning, stacklevel=2)
        IOLoop.current().add_future(future, callback)
    future.add_done_callback(_start_connection)
    return future


def _start_connection(future: asyncio.Future[WebSocketClientConnection]) -> None:
    """Start dispatching one loop turn after the connect future's own callbacks.

    Frames that came with the handshake wait, read ahead, until then: a
    caller that awaits ``websocket_connect`` directly holds the connection
    before ``on_message_callback`` first runs, so its replies keep their
    order (Autobahn cases 3.2 and alike). Wrappers that add loop turns
    (``asyncio.wait_for``) can still see messages first, as with Tornado.
    """
    if not future.cancelled() and future.exception() is None:
        IOLoop.current().add_callback(future.result()._start)


async def _connect(
    url: Union[str, HTTPRequest],
    *,
    subprotocols: Optional[list[str]],
    headers: Optional[Union[dict[str, str], HTTPHeaders]],
    connect_timeout: Optional[float],
    max_message_size: Optional[int],
    ping_interval: Optional[float],
    ping_timeout: Optional[float],
    compression_options: Optional[dict[str, Any]],
    on_message_callback: Optional[Callable[[Optional[Data]], Any]],
    ssl_options: Optional[Union[dict[str, Any], ssl.SSLContext]],
    resolver: Optional[Resolver],
) -> WebSocketClientConnection:
    if isinstance(url, HTTPRequest):
        request = copy.copy(url)
        request.headers = HTTPHeaders(request.headers)
        if request.connect_timeout is not None and connect_timeout == 20.0:
            connect_timeout = request.connect_timeout
        if ssl_options is None and request.ssl_options is not None:
            ssl_options = request.ssl_options
        if ssl_options is None and request.validate_cert is False:
            ssl_options = ssl.create_default_context()
            ssl_options.check_hostname = False
            ssl_options.verify_mode = ssl.CERT_NONE
    else:
        request = HTTPRequest(url)
    if headers:
        for name, value in HTTPHeaders(headers).get_all():
            request.headers.add(name, value)

    parts = urllib.parse.urlsplit(request.url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {request.url}")
    secure = scheme == "wss"
    host = parts.hostname
    port = parts.port or (443 if secure else 80)

    key = handshake.generate_key()
    offer = deflate.client_offer(compression_options) if compression_options is not None else None
    request_headers = HTTPHeaders()
    if "Host" not in request.headers:
        default_port = (secure and port == 443) or (not secure and port == 80)
        host_header = f"[{host}]" if ":" in host else host
        request_headers["Host"] = host_header if default_port else f"{host_header}:{port}"
    for name, value in request.headers.get_all():
        request_headers.add(name, value)
    for name, value in handshake.client_request_headers(key, subprotocols, offer).items():
        request_headers[name] = value
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = f"GET {target} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in request_headers.get_all()
    )

    loop = asyncio.get_running_loop()
    deadline = None if connect_timeout is None else loop.time() + connect_timeout
    stream: Optional[IOStream] = None

    def remaining() -> Optional[float]:
        return None if deadline is None else max(deadline - loop.time(), 0.001)

    try:
        tls: Optional[Union[dict[str, Any], ssl.SSLContext]] = None
        if secure:
            tls = ssl_options if ssl_options is not None else ssl.create_default_context()
        stream = await asyncio.wait_for(
            TCPClient(resolver=resolver).connect(host, port, ssl_options=tls),
            remaining(),
        )
        stream.write((head + "\r\n").encode("latin-1"))
        raw_head = await asyncio.wait_for(
            stream.read_until_regex(b"\r?\n\r?\n", max_bytes=MAX_RESPONSE_HEAD), remaining()
        )
        text = raw_head.decode("latin-1")
        first_line, _, rest = text.partition("\n")
        try:
            status = parse_response_start_line(first_line.strip())
            response_headers = HTTPHeaders.parse(rest)
        except Exception as exc:
            raise WebSocketHandshakeError(f"malformed handshake response: {exc}", 599) from None
        body = b""
        if status.code != 101:
            body = await _read_error_body(stream, status.code, response_headers, remaining())
        subprotocol = handshake.validate_response(status.code, response_headers, body, key, subprotocols)
        compressor = None
        try:
            answered = handshake.parse_extension_list(response_headers)
            if offer is None:
                if answered:
                    raise ValueError("server accepted an extension that was not offered")
            else:
                compressor = deflate.accept_client_response(answered, compression_options or {})
        except ValueError as exc:
            raise WebSocketHandshakeError(str(exc), status.code, response_headers) from None
    except asyncio.TimeoutError:
        if stream is not None:
            stream.close()
        raise WebSocketTimeoutError(f"no WebSocket handshake with {host}:{port} within {connect_timeout} s") from None
    except WebSocketHandshakeError:
        if stream is not None:
            stream.close()
        raise
    except (OSError, StreamClosedError) as exc:
        if stream is not None:
            stream.close()
        cause = getattr(exc, "real_error", None) or exc
        raise WebSocketConnectError(f"cannot connect to {host}:{port}: {cause}") from exc

    client = WebSocketClientConnection(request, response_headers, subprotocol, on_message_callback)
    connection = WebSocketConnection(
        stream,
        Protocol(True, max_message_size, compressor),
        client,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
    )
    connection.set_nodelay(True)
    client._attach(connection)
    return client


async def _read_error_body(stream: IOStream, code: int, headers: HTTPHeaders, timeout: Optional[float]) -> bytes:
    """Read (at most 64 KiB of) the body of a refusal, for the error; what came in time if it stalls.

    Handles ``Content-Length``, ``Transfer-Encoding: chunked`` and a body
    that ends when the server closes the connection.
    """
    if code in (204, 304) or 100 <= code < 200:
        return b""  # these never have a body (RFC 9112 section 6.3)
    body = bytearray()

    async def read() -> None:
        if headers.get("Transfer-Encoding", "").lower() == "chunked":
            while len(body) < MAX_ERROR_BODY:
                size_line = await stream.read_until(b"\n", max_bytes=1024)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                body.extend(await stream.read_bytes(min(size, MAX_ERROR_BODY - len(body))))
                if len(body) < MAX_ERROR_BODY:
                    await stream.read_until(b"\n", max_bytes=1024)
            return
        length = headers.get("Content-Length")
        if length is not None:
            wanted = min(int(length), MAX_ERROR_BODY)
            if wanted > 0:
                body.extend(await stream.read_bytes(wanted))
            return
        while len(body) < MAX_ERROR_BODY:  # delimited by the end of the connection
            body.extend(await stream.read_bytes(MAX_ERROR_BODY - len(body), partial=True))

    try:
        await asyncio.wait_for(read(), timeout)
    except (asyncio.TimeoutError, StreamClosedError, ValueError):
        pass
    return bytes(body[:MAX_ERROR_BODY])
