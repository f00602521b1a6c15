"""The C fast path for whole messages (``_speedups.parse_messages``) against the Python parser.

``Protocol.feed`` hands runs of whole, final, uncompressed text and binary
frames to C and everything else to Python. Whatever the input (valid or
not, cut anywhere), both ways must give the same events, the same
counters and the same state: these tests feed the same bytes to a
Protocol with the fast path and to one without it and compare.
"""

from __future__ import annotations

import struct
from typing import Any, Optional

import pytest
from conftest import build_frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tornado_websocket import protocol as protocol_module
from tornado_websocket.protocol import Message, Protocol, Side

pytestmark = pytest.mark.skipif(
    protocol_module._parse_messages is None, reason="no C extension (or TORNADO_WEBSOCKET_NO_SPEEDUPS)"
)


def frame(b0: int, payload: bytes, masked: bool, key: bytes = b"\x11\x22\x33\x44") -> bytes:
    """A frame with the given first byte, built by the test harness (not by the package)."""
    return build_frame(b0 & 0x0F, payload, fin=bool(b0 & 0x80), rsv=(b0 >> 4) & 7, mask=masked, key=key)


def describe(events: list[Any]) -> list[tuple[Any, ...]]:
    out = []
    for event in events:
        fields = tuple(getattr(event, name) for name in type(event).__slots__)
        out.append((type(event).__name__, *fields))
    return out


def run(side: Side, limit: Optional[int], chunks: list[bytes], fast: bool) -> tuple[Any, ...]:
    saved = protocol_module._parse_messages
    if not fast:
        protocol_module._parse_messages = None
    try:
        p = Protocol(side, limit)
        events: list[Any] = []
        for chunk in chunks:
            events += p.feed(memoryview(bytearray(chunk)))  # as the transport hands it: a view of a buffer
    finally:
        protocol_module._parse_messages = saved
    return (
        describe(events),
        p.state,
        p.messages_received,
        p.message_bytes_received,
        p.bytes_received,
        p.close_received is not None and (p.close_received.code, p.close_received.reason),
    )


payloads = st.one_of(
    st.text(max_size=200).map(lambda t: t.encode()),
    st.binary(max_size=200),
    st.sampled_from([b"\xed\xa0\x80", b"\xff", b"ok\xc3", "é".encode() * 70]),  # invalid UTF-8, a cut sequence
    st.integers(120, 130).map(lambda n: b"a" * n),  # the 125/126 boundary
    st.sampled_from([65535, 65536, 70000]).map(lambda n: b"b" * n),  # the 16/64-bit boundary
)
first_bytes = st.one_of(
    st.sampled_from([0x81, 0x82] * 6),  # whole text and binary: most frames take the fast path
    st.sampled_from([0x01, 0x02, 0x00, 0x80, 0x89, 0x8A, 0x88, 0xC1, 0x91, 0xA2, 0x83, 0x8B, 0x09]),
    st.integers(0, 255),
)


@st.composite
def streams(draw: Any, masked: bool) -> list[bytes]:
    out = b""
    for _ in range(draw(st.integers(1, 8))):
        b0 = draw(first_bytes)
        payload = draw(payloads)
        if b0 & 0x0F == 0x8 and draw(st.booleans()):
            payload = struct.pack("!H", draw(st.sampled_from([1000, 1001, 1005, 3000, 999]))) + payload[:20]
        mask = masked if draw(st.integers(0, 9)) else not masked  # now and then the wrong mask bit
        out += frame(b0, payload, mask, draw(st.binary(min_size=4, max_size=4)))
    if draw(st.booleans()):
        out += draw(st.binary(max_size=12))  # a torn or garbage tail
    cuts = sorted(draw(st.lists(st.integers(0, len(out)), max_size=5)))
    chunks, last = [], 0
    for cut in cuts + [len(out)]:
        chunks.append(out[last:cut])
        last = cut
    return chunks


@given(data=st.data(), limit=st.sampled_from([None, 0, 50, 125, 126, 70000, 10 * 1024 * 1024]))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_server_events_counters_and_state_match_the_python_parser(data: Any, limit: Optional[int]) -> None:
    chunks = data.draw(streams(masked=True))
    assert run(Side.SERVER, limit, chunks, fast=True) == run(Side.SERVER, limit, chunks, fast=False)


@given(data=st.data(), limit=st.sampled_from([None, 125, 10 * 1024 * 1024]))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_client_events_counters_and_state_match_the_python_parser(data: Any, limit: Optional[int]) -> None:
    chunks = data.draw(streams(masked=False))
    assert run(Side.CLIENT, limit, chunks, fast=True) == run(Side.CLIENT, limit, chunks, fast=False)


def test_the_fast_path_takes_runs_of_whole_messages_and_leaves_the_rest():
    events: list[Any] = []
    masked_text = frame(0x81, "héllo".encode(), True)
    ping = frame(0x89, b"p", True)
    data = masked_text + frame(0x82, b"\x00\x01", True) + ping + masked_text
    parse = protocol_module._parse_messages
    assert parse is not None
    pos, taken, taken_bytes = parse(data, 0, True, -1, Message, events)
    assert (taken, taken_bytes) == (2, len("héllo".encode()) + 2)
    assert data[pos:].startswith(ping)  # stopped at the control frame
    assert [(e.data, e.utf8) for e in events] == [("héllo", "héllo".encode()), (b"\x00\x01", None)]
    # Unmasked frames to a server, frames over the limit, bad UTF-8 and torn frames are left alone.
    for rest in (frame(0x81, b"x", False), frame(0x82, b"y" * 11, True), frame(0x81, b"\xff", True), masked_text[:-1]):
        assert parse(rest, 0, True, 10, Message, events)[:2] == (0, 0)
    with pytest.raises(ValueError):
        parse(b"", 1, True, -1, Message, events)
