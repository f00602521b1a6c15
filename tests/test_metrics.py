"""tornado_websocket.metrics: the counters, both Prometheus expositions (checked by prometheus_client's own
parser), MetricsHandler over real HTTP, and the per-connection log line."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest
import tornado.httpclient
import tornado.web
from conftest import bounded

import tornado_websocket
import tornado_websocket.connection
import tornado_websocket.handler
from tornado_websocket import metrics
from tornado_websocket.metrics import STATS, MetricsHandler, StatsCollector, stats

try:
    import prometheus_client
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # the plain exposition is still tested, by its lines
    prometheus_client = None

needs_prometheus = pytest.mark.skipif(prometheus_client is None, reason="prometheus-client is not installed")


@pytest.fixture(autouse=True)
def fresh_stats() -> Any:
    STATS.reset()
    yield STATS
    STATS.reset()


@pytest.fixture
def without_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import prometheus_client`` fail, as when the metrics extra is not installed."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)


def fill(s: metrics.Stats) -> None:
    s.open_connections = 3
    s.handshakes_accepted = 7
    s.handshake_refused("draining")
    s.handshake_refused("draining")
    s.handshake_refused("max_connections")
    s.messages_received = 11
    s.messages_sent = 13
    s.bytes_received = 1700
    s.bytes_sent = 1900
    s.connection_closed(1000)
    s.connection_closed(1000)
    s.connection_closed(None)
    s.connection_closed(4001)
    s.writes_dropped = 2
    s.slow_consumers_closed = 5
    for rtt in (0.0005, 0.001, 0.003, 0.2, 20.0):
        s.observe_ping_rtt(rtt)


def parse(text: str) -> dict[str, Any]:
    """{family name: (type, {(sample name, sorted labels): value})} through prometheus_client's parser."""
    result: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        result[family.name] = (family.type, samples)
    return result


EXPECTED_FAMILIES = {
    "tornado_websocket_open_connections": "gauge",
    "tornado_websocket_handshakes": "counter",
    "tornado_websocket_messages_received": "counter",
    "tornado_websocket_messages_sent": "counter",
    "tornado_websocket_bytes_received": "counter",
    "tornado_websocket_bytes_sent": "counter",
    "tornado_websocket_closes": "counter",
    "tornado_websocket_ping_rtt_seconds": "histogram",
    "tornado_websocket_writes_dropped": "counter",
    "tornado_websocket_slow_consumers_closed": "counter",
}


def check_exposition(text: str) -> None:
    parsed = parse(text)
    assert {name: kind for name, (kind, _) in parsed.items()} == EXPECTED_FAMILIES
    assert parsed["tornado_websocket_open_connections"][1] == {("tornado_websocket_open_connections", ()): 3}
    assert parsed["tornado_websocket_handshakes"][1] == {
        ("tornado_websocket_handshakes_total", (("result", "accepted"),)): 7,
        ("tornado_websocket_handshakes_total", (("result", "draining"),)): 2,
        ("tornado_websocket_handshakes_total", (("result", "max_connections"),)): 1,
    }
    assert parsed["tornado_websocket_messages_received"][1] == {("tornado_websocket_messages_received_total", ()): 11}
    assert parsed["tornado_websocket_bytes_sent"][1] == {("tornado_websocket_bytes_sent_total", ()): 1900}
    assert parsed["tornado_websocket_closes"][1] == {
        ("tornado_websocket_closes_total", (("code", "1000"),)): 2,
        ("tornado_websocket_closes_total", (("code", "1006"),)): 1,
        ("tornado_websocket_closes_total", (("code", "4001"),)): 1,
    }
    assert parsed["tornado_websocket_writes_dropped"][1] == {("tornado_websocket_writes_dropped_total", ()): 2}
    assert parsed["tornado_websocket_slow_consumers_closed"][1] == {
        ("tornado_websocket_slow_consumers_closed_total", ()): 5
    }
    rtt = parsed["tornado_websocket_ping_rtt_seconds"][1]
    buckets = {dict(labels)["le"]: v for (name, labels), v in rtt.items() if name.endswith("_bucket")}
    assert buckets["0.001"] == 2  # le is inclusive: 0.0005 and 0.001
    assert buckets["0.005"] == 3
    assert buckets["0.25"] == 4
    assert buckets["10.0"] == 4
    assert buckets["+Inf"] == 5
    assert list(buckets.values()) == sorted(buckets.values())  # cumulative
    assert rtt[("tornado_websocket_ping_rtt_seconds_count", ())] == 5
    assert rtt[("tornado_websocket_ping_rtt_seconds_sum", ())] == pytest.approx(20.2045)


def test_snapshot_counts_what_was_counted() -> None:
    fill(STATS)
    snap = stats()
    assert snap["open_connections"] == 3
    assert snap["handshakes"] == {"accepted": 7, "refused": {"draining": 2, "max_connections": 1}}
    assert (snap["messages_received"], snap["messages_sent"]) == (11, 13)
    assert (snap["bytes_received"], snap["bytes_sent"]) == (1700, 1900)
    assert snap["closes"] == {"1000": 2, "1006": 1, "4001": 1}
    assert snap["ping_rtt_seconds"]["count"] == 5
    assert snap["ping_rtt_seconds"]["buckets"]["+Inf"] == 5
    assert (snap["writes_dropped"], snap["slow_consumers_closed"]) == (2, 5)
    # A snapshot is a copy: later counting does not change it.
    STATS.handshake_refused("draining")
    STATS.messages_received += 1
    assert snap["handshakes"]["refused"]["draining"] == 2
    assert snap["messages_received"] == 11


def test_stats_is_the_same_object_as_the_hot_path_increments() -> None:
    STATS.messages_received += 1
    STATS.bytes_received += 10
    assert stats()["messages_received"] == 1
    assert stats()["bytes_received"] == 10
    with pytest.raises(AttributeError):
        STATS.typo_counter = 1  # type: ignore[attr-defined]  # slotted: a misspelt increment fails loudly


def test_refusal_kinds() -> None:
    assert [metrics.refusal_kind(s) for s in (400, 403, 405, 426, 418)] == [
        "bad_request",
        "forbidden_origin",
        "method",
        "version",
        "status_418",
    ]


def test_application_close_codes_are_bounded() -> None:
    for code in range(4000, 4000 + metrics.MAX_APPLICATION_CLOSE_CODES + 10):
        STATS.connection_closed(code)
    STATS.connection_closed(4000)  # already has its label
    STATS.connection_closed(1001)  # protocol codes always get theirs
    closes = stats()["closes"]
    assert len(closes) == metrics.MAX_APPLICATION_CLOSE_CODES + 2
    assert closes["other"] == 10
    assert closes["4000"] == 2
    assert closes["1001"] == 1


@needs_prometheus
def test_exposition_with_prometheus_client_parses() -> None:
    fill(STATS)
    body, content_type = metrics.exposition()
    assert content_type == prometheus_client.CONTENT_TYPE_LATEST
    check_exposition(body.decode())


@needs_prometheus
def test_plain_exposition_parses_and_matches_prometheus_client(without_prometheus_client: None) -> None:
    fill(STATS)
    body, content_type = metrics.exposition()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    check_exposition(text)
    with pytest.raises(ImportError):
        metrics.exposition(registry=object())
    with pytest.raises(ImportError):
        StatsCollector()


@needs_prometheus
def test_both_expositions_give_the_same_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    fill(STATS)
    with_client = parse(metrics.exposition()[0].decode())
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    plain = parse(metrics.exposition()[0].decode())
    assert plain == with_client


@needs_prometheus
def test_label_values_are_escaped(without_prometheus_client: None) -> None:
    STATS.handshake_refused('odd "reason"\\\n')
    parsed = parse(metrics.exposition()[0].decode())
    samples = parsed["tornado_websocket_handshakes"][1]
    assert ("tornado_websocket_handshakes_total", (("result", 'odd "reason"\\\n'),)) in samples


@needs_prometheus
def test_collector_serves_from_a_user_registry() -> None:
    fill(STATS)
    registry = prometheus_client.CollectorRegistry()
    registry.register(StatsCollector())
    prometheus_client.Counter("my_app_requests", "an application's own metric", registry=registry).inc(4)
    text = prometheus_client.generate_latest(registry).decode()
    parsed = parse(text)
    assert parsed["my_app_requests"][1][("my_app_requests_total", ())] == 4
    assert parsed["tornado_websocket_messages_sent"][1] == {("tornado_websocket_messages_sent_total", ()): 13}


async def fetch_metrics(harness: Any, app: tornado.web.Application) -> tornado.httpclient.HTTPResponse:
    port = harness.serve(app)
    client = tornado.httpclient.AsyncHTTPClient()
    return await bounded(client.fetch(f"http://127.0.0.1:{port}/metrics"))


@needs_prometheus
@pytest.mark.asyncio
async def test_metrics_handler_over_http_with_prometheus_client(harness: Any) -> None:
    fill(STATS)
    response = await fetch_metrics(harness, tornado.web.Application([(r"/metrics", MetricsHandler)]))
    assert response.code == 200
    assert response.headers["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
    check_exposition(response.body.decode())


@needs_prometheus
@pytest.mark.asyncio
async def test_metrics_handler_over_http_without_prometheus_client(
    harness: Any, without_prometheus_client: None
) -> None:
    fill(STATS)
    response = await fetch_metrics(harness, tornado.web.Application([(r"/metrics", MetricsHandler)]))
    assert response.code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    check_exposition(response.body.decode())


@needs_prometheus
@pytest.mark.asyncio
async def test_metrics_handler_serves_a_given_registry(harness: Any) -> None:
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Gauge("only_this", "a gauge", registry=registry).set(9)
    app = tornado.web.Application([(r"/metrics", MetricsHandler, {"registry": registry})])
    response = await fetch_metrics(harness, app)
    assert parse(response.body.decode()) == {"only_this": ("gauge", {("only_this", ()): 9})}


def test_plain_exposition_lines(without_prometheus_client: None) -> None:
    """The plain writer on its own, without prometheus-client's parser (runs where it is not installed)."""
    fill(STATS)
    body, content_type = metrics.exposition()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    lines = body.decode().splitlines()
    for expected in [
        "# TYPE tornado_websocket_open_connections gauge",
        "tornado_websocket_open_connections 3",
        "# TYPE tornado_websocket_handshakes_total counter",
        'tornado_websocket_handshakes_total{result="accepted"} 7',
        'tornado_websocket_handshakes_total{result="draining"} 2',
        "tornado_websocket_messages_received_total 11",
        "tornado_websocket_bytes_received_total 1700",
        'tornado_websocket_closes_total{code="1006"} 1',
        "# TYPE tornado_websocket_ping_rtt_seconds histogram",
        'tornado_websocket_ping_rtt_seconds_bucket{le="0.001"} 2',
        'tornado_websocket_ping_rtt_seconds_bucket{le="+Inf"} 5',
        "tornado_websocket_ping_rtt_seconds_count 5",
        "tornado_websocket_writes_dropped_total 2",
        "tornado_websocket_slow_consumers_closed_total 5",
    ]:
        assert expected in lines
    assert body.endswith(b"\n")


def test_log_close_writes_one_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="tornado.general"):
        metrics.log_close(("::1", 5123), 12.3456, 1001, "server shutting down", 120, 4500)
        metrics.log_close("10.0.0.7", 0.5, None, None, 0, 0)
    records = [r for r in caplog.records if r.name == "tornado.general"]
    assert [r.levelno for r in records] == [logging.DEBUG, logging.DEBUG]
    assert records[0].getMessage() == (
        "WebSocket closed: peer=[::1]:5123 duration=12.346s code=1001 reason='server shutting down'"
        " bytes_in=120 bytes_out=4500"
    )
    assert records[1].getMessage() == (
        "WebSocket closed: peer=10.0.0.7 duration=0.500s code=1006 reason='' bytes_in=0 bytes_out=0"
    )


def test_log_close_is_silent_above_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tornado.general"):
        metrics.log_close("10.0.0.7", 0.5, 1000, "", 1, 1)
    assert [r for r in caplog.records if r.name == "tornado.general"] == []


# -- once the core counts (issue 16 hooks): a real connection moves the counters ------------------

wired = pytest.mark.skipif(
    "STATS" not in vars(tornado_websocket.connection) or "STATS" not in vars(tornado_websocket.handler),
    reason="the core does not count into tornado_websocket.metrics.STATS yet (hooks listed in docs/operations.md)",
)


class Echo(tornado_websocket.handler.WebSocketHandler):
    def initialize(self, signal: Any) -> None:
        self.signal = signal

    def on_message(self, message: Any) -> None:
        self.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        self.signal.fire("close")


@wired
@pytest.mark.asyncio
async def test_a_real_connection_is_counted(harness: Any, signal: Any) -> None:
    harness.serve([(r"/ws", Echo, {"signal": signal})])
    client = await harness.raw_ws()
    await client.send_text("hello")
    assert await client.read_text() == "hello"
    assert stats()["open_connections"] == 1
    await client.send_close(1000)
    await client.expect_close_then_eof(1000)
    await client.close()
    await signal.wait("close")  # the server's TCP is gone once it has our FIN
    snap = stats()
    assert snap["handshakes"]["accepted"] == 1
    assert snap["messages_received"] == 1 and snap["messages_sent"] == 1
    # Wire bytes: a masked 5-byte text frame and a close frame in, their unmasked answers out.
    assert snap["bytes_received"] == (2 + 4 + 5) + (2 + 4 + 2)
    assert snap["bytes_sent"] == (2 + 5) + (2 + 2)
    assert snap["closes"] == {"1000": 1}
    assert snap["open_connections"] == 0


@wired
@pytest.mark.asyncio
async def test_refusals_and_ping_times_are_counted(harness: Any) -> None:
    harness.serve([(r"/ws", Echo, {"signal": None})])
    raw = await harness.raw()
    assert (await raw.request("/ws", headers={"Sec-WebSocket-Version": "8"})).status == 426
    client = await bounded(tornado_websocket.websocket_connect(harness.url()))
    rtt = await bounded(client.ping(b"p"))
    assert stats()["handshakes"] == {"accepted": 1, "refused": {"version": 1}}
    assert stats()["ping_rtt_seconds"]["count"] == 1
    assert stats()["ping_rtt_seconds"]["sum"] == pytest.approx(rtt)
    client.close()
    await bounded(client.wait_closed())
