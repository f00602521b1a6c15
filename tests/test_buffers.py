"""Tests for tornado_websocket.buffers.BufferPool: what is handed out, kept and dropped."""

from __future__ import annotations

from tornado_websocket.buffers import BufferPool


def test_take_gives_a_new_buffer_when_none_fits():
    pool = BufferPool(max_buffer=1000, max_bytes=3000)
    buf = pool.take(500)
    assert isinstance(buf, bytearray) and len(buf) == 500
    assert pool.pooled_bytes == 0


def test_take_reuses_the_smallest_buffer_that_fits():
    pool = BufferPool(max_buffer=1000, max_bytes=3000)
    small, middle, large = bytearray(100), bytearray(500), bytearray(900)
    for buf in (large, small, middle):
        pool.give(buf)
    assert pool.pooled_bytes == 1500
    assert pool.take(400) is middle
    assert pool.take(400) is large
    assert pool.take(400) is not small  # too small: a new one
    assert pool.pooled_bytes == 100


def test_give_drops_buffers_over_the_size_limit():
    pool = BufferPool(max_buffer=1000, max_bytes=3000)
    pool.give(bytearray(1001))
    assert pool.pooled_bytes == 0


def test_give_keeps_the_total_under_the_limit_dropping_small_buffers_first():
    pool = BufferPool(max_buffer=1000, max_bytes=2000)
    pool.give(bytearray(300))
    pool.give(bytearray(900))
    pool.give(bytearray(1000))  # 2200 would exceed 2000: the 300 goes
    assert pool.pooled_bytes == 1900
    assert len(pool.take(1000)) == 1000
    assert len(pool.take(900)) == 900
    assert pool.pooled_bytes == 0


def test_a_buffer_larger_than_the_whole_pool_evicts_nothing():
    pool = BufferPool(max_buffer=4000, max_bytes=1000)
    pool.give(bytearray(600))
    pool.give(bytearray(2000))  # could never fit: dropped, and the 600 stays
    assert pool.pooled_bytes == 600
