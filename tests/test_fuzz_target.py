"""The atheris fuzz target runs and holds its own assertions on its seeds and on random inputs.

CI fuzzes for a minute (``scripts/test.sh``); this pins the target itself,
so a broken target cannot pass silently. Inputs that fuzzing finds to break
an invariant are added to fuzz/seeds/ (none so far), so they run here for good.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

atheris = pytest.importorskip("atheris")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("fuzz_protocol", ROOT / "fuzz" / "fuzz_protocol.py")
assert SPEC is not None and SPEC.loader is not None
fuzz_protocol = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(fuzz_protocol)

SEEDS = sorted((ROOT / "fuzz" / "seeds").iterdir())


@pytest.mark.parametrize("seed", SEEDS, ids=[p.name for p in SEEDS])
def test_seed_inputs_pass_the_target(seed: pathlib.Path) -> None:
    fuzz_protocol.test_one_input(seed.read_bytes())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_inputs_pass_the_target(data: bytes) -> None:
    fuzz_protocol.test_one_input(data)


def test_target_assertions_can_fail() -> None:
    """The frame check rejects a violation with a code the protocol must never use."""
    with pytest.raises(AssertionError):
        fuzz_protocol.ALLOWED_CODES.discard(1002)
        try:
            # An unmasked client frame: the protocol answers 1002, now disallowed.
            fuzz_protocol.check_frames(b"\x81\x02hi", False, [])
        finally:
            fuzz_protocol.ALLOWED_CODES.add(1002)


def test_transport_feeding_matches_plain_feeding_for_large_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large binary frames go through frame_buffer_space when fed as the transport does."""
    import os

    from conftest import OP_BINARY, OP_CONT, OP_PING, OP_TEXT, build_frame

    from tornado_websocket.protocol import Protocol, Side

    big, text = os.urandom(100_000), ("é" * 20_000).encode()
    stream = (
        build_frame(OP_BINARY, big)
        + build_frame(OP_TEXT, text)
        + build_frame(OP_BINARY, big[:30_000], fin=False)
        + build_frame(OP_PING, b"mid")
        + build_frame(OP_CONT, big[30_000:])
    )
    pieces = [stream[i : i + 7_000] for i in range(0, len(stream), 7_000)]
    plain = Protocol(Side.SERVER, max_message_size=1 << 20)
    expected = [fuzz_protocol.describe(e) for p in pieces for e in plain.feed(p)]

    offered = []
    original = Protocol.frame_buffer_space

    def spy(self: Protocol):  # type: ignore[no-untyped-def]
        space = original(self)
        offered.append(space is not None)
        return space

    monkeypatch.setattr(Protocol, "frame_buffer_space", spy)
    got = fuzz_protocol.feed_like_transport(Protocol(Side.SERVER, max_message_size=1 << 20), pieces)
    assert [fuzz_protocol.describe(e) for e in got] == expected
    assert [d[0] for d in expected] == ["message", "message", "Ping", "message"]
    assert any(offered)


def test_transport_feeding_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """An event that kept a view of the receive buffer would be caught."""
    from tornado_websocket import protocol as protocol_module

    original = protocol_module.Protocol.feed

    def leaky_feed(self, data):  # type: ignore[no-untyped-def]
        events = original(self, data)
        for event in events:
            if isinstance(event, protocol_module.Ping) and isinstance(data, memoryview):
                event.payload = data[-4:]  # right bytes (zero key), but a view the next read overwrites
        return events

    monkeypatch.setattr(protocol_module.Protocol, "feed", leaky_feed)
    frame = b"\x89\x84" + b"\x00\x00\x00\x00" + b"ping"  # masked ping, zero key
    with pytest.raises(AssertionError):
        fuzz_protocol.check_frames(frame, False, [])
