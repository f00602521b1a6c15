"""MessageInbox on its own: queueing, waiting consumers, the full-queue pause, unanswered()."""

from __future__ import annotations

import asyncio

import pytest

from tornado_websocket.inbox import MessageInbox

pytestmark = pytest.mark.asyncio


# -- put / get -------------------------------------------------------------------------------


async def test_messages_come_out_in_the_order_they_were_put():
    inbox = MessageInbox()
    for message in ("a", b"b", "c"):
        assert inbox.put(message) is None
    assert len(inbox) == 3
    assert [await inbox.get() for _ in range(3)] == ["a", b"b", "c"]
    assert len(inbox) == 0


async def test_a_waiting_consumer_gets_the_next_message_directly():
    inbox = MessageInbox()
    first, second = inbox.get(), inbox.get()
    assert not first.done() and not second.done()
    assert inbox.put("one") is None
    assert inbox.put("two") is None
    assert (first.result(), second.result()) == ("one", "two")
    assert len(inbox) == 0  # handed over, never queued


async def test_get_of_a_queued_message_is_already_done():
    inbox = MessageInbox()
    inbox.put("x")
    future = inbox.get()
    assert future.done() and future.result() == "x"


async def test_cancelled_waiters_are_skipped_by_put():
    inbox = MessageInbox()
    gave_up = inbox.get()
    gave_up.cancel()
    timed_out = inbox.get()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(timed_out, 0.001)  # wait_for cancels it
    assert timed_out.cancelled()
    waiting = inbox.get()
    inbox.put("m")
    assert waiting.result() == "m"


async def test_a_message_put_when_every_waiter_gave_up_is_queued():
    inbox = MessageInbox()
    gave_up = inbox.get()
    gave_up.cancel()
    assert inbox.put("kept") is None
    assert len(inbox) == 1
    assert await inbox.get() == "kept"


async def test_get_drops_waiters_that_gave_up():
    inbox = MessageInbox()
    for _ in range(5):
        inbox.get().cancel()
    live = inbox.get()
    assert len(inbox._waiters) == 1  # the cancelled ones in front were dropped
    inbox.put("m")
    assert live.result() == "m"


# -- the full-queue pause ------------------------------------------------------------------------


async def test_put_returns_a_future_once_the_queue_is_full():
    inbox = MessageInbox(max_size=3)
    assert inbox.put(1) is None
    assert inbox.put(2) is None
    space = inbox.put(3)
    assert isinstance(space, asyncio.Future) and not space.done()
    assert inbox.put(4) is space  # still full: the same pause
    assert await inbox.get() == 1
    assert not space.done()  # three left: still full
    assert await inbox.get() == 2
    assert space.done() and space.result() is None
    assert len(inbox) == 2


async def test_a_new_pause_after_the_previous_one_ended():
    inbox = MessageInbox(max_size=1)
    first = inbox.put("a")
    assert first is not None
    await inbox.get()
    assert first.done()
    second = inbox.put("b")
    assert second is not None and second is not first and not second.done()


async def test_drain_takes_everything_and_ends_the_pause():
    inbox = MessageInbox(max_size=2)
    inbox.put("a")
    space = inbox.put("b")
    assert space is not None
    assert inbox.drain() == ["a", "b"]
    assert space.done()
    assert len(inbox) == 0
    assert inbox.drain() == []


async def test_close_ends_the_pause():
    inbox = MessageInbox(max_size=1)
    space = inbox.put("a")
    assert space is not None
    inbox.close()
    assert space.done()


# -- close -----------------------------------------------------------------------------------


async def test_close_wakes_waiting_consumers_with_none():
    inbox = MessageInbox()
    waiters = [inbox.get() for _ in range(3)]
    waiters[1].cancel()
    inbox.close()
    assert waiters[0].result() is None and waiters[2].result() is None
    assert waiters[1].cancelled()


async def test_queued_messages_are_still_taken_after_close_then_none():
    inbox = MessageInbox()
    inbox.put("a")
    inbox.put("b")
    inbox.close()
    assert await inbox.get() == "a"
    assert await inbox.get() == "b"
    assert await inbox.get() is None
    assert await inbox.get() is None


# -- unanswered(): has the consumer caught up? -------------------------------------------------------


async def test_unanswered_is_none_when_nothing_was_put():
    inbox = MessageInbox()
    assert inbox.unanswered() is None
    inbox.get()  # a consumer waiting, but nothing ever came
    assert inbox.unanswered() is None


async def test_unanswered_is_none_once_closed():
    inbox = MessageInbox()
    inbox.put("a")
    inbox.close()
    assert inbox.unanswered() is None


async def test_unanswered_is_none_while_a_consumer_waits_with_nothing_queued():
    inbox = MessageInbox()
    waiting = inbox.get()
    inbox.put("a")  # handed to the waiter
    assert waiting.result() == "a"
    assert inbox.unanswered() is not None  # it took "a" but has not asked again
    again = inbox.get()
    assert inbox.unanswered() is None
    again.cancel()


async def test_unanswered_waits_while_messages_are_queued():
    inbox = MessageInbox()
    inbox.put("a")
    pending = inbox.unanswered()
    assert pending is not None and not pending.done()
    assert inbox.unanswered() is pending  # one future for every asker


async def test_unanswered_completes_when_the_consumer_asks_again_after_the_last_message():
    inbox = MessageInbox()
    inbox.put("a")
    inbox.put("b")
    pending = inbox.unanswered()
    assert pending is not None
    assert inbox.get().result() == "a"
    assert not pending.done()
    assert inbox.get().result() == "b"
    assert not pending.done()  # taken, but not answered: it has not asked for more
    next_message = inbox.get()
    assert pending.done() and pending.result() is None
    assert inbox.unanswered() is None
    next_message.cancel()


async def test_unanswered_while_a_waiter_exists_but_messages_are_queued():
    inbox = MessageInbox()
    gave_up = inbox.get()
    gave_up.cancel()
    inbox.put("a")  # queued: the only waiter gave up
    assert inbox.unanswered() is not None


async def test_unanswered_completes_on_close():
    inbox = MessageInbox()
    inbox.put("a")
    pending = inbox.unanswered()
    assert pending is not None
    inbox.close()
    assert pending.done() and pending.result() is None


async def test_unanswered_gives_a_fresh_future_after_the_previous_completed():
    inbox = MessageInbox()
    inbox.put("a")
    first = inbox.unanswered()
    assert first is not None
    inbox.get()
    inbox.get()  # asks again: caught up
    assert first.done()
    inbox.put("b")  # to the waiter
    second = inbox.unanswered()
    assert second is not None and second is not first and not second.done()
