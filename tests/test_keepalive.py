"""Keepalive on a real IOLoop: pong matching, the pending limit, stop(), the interval timer and its timeout.

Intervals are short (10 ms) and every wait is on a future or an event,
bounded by ``asyncio.wait_for``; "did not happen" is checked after a later
timer of the same loop fired, never after a sleep.
"""

from __future__ import annotations

import asyncio
from typing import Optional

import pytest
from tornado.ioloop import IOLoop

from tornado_websocket.errors import WebSocketClosedError, WebSocketError
from tornado_websocket.keepalive import MAX_PENDING_PINGS, Keepalive

pytestmark = pytest.mark.asyncio

WAIT = 5.0
INTERVAL = 0.01


class Peer:
    """The connection side of a Keepalive: counts pings, optionally answers them, records timeouts."""

    def __init__(self, answer: bool = False, closing_after: Optional[int] = None) -> None:
        self.answer = answer
        self.closing_after = closing_after
        self.keepalive: Optional[Keepalive] = None
        self.pings = 0
        self.timeouts = 0
        self.pinged = asyncio.Event()
        self.timed_out_event = asyncio.Event()

    def make(self, interval: float = INTERVAL, timeout: float = INTERVAL) -> Keepalive:
        self.keepalive = Keepalive(IOLoop.current(), interval, timeout, self.send_ping, self.timed_out)
        return self.keepalive

    def send_ping(self) -> Optional[asyncio.Future[float]]:
        if self.closing_after is not None and self.pings >= self.closing_after:
            return None
        self.pings += 1
        assert self.keepalive is not None
        future = self.keepalive.expect_pong(b"")
        if self.answer:
            asyncio.get_running_loop().call_soon(self.keepalive.pong_received, b"")
        self.pinged.set()  # once the ping is expected, so that a waiter sees it in flight
        return future

    def timed_out(self) -> None:
        self.timeouts += 1
        self.timed_out_event.set()

    async def wait_pings(self, n: int) -> None:
        async def until() -> None:
            while self.pings < n:
                self.pinged.clear()
                await self.pinged.wait()

        await asyncio.wait_for(until(), WAIT)


async def later(delay: float) -> None:
    """Wait for a timer of the loop ``delay`` seconds from now (timers fire in order)."""
    fired = asyncio.get_running_loop().create_future()
    IOLoop.current().call_later(delay, fired.set_result, None)
    await asyncio.wait_for(fired, WAIT)


def keepalive(interval: float = 0.0, timeout: float = 0.0) -> Keepalive:
    return Keepalive(IOLoop.current(), interval, timeout, lambda: None, lambda: None)


# -- expect_pong / pong_received ------------------------------------------------------------------


async def test_a_pong_answers_its_ping_with_the_round_trip_time():
    ka = keepalive()
    future = ka.expect_pong(b"p1")
    assert ka.pending == 1 and not future.done()
    ka.pong_received(b"p1")
    assert ka.pending == 0
    rtt = future.result()
    assert isinstance(rtt, float) and rtt >= 0


async def test_a_pong_answers_every_earlier_ping_but_no_later_one():
    ka = keepalive()
    first, second, third = ka.expect_pong(b"1"), ka.expect_pong(b"2"), ka.expect_pong(b"3")
    ka.pong_received(b"2")
    assert first.done() and second.done() and not third.done()
    assert first.result() >= 0 and second.result() >= 0
    assert ka.pending == 1
    ka.pong_received(b"3")
    assert third.done() and ka.pending == 0


async def test_an_unsolicited_pong_answers_nothing():
    ka = keepalive()
    first, second = ka.expect_pong(b"a"), ka.expect_pong(b"b")
    ka.pong_received(b"c")
    ka.pong_received(b"")
    assert not first.done() and not second.done()
    assert ka.pending == 2


async def test_a_pong_with_no_ping_waiting_is_ignored():
    ka = keepalive()
    ka.pong_received(b"x")
    assert ka.pending == 0


async def test_a_pong_answers_the_first_of_equal_payloads_only():
    ka = keepalive()
    first, second, third = ka.expect_pong(b"same"), ka.expect_pong(b"other"), ka.expect_pong(b"same")
    ka.pong_received(b"same")
    assert first.done() and not second.done() and not third.done()
    ka.pong_received(b"same")
    assert second.done() and third.done()


async def test_a_ping_whose_future_was_cancelled_is_still_answered_without_error():
    ka = keepalive()
    cancelled, kept = ka.expect_pong(b"1"), ka.expect_pong(b"2")
    cancelled.cancel()
    ka.pong_received(b"2")
    assert kept.result() >= 0 and ka.pending == 0


async def test_past_max_pending_pings_the_oldest_fails():
    ka = keepalive()
    futures = [ka.expect_pong(str(i).encode()) for i in range(MAX_PENDING_PINGS)]
    assert ka.pending == MAX_PENDING_PINGS
    assert not any(f.done() for f in futures)
    newest = ka.expect_pong(b"new")
    assert ka.pending == MAX_PENDING_PINGS
    oldest = futures[0]
    assert oldest.done()
    exc = oldest.exception()
    assert type(exc) is WebSocketError and "no pong" in str(exc)
    assert not any(f.done() for f in futures[1:]) and not newest.done()
    # The forgotten ping's payload no longer matches anything.
    ka.pong_received(b"0")
    assert ka.pending == MAX_PENDING_PINGS


async def test_the_oldest_already_cancelled_is_dropped_quietly():
    ka = keepalive()
    futures = [ka.expect_pong(b"%d" % i) for i in range(MAX_PENDING_PINGS)]
    futures[0].cancel()
    ka.expect_pong(b"more")
    assert futures[0].cancelled()
    assert ka.pending == MAX_PENDING_PINGS


# -- stop() ----------------------------------------------------------------------------------------


async def test_stop_fails_waiting_pings_with_websocket_closed_error():
    ka = keepalive()
    answered, waiting = ka.expect_pong(b"1"), ka.expect_pong(b"2")
    ka.pong_received(b"1")
    ka.stop()
    assert answered.exception() is None
    assert isinstance(waiting.exception(), WebSocketClosedError)
    assert ka.pending == 0
    ka.stop()  # twice is fine


async def test_stop_stops_the_interval_timer():
    peer = Peer(answer=True)
    ka = peer.make()
    ka.start()
    await peer.wait_pings(1)
    ka.stop()
    seen = peer.pings
    await later(INTERVAL * 5)
    assert peer.pings == seen
    assert peer.timeouts == 0


async def test_stop_before_the_first_tick():
    peer = Peer()
    ka = peer.make()
    ka.start()
    ka.stop()
    await later(INTERVAL * 5)
    assert peer.pings == 0 and peer.timeouts == 0


# -- start() and the timer ----------------------------------------------------------------------------


async def test_start_with_interval_zero_sends_nothing():
    peer = Peer()
    ka = peer.make(interval=0, timeout=0)
    ka.start()
    assert ka._timer is None
    await later(INTERVAL * 3)
    assert peer.pings == 0


async def test_pings_are_sent_every_interval_and_answered_pongs_do_not_time_out():
    peer = Peer(answer=True)
    ka = peer.make(interval=INTERVAL, timeout=INTERVAL)
    ka.start()
    ka.start()  # a second start does not add a second timer
    await peer.wait_pings(4)
    # The first ping's deadline (one timeout after it) is long past: the answer cancelled it.
    assert peer.timeouts == 0
    assert ka.pending == 0
    ka.stop()


async def test_timed_out_is_called_when_no_pong_comes():
    peer = Peer(answer=False)
    ka = peer.make(interval=INTERVAL, timeout=INTERVAL / 2)
    ka.start()
    await asyncio.wait_for(peer.timed_out_event.wait(), WAIT)
    assert peer.timeouts >= 1
    assert ka.pending >= 1
    ka.stop()


async def test_a_late_pong_after_the_deadline_does_not_undo_the_timeout():
    peer = Peer(answer=False)
    ka = peer.make(interval=1.0, timeout=INTERVAL)
    ka._tick()  # the first ping now
    assert peer.pings == 1
    await asyncio.wait_for(peer.timed_out_event.wait(), WAIT)
    ka.pong_received(b"")
    assert peer.timeouts == 1
    ka.stop()


async def test_no_timeout_when_the_timeout_is_zero():
    peer = Peer(answer=False)
    ka = peer.make(interval=INTERVAL, timeout=0)
    ka.start()
    await peer.wait_pings(4)
    assert peer.timeouts == 0
    assert ka.pending == 4
    ka.stop()


async def test_the_timer_stops_when_the_connection_is_closing():
    peer = Peer(answer=True, closing_after=2)
    ka = peer.make()
    ka.start()
    await peer.wait_pings(2)
    await later(INTERVAL * 5)  # the tick after the second found the connection closing
    assert peer.pings == 2
    assert ka._timer is None
    assert peer.timeouts == 0


async def test_stop_fails_keepalive_pings_and_cancels_their_deadlines():
    peer = Peer(answer=False)
    ka = peer.make(interval=1.0, timeout=INTERVAL)
    ka._tick()
    assert ka.pending == 1
    ka.stop()
    await later(INTERVAL * 5)  # the deadline would have fired by now
    assert peer.timeouts == 0
