"""Coverage-guided fuzz target (atheris) for the server's Sans-I/O protocol.

Each input is split into an opening handshake request and a frame stream;
the request goes through ``handshake.validate_request`` and the extension
negotiation, the frames through a server ``Protocol`` (with permessage-deflate
when the first byte is odd), fed in pieces of fuzzer-chosen sizes. The only
exceptions allowed are the protocol's own: ``HandshakeError`` for a bad
request; ``feed`` must never raise, and a ``ProtocolViolation`` must carry
1002, 1007 or 1009. A second protocol gets the same pieces the way the
socket transport hands them over (views of one receive buffer that is
overwritten after every call, large frames received into
``frame_buffer_space``) and must produce the same events: nothing may keep
a reference into the receive buffer.

    python fuzz/fuzz_protocol.py -max_total_time=60 fuzz/corpus

Findings become regression tests in tests/test_fuzz_regressions.py.
"""

from __future__ import annotations

import sys
from typing import Any

import atheris

with atheris.instrument_imports():
    from tornado.httputil import HTTPHeaders

    from tornado_websocket import deflate, handshake
    from tornado_websocket.errors import HandshakeError
    from tornado_websocket.protocol import Message, Ping, Pong, Protocol, ProtocolViolation, Side

ALLOWED_CODES = {1002, 1007, 1009}


def check_handshake(raw: bytes) -> None:
    text = raw.decode("latin-1")
    try:
        headers = HTTPHeaders.parse(text)
    except Exception:
        return  # Tornado's own parser refused it before we would see it
    try:
        handshake.validate_request("GET", "HTTP/1.1", headers)
    except HandshakeError as exc:
        assert exc.status in (400, 405, 426), exc.status
    try:
        offers = handshake.parse_extension_list(headers)
    except ValueError:
        return
    accepted = deflate.negotiate_server(offers, {})
    if accepted is not None:
        # The answer must parse back and be accepted by our own client side.
        answer = HTTPHeaders({"Sec-WebSocket-Extensions": accepted[0]})
        handshake.parse_extension_list(answer)


def new_protocol(with_deflate: bool) -> Protocol:
    extension = None
    if with_deflate:
        offers = [("permessage-deflate", [("client_max_window_bits", None)])]
        accepted = deflate.negotiate_server(offers, {})
        assert accepted is not None
        extension = accepted[1]
    return Protocol(Side.SERVER, max_message_size=1 << 16, deflate=extension)


def describe(event: Any) -> tuple[Any, ...]:
    if isinstance(event, Message):
        return ("message", event.data, event.utf8)
    if isinstance(event, (Ping, Pong)):
        return (type(event).__name__, event.payload)
    return (type(event).__name__, event.code, event.reason)


RECEIVE_BUFFER = bytearray(4096)


def feed_like_transport(protocol: Protocol, pieces: list[bytes]) -> list[Any]:
    """Feed ``pieces`` as SocketTransport does: views of a reused buffer, or into the frame buffer."""
    events: list[Any] = []
    for piece in pieces:
        while piece:
            space = protocol.frame_buffer_space()
            if space is not None:
                n = min(len(space), len(piece))
                space[:n] = piece[:n]
                space.release()
                events.extend(protocol.frame_buffer_filled(n))
            else:
                n = min(len(RECEIVE_BUFFER), len(piece))
                RECEIVE_BUFFER[:n] = piece[:n]
                with memoryview(RECEIVE_BUFFER) as view:
                    events.extend(protocol.feed(view[:n]))
                RECEIVE_BUFFER[:n] = b"\xaa" * n  # the next read overwrites it
            piece = piece[n:]
    return events


def check_frames(data: bytes, with_deflate: bool, cuts: list[int]) -> None:
    protocol = new_protocol(with_deflate)
    pieces = []
    pos = 0
    for cut in cuts + [len(data)]:
        pieces.append(data[pos : pos + cut] if cut else data[pos:])
        pos += cut
        if pos >= len(data):
            break
    events = []
    for piece in pieces:
        events.extend(protocol.feed(piece))
    same = feed_like_transport(new_protocol(with_deflate), pieces)
    assert [describe(e) for e in same] == [describe(e) for e in events]
    violations = [e for e in events if isinstance(e, ProtocolViolation)]
    assert len(violations) <= 1
    if violations:
        assert violations[0].code in ALLOWED_CODES, violations[0]
        assert events[-1] is violations[0]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    flags = fdp.ConsumeInt(1)
    request = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512))
    cuts = [fdp.ConsumeIntInRange(1, 64) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    frames = fdp.ConsumeBytes(fdp.remaining_bytes())
    check_handshake(request)
    check_frames(frames, bool(flags & 1), cuts)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
