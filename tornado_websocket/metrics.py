"""Process-wide WebSocket counters, their Prometheus exposition, and the log helpers (rate-limited, per connection).

Nothing is counted globally on the hot path: each connection's
:class:`~tornado_websocket.protocol.Protocol` counts its own messages and
wire bytes (plain integer attributes it keeps anyway), a connection adds
them to :data:`STATS` when it ends, and :func:`stats` adds the open
connections' counts at the time it is called. Handshakes, closes, ping
times, dropped writes and slow consumers are counted into :data:`STATS`
where they happen. Everything is counted on the event loop thread(s).
:class:`MetricsHandler` serves the same numbers in the Prometheus text
format, through ``prometheus_client`` when the ``metrics`` extra is
installed and through a writer of our own otherwise.

Counted for every connection of the process, server and client alike, except
the handshakes, which only the server side counts. Bytes are wire bytes (frame
headers included, after compression).
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable, NamedTuple, Optional, Union

import tornado.web
from tornado.log import gen_log

#: Upper bounds (seconds) of the ping round-trip histogram's buckets; one more bucket holds the rest.
PING_RTT_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Distinct application close codes (3000-4999) counted one by one; any further ones are counted as "other".
MAX_APPLICATION_CLOSE_CODES = 32

#: The code counted for a connection that ended without a Close frame (RFC 6455 section 7.1.5).
ABNORMAL_CLOSURE = 1006

PLAIN_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Stats:
    """The counters of one process; use the module's :data:`STATS`, never a second one.

    Plain attributes (see docs/operations.md for who counts what, where):

    - ``open_connections``: +1 when a connection starts, -1 when its TCP connection is gone;
    - ``handshakes_accepted``: +1 per ``101`` answer;
    - ``messages_received`` / ``messages_sent``, ``bytes_received`` /
      ``bytes_sent``: the totals of the connections that ended (see
      :meth:`connection_finished`; :func:`stats` adds the open ones);
    - ``writes_dropped``: +1 per connection dropped by the write-buffer limit;
    - ``slow_consumers_closed``: +1 per connection a hub closed as a slow consumer.

    Refusals, closes and ping times go through :meth:`handshake_refused`,
    :meth:`connection_closed` and :meth:`observe_ping_rtt`, which keep their
    label sets bounded.
    """

    __slots__ = (
        "open_connections",
        "handshakes_accepted",
        "messages_received",
        "messages_sent",
        "bytes_received",
        "bytes_sent",
        "writes_dropped",
        "slow_consumers_closed",
        "handshakes_refused",
        "closes",
        "ping_rtt_counts",
        "ping_rtt_sum",
        "generation",
    )

    def __init__(self) -> None:
        self.open_connections = 0
        self.handshakes_accepted = 0
        self.messages_received = 0
        self.messages_sent = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.writes_dropped = 0
        self.slow_consumers_closed = 0
        #: Refused upgrades by reason (a short constant such as ``"draining"``, never user input).
        self.handshakes_refused: dict[str, int] = {}
        #: Closed connections by close code (a string: ``"1000"``, ..., ``"other"``).
        self.closes: dict[str, int] = {}
        #: Pings per histogram bucket, not cumulative; the last one is above every bound.
        self.ping_rtt_counts = [0] * (len(PING_RTT_BUCKETS) + 1)
        self.ping_rtt_sum = 0.0
        #: Connections started before the last :meth:`reset` are not counted (see ``WebSocketConnection.start``).
        self.generation = 0

    def reset(self) -> None:
        """Set every counter back to zero; connections open now are left out from then on (for tests)."""
        generation = self.generation
        self.__init__()  # type: ignore[misc]
        self.generation = generation + 1

    def connection_finished(self, protocol: Any, close_code: Optional[int]) -> None:
        """A connection's TCP connection is gone: add its ``protocol``'s counters and count its close code."""
        self.open_connections -= 1
        self.messages_received += protocol.messages_received
        self.messages_sent += protocol.messages_sent
        self.bytes_received += protocol.bytes_received
        self.bytes_sent += protocol.bytes_sent
        self.connection_closed(close_code)

    def handshake_refused(self, reason: str) -> None:
        """Count one refused upgrade under ``reason`` (one of a few constants the caller defines)."""
        refused = self.handshakes_refused
        refused[reason] = refused.get(reason, 0) + 1

    def connection_closed(self, code: Optional[int]) -> None:
        """Count one closed connection by its close code (``None``: no Close frame, counted as 1006).

        Application codes (3000-4999) are chosen by peers, so only the first
        :data:`MAX_APPLICATION_CLOSE_CODES` distinct ones get their own label.
        """
        closes = self.closes
        label = str(ABNORMAL_CLOSURE if code is None else code)
        if label not in closes and code is not None and code >= 3000:
            distinct = sum(1 for key in closes if key.isdigit() and int(key) >= 3000)
            if distinct >= MAX_APPLICATION_CLOSE_CODES:
                label = "other"
        closes[label] = closes.get(label, 0) + 1

    def observe_ping_rtt(self, seconds: float) -> None:
        """Add one ping round-trip time to the histogram."""
        self.ping_rtt_counts[bisect.bisect_left(PING_RTT_BUCKETS, seconds)] += 1
        self.ping_rtt_sum += seconds

    def snapshot(self) -> dict[str, Any]:
        """The counters as a new dict of plain values (see :func:`stats`)."""
        cumulative: dict[str, int] = {}
        running = 0
        bounds = [*map(_format_bound, PING_RTT_BUCKETS), "+Inf"]
        for bound, count in zip(bounds, self.ping_rtt_counts):
            running += count
            cumulative[bound] = running
        from tornado_websocket.connection import OPEN_CONNECTIONS  # here: connection.py imports this module

        live = [c.protocol for c in list(OPEN_CONNECTIONS) if c._generation == self.generation]
        return {
            "open_connections": self.open_connections,
            "handshakes": {"accepted": self.handshakes_accepted, "refused": dict(self.handshakes_refused)},
            "messages_received": self.messages_received + sum(p.messages_received for p in live),
            "messages_sent": self.messages_sent + sum(p.messages_sent for p in live),
            "bytes_received": self.bytes_received + sum(p.bytes_received for p in live),
            "bytes_sent": self.bytes_sent + sum(p.bytes_sent for p in live),
            "closes": dict(self.closes),
            "ping_rtt_seconds": {"buckets": cumulative, "count": running, "sum": self.ping_rtt_sum},
            "writes_dropped": self.writes_dropped,
            "slow_consumers_closed": self.slow_consumers_closed,
        }


#: The process's counters.
STATS = Stats()

_REFUSAL_KINDS = {400: "bad_request", 403: "forbidden_origin", 405: "method", 426: "version"}


def refusal_kind(status: int) -> str:
    """The ``result`` label of an upgrade the handshake checks refused with ``status`` (``"status_<n>"`` if unnamed).

    The limits and draining name their own (see :func:`tornado_websocket.limits.admit`).
    """
    return _REFUSAL_KINDS.get(status, f"status_{status}")


def stats() -> dict[str, Any]:
    """A snapshot of this process's WebSocket counters.

    Keys: ``open_connections``; ``handshakes`` (``accepted``, and ``refused``
    by reason); ``messages_received``, ``messages_sent``, ``bytes_received``,
    ``bytes_sent``; ``closes`` by close code; ``ping_rtt_seconds``
    (cumulative ``buckets`` keyed by upper bound, ``count``, ``sum``);
    ``writes_dropped`` (write-buffer limit); ``slow_consumers_closed``.
    """
    return STATS.snapshot()


# -- the exposition -------------------------------------------------------------


class Sample(NamedTuple):
    """One line of a metric family: a name suffix (``""``, ``"_bucket"``...), its labels, its value."""

    suffix: str
    labels: dict[str, str]
    value: float


class Family(NamedTuple):
    """One metric family as both expositions write it."""

    name: str  # without the _total of counters
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    samples: list[Sample]


def families(snapshot: dict[str, Any]) -> list[Family]:
    """The Prometheus metric families of a :func:`stats` snapshot (names as in docs/operations.md)."""
    prefix = "tornado_websocket_"
    handshakes = snapshot["handshakes"]
    results = {"accepted": handshakes["accepted"], **handshakes["refused"]}
    rtt = snapshot["ping_rtt_seconds"]

    def counter(name: str, help: str, value: int) -> Family:
        return Family(prefix + name, "counter", help, [Sample("_total", {}, value)])

    return [
        Family(
            prefix + "open_connections",
            "gauge",
            "WebSocket connections open in this process.",
            [Sample("", {}, snapshot["open_connections"])],
        ),
        Family(
            prefix + "handshakes",
            "counter",
            'WebSocket upgrade requests answered, by result ("accepted" or the reason of the refusal).',
            [Sample("_total", {"result": result}, n) for result, n in sorted(results.items())],
        ),
        counter("messages_received", "Whole WebSocket messages received.", snapshot["messages_received"]),
        counter("messages_sent", "Whole WebSocket messages sent.", snapshot["messages_sent"]),
        counter(
            "bytes_received",
            "Bytes read from WebSocket connections (frames as on the wire).",
            snapshot["bytes_received"],
        ),
        counter(
            "bytes_sent",
            "Bytes handed to WebSocket connections' sockets (frames as on the wire).",
            snapshot["bytes_sent"],
        ),
        Family(
            prefix + "closes",
            "counter",
            "Closed WebSocket connections by close code (1006: no Close frame).",
            [Sample("_total", {"code": code}, n) for code, n in sorted(snapshot["closes"].items())],
        ),
        Family(
            prefix + "ping_rtt_seconds",
            "histogram",
            "Round-trip time of WebSocket pings, from sending the ping to receiving its pong.",
            [Sample("_bucket", {"le": bound}, n) for bound, n in rtt["buckets"].items()]
            + [Sample("_count", {}, rtt["count"]), Sample("_sum", {}, rtt["sum"])],
        ),
        counter(
            "writes_dropped",
            "Connections dropped because more than max_write_buffer_size bytes waited to be sent.",
            snapshot["writes_dropped"],
        ),
        counter(
            "slow_consumers_closed",
            "Connections a hub closed because they did not keep up with a channel.",
            snapshot["slow_consumers_closed"],
        ),
    ]


def _format_bound(bound: float) -> str:
    return repr(float(bound))


def _format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render_text(items: Sequence[Family]) -> str:
    """The Prometheus text exposition format (version 0.0.4) of ``items``, written without prometheus_client."""
    lines: list[str] = []
    for family in items:
        name = family.name + ("_total" if family.kind == "counter" else "")
        lines.append(f"# HELP {name} {family.help}")
        lines.append(f"# TYPE {name} {family.kind}")
        for sample in family.samples:
            labels = ",".join(f'{key}="{_escape_label(value)}"' for key, value in sample.labels.items())
            sample_name = family.name + sample.suffix
            lines.append(
                f"{sample_name}{{{labels}}} {_format_value(sample.value)}"
                if labels
                else f"{sample_name} {_format_value(sample.value)}"
            )
    return "\n".join(lines) + "\n"


def _prometheus_client() -> Any:
    """The ``prometheus_client`` module, or ``None`` when it is not installed."""
    try:
        import prometheus_client  # type: ignore[import-not-found, unused-ignore]
        import prometheus_client.core  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    return prometheus_client


class StatsCollector:
    """A ``prometheus_client`` collector of :data:`STATS`; register it to serve our metrics from your registry.

    ::

        prometheus_client.REGISTRY.register(tornado_websocket.metrics.StatsCollector())

    Raises ``ImportError`` when prometheus-client is not installed (the ``metrics`` extra).
    """

    def __init__(self) -> None:
        module = _prometheus_client()
        if module is None:
            raise ImportError("StatsCollector needs prometheus-client: pip install tornado_websocket[metrics]")
        self._core = module.core

    def describe(self) -> list[Any]:
        """No metric families up front (the label values of refusals and closes come and go)."""
        return []

    def collect(self) -> Iterator[Any]:
        """The metric families of :func:`stats` now, as ``prometheus_client`` metric families."""
        core = self._core
        for family in families(stats()):
            if family.kind == "histogram":
                buckets = [(s.labels["le"], s.value) for s in family.samples if s.suffix == "_bucket"]
                total = next(s.value for s in family.samples if s.suffix == "_sum")
                yield core.HistogramMetricFamily(family.name, family.help, buckets=buckets, sum_value=total)
                continue
            label_names = list(family.samples[0].labels) if family.samples else []
            cls = core.CounterMetricFamily if family.kind == "counter" else core.GaugeMetricFamily
            metric = cls(family.name, family.help, labels=label_names)
            for sample in family.samples:
                metric.add_metric([sample.labels[name] for name in label_names], sample.value)
            yield metric


_REGISTRY: Any = None


def _own_registry() -> Any:
    """A prometheus_client registry holding only a :class:`StatsCollector` (made on first use)."""
    global _REGISTRY
    if _REGISTRY is None:
        module = _prometheus_client()
        registry = module.CollectorRegistry(auto_describe=False)
        registry.register(StatsCollector())
        _REGISTRY = registry
    return _REGISTRY


def exposition(registry: Any = None) -> tuple[bytes, str]:
    """The metrics page and its Content-Type.

    With prometheus-client installed, ``registry`` (by default one holding
    only our collector) rendered by ``prometheus_client.generate_latest``;
    without it, :func:`render_text` of :data:`STATS`, and a ``registry``
    given anyway raises ``ImportError``.
    """
    module = _prometheus_client()
    if module is None:
        if registry is not None:
            raise ImportError("a prometheus_client registry was given but prometheus-client is not installed")
        return render_text(families(stats())).encode("utf-8"), PLAIN_CONTENT_TYPE
    return module.generate_latest(registry if registry is not None else _own_registry()), module.CONTENT_TYPE_LATEST


class MetricsHandler(tornado.web.RequestHandler):
    """Serves the Prometheus text format of this process's WebSocket counters (``GET``).

    ::

        Application([(r"/metrics", MetricsHandler)])
        Application([(r"/metrics", MetricsHandler, {"registry": prometheus_client.REGISTRY})])

    The second form serves a whole ``prometheus_client`` registry (register a
    :class:`StatsCollector` in it for our numbers).
    """

    def initialize(self, registry: Any = None) -> None:
        self.registry = registry

    def get(self) -> None:
        body, content_type = exposition(self.registry)
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-store")
        self.finish(body)


# -- logging without flooding -------------------------------------------------------


class RateLimitedLogger:
    """Log through ``logger`` at most once per ``interval`` seconds per key; say how many were skipped.

    ``log(key, level, msg, *args)`` logs the first message of a key, then
    drops the others of that key until ``interval`` has passed; the next one
    logged ends with "(N similar messages suppressed)". ``once(key, ...)``
    logs a key once for the life of the process (misconfigurations).
    """

    def __init__(
        self, logger: logging.Logger = gen_log, interval: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._once: set[str] = set()

    def log(self, key: str, level: int, msg: str, *args: Any) -> bool:
        """Log unless ``key`` was logged less than ``interval`` ago; True if it was logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, msg, *args)
        return True

    def once(self, key: str, level: int, msg: str, *args: Any) -> bool:
        """Log ``key`` the first time only, for the life of this object; True if it was logged."""
        if key in self._once:
            return False
        self._once.add(key)
        self.logger.log(level, msg, *args)
        return True


#: The process's rate-limited logger: refusals (limits), misconfiguration warnings (once per process).
LOG = RateLimitedLogger()


# -- the per-connection log line --------------------------------------------------


def log_close(
    peer: Union[str, tuple[Any, ...], None],
    duration: float,
    code: Optional[int],
    reason: Optional[str],
    bytes_in: int,
    bytes_out: int,
) -> None:
    """Log one DEBUG line (logger ``tornado.general``) for a connection that closed.

    ``peer`` is the remote address (``request.remote_ip`` or a socket
    address), ``duration`` seconds from the upgrade to the end of TCP,
    ``code`` and ``reason`` the close frame's (``None``: none came).
    Costs one level check when DEBUG is off.
    """
    if not gen_log.isEnabledFor(logging.DEBUG):
        return
    if isinstance(peer, tuple):
        peer = f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
    gen_log.debug(
        "WebSocket closed: peer=%s duration=%.3fs code=%s reason=%r bytes_in=%d bytes_out=%d",
        peer or "-",
        duration,
        ABNORMAL_CLOSURE if code is None else code,
        reason or "",
        bytes_in,
        bytes_out,
    )
