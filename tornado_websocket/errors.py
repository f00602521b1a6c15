"""Exceptions raised by tornado_websocket.

The names match :mod:`tornado.websocket` so that ``except`` clauses written
for Tornado keep working after the import is switched.
"""

from __future__ import annotations

import http.client
from typing import Optional

from tornado.httpclient import HTTPClientError
from tornado.httputil import HTTPHeaders


class WebSocketError(Exception):
    """Base class for every error this package raises."""


class WebSocketClosedError(WebSocketError):
    """Raised by an operation on a closed connection (write, ping, read)."""


class ProtocolError(WebSocketError):
    """The peer broke RFC 6455 or RFC 7692; ``code`` is the close code to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class HandshakeError(WebSocketError):
    """An opening handshake request is invalid (server side).

    ``status`` is the HTTP status to answer with, ``reason`` a one-line,
    plain-text explanation naming the header at fault, and ``headers``
    extra response headers (for example ``Sec-WebSocket-Version`` on 426).
    """

    def __init__(self, status: int, reason: str, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers or {}


class WebSocketHandshakeError(WebSocketError, HTTPClientError):
    """The opening handshake failed (client side).

    ``code`` is the HTTP status the server answered with, or 599 when no
    answer arrived (refused, reset, timed out); ``headers`` and ``body``
    are what the server sent, so callers can tell 403 from 404 from a
    timeout. It is also a ``tornado.httpclient.HTTPClientError``, as
    Tornado's ``websocket_connect`` raises.
    """

    def __init__(
        self,
        message: str,
        code: int = 599,
        headers: Optional[HTTPHeaders] = None,
        body: bytes = b"",
    ) -> None:
        HTTPClientError.__init__(self, code, message)
        self.headers = headers if headers is not None else HTTPHeaders()
        self.body = body

    def __str__(self) -> str:
        # Starts as Tornado's HTTPClientError does ("HTTP 403: Forbidden"): callers match on it.
        phrase = http.client.responses.get(self.code, "Unknown")
        return f"HTTP {self.code}: {phrase}: WebSocket handshake failed: {self.message}"


class WebSocketConnectError(WebSocketHandshakeError, OSError):
    """No answer to the opening handshake: the TCP or TLS connection failed or timed out (code 599).

    Also an ``OSError``, like the network errors Tornado's client raises.
    """


class WebSocketTimeoutError(WebSocketConnectError, TimeoutError):
    """The connection or the handshake took longer than ``connect_timeout``."""
