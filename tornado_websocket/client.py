"""The WebSocket client: ``websocket_connect()`` and ``WebSocketClientConnection``.

It opens TCP (or TLS for ``wss://``) with Tornado's ``TCPClient``, sends the
upgrade request, checks the answer with :mod:`tornado_websocket.handshake`
and runs the same :class:`~tornado_websocket.connection.WebSocketConnection`
and Sans-I/O protocol as the server, with every frame masked.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import ssl
import urllib.parse
import warnings
from typing import Any, Awaitable, Callable, NamedTuple, Optional, Union

from tornado.httpclient import HTTPRequest, _RequestProxy
from tornado.httputil import HTTPHeaders
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from tornado.log import app_log
from tornado.netutil import Resolver

from tornado_websocket import deflate, handshake
from tornado_websocket import proxy as proxies
from tornado_websocket.connection import WebSocketConnection
from tornado_websocket.endpoint import WebSocketEndpoint
from tornado_websocket.errors import (
    WebSocketConnectError,
    WebSocketHandshakeError,
    WebSocketTimeoutError,
)
from tornado_websocket.inbox import Data, MessageInbox
from tornado_websocket.options import (
    DEFAULT_MAX_WRITE_BUFFER_SIZE,
    ConnectionOptions,
    warn_unknown_compression_options,
)
from tornado_websocket.protocol import DEFAULT_MAX_MESSAGE_SIZE, Protocol, Side
from tornado_websocket.transport import DetachedStream

MAX_RESPONSE_HEAD = 64 * 1024
MAX_ERROR_BODY = 64 * 1024
DEFAULT_CONNECT_TIMEOUT = 20.0


class _Default(enum.Enum):
    """The marker of an argument left out (``None`` means something else)."""

    UNSET = enum.auto()


UNSET = _Default.UNSET


class WebSocketClientConnection(WebSocketEndpoint):
    """A client WebSocket; made by :func:`websocket_connect`, not directly.

    Read with ``await read_message()`` (``None`` once closed) or ``async
    for``, or pass ``on_message_callback`` to :func:`websocket_connect`. The
    sending, pinging and closing methods are those of
    :class:`~tornado_websocket.endpoint.WebSocketEndpoint`.
    """

    #: As on Tornado's client (an HTTP connection): ``None`` once the ``101`` was accepted.
    code: Optional[int] = None
    _selected_subprotocol: Optional[str] = None

    def __init__(
        self,
        request: Union[str, HTTPRequest],
        on_message_callback: Optional[Callable[[Optional[Data]], Any]] = None,
        compression_options: Optional[dict[str, Any]] = None,
        ping_interval: Optional[float] = None,
        ping_timeout: Optional[float] = None,
        max_message_size: Optional[int] = DEFAULT_MAX_MESSAGE_SIZE,
        subprotocols: Optional[list[str]] = None,
        resolver: Optional[Resolver] = None,
        connect_timeout: Union[float, None, _Default] = UNSET,
        headers: Optional[Union[dict[str, str], HTTPHeaders]] = None,
        ssl_options: Optional[Union[dict[str, Any], ssl.SSLContext]] = None,
        close_timeout: Optional[float] = None,
        max_write_buffer_size: Optional[int] = DEFAULT_MAX_WRITE_BUFFER_SIZE,
        max_queued_messages: Optional[int] = None,
        proxy: Union[str, bool, None] = None,
        follow_redirects: bool = True,
    ) -> None:
        """Start connecting (as Tornado's constructor does); :attr:`connect_future` gives ``self`` once open.

        The arguments are :func:`websocket_connect`'s, which is the usual
        way in. Raises ``ValueError`` at once for an impossible option or a
        URL that is not ``ws://``/``wss://`` (``http``/``https`` are taken
        as such).
        """
        options = ConnectionOptions.create(
            max_message_size=max_message_size,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
            max_write_buffer_size=max_write_buffer_size,
            max_queued_messages=max_queued_messages,
        )
        warn_unknown_compression_options(compression_options)
        self.request, timeout, tls = _client_request(request, headers, connect_timeout, ssl_options)
        #: The headers of the server's ``101`` answer (empty until it came).
        self.headers = HTTPHeaders()
        self.max_queued_messages = options.max_queued_messages
        self._on_message_callback = on_message_callback
        #: A future of this connection, done once the handshake succeeded (Tornado's name).
        self.connect_future: asyncio.Future[WebSocketClientConnection] = asyncio.ensure_future(
            _connect(self, options, subprotocols, compression_options, timeout, tls, resolver, proxy, follow_redirects)
        )
        self.connect_future.add_done_callback(_start_connection)

    def _start(self) -> None:
        """Start dispatching (see _start_connection)."""
        if self._connection is not None:
            self._connection.start()

    @property
    def protocol(self) -> Optional[WebSocketConnection]:
        """Tornado's name for the connection: ``None`` once closed or ``close()`` was called."""
        connection = self.ws_connection
        return None if connection is None or connection.closed else connection

    @protocol.setter
    def protocol(self, value: Optional[WebSocketConnection]) -> None:
        self.ws_connection = value

    @property
    def parsed(self) -> urllib.parse.SplitResult:
        """The request URL, split (``scheme``, ``netloc``, ``path``, ...), as Tornado's client has it."""
        return urllib.parse.urlsplit(self.request.url)

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

    @property
    def read_queue(self) -> MessageInbox:
        """Tornado's name for the queue of :meth:`read_message`: ``await read_queue.get()`` is the next message."""
        return self._pull_inbox()

    def read_message(
        self, callback: Optional[Callable[[asyncio.Future[Optional[Data]]], None]] = None
    ) -> asyncio.Future[Optional[Data]]:
        """A future of the next message; ``None`` once the connection is closed and drained.

        ``callback``, if given, is called with that future when it completes
        (as in Tornado).
        """
        future = self._pull_inbox().get()
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def on_message(self, message: Optional[Data]) -> Optional[Awaitable[Any]]:
        """Handle one message (``None``: closed) as Tornado's client does: to the callback, else the read queue.

        Called for every message that arrives; tests call it to inject one.
        """
        callback = self._on_message_callback
        if callback is not None:
            result: Optional[Awaitable[Any]] = callback(message)
            return result
        if message is None:
            self._pull_inbox().close()
            return None
        return self._pull_inbox().put(message)

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is gone (after :meth:`close` or a close by the server)."""
        if self._connection is not None:
            await self._connection.wait_closed()

    # -- ConnectionOwner -------------------------------------------------

    def _on_ws_message(self, message: Data) -> Optional[Awaitable[Any]]:
        return self.on_message(message)

    def _on_endpoint_closed(self) -> None:
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
    connect_timeout: Union[float, None, _Default] = UNSET,
    max_message_size: Optional[int] = DEFAULT_MAX_MESSAGE_SIZE,
    ping_interval: Optional[float] = None,
    ping_timeout: Optional[float] = None,
    compression_options: Optional[dict[str, Any]] = None,
    on_message_callback: Optional[Callable[[Optional[Data]], Any]] = None,
    ssl_options: Optional[Union[dict[str, Any], ssl.SSLContext]] = None,
    resolver: Optional[Resolver] = None,
    close_timeout: Optional[float] = None,
    max_write_buffer_size: Optional[int] = DEFAULT_MAX_WRITE_BUFFER_SIZE,
    max_queued_messages: Optional[int] = None,
    proxy: Union[str, bool, None] = None,
    follow_redirects: bool = True,
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

    ``connect_timeout`` defaults to the ``HTTPRequest``'s, else 20 s
    (``None``: no limit). ``max_message_size``, ``ping_interval``,
    ``ping_timeout``, ``close_timeout``, ``max_write_buffer_size`` and
    ``max_queued_messages`` are those of
    :class:`~tornado_websocket.options.ConnectionOptions`, the same as on
    the server. Raises ``ValueError`` at once for an impossible option.
    """
    # Tornado's arguments in Tornado's order, then ours (see WebSocketClientConnection).
    future = WebSocketClientConnection(
        url,
        on_message_callback,
        compression_options,
        ping_interval,
        ping_timeout,
        max_message_size,
        subprotocols,
        resolver,
        connect_timeout,
        headers,
        ssl_options,
        close_timeout,
        max_write_buffer_size,
        max_queued_messages,
        proxy,
        follow_redirects,
    ).connect_future
    if callback is not None:
        warnings.warn("the callback argument is deprecated, await the result instead", DeprecationWarning, stacklevel=2)
        IOLoop.current().add_future(future, callback)
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


def _client_request(
    url: Union[str, HTTPRequest],
    headers: Optional[Union[dict[str, str], HTTPHeaders]],
    connect_timeout: Union[float, None, _Default],
    ssl_options: Optional[Union[dict[str, Any], ssl.SSLContext]],
) -> tuple[HTTPRequest, Optional[float], Optional[Union[dict[str, Any], ssl.SSLContext]]]:
    """The request to send (a copy), the connect timeout and the TLS options, from what the caller gave."""
    if isinstance(url, _RequestProxy):  # what Tornado's own client code passes around
        url = url.request
    if isinstance(url, str):
        request = HTTPRequest(url)
    else:
        request = copy.copy(url)
        request.headers = HTTPHeaders(request.headers)
        if connect_timeout is UNSET and request.connect_timeout is not None:
            connect_timeout = request.connect_timeout
        if ssl_options is None and request.ssl_options is not None:
            ssl_options = request.ssl_options
        if ssl_options is None and request.validate_cert is False:
            ssl_options = ssl.create_default_context()
            ssl_options.check_hostname = False
            ssl_options.verify_mode = ssl.CERT_NONE
    if headers:
        for name, value in HTTPHeaders(headers).get_all():
            request.headers.add(name, value)
    parts = urllib.parse.urlsplit(request.url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {request.url}")
    timeout = DEFAULT_CONNECT_TIMEOUT if connect_timeout is UNSET else connect_timeout
    return request, timeout, ssl_options


async def _connect(
    client: WebSocketClientConnection,
    options: ConnectionOptions,
    subprotocols: Optional[list[str]],
    compression_options: Optional[dict[str, Any]],
    connect_timeout: Optional[float],
    ssl_options: Optional[Union[dict[str, Any], ssl.SSLContext]],
    resolver: Optional[Resolver],
    proxy: Union[str, bool, None],
    follow_redirects: bool,
) -> WebSocketClientConnection:
    """The opening handshake of ``client``, following redirects; raises as :func:`websocket_connect` says.

    ``connect_timeout`` bounds all of it, redirects included.
    """
    loop = asyncio.get_running_loop()
    deadline = None if connect_timeout is None else loop.time() + connect_timeout
    hops = 0
    while True:
        outcome = await _handshake(
            client, subprotocols, compression_options, deadline, connect_timeout, ssl_options, resolver, proxy
        )
        if not isinstance(outcome, _Redirect):
            stream, response_headers, subprotocol, compressor = outcome
            break
        redirect = proxies.next_request(
            outcome.code, outcome.headers, client.request.url, hops, follow_redirects=follow_redirects
        )
        assert redirect is not None
        following = copy.copy(client.request)
        following.url = redirect.url
        following.headers = proxies.redirect_headers(client.request.headers, redirect)
        client.request = following
        hops += 1
    client.headers = response_headers
    client._selected_subprotocol = subprotocol
    connection = WebSocketConnection(
        stream, Protocol(Side.CLIENT, options.max_message_size, compressor), client, options
    )
    client._attach(connection)
    return client


class _Redirect(NamedTuple):
    """A redirect answer to the upgrade request, to follow."""

    code: int
    headers: HTTPHeaders


async def _handshake(
    client: WebSocketClientConnection,
    subprotocols: Optional[list[str]],
    compression_options: Optional[dict[str, Any]],
    deadline: Optional[float],
    connect_timeout: Optional[float],
    ssl_options: Optional[Union[dict[str, Any], ssl.SSLContext]],
    resolver: Optional[Resolver],
    proxy: Union[str, bool, None],
) -> Union[tuple[IOStream, HTTPHeaders, Optional[str], Optional[deflate.PerMessageDeflate]], _Redirect]:
    """One upgrade request to ``client.request``: the stream and what the ``101`` agreed, or a redirect to follow."""
    request = client.request
    parts = urllib.parse.urlsplit(request.url)
    secure = parts.scheme in ("wss", "https")
    host = parts.hostname or ""
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
    request.headers = request_headers  # as Tornado: the request shows the headers sent
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = f"GET {target} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in request_headers.get_all())

    loop = asyncio.get_running_loop()
    stream: Optional[IOStream] = None

    def remaining() -> Optional[float]:
        return None if deadline is None else max(deadline - loop.time(), 0.001)

    try:
        tls: Optional[Union[dict[str, Any], ssl.SSLContext]] = None
        if secure:
            tls = ssl_options if ssl_options is not None else ssl.create_default_context()
        stream = await proxies.open_stream(
            host,
            port,
            ssl_options=tls,
            proxy_url=proxies.select_proxy(request.url, proxy),
            timeout=remaining(),
            resolver=resolver,
        )
        stream.write((head + "\r\n").encode("latin-1"))
        raw_head = await asyncio.wait_for(
            stream.read_until_regex(b"\r?\n\r?\n", max_bytes=MAX_RESPONSE_HEAD), remaining()
        )
        status, response_headers = handshake.parse_response_head(raw_head)
        if status.code in proxies.REDIRECT_STATUSES:
            stream.close()
            return _Redirect(status.code, response_headers)
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
    return stream, response_headers, subprotocol, compressor


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
