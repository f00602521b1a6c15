"""The client's way out: proxy selection, HTTP CONNECT tunnels, SOCKS5, and the redirect policy.

Pieces without I/O (:func:`select_proxy`, :func:`bypass_proxy`,
:func:`connect_request`, :func:`parse_connect_response`,
:func:`next_request`, :func:`redirect_headers`) and two coroutines:
:func:`open_tunnel` (a plain TCP stream to ``host:port`` through a proxy),
:func:`start_tls` (TLS over a connected stream, closed on a timeout) and
:func:`open_stream` (direct or tunnelled, then TLS for ``wss://``), which is
what the client calls instead of ``TCPClient.connect``.

Proxies are chosen as ``requests`` and ``urllib`` choose them: ``proxy=None``
reads ``WSS_PROXY``/``HTTPS_PROXY`` (``wss://``) or ``WS_PROXY``/``HTTP_PROXY``
(``ws://``), then ``ALL_PROXY``, lowercase names first, and skips hosts that
``NO_PROXY`` lists (domain suffixes, ``host:port``, IP addresses and CIDR
networks, ``*``); ``proxy=False`` never uses one; a URL string is used as
is. Supported proxy URLs: ``http://[user:password@]host:port`` (CONNECT,
with ``Proxy-Authorization: Basic`` from the credentials), and
``socks5://``/``socks5h://`` (resolving the target locally / at the proxy)
when ``python-socks`` is installed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import socket
import ssl
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Optional, Union

from tornado.httputil import HTTPHeaders
from tornado.iostream import IOStream, StreamClosedError, UnsatisfiableReadError
from tornado.netutil import Resolver
from tornado.tcpclient import TCPClient

from tornado_websocket.errors import WebSocketConnectError, WebSocketHandshakeError, WebSocketTimeoutError
from tornado_websocket.handshake import parse_response_head

#: Longest proxy answer head to CONNECT we read before giving up.
MAX_PROXY_RESPONSE_HEAD = 16 * 1024

PROXY_SCHEMES = ("http", "socks5", "socks5h")

#: Answers to an upgrade request that :func:`next_request` follows.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

#: How many redirects the client follows for one connection.
MAX_REDIRECTS = 5

_DEFAULT_PORTS = {"ws": 80, "wss": 443, "http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}


# -- choosing a proxy ----------------------------------------------------------------


def select_proxy(url: str, proxy: Union[str, bool, None] = None) -> Optional[str]:
    """The proxy URL to reach the ``ws://``/``wss://`` ``url`` through, or ``None`` for a direct connection.

    ``proxy``: ``None`` (or ``True``) reads the environment (see the module
    docstring); ``False`` gives ``None``; a string is the proxy URL
    (``host:port`` alone means ``http://host:port``). Raises ``ValueError``
    for a proxy URL of another scheme (``https://`` proxies included: TLS to
    the proxy and TLS inside the tunnel cannot be layered on one IOStream)
    or without a host.
    """
    if proxy is False:
        return None
    if isinstance(proxy, str):
        return normalize_proxy_url(proxy)
    parts = urllib.parse.urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    host = parts.hostname or ""
    port = parts.port or _DEFAULT_PORTS.get(scheme, 80)
    proxies = urllib.request.getproxies_environment()
    order = ("wss", "https", "all") if scheme == "wss" else ("ws", "http", "all")
    chosen = next((proxies[key] for key in order if proxies.get(key)), None)
    if chosen is None or bypass_proxy(host, port, proxies.get("no", "")):
        return None
    return normalize_proxy_url(chosen)


def normalize_proxy_url(proxy_url: str) -> str:
    """``proxy_url`` with ``http://`` added when it has no scheme; ``ValueError`` if unsupported or hostless."""
    if "://" not in proxy_url:
        proxy_url = "http://" + proxy_url
    parts = urllib.parse.urlsplit(proxy_url)
    if parts.scheme.lower() not in PROXY_SCHEMES:
        raise ValueError(f"unsupported proxy {proxy_url!r}: use http://, socks5:// or socks5h://")
    if not parts.hostname:
        raise ValueError(f"proxy URL without a host: {proxy_url!r}")
    return proxy_url


def bypass_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` (the comma-separated ``no_proxy``) exempts ``host:port`` from the proxy.

    Host names match ``urllib.request.proxy_bypass_environment``'s rules (a
    suffix ``example.com`` or ``.example.com`` also matches its subdomains;
    ``host:port`` only that port; ``*`` everything); an IP address also
    matches an equal address or a CIDR network (``10.0.0.0/8``,
    ``fd00::/8``), as ``requests`` does.
    """
    if not no_proxy.strip():
        return False
    if no_proxy.strip() == "*":
        return True
    host = host.strip("[]").lower()
    try:
        address: Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]] = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        for entry in no_proxy.split(","):
            entry = entry.strip()
            network = _as_network(entry)
            if network is not None and address.version == network.version and address in network:
                return True
    # urllib's NO_PROXY matcher (undocumented, missing from typeshed; requests relies on it too).
    by_name: Callable[[str, dict[str, str]], Any] = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009
    return bool(by_name(f"{host}:{port}", {"no": no_proxy}))


def _as_network(entry: str) -> Optional[Union[ipaddress.IPv4Network, ipaddress.IPv6Network]]:
    """A ``NO_PROXY`` entry as an IP network (an address is a /32 or /128), or ``None`` for a name."""
    entry = entry.strip()
    if entry.startswith("[") and "]" in entry:
        entry = entry[1 : entry.index("]")]  # [::1] or [::1]:8080: the address
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


# -- HTTP CONNECT ----------------------------------------------------------------------


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_request(host: str, port: int, proxy_url: str) -> bytes:
    """The ``CONNECT host:port`` request for an HTTP proxy, with ``Proxy-Authorization: Basic`` when
    ``proxy_url`` has credentials (percent-decoded, as in ``http://user:p%40ss@proxy:3128``)."""
    authority = _authority(host, port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    parts = urllib.parse.urlsplit(proxy_url)
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def parse_connect_response(head: bytes, authority: str = "") -> HTTPHeaders:
    """Check a proxy's answer head to CONNECT; return its headers when the tunnel is open (any 2xx).

    Raises :class:`WebSocketHandshakeError` with the proxy's status and
    headers when it refused (403, 407, 502...), and with code 599 when the
    answer is not HTTP.
    """
    status, headers = parse_response_head(head, "answer from the proxy to CONNECT")
    if not 200 <= status.code < 300:
        hint = " (put the credentials in the proxy URL)" if status.code == 407 else ""
        target = f" to {authority}" if authority else ""
        message = f"the proxy refused CONNECT{target}: {status.code} {status.reason}{hint}"
        raise WebSocketHandshakeError(message, status.code, headers)
    return headers


async def open_tunnel(
    host: str, port: int, proxy_url: str, timeout: Optional[float], resolver: Optional[Resolver] = None
) -> IOStream:
    """A plain TCP ``IOStream`` to ``host:port`` through the proxy at ``proxy_url``.

    HTTP proxies get a ``CONNECT``; ``socks5://`` and ``socks5h://`` go
    through ``python-socks``. The caller speaks whatever it likes over the
    stream (``start_tls`` for ``wss://``). Raises
    :class:`WebSocketHandshakeError` with the proxy's status when it refuses
    (403, 407...), :class:`WebSocketTimeoutError` after ``timeout`` seconds,
    :class:`WebSocketConnectError` when the proxy cannot be reached or drops
    the connection, ``ValueError`` for an unsupported proxy URL and
    ``ImportError`` for SOCKS without python-socks.
    """
    proxy_url = normalize_proxy_url(proxy_url)
    parts = urllib.parse.urlsplit(proxy_url)
    scheme = parts.scheme.lower()
    proxy_host = parts.hostname or ""
    proxy_port = parts.port or _DEFAULT_PORTS[scheme]
    if scheme != "http":
        return await _open_socks(host, port, proxy_url, timeout)
    stream: Optional[IOStream] = None
    authority = _authority(host, port)

    async def tunnel() -> IOStream:
        nonlocal stream
        stream = await TCPClient(resolver=resolver).connect(proxy_host, proxy_port)
        await stream.write(connect_request(host, port, proxy_url))
        head = await stream.read_until_regex(b"\r?\n\r?\n", max_bytes=MAX_PROXY_RESPONSE_HEAD)
        parse_connect_response(head, authority)
        return stream

    try:
        return await asyncio.wait_for(tunnel(), timeout)
    except BaseException as exc:
        if stream is not None:
            stream.close()
        where = f"{authority} through the proxy {proxy_host}:{proxy_port}"
        if isinstance(exc, asyncio.TimeoutError):
            raise WebSocketTimeoutError(f"no tunnel to {where} within {timeout} s") from None
        if isinstance(exc, UnsatisfiableReadError):
            raise WebSocketHandshakeError(f"the proxy's answer to CONNECT is over {MAX_PROXY_RESPONSE_HEAD} bytes", 599)
        if isinstance(exc, (OSError, StreamClosedError)) and not isinstance(exc, WebSocketHandshakeError):
            cause = getattr(exc, "real_error", None) or exc
            raise WebSocketConnectError(f"cannot open a tunnel to {where}: {cause}") from exc
        raise


async def _open_socks(host: str, port: int, proxy_url: str, timeout: Optional[float]) -> IOStream:
    """A TCP stream to ``host:port`` through a SOCKS5 proxy, with python-socks (see :func:`open_tunnel`)."""
    try:
        from python_socks import ProxyError, ProxyTimeoutError  # type: ignore[import-not-found, unused-ignore]
        from python_socks.async_.asyncio import Proxy  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise ImportError("a SOCKS proxy needs python-socks: pip install python-socks") from None
    parts = urllib.parse.urlsplit(proxy_url)
    remote_dns = parts.scheme.lower() == "socks5h"
    proxy = Proxy.from_url(urllib.parse.urlunsplit(("socks5", *parts[1:])), rdns=remote_dns)
    where = f"{_authority(host, port)} through the SOCKS proxy {parts.hostname}:{parts.port or 1080}"
    try:
        sock = await proxy.connect(host, port, timeout=timeout)
    except ProxyTimeoutError:
        raise WebSocketTimeoutError(f"no tunnel to {where} within {timeout} s") from None
    except ProxyError as exc:  # the proxy answered: refused, bad credentials, unreachable target
        raise WebSocketConnectError(f"the SOCKS proxy refused {where}: {exc}") from None
    except OSError as exc:
        raise WebSocketConnectError(f"cannot open a tunnel to {where}: {exc}") from exc
    sock.setblocking(False)
    return IOStream(sock)


async def open_stream(
    host: str,
    port: int,
    *,
    ssl_options: Optional[Union[dict[str, Any], ssl.SSLContext]],
    proxy_url: Optional[str],
    timeout: Optional[float],
    resolver: Optional[Resolver] = None,
) -> IOStream:
    """The stream the client's upgrade request goes over: TCP (and TLS when ``ssl_options``) to ``host:port``.

    TCP directly when ``proxy_url`` is ``None`` (``TCPClient.connect``), else
    through :func:`open_tunnel`; then :func:`start_tls`, checked against
    ``host``, within what is left of ``timeout``. Raises
    :class:`WebSocketTimeoutError` after ``timeout`` seconds in all (the
    connection closed), :class:`WebSocketConnectError` when TCP or TLS
    fails, and what :func:`open_tunnel` raises.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    authority = _authority(host, port)
    try:
        if proxy_url is None:
            stream = await asyncio.wait_for(TCPClient(resolver=resolver).connect(host, port), timeout)
        else:
            stream = await open_tunnel(host, port, proxy_url, timeout, resolver)
        if ssl_options is None:
            return stream
        remaining = None if deadline is None else max(deadline - loop.time(), 0.001)
        return await start_tls(stream, ssl_options, host, remaining)
    except WebSocketHandshakeError:
        raise  # from open_tunnel, already closed
    except asyncio.TimeoutError:
        raise WebSocketTimeoutError(f"no connection to {authority} within {timeout} s") from None
    except (OSError, StreamClosedError) as exc:
        cause = getattr(exc, "real_error", None) or exc
        through = "" if proxy_url is None else " through the proxy"
        raise WebSocketConnectError(f"cannot connect to {authority}{through}: {cause}") from exc


async def start_tls(
    stream: IOStream,
    ssl_options: Union[dict[str, Any], ssl.SSLContext],
    server_hostname: str,
    timeout: Optional[float],
) -> IOStream:
    """The client side of TLS over the connected, idle ``stream``, certificate checked against ``server_hostname``.

    Raises ``asyncio.TimeoutError`` when the handshake takes longer than
    ``timeout`` seconds, ``ssl.SSLError`` when it fails (a certificate that
    does not verify), ``StreamClosedError`` when the peer ends the
    connection first; in each case, and when the caller is cancelled, the
    connection is closed. ``IOStream.start_tls`` hands the
    socket to a stream the caller sees only after the handshake, and before
    Tornado 6.6 cancelling its future left that stream open: the connection
    is shut down through a duplicate of the socket instead, which ends the
    hidden stream too (it reads the end and closes).
    """
    handle = stream.socket.dup()
    try:
        securing = stream.start_tls(False, ssl_options, server_hostname=server_hostname)
        return await asyncio.wait_for(securing, timeout)
    except BaseException:
        with contextlib.suppress(OSError):
            handle.shutdown(socket.SHUT_RDWR)
        raise
    finally:
        handle.close()


# -- redirects -------------------------------------------------------------------------


class Redirect(NamedTuple):
    """Where to send the next upgrade request; ``same_origin`` False: drop the credentials."""

    url: str
    same_origin: bool


def _origin(url: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme.lower(), parts.scheme.lower())
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme, 0)


def next_request(
    status: int,
    headers: HTTPHeaders,
    current_url: str,
    hops: int,
    *,
    follow_redirects: bool = True,
    max_redirects: int = MAX_REDIRECTS,
) -> Optional[Redirect]:
    """Decide on the server's answer to an upgrade request: ``None`` if it is not a redirect, else the next URL.

    ``hops`` is how many redirects were followed already. A redirect
    (301, 302, 303, 307, 308) to ``Location`` (relative or absolute,
    ``http(s)://`` read as ``ws(s)://``) is followed unless one of these
    raises :class:`WebSocketHandshakeError` with ``status`` and ``headers``:
    ``follow_redirects`` is False; ``hops`` reached ``max_redirects``; no
    ``Location``; a scheme other than ws/wss/http/https; ``wss://`` to
    ``ws://`` (a downgrade).
    """
    if status not in REDIRECT_STATUSES:
        return None

    def fail(message: str) -> WebSocketHandshakeError:
        return WebSocketHandshakeError(message, status, headers)

    location = headers.get("Location")
    if not follow_redirects:
        raise fail(f"the server redirected ({status}) to {location!r} and follow_redirects is False")
    if hops >= max_redirects:
        raise fail(f"too many redirects: more than {max_redirects}, the last to {location!r}")
    if not location:
        raise fail(f"the server redirected ({status}) without a Location header")
    target = urllib.parse.urljoin(current_url.replace("ws://", "http://", 1).replace("wss://", "https://", 1), location)
    parts = urllib.parse.urlsplit(target)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise fail(f"the server redirected to {location!r}, not a ws://, wss://, http:// or https:// URL")
    if _origin(current_url)[0] == "wss" and scheme == "ws":
        raise fail(f"refusing to follow a redirect from wss:// to ws:// ({location!r})")
    url = urllib.parse.urlunsplit((scheme, *parts[1:4], ""))  # fragments are not sent
    return Redirect(url, _origin(url) == _origin(current_url))


#: Request headers not sent on to another origin after a redirect.
CREDENTIAL_HEADERS = ("Authorization", "Cookie")


def redirect_headers(headers: Mapping[str, str], redirect: Redirect) -> HTTPHeaders:
    """The request headers for the next request of ``redirect``: without ``Host`` (it is the new target's),
    and without ``Authorization`` and ``Cookie`` when the redirect leaves the origin."""
    source = headers if isinstance(headers, HTTPHeaders) else HTTPHeaders(headers)
    dropped = {"host"} | (set() if redirect.same_origin else {name.lower() for name in CREDENTIAL_HEADERS})
    result = HTTPHeaders()
    for name, value in source.get_all():
        if name.lower() not in dropped:
            result.add(name, value)
    return result
