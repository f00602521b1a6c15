"""Connection limits for the server: per process, per client address, and a handshake rate per address.

Configured from Application settings (all optional, none set: no limit):

- ``websocket_max_connections``: open WebSocket connections per process;
- ``websocket_max_connections_per_ip``: open connections per client address;
- ``websocket_handshake_rate_per_ip``: upgrades per second per client address
  (a token bucket), with ``websocket_handshake_burst_per_ip`` tokens at most
  (default: the rate, at least 1);
- ``websocket_retry_after``: the ``Retry-After`` seconds of a 503 (default 5).

The client address is ``request.remote_ip``, which Tornado takes from
``X-Real-IP`` or ``X-Forwarded-For`` when the server runs with
``xheaders=True``. IPv6 clients are counted per /64 (one host usually owns a
whole /64). The handler calls :func:`admit` before it accepts an upgrade
(refused while :mod:`~tornado_websocket.shutdown` drains, or over a limit)
and releases what it got once the connection is gone.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
import weakref
from typing import Any, Callable, NamedTuple, Optional, Union

from tornado_websocket.metrics import LOG, STATS
from tornado_websocket.shutdown import DEFAULT_RETRY_AFTER, is_draining, retry_after

#: IPv6 clients share one per-address count and bucket per prefix of this length.
IPV6_PREFIX = 64


class Refusal(NamedTuple):
    """Why an upgrade is refused: answer ``status`` with ``headers`` (``Retry-After``) and ``reason`` as the body.

    ``kind`` is the label it is counted under in the metrics
    (``tornado_websocket_handshakes_total{result=kind}``).
    """

    status: int
    kind: str
    reason: str
    headers: dict[str, str]


def client_key(ip: str) -> str:
    """The address a client is counted under: the IPv4 address, the /64 of an IPv6 one, else ``ip`` as is."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


class ConnectionLimiter:
    """Counts open connections (total and per address) and the handshake rate per address.

    Every limit is optional (``None``: none). ``check(ip)`` decides on one
    upgrade and takes a handshake token whether or not it is refused;
    ``acquired(ip)`` / ``released(ip)`` count a connection in and out.
    Memory is bounded by the clients seen: an address's count is dropped
    at zero, its bucket once it is full again.
    """

    def __init__(
        self,
        max_connections: Optional[int] = None,
        max_connections_per_ip: Optional[int] = None,
        handshake_rate_per_ip: Optional[float] = None,
        handshake_burst_per_ip: Optional[float] = None,
        retry_after: int = DEFAULT_RETRY_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Raises ``ValueError`` for a limit below 1 or a rate that is not positive."""
        for name, value in (("max_connections", max_connections), ("max_connections_per_ip", max_connections_per_ip)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, not {value!r}")
        if handshake_rate_per_ip is not None and not handshake_rate_per_ip > 0:
            raise ValueError(f"handshake_rate_per_ip must be positive, not {handshake_rate_per_ip!r}")
        if handshake_burst_per_ip is not None and handshake_burst_per_ip < 1:
            raise ValueError(f"handshake_burst_per_ip must be at least 1, not {handshake_burst_per_ip!r}")
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.rate = handshake_rate_per_ip
        self.burst = float(handshake_burst_per_ip or max(1.0, handshake_rate_per_ip or 1.0))
        self.retry_after = retry_after
        self._clock = clock
        self.connections = 0
        self._per_ip: dict[str, int] = {}
        # address -> (tokens, time of that count)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._swept_at = clock()

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> ConnectionLimiter:
        """A limiter for an Application's settings (see the module docstring); ``ValueError`` for a bad value."""
        return cls(
            max_connections=settings.get("websocket_max_connections"),
            max_connections_per_ip=settings.get("websocket_max_connections_per_ip"),
            handshake_rate_per_ip=settings.get("websocket_handshake_rate_per_ip"),
            handshake_burst_per_ip=settings.get("websocket_handshake_burst_per_ip"),
            retry_after=settings.get("websocket_retry_after", DEFAULT_RETRY_AFTER),
        )

    @property
    def tracked_addresses(self) -> int:
        """Addresses that have an entry (a connection count or a bucket that is not full)."""
        return len(self._per_ip.keys() | self._buckets.keys())

    def check(self, ip: str) -> Optional[Refusal]:
        """Whether one more upgrade from ``ip`` may be accepted: ``None``, or the :class:`Refusal`.

        Order: the handshake rate (429), the process limit (503), the
        per-address limit (503). Does not count the connection in: call
        :meth:`acquired` once it is accepted.
        """
        key = client_key(ip)
        if self.rate is not None:
            wait = self._take_token(key)
            if wait is not None:
                retry = max(1, math.ceil(wait))
                return Refusal(
                    429,
                    "handshake_rate",
                    "too many WebSocket handshakes from this address",
                    {"Retry-After": str(retry)},
                )
        headers = {"Retry-After": str(self.retry_after)}
        if self.max_connections is not None and self.connections >= self.max_connections:
            return Refusal(503, "max_connections", "too many WebSocket connections on this server", headers)
        if self.max_connections_per_ip is not None and self._per_ip.get(key, 0) >= self.max_connections_per_ip:
            return Refusal(503, "max_connections_per_ip", "too many WebSocket connections from this address", headers)
        return None

    def acquired(self, ip: str) -> None:
        """Count one open connection from ``ip``."""
        key = client_key(ip)
        self.connections += 1
        self._per_ip[key] = self._per_ip.get(key, 0) + 1

    def released(self, ip: str) -> None:
        """Count one connection from ``ip`` out (once per :meth:`acquired`); its entry goes at zero."""
        key = client_key(ip)
        count = self._per_ip.get(key, 0)
        if count <= 0:
            raise RuntimeError(f"released() without acquired() for {ip}")
        self.connections -= 1
        if count == 1:
            del self._per_ip[key]
        else:
            self._per_ip[key] = count - 1

    def _take_token(self, key: str) -> Optional[float]:
        """Take one handshake token of ``key``; None if there was one, else seconds until there is."""
        rate = self.rate
        assert rate is not None
        now = self._clock()
        self._sweep(now)
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return None
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate

    def _sweep(self, now: float) -> None:
        """Drop the buckets that are full again (they equal a missing entry); at most once per refill time."""
        assert self.rate is not None
        refill = self.burst / self.rate
        if now - self._swept_at < refill:
            return
        self._swept_at = now
        burst, rate = self.burst, self.rate
        full = [key for key, (tokens, at) in self._buckets.items() if tokens + (now - at) * rate >= burst]
        for key in full:
            del self._buckets[key]


class Admission:
    """One accepted upgrade's share of the limits; :meth:`release` it once the connection is gone."""

    __slots__ = ("_limiter", "_ip")

    def __init__(self, limiter: Optional[ConnectionLimiter], ip: str) -> None:
        self._limiter = limiter
        self._ip = ip
        if limiter is not None:
            limiter.acquired(ip)

    def release(self) -> None:
        """Count the connection out of the limits; later calls do nothing."""
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter.released(self._ip)


_LIMITERS: weakref.WeakKeyDictionary[Any, Optional[ConnectionLimiter]] = weakref.WeakKeyDictionary()
_LIMIT_SETTINGS = (
    "websocket_max_connections",
    "websocket_max_connections_per_ip",
    "websocket_handshake_rate_per_ip",
    "websocket_handshake_burst_per_ip",
)


def limiter_for(application: Any) -> Optional[ConnectionLimiter]:
    """The :class:`ConnectionLimiter` of a ``tornado.web.Application`` (made from its settings once), or None.

    A ``websocket_limiter`` setting (a ConnectionLimiter) is used as is, so
    several applications can share one. With no limit set, None. Invalid
    settings log one WARNING per process and leave the application
    without limits (rather than refusing every upgrade).
    """
    settings = application.settings
    shared = settings.get("websocket_limiter")
    if shared is not None:
        return shared  # type: ignore[no-any-return]
    try:
        return _LIMITERS[application]
    except KeyError:
        pass
    limiter: Optional[ConnectionLimiter] = None
    if any(settings.get(name) is not None for name in _LIMIT_SETTINGS):
        try:
            limiter = ConnectionLimiter.from_settings(settings)
        except (TypeError, ValueError) as exc:
            LOG.once("limits-settings", logging.WARNING, "Ignoring the WebSocket limits: invalid settings: %s", exc)
    _LIMITERS[application] = limiter
    return limiter


def admit(handler: Any) -> Union[Refusal, Admission]:
    """Decide on the upgrade of ``handler`` (a ``tornado.web.RequestHandler``): :class:`Admission` or :class:`Refusal`.

    Refuses with 503 and ``Retry-After`` while the process drains (see
    :func:`tornado_websocket.shutdown.shutdown`), then applies the
    application's :class:`ConnectionLimiter`. A refusal is counted in
    :data:`~tornado_websocket.metrics.STATS` and logged (INFO, at most once
    a second per kind); an admission holds a connection slot until its
    :meth:`Admission.release`. Call it right before answering 101, with no
    ``await`` in between.
    """
    ip = handler.request.remote_ip or ""
    refusal: Optional[Refusal] = None
    limiter: Optional[ConnectionLimiter] = None
    if is_draining():
        retry = retry_after()
        refusal = Refusal(503, "draining", "the server is shutting down", {"Retry-After": str(retry)})
    else:
        limiter = limiter_for(handler.application)
        if limiter is not None:
            refusal = limiter.check(ip)
    if refusal is not None:
        STATS.handshake_refused(refusal.kind)
        LOG.log(
            f"refused-{refusal.kind}",
            logging.INFO,
            "Refused WebSocket upgrade from %s with %d: %s",
            ip,
            refusal.status,
            refusal.reason,
        )
        return refusal
    return Admission(limiter, ip)
