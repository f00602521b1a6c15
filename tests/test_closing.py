"""CloseHandshake with a real Protocol and a recording CloseIO: server and client paths, violations, the timer."""

from __future__ import annotations

import asyncio
from typing import Optional

import pytest
from conftest import xor_mask
from tornado.ioloop import IOLoop

from tornado_websocket.closing import CloseHandshake
from tornado_websocket.errors import WebSocketClosedError
from tornado_websocket.frames import OP_CLOSE, encode_close_payload, encode_frame
from tornado_websocket.protocol import CloseReceived, Protocol, ProtocolViolation, Side, State

pytestmark = pytest.mark.asyncio

WAIT = 5.0


class RecordingIO:
    """A CloseIO that records what the handshake asks for; ``flushed()`` futures complete when the test says."""

    def __init__(self, drained: bool = False) -> None:
        self.drained = drained  # what close_if_drained() answers
        self.calls: list[tuple[str, Optional[bytes]]] = []
        self.flush_futures: list[asyncio.Future[None]] = []
        self.aborted = asyncio.get_running_loop().create_future()

    def write_frame(self, frame: bytes) -> asyncio.Future[None]:
        self.calls.append(("write_frame", frame))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def flushed(self) -> asyncio.Future[None]:
        self.calls.append(("flushed", None))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.flush_futures.append(future)
        return future

    def shutdown_write(self) -> None:
        self.calls.append(("shutdown_write", None))

    def abort(self) -> None:
        self.calls.append(("abort", None))
        if not self.aborted.done():
            self.aborted.set_result(None)

    def close_if_drained(self) -> bool:
        self.calls.append(("close_if_drained", None))
        return self.drained

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def frames(self) -> list[bytes]:
        return [frame for name, frame in self.calls if name == "write_frame" and frame is not None]


def server_close_frame(code: Optional[int], reason: str = "") -> bytes:
    return encode_frame(OP_CLOSE, encode_close_payload(code, reason))


def unmask_client_frame(frame: bytes) -> tuple[int, bytes]:
    """(first byte, payload) of a short masked frame; fails if it is not masked."""
    assert frame[1] & 0x80, "a client frame must be masked"
    length = frame[1] & 0x7F
    assert length < 126
    key, payload = frame[2:6], frame[6:]
    assert len(payload) == length
    return frame[0], xor_mask(key, payload)


def handshake(side: Side, timeout: float = 60.0, drained: bool = False) -> tuple[CloseHandshake, Protocol, RecordingIO]:
    protocol = Protocol(side)
    io = RecordingIO(drained)
    return CloseHandshake(protocol, io, IOLoop.current(), timeout), protocol, io


async def later(delay: float) -> None:
    fired = asyncio.get_running_loop().create_future()
    IOLoop.current().call_later(delay, fired.set_result, None)
    await asyncio.wait_for(fired, WAIT)


# -- the server ------------------------------------------------------------------------------


async def test_server_close_sends_our_close_and_starts_the_timer():
    closing, protocol, io = handshake(Side.SERVER)
    closing.close(1001, "going away")
    assert io.frames() == [server_close_frame(1001, "going away")]
    assert io.names() == ["write_frame"]
    assert protocol.close_sent is not None and protocol.close_sent.code == 1001
    assert protocol.state is State.CLOSING
    assert closing._timer is not None
    closing.cancel()


async def test_server_close_then_the_peers_echo_half_closes_after_the_flush():
    closing, protocol, io = handshake(Side.SERVER)
    closing.close(1000, "")
    closing.close_received(CloseReceived(1000, ""))
    assert io.frames() == [server_close_frame(1000)]  # no second close frame
    assert io.names() == ["write_frame", "close_if_drained", "flushed"]
    io.flush_futures[0].set_result(None)
    await asyncio.sleep(0)  # the done callback runs on the next loop turn
    assert io.names() == ["write_frame", "close_if_drained", "flushed", "shutdown_write"]
    closing.cancel()


async def test_server_echoes_the_peers_close_code_then_ends_tcp():
    closing, protocol, io = handshake(Side.SERVER)
    received = CloseReceived(4321, "the client's reason")
    closing.close_received(received)
    assert io.frames() == [server_close_frame(4321)]  # the code, not the reason, is echoed
    assert io.names() == ["write_frame", "close_if_drained", "flushed"]
    io.flush_futures[0].set_result(None)
    await asyncio.sleep(0)
    assert io.names()[-1] == "shutdown_write"
    assert closing._timer is not None  # waits for the client's FIN, bounded
    closing.cancel()


async def test_server_ends_tcp_at_once_when_nothing_waits_to_be_sent_or_read():
    closing, protocol, io = handshake(Side.SERVER, drained=True)
    closing.close_received(CloseReceived(1000, ""))
    assert io.frames() == [server_close_frame(1000)]
    assert io.names() == ["write_frame", "close_if_drained"]  # closed: no half-close, no flush to wait for
    assert closing._timer is None  # nothing to bound
    closing.close(1000, "")  # a later close() sends nothing more
    assert io.names() == ["write_frame", "close_if_drained"]


async def test_server_close_then_the_echo_ends_tcp_at_once_when_drained():
    closing, protocol, io = handshake(Side.SERVER, drained=True)
    closing.close(1000, "")
    assert closing._timer is not None  # waiting for the client's echo, bounded
    closing.close_received(CloseReceived(1000, ""))
    assert io.names() == ["write_frame", "close_if_drained"]
    closing.cancel()  # the connection's teardown does this once TCP is gone


async def test_server_echoes_an_empty_close_with_an_empty_close():
    closing, _, io = handshake(Side.SERVER)
    closing.close_received(CloseReceived(None, ""))
    assert io.frames() == [b"\x88\x00"]
    closing.cancel()


async def test_shutdown_waits_for_the_flush_even_if_it_fails():
    closing, _, io = handshake(Side.SERVER)
    closing.close_received(CloseReceived(1000, ""))
    io.flush_futures[0].set_exception(WebSocketClosedError("gone"))
    io.flush_futures[0].exception()
    await asyncio.sleep(0)
    assert io.names()[-1] == "shutdown_write"  # a no-op once TCP is gone, for the real IO
    closing.cancel()


async def test_close_twice_sends_one_frame():
    closing, _, io = handshake(Side.SERVER)
    closing.close(1000, "")
    closing.close(1001, "again")
    assert io.frames() == [server_close_frame(1000)]
    closing.cancel()


async def test_close_after_the_peers_close_completes_the_handshake():
    closing, protocol, io = handshake(Side.SERVER)
    # The peer's Close arrived but was not answered yet (a pull consumer had messages).
    protocol.feed(b"\x88\x82abcd" + xor_mask(b"abcd", b"\x03\xe8"))
    assert protocol.close_received is not None
    closing.close(1000, "bye")
    assert io.frames() == [server_close_frame(1000, "bye")]
    assert io.names() == ["write_frame", "close_if_drained", "flushed"]  # both sent: the server ends TCP
    closing.cancel()


async def test_an_invalid_code_raises_value_error_and_changes_nothing():
    closing, protocol, io = handshake(Side.SERVER)
    with pytest.raises(ValueError):
        closing.close(1005, "")
    with pytest.raises(ValueError):
        closing.close(1000, "x" * 124)
    assert io.calls == []
    assert protocol.close_sent is None and protocol.state is State.OPEN
    assert closing._timer is None


# -- the client ------------------------------------------------------------------------------------


async def test_client_close_sends_a_masked_close_and_waits_for_the_server():
    closing, protocol, io = handshake(Side.CLIENT)
    closing.close(1000, "done")
    (frame,) = io.frames()
    assert unmask_client_frame(frame) == (0x88, encode_close_payload(1000, "done"))
    assert closing._timer is not None
    closing.close_received(CloseReceived(1000, "done"))
    assert len(io.frames()) == 1
    assert "shutdown_write" not in io.names() and "flushed" not in io.names()  # the server ends TCP
    closing.cancel()


async def test_client_echoes_the_servers_close_masked_and_does_not_end_tcp():
    closing, _, io = handshake(Side.CLIENT)
    closing.close_received(CloseReceived(1001, "restart"))
    (frame,) = io.frames()
    assert unmask_client_frame(frame) == (0x88, encode_close_payload(1001))
    assert io.names() == ["write_frame"]
    assert closing._timer is not None
    closing.cancel()


async def test_client_aborts_when_the_server_never_ends_tcp():
    closing, _, io = handshake(Side.CLIENT, timeout=0.01)
    closing.close_received(CloseReceived(1000, ""))
    await asyncio.wait_for(io.aborted, WAIT)
    assert io.names() == ["write_frame", "abort"]


# -- violations ----------------------------------------------------------------------------------


async def test_a_violation_sends_its_code_and_reason_and_ends_tcp_at_once():
    closing, protocol, io = handshake(Side.SERVER, drained=True)
    closing.violation(ProtocolViolation(1002, "reserved opcode 0x3"))
    assert io.frames() == [server_close_frame(1002, "reserved opcode 0x3")]
    assert io.names() == ["write_frame", "flushed"]  # never at once: the peer may still be sending
    io.flush_futures[0].set_result(None)
    await asyncio.sleep(0)
    assert io.names()[-1] == "shutdown_write"
    assert closing._timer is not None
    closing.cancel()


async def test_a_violation_reason_is_cut_to_what_fits_in_a_close_frame():
    closing, _, io = handshake(Side.SERVER)
    closing.violation(ProtocolViolation(1007, "r" * 200))
    assert io.frames() == [server_close_frame(1007, "r" * 123)]
    closing.cancel()


async def test_a_violation_with_a_long_non_ascii_reason_still_sends_a_close():
    # The reason is cut to 123 *bytes* of UTF-8 (at a character boundary), not 123 characters.
    closing, _, io = handshake(Side.SERVER)
    closing.violation(ProtocolViolation(1007, "é" * 100))
    assert io.frames() == [server_close_frame(1007, "é" * 61)]
    closing.cancel()


async def test_a_violation_after_our_close_sends_nothing_more_but_ends_tcp():
    closing, _, io = handshake(Side.SERVER)
    closing.close(1000, "")
    closing.violation(ProtocolViolation(1002, "late"))
    assert io.frames() == [server_close_frame(1000)]
    assert io.names() == ["write_frame", "flushed"]
    closing.cancel()


async def test_a_client_ends_tcp_itself_after_a_violation():
    closing, _, io = handshake(Side.CLIENT)
    closing.violation(ProtocolViolation(1002, "masked frame from the server"))
    (frame,) = io.frames()
    assert unmask_client_frame(frame) == (0x88, encode_close_payload(1002, "masked frame from the server"))
    assert io.names() == ["write_frame", "flushed"]
    closing.cancel()


# -- the timer -------------------------------------------------------------------------------------


async def test_the_timer_aborts_after_the_timeout():
    closing, _, io = handshake(Side.SERVER, timeout=0.01)
    closing.close(1000, "")
    await asyncio.wait_for(io.aborted, WAIT)
    assert io.names() == ["write_frame", "abort"]


async def test_the_timer_is_started_once():
    closing, _, io = handshake(Side.SERVER, timeout=0.01)
    closing.close(1000, "")
    timer = closing._timer
    closing.close_received(CloseReceived(1000, ""))
    assert closing._timer is timer
    await asyncio.wait_for(io.aborted, WAIT)
    await later(0.05)
    assert io.names().count("abort") == 1


async def test_cancel_stops_the_timer():
    closing, _, io = handshake(Side.SERVER, timeout=0.01)
    closing.close(1000, "")
    closing.cancel()
    assert closing._timer is None
    await later(0.05)  # past the timeout
    assert "abort" not in io.names()
    closing.cancel()  # twice is fine


async def test_timeout_is_the_one_given():
    closing, _, _ = handshake(Side.SERVER, timeout=2.5)
    assert closing.timeout == 2.5
