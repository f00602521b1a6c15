"""tornado_websocket.limits: the limiter's arithmetic on a fake clock, its memory bound, the rate-limited
logger, and admit() in a handler behind a real HTTPServer(xheaders=True) with our real client."""

from __future__ import annotations

import logging
from typing import Any, Optional

import pytest
import tornado.httpserver
import tornado.testing
import tornado.web
from conftest import bounded

import tornado_websocket.handler
from tornado_websocket import limits
from tornado_websocket.client import websocket_connect
from tornado_websocket.errors import WebSocketHandshakeError
from tornado_websocket.handler import WebSocketHandler
from tornado_websocket.limits import ConnectionLimiter, Refusal, client_key
from tornado_websocket.metrics import STATS, RateLimitedLogger


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def fresh_stats() -> Any:
    STATS.reset()
    yield
    STATS.reset()


# -- the limiter ------------------------------------------------------------------


def test_handshake_rate_is_a_token_bucket() -> None:
    clock = FakeClock()
    limiter = ConnectionLimiter(handshake_rate_per_ip=0.5, handshake_burst_per_ip=2, clock=clock)
    assert limiter.check("10.0.0.1") is None
    assert limiter.check("10.0.0.1") is None
    refusal = limiter.check("10.0.0.1")
    assert refusal is not None
    assert (refusal.status, refusal.kind, refusal.headers) == (429, "handshake_rate", {"Retry-After": "2"})
    assert limiter.check("10.0.0.2") is None  # another address has its own bucket
    clock.now += 1.0  # half a token: still refused, and it says how long is left
    refusal = limiter.check("10.0.0.1")
    assert refusal is not None and refusal.headers == {"Retry-After": "1"}
    clock.now += 1.0
    assert limiter.check("10.0.0.1") is None
    assert limiter.check("10.0.0.1") is not None


def test_burst_defaults_to_the_rate_and_at_least_one() -> None:
    assert ConnectionLimiter(handshake_rate_per_ip=0.2).burst == 1.0
    assert ConnectionLimiter(handshake_rate_per_ip=20).burst == 20.0


def test_process_and_per_address_limits() -> None:
    limiter = ConnectionLimiter(max_connections=3, max_connections_per_ip=2, retry_after=9)
    for _ in range(2):
        assert limiter.check("10.0.0.1") is None
        limiter.acquired("10.0.0.1")
    refusal = limiter.check("10.0.0.1")
    assert refusal == Refusal(
        503, "max_connections_per_ip", "too many WebSocket connections from this address", {"Retry-After": "9"}
    )
    assert limiter.check("10.0.0.2") is None
    limiter.acquired("10.0.0.2")
    refusal = limiter.check("10.0.0.3")
    assert refusal is not None and (refusal.status, refusal.kind) == (503, "max_connections")
    limiter.released("10.0.0.1")
    assert limiter.check("10.0.0.1") is None
    assert limiter.connections == 2


def test_ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("not an address") == "not an address"
    limiter = ConnectionLimiter(max_connections_per_ip=1)
    limiter.acquired("2001:db8:1:2::1")
    assert limiter.check("2001:db8:1:2::ffff") is not None
    assert limiter.check("2001:db8:1:9::1") is None


def test_memory_stays_bounded() -> None:
    clock = FakeClock()
    limiter = ConnectionLimiter(
        max_connections_per_ip=5, handshake_rate_per_ip=10, handshake_burst_per_ip=20, clock=clock
    )
    for i in range(5000):
        ip = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        assert limiter.check(ip) is None
        limiter.acquired(ip)
    assert limiter.tracked_addresses == 5000
    for i in range(5000):
        limiter.released(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    clock.now += 2.0  # the refill time (burst / rate): every bucket is full again
    assert limiter.check("192.0.2.1") is None  # the next check sweeps the full buckets
    assert limiter.tracked_addresses == 1
    assert limiter.connections == 0


def test_release_without_acquire_raises() -> None:
    limiter = ConnectionLimiter(max_connections=1)
    with pytest.raises(RuntimeError):
        limiter.released("10.0.0.1")


@pytest.mark.parametrize(
    "options",
    [
        {"max_connections": 0},
        {"max_connections_per_ip": -1},
        {"handshake_rate_per_ip": 0},
        {"handshake_rate_per_ip": 1, "handshake_burst_per_ip": 0.5},
    ],
)
def test_invalid_limits_raise(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ConnectionLimiter(**options)


def test_admission_releases_once() -> None:
    limiter = ConnectionLimiter(max_connections=1)
    admission = limits.Admission(limiter, "10.0.0.1")
    assert limiter.check("10.0.0.2") is not None
    admission.release()
    admission.release()
    assert limiter.connections == 0
    assert limiter.check("10.0.0.2") is None


# -- the rate-limited logger ----------------------------------------------------


def test_rate_limited_logger(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    log = RateLimitedLogger(logging.getLogger("test.limits"), interval=1.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.limits"):
        assert log.log("k", logging.INFO, "refused %s", "a")
        for _ in range(5):
            assert not log.log("k", logging.INFO, "refused %s", "b")
        assert log.log("other", logging.INFO, "other key")
        clock.now += 1.0
        assert log.log("k", logging.INFO, "refused %s", "c")
        assert log.once("misconfigured", logging.WARNING, "bad setting %d", 1)
        clock.now += 100
        assert not log.once("misconfigured", logging.WARNING, "bad setting %d", 2)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "test.limits"]
    assert messages == [
        (logging.INFO, "refused a"),
        (logging.INFO, "other key"),
        (logging.INFO, "refused c (5 similar messages suppressed)"),
        (logging.WARNING, "bad setting 1"),
    ]


# -- settings ------------------------------------------------------------------------


def test_limiter_from_application_settings() -> None:
    app = tornado.web.Application(
        websocket_max_connections=100,
        websocket_max_connections_per_ip=4,
        websocket_handshake_rate_per_ip=2.0,
        websocket_retry_after=30,
    )
    limiter = limits.limiter_for(app)
    assert limiter is not None
    assert (limiter.max_connections, limiter.max_connections_per_ip, limiter.rate, limiter.burst) == (100, 4, 2.0, 2.0)
    assert limiter.retry_after == 30
    assert limits.limiter_for(app) is limiter  # one per application
    assert limits.limiter_for(tornado.web.Application()) is None
    shared = ConnectionLimiter(max_connections=1)
    assert limits.limiter_for(tornado.web.Application(websocket_limiter=shared)) is shared


def test_invalid_settings_warn_once_per_process(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "LOG", RateLimitedLogger())
    with caplog.at_level(logging.WARNING, logger="tornado.general"):
        for _ in range(3):
            assert limits.limiter_for(tornado.web.Application(websocket_max_connections=0)) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "websocket limits" in warnings[0].getMessage().lower()


# -- admit() in a real handler behind HTTPServer(xheaders=True) -------------------------


#: Whether WebSocketHandler.get() calls limits.admit() (the issue 16 hook) or AdmittedEcho must.
HANDLER_ADMITS = "limits" in vars(tornado_websocket.handler) or "admit" in vars(tornado_websocket.handler)


class AdmittedEcho(WebSocketHandler):
    """Calls limits.admit() before the upgrade, as the handler does once the hook is wired."""

    admission: Optional[limits.Admission] = None

    def initialize(self, signal: Any = None) -> None:
        self.signal = signal

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if HANDLER_ADMITS:  # the handler calls admit() itself now
            await super().get(*args, **kwargs)
            return
        outcome = limits.admit(self)
        if isinstance(outcome, Refusal):
            self.set_status(outcome.status)
            for name, value in outcome.headers.items():
                self.set_header(name, value)
            self.finish(outcome.reason + "\n")
            return
        self.admission = outcome
        await super().get(*args, **kwargs)
        if self.ws_connection is None:  # refused by the handshake checks: give the slot back
            outcome.release()

    def open(self) -> None:
        self.write_message("remote_ip=" + (self.request.remote_ip or ""))

    def on_message(self, message: Any) -> None:
        self.write_message(message)

    def on_close(self) -> None:
        if self.admission is not None:
            self.admission.release()
        if self.signal is not None:
            self.signal.fire("close")


def serve_xheaders(harness: Any, app: tornado.web.Application) -> int:
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(app, xheaders=True)
    server.add_sockets([sock])
    harness.servers.append(server)
    return port


async def connect(port: int, **headers: str) -> Any:
    client = await bounded(websocket_connect(f"ws://127.0.0.1:{port}/ws", headers=headers, connect_timeout=5))
    return client


async def refused(port: int, **headers: str) -> WebSocketHandshakeError:
    with pytest.raises(WebSocketHandshakeError) as info:
        await connect(port, **headers)
    return info.value


@pytest.mark.asyncio
async def test_remote_ip_comes_from_x_real_ip_and_x_forwarded_for(harness: Any) -> None:
    port = serve_xheaders(harness, tornado.web.Application([(r"/ws", AdmittedEcho)]))
    cases = [
        ({"X-Real-IP": "203.0.113.5"}, "203.0.113.5"),
        ({"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}, "203.0.113.9"),  # the last hop's
        ({"X-Forwarded-For": "198.51.100.1", "X-Real-IP": "203.0.113.7"}, "203.0.113.7"),  # X-Real-IP wins
        ({"X-Real-IP": "not-an-ip"}, "127.0.0.1"),  # invalid: the socket's address
        ({}, "127.0.0.1"),
    ]
    for headers, expected in cases:
        client = await connect(port, **headers)
        assert await bounded(client.read_message()) == f"remote_ip={expected}"
        client.close()
        await bounded(client.wait_closed())


@pytest.mark.asyncio
async def test_per_address_limit_through_xheaders(harness: Any, signal: Any, caplog: pytest.LogCaptureFixture) -> None:
    app = tornado.web.Application(
        [(r"/ws", AdmittedEcho, {"signal": signal})], websocket_max_connections_per_ip=2, websocket_retry_after=11
    )
    port = serve_xheaders(harness, app)
    first = await connect(port, **{"X-Real-IP": "203.0.113.5"})
    second = await connect(port, **{"X-Real-IP": "203.0.113.5"})
    with caplog.at_level(logging.INFO, logger="tornado.general"):
        error = await refused(port, **{"X-Real-IP": "203.0.113.5"})
        assert (error.code, error.headers.get("Retry-After")) == (503, "11")
        assert b"too many WebSocket connections from this address" in error.body
        await refused(port, **{"X-Real-IP": "203.0.113.5"})
    # Two refusals within a second: one log line.
    logged = [r for r in caplog.records if "Refused WebSocket upgrade" in r.getMessage()]
    assert len(logged) == 1 and "203.0.113.5" in logged[0].getMessage()
    other = await connect(port, **{"X-Real-IP": "203.0.113.6"})  # another client is not affected
    assert await bounded(other.read_message()) == "remote_ip=203.0.113.6"
    assert STATS.handshakes_refused == {"max_connections_per_ip": 2}
    # A connection that closes gives its slot back.
    first.close()
    await bounded(first.wait_closed())
    await signal.wait("close")  # the server's on_close runs when its TCP is gone, after the client's
    limiter = limits.limiter_for(app)
    assert limiter is not None and limiter.connections == 2
    third = await connect(port, **{"X-Real-IP": "203.0.113.5"})
    assert await bounded(third.read_message()) == "remote_ip=203.0.113.5"
    for client in (second, other, third):
        client.close()
        await bounded(client.wait_closed())


@pytest.mark.asyncio
async def test_handshake_rate_answers_429(harness: Any) -> None:
    app = tornado.web.Application(
        [(r"/ws", AdmittedEcho)], websocket_handshake_rate_per_ip=0.01, websocket_handshake_burst_per_ip=1
    )
    port = serve_xheaders(harness, app)
    client = await connect(port, **{"X-Real-IP": "203.0.113.5"})
    error = await refused(port, **{"X-Real-IP": "203.0.113.5"})
    assert error.code == 429
    assert 1 <= int(error.headers["Retry-After"]) <= 100
    assert STATS.handshakes_refused == {"handshake_rate": 1}
    client.close()
    await bounded(client.wait_closed())


@pytest.mark.asyncio
async def test_process_limit_without_xheaders_counts_the_socket_address(harness: Any) -> None:
    port = harness.serve([(r"/ws", AdmittedEcho)], websocket_max_connections=1)
    client = await connect(port, **{"X-Real-IP": "203.0.113.5"})
    assert await bounded(client.read_message()) == "remote_ip=127.0.0.1"  # xheaders off: headers ignored
    error = await refused(port)
    assert error.code == 503 and error.headers["Retry-After"] == "5"
    client.close()
    await bounded(client.wait_closed())


@pytest.mark.asyncio
async def test_a_handshake_refused_after_admission_gives_the_slot_back(harness: Any) -> None:
    port = harness.serve([(r"/ws", AdmittedEcho)], websocket_max_connections=1)
    raw = await harness.raw()
    response = await raw.request(
        "/ws", headers={"Sec-WebSocket-Version": "12"}
    )  # admitted, then refused by the version check
    assert response.status == 426
    client = await connect(port)
    assert await bounded(client.read_message()) == "remote_ip=127.0.0.1"
    client.close()
    await bounded(client.wait_closed())


# -- once the handler calls admit() itself (issue 16 hook) ------------------------------------

handler_admits = pytest.mark.skipif(
    not HANDLER_ADMITS,
    reason="WebSocketHandler.get() does not call tornado_websocket.limits.admit() yet (see docs/operations.md)",
)


class PlainEcho(WebSocketHandler):
    def initialize(self, signal: Any) -> None:
        self.signal = signal

    def on_message(self, message: Any) -> None:
        self.write_message(message)

    def on_close(self) -> None:
        self.signal.fire("close")


@handler_admits
@pytest.mark.asyncio
async def test_the_handler_applies_the_limits_from_settings(harness: Any, signal: Any) -> None:
    port = harness.serve([(r"/ws", PlainEcho, {"signal": signal})], websocket_max_connections=1)
    client = await connect(port)
    error = await refused(port)
    assert (error.code, error.headers["Retry-After"]) == (503, "5")
    assert STATS.handshakes_refused == {"max_connections": 1}
    client.close()
    await bounded(client.wait_closed())
    await signal.wait("close")
    limiter = limits.limiter_for(harness.servers[-1].request_callback)
    assert limiter is not None and limiter.connections == 0
    again = await connect(port)  # the slot is free again
    again.close()
    await bounded(again.wait_closed())
