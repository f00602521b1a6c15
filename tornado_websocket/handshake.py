"""The opening handshake of RFC 6455 section 4, both sides, without I/O.

The server side validates an upgrade request and computes the headers of
the ``101`` answer; the client side builds a request and checks the answer.
Header grammar (token lists, the extension list of RFC 6455 section 9.1)
is parsed here too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from typing import Optional

from tornado.httputil import HTTPHeaders, ResponseStartLine, parse_response_start_line

from tornado_websocket.errors import HandshakeError, WebSocketHandshakeError

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WEBSOCKET_VERSION = "13"

ExtensionParams = list[tuple[str, Optional[str]]]
ExtensionOffer = tuple[str, ExtensionParams]

_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_EXT_PARAM_RE = re.compile(
    r"""\s*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[!#$%&'*+\-.^_`|~0-9A-Za-z]+))?\s*"""
)


def accept_key(key: str) -> str:
    """Compute ``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (section 4.2.2).

    The example of RFC 6455 section 1.3:

    >>> from tornado_websocket.handshake import accept_key
    >>> accept_key("dGhlIHNhbXBsZSBub25jZQ==")
    's3pPLMBiTxaQ9kYGzzhZRbK+xOo='
    """
    digest = hashlib.sha1((key + WEBSOCKET_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def generate_key() -> str:
    """A fresh random ``Sec-WebSocket-Key``: base64 of 16 random bytes."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def parse_token_list(headers: HTTPHeaders, name: str) -> list[str]:
    """All comma-separated tokens of every ``name`` header line, stripped, empty ones dropped.

    >>> from tornado.httputil import HTTPHeaders
    >>> from tornado_websocket.handshake import parse_token_list
    >>> headers = HTTPHeaders()
    >>> headers.add("Connection", "keep-alive, Upgrade")
    >>> headers.add("Connection", ",close")
    >>> parse_token_list(headers, "Connection")
    ['keep-alive', 'Upgrade', 'close']
    """
    tokens: list[str] = []
    for line in headers.get_list(name):
        tokens.extend(t for t in (part.strip() for part in line.split(",")) if t)
    return tokens


def _split_quoted(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double-quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def parse_extension_list(headers: HTTPHeaders) -> list[ExtensionOffer]:
    """Parse every ``Sec-WebSocket-Extensions`` line into ``(name, [(param, value)])``.

    Quoted values are unquoted; a parameter without a value has ``None``.
    Raises ``ValueError`` for a header that does not follow the grammar of
    RFC 6455 section 9.1.

    >>> from tornado.httputil import HTTPHeaders
    >>> from tornado_websocket.handshake import parse_extension_list
    >>> offer = 'permessage-deflate; client_max_window_bits; server_max_window_bits="10", x-webkit'
    >>> parse_extension_list(HTTPHeaders({"Sec-WebSocket-Extensions": offer}))
    [('permessage-deflate', [('client_max_window_bits', None), ('server_max_window_bits', '10')]), ('x-webkit', [])]
    """
    offers: list[ExtensionOffer] = []
    for line in headers.get_list("Sec-WebSocket-Extensions"):
        for item in _split_quoted(line, ","):
            if not item.strip():
                continue
            name, *raw_params = _split_quoted(item, ";")
            name = name.strip()
            if not _TOKEN_RE.match(name):
                raise ValueError(f"invalid extension name {name!r}")
            params: ExtensionParams = []
            for raw in raw_params:
                m = _EXT_PARAM_RE.fullmatch(raw)
                if m is None:
                    raise ValueError(f"invalid extension parameter {raw.strip()!r}")
                value = m.group(2)
                if value is not None and value.startswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                    if not _TOKEN_RE.match(value):
                        raise ValueError(f"invalid quoted extension value {value!r}")
                params.append((m.group(1), value))
            offers.append((name, params))
    return offers


def format_extension(name: str, params: ExtensionParams) -> str:
    """Render one extension with its parameters for a header.

    >>> from tornado_websocket.handshake import format_extension
    >>> format_extension("permessage-deflate", [("server_no_context_takeover", None), ("client_max_window_bits", "10")])
    'permessage-deflate; server_no_context_takeover; client_max_window_bits=10'
    """
    return "; ".join([name] + [k if v is None else f"{k}={v}" for k, v in params])


def validate_request(method: str, version: str, headers: HTTPHeaders) -> str:
    """Check an opening handshake request; return its ``Sec-WebSocket-Key``.

    Raises :class:`HandshakeError` naming what is wrong: 405 for a method
    other than GET, 426 (with ``Sec-WebSocket-Version: 13``) for another
    protocol version, 400 for anything else missing or malformed.
    """
    if method != "GET":
        raise HandshakeError(405, f"WebSocket handshake must use GET, not {method}", {"Allow": "GET"})
    if version == "HTTP/1.0":
        raise HandshakeError(400, "WebSocket handshake needs HTTP/1.1 or later")
    if "Host" not in headers:
        raise HandshakeError(400, "missing Host header")
    if "websocket" not in (t.lower() for t in parse_token_list(headers, "Upgrade")):
        raise HandshakeError(400, 'Upgrade header must contain "websocket"')
    if "upgrade" not in (t.lower() for t in parse_token_list(headers, "Connection")):
        raise HandshakeError(400, 'Connection header must contain "upgrade"')
    versions = headers.get_list("Sec-WebSocket-Version")
    if not versions:
        raise HandshakeError(400, "missing Sec-WebSocket-Version header", {"Sec-WebSocket-Version": WEBSOCKET_VERSION})
    if versions != [WEBSOCKET_VERSION]:
        raise HandshakeError(
            426,
            f"unsupported Sec-WebSocket-Version {', '.join(versions)}; this server speaks 13",
            {"Sec-WebSocket-Version": WEBSOCKET_VERSION},
        )
    keys = headers.get_list("Sec-WebSocket-Key")
    if len(keys) != 1:
        raise HandshakeError(
            400, "missing Sec-WebSocket-Key header" if not keys else "more than one Sec-WebSocket-Key header"
        )
    key = keys[0].strip()
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key must be base64 of 16 bytes")
    return key


def response_headers(key: str, subprotocol: Optional[str], extensions: Optional[str]) -> dict[str, str]:
    """Headers of the ``101 Switching Protocols`` answer to a request with ``key``."""
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Accept": accept_key(key),
    }
    if subprotocol is not None:
        headers["Sec-WebSocket-Protocol"] = subprotocol
    if extensions:
        headers["Sec-WebSocket-Extensions"] = extensions
    return headers


def client_request_headers(key: str, subprotocols: Optional[list[str]], extensions: Optional[str]) -> dict[str, str]:
    """Headers a client adds to its upgrade request (Host is the caller's)."""
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": WEBSOCKET_VERSION,
    }
    if subprotocols:
        for p in subprotocols:
            if not _TOKEN_RE.match(p):
                raise ValueError(f"invalid subprotocol name {p!r}")
        headers["Sec-WebSocket-Protocol"] = ", ".join(subprotocols)
    if extensions:
        headers["Sec-WebSocket-Extensions"] = extensions
    return headers


def parse_response_head(head: bytes, what: str = "handshake response") -> tuple[ResponseStartLine, HTTPHeaders]:
    r"""Parse an HTTP/1.x answer head (the status line and the headers, up to the blank line).

    Serves the client's upgrade answer and a proxy's answer to ``CONNECT``.
    Raises :class:`WebSocketHandshakeError` with code 599 and a message
    starting "malformed ``what``" when the head is not HTTP (no status line,
    a header line without a colon).

    >>> from tornado_websocket.handshake import parse_response_head
    >>> status, headers = parse_response_head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    >>> status.code, status.reason, headers["Upgrade"]
    (101, 'Switching Protocols', 'websocket')
    >>> parse_response_head(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "answer from the proxy to CONNECT")
    Traceback (most recent call last):
      ...
    tornado_websocket.errors.WebSocketHandshakeError: HTTP 599: ...malformed answer from the proxy to CONNECT: ...
    """
    first_line, _, rest = head.decode("latin-1").partition("\n")
    try:
        return parse_response_start_line(first_line.strip()), HTTPHeaders.parse(rest)
    except Exception as exc:
        raise WebSocketHandshakeError(f"malformed {what}: {exc}", 599) from None


def validate_response(
    code: int,
    headers: HTTPHeaders,
    body: bytes,
    key: str,
    subprotocols: Optional[list[str]],
) -> Optional[str]:
    """Check the server's answer to our upgrade request; return the chosen subprotocol.

    Raises :class:`WebSocketHandshakeError` carrying the status, headers and
    body when the status is not 101 or a required header is wrong, or when
    the server picked a subprotocol we did not offer. Extensions are checked
    by the caller, which knows what it offered.
    """

    def fail(message: str) -> WebSocketHandshakeError:
        return WebSocketHandshakeError(message, code, headers, body)

    if code != 101:
        raise fail(f"server refused the WebSocket upgrade with status {code}")
    if "websocket" not in (t.lower() for t in parse_token_list(headers, "Upgrade")):
        raise fail('server answer lacks "Upgrade: websocket"')
    if "upgrade" not in (t.lower() for t in parse_token_list(headers, "Connection")):
        raise fail('server answer lacks "Connection: Upgrade"')
    if headers.get_list("Sec-WebSocket-Accept") != [accept_key(key)]:
        raise fail("server answer has a wrong Sec-WebSocket-Accept")
    chosen = parse_token_list(headers, "Sec-WebSocket-Protocol")
    if not chosen:
        return None
    if len(chosen) > 1 or chosen[0] not in (subprotocols or []):
        raise fail(f"server chose a subprotocol that was not offered: {', '.join(chosen)}")
    return chosen[0]
