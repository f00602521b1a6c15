"""WriteBatch on its own: the join-or-gather rule, when a batch is due, the shared future."""

from __future__ import annotations

import asyncio

import pytest

from tornado_websocket import batching
from tornado_websocket.batching import FLUSH_AFTER, GATHER_MIN_BYTES, WriteBatch
from tornado_websocket.transport import MAX_IOVEC


def batch_of(*frames: bytes) -> WriteBatch:
    batch = WriteBatch()
    batch.extend(frames)
    return batch


# -- parts(): join or gather ---------------------------------------------------------------


def test_an_empty_batch_has_no_parts():
    assert WriteBatch().parts() == []


def test_one_frame_is_handed_over_as_it_is_even_when_small():
    frame = b"\x81\x02hi"
    parts = batch_of(frame).parts()
    assert parts == [frame]
    assert parts[0] is frame  # no copy


def test_one_frame_is_handed_over_as_it_is_when_large():
    frame = bytes(GATHER_MIN_BYTES * 2)
    parts = batch_of(frame).parts()
    assert len(parts) == 1 and parts[0] is frame


def test_small_frames_are_joined_into_one():
    frames = [bytes([0x81, 1, 0x41 + i]) for i in range(10)]
    assert batch_of(*frames).parts() == [b"".join(frames)]


def test_frames_just_under_the_gather_size_are_joined():
    frames = [b"a" * (GATHER_MIN_BYTES // 2), b"b" * (GATHER_MIN_BYTES // 2 - 1)]
    assert sum(map(len, frames)) == GATHER_MIN_BYTES - 1
    assert batch_of(*frames).parts() == [b"".join(frames)]


def test_frames_of_exactly_the_gather_size_are_gathered():
    frames = [b"a" * (GATHER_MIN_BYTES // 2), b"b" * (GATHER_MIN_BYTES // 2)]
    parts = batch_of(*frames).parts()
    assert parts == frames
    assert all(p is f for p, f in zip(parts, frames))  # the caller's bytes, not copies


def test_a_large_batch_in_max_iovec_parts_is_gathered():
    frames = [bytes([i % 256]) * (GATHER_MIN_BYTES // MAX_IOVEC + 1) for i in range(MAX_IOVEC)]
    assert sum(map(len, frames)) >= GATHER_MIN_BYTES
    parts = batch_of(*frames).parts()
    assert parts == frames


def test_a_large_batch_of_more_than_max_iovec_parts_is_joined():
    frames = [bytes([i % 256]) * (GATHER_MIN_BYTES // MAX_IOVEC + 1) for i in range(MAX_IOVEC + 1)]
    assert sum(map(len, frames)) >= GATHER_MIN_BYTES
    assert batch_of(*frames).parts() == [b"".join(frames)]


def test_parts_returns_a_new_list_that_the_batch_does_not_share():
    frames = [b"x" * GATHER_MIN_BYTES, b"y"]
    batch = batch_of(*frames)
    parts = batch.parts()
    parts.append(b"z")
    assert list(batch) == frames


# -- is_due(): FLUSH_AFTER on the module's clock ---------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(batching, "clock", fake)
    return fake


def test_flush_at_is_flush_after_past_the_batch_creation(clock):
    batch = WriteBatch()
    assert batch.flush_at == pytest.approx(1000.0 + FLUSH_AFTER)


def test_an_empty_batch_is_never_due(clock):
    batch = WriteBatch()
    clock.now += 3600
    assert not batch.is_due()


def test_a_batch_with_frames_is_due_once_flush_after_has_passed(clock):
    batch = batch_of(b"frame")
    assert not batch.is_due()
    clock.now += FLUSH_AFTER / 2
    assert not batch.is_due()
    clock.now = batch.flush_at
    assert batch.is_due()
    clock.now += 1
    assert batch.is_due()


def test_each_batch_has_its_own_deadline(clock):
    first = batch_of(b"a")
    clock.now += FLUSH_AFTER / 2
    second = batch_of(b"b")
    clock.now = first.flush_at
    assert first.is_due()
    assert not second.is_due()


# -- future_for(): one future for every frame ---------------------------------------------------


def test_there_is_no_future_until_one_is_asked_for():
    assert WriteBatch().future is None


@pytest.mark.asyncio
async def test_future_for_is_made_once_and_shared():
    loop = asyncio.get_running_loop()
    batch = WriteBatch()
    first = batch.future_for(loop)
    assert batch.future is first
    assert batch.future_for(loop) is first
    assert not first.done()
    assert first.get_loop() is loop


@pytest.mark.asyncio
async def test_batches_do_not_share_futures():
    loop = asyncio.get_running_loop()
    assert WriteBatch().future_for(loop) is not WriteBatch().future_for(loop)


def test_write_batch_is_a_list_with_slots():
    batch = WriteBatch()
    batch.append(b"a")
    batch.append(b"b")
    assert list(batch) == [b"a", b"b"] and len(batch) == 2
    with pytest.raises(AttributeError):
        batch.other = 1  # type: ignore[attr-defined]
