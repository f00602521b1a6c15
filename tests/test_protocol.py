"""Tests for the Sans-I/O state machine tornado_websocket.protocol.Protocol.

Frames are built by hand here (``frame``/``cf``/``sf``) with an independent
masking routine, so that the parser is checked against exact RFC 6455 bytes
rather than against the package's own encoder.
"""

from __future__ import annotations

import functools
import os
import random
import struct
import zlib
from typing import Optional

import pytest
from conftest import build_frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httputil import HTTPHeaders

from tornado_websocket import frames
from tornado_websocket.deflate import accept_client_response, client_offer, negotiate_server
from tornado_websocket.errors import WebSocketClosedError
from tornado_websocket.handshake import parse_extension_list
from tornado_websocket.protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    CloseReceived,
    Message,
    Ping,
    Pong,
    Protocol,
    ProtocolViolation,
    Side,
    State,
)


def side_of(is_client: bool) -> Side:
    return Side.CLIENT if is_client else Side.SERVER


KEY = b"\x37\xfa\x21\x3d"  # RFC 6455 section 5.7 masking key
KEY2 = b"\x00\xff\x80\x01"
TAIL = b"\x00\x00\xff\xff"

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
RESERVED_OPCODES = [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF]


# -- helpers ---------------------------------------------------------------


def xor(key: bytes, data: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    key: Optional[bytes] = None,
    length: Optional[int] = None,
    form: Optional[int] = None,
) -> bytes:
    """Build a frame byte by byte.

    ``key`` None means unmasked. ``length`` overrides the length field
    (the payload is still appended as given). ``form`` forces the length
    encoding: 7, 16 or 64 bits.
    """
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0) | (0x10 if rsv3 else 0) | opcode
    n = len(payload) if length is None else length
    mbit = 0x80 if key is not None else 0
    if form is None:
        form = 7 if n < 126 else 16 if n < 65536 else 64
    if form == 7:
        header = bytes([b0, mbit | n])
    elif form == 16:
        header = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        header = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if key is None:
        return header + payload
    return header + key + xor(key, payload)


def cf(opcode: int, payload: bytes = b"", key: bytes = KEY, **kw) -> bytes:
    """A masked frame, as a client sends it."""
    return frame(opcode, payload, key=key, **kw)


def sf(opcode: int, payload: bytes = b"", **kw) -> bytes:
    """An unmasked frame, as a server sends it."""
    return frame(opcode, payload, key=None, **kw)


def server_payload(data: bytes) -> bytes:
    """The payload of one unmasked frame."""
    n = data[1] & 0x7F
    assert not data[1] & 0x80
    if n == 126:
        (n,) = struct.unpack("!H", data[2:4])
        body = data[4:]
    elif n == 127:
        (n,) = struct.unpack("!Q", data[2:10])
        body = data[10:]
    else:
        body = data[2:]
    assert len(body) == n
    return body


def norm(events):
    out = []
    for e in events:
        t = type(e)
        if t is Message:
            if isinstance(e.data, str):
                out.append(("text", e.data))
            else:
                assert type(e.data) is bytes
                out.append(("binary", e.data))
        elif t is Ping:
            assert type(e.payload) is bytes
            out.append(("ping", e.payload))
        elif t is Pong:
            assert type(e.payload) is bytes
            out.append(("pong", e.payload))
        elif t is CloseReceived:
            out.append(("close", e.code, e.reason))
        elif t is ProtocolViolation:
            out.append(("violation", e.code))
        else:  # pragma: no cover
            raise AssertionError(f"unexpected event {e!r}")
    return out


def server(max_message_size=DEFAULT_MAX_MESSAGE_SIZE, deflate=None) -> Protocol:
    return Protocol(Side.SERVER, max_message_size=max_message_size, deflate=deflate)


def client(max_message_size=DEFAULT_MAX_MESSAGE_SIZE, deflate=None) -> Protocol:
    return Protocol(Side.CLIENT, max_message_size=max_message_size, deflate=deflate)


def feed_all(p: Protocol, data: bytes):
    return norm(p.feed(data))


def feed_pieces(p: Protocol, pieces):
    events = []
    for piece in pieces:
        events.extend(p.feed(piece))
    return norm(events)


def violation(code):
    return [("violation", code)]


def make_frame_for(is_client_receiver: bool):
    """Frame builder for what a peer sends to a receiver of the given side."""
    return sf if is_client_receiver else cf


def headers_with(value: str) -> HTTPHeaders:
    h = HTTPHeaders()
    h.add("Sec-WebSocket-Extensions", value)
    return h


def deflate_pair(client_options=None, server_options=None):
    """Negotiate permessage-deflate like a real handshake; return (client_ext, server_ext, response)."""
    client_options = client_options or {}
    server_options = server_options or {}
    offer = client_offer(client_options)
    result = negotiate_server(parse_extension_list(headers_with(offer)), server_options)
    assert result is not None
    response, server_ext = result
    client_ext = accept_client_response(parse_extension_list(headers_with(response)), client_options)
    assert client_ext is not None
    return client_ext, server_ext, response


def deflate_protocols(max_message_size=DEFAULT_MAX_MESSAGE_SIZE, client_options=None, server_options=None):
    c_ext, s_ext, _ = deflate_pair(client_options, server_options)
    return client(max_message_size, c_ext), server(max_message_size, s_ext)


def raw_deflate(data: bytes, wbits: int = 9, level: int = 6) -> bytes:
    """Compress one message the RFC 7692 way: raw deflate, sync flush, tail removed."""
    c = zlib.compressobj(level, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


# -- RFC 6455 section 5.7 examples -----------------------------------------


def test_rfc_single_frame_unmasked_text_to_client():
    assert feed_all(client(), bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])) == [("text", "Hello")]


def test_rfc_single_frame_masked_text_to_server():
    data = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    assert data == cf(TEXT, b"Hello")
    assert feed_all(server(), data) == [("text", "Hello")]


def test_rfc_fragmented_unmasked_text_to_client():
    data = bytes([0x01, 0x03, 0x48, 0x65, 0x6C]) + bytes([0x80, 0x02, 0x6C, 0x6F])
    assert feed_all(client(), data) == [("text", "Hello")]


def test_rfc_unmasked_ping_and_masked_pong():
    assert feed_all(client(), bytes([0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])) == [("ping", b"Hello")]
    pong = bytes([0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    assert feed_all(server(), pong) == [("pong", b"Hello")]


def test_rfc_256_and_64k_binary_to_client():
    payload256 = bytes(range(256))
    assert feed_all(client(), b"\x82\x7e\x01\x00" + payload256) == [("binary", payload256)]
    payload64k = bytes(i & 0xFF for i in range(65536))
    assert feed_all(client(), b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00" + payload64k) == [("binary", payload64k)]


def test_non_minimal_length_encodings_accepted():
    # The receiver does not require the minimal length form.
    assert feed_all(server(), cf(TEXT, b"hi", form=16)) == [("text", "hi")]
    assert feed_all(server(), cf(BINARY, b"hi", form=64)) == [("binary", b"hi")]
    assert feed_all(client(), sf(PING, b"p", form=16)) == [("ping", b"p")]


def test_all_masking_keys_work():
    for key in (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", KEY2, b"\x01\x02\x03\x04"):
        payload = "héllo wörld, a longer text to span several key periods".encode()
        assert feed_all(server(), cf(TEXT, payload, key=key)) == [("text", payload.decode())]


# -- masking rules ----------------------------------------------------------


@pytest.mark.parametrize("opcode", [TEXT, BINARY, PING, PONG, CLOSE])
def test_unmasked_client_frame_is_1002(opcode):
    assert feed_all(server(), sf(opcode, b"ab" if opcode != CLOSE else b"\x03\xe8")) == violation(1002)


def test_unmasked_client_frame_detected_from_two_header_bytes():
    assert feed_all(server(), b"\x81\x05") == violation(1002)


def test_unmasked_continuation_inside_masked_message_is_1002():
    p = server()
    assert feed_all(p, cf(TEXT, b"ab", fin=False)) == []
    assert feed_all(p, sf(CONT, b"cd")) == violation(1002)


@pytest.mark.parametrize("opcode", [TEXT, BINARY, PING, PONG, CLOSE])
def test_masked_server_frame_is_1002(opcode):
    assert feed_all(client(), cf(opcode, b"ab" if opcode != CLOSE else b"\x03\xe8")) == violation(1002)


def test_masked_server_frame_detected_from_two_header_bytes():
    assert feed_all(client(), b"\x81\x85") == violation(1002)


# -- reserved bits and opcodes ---------------------------------------------


@pytest.mark.parametrize("is_client", [False, True])
@pytest.mark.parametrize("bits", [{"rsv1": True}, {"rsv2": True}, {"rsv3": True}, {"rsv1": True, "rsv3": True}])
@pytest.mark.parametrize("opcode", [TEXT, BINARY, PING])
def test_rsv_bits_without_extension_are_1002(is_client, bits, opcode):
    p = client() if is_client else server()
    assert feed_all(p, make_frame_for(is_client)(opcode, b"abc", **bits)) == violation(1002)


@pytest.mark.parametrize("bits", [{"rsv1": True}, {"rsv2": True}, {"rsv3": True}])
def test_rsv_bits_on_continuation_without_extension_are_1002(bits):
    p = server()
    assert feed_all(p, cf(TEXT, b"ab", fin=False) + cf(CONT, b"cd", **bits)) == violation(1002)


@pytest.mark.parametrize("is_client", [False, True])
@pytest.mark.parametrize("opcode", RESERVED_OPCODES)
def test_reserved_opcodes_are_1002(is_client, opcode):
    p = client() if is_client else server()
    assert feed_all(p, make_frame_for(is_client)(opcode, b"xyz")) == violation(1002)


@pytest.mark.parametrize("opcode", RESERVED_OPCODES)
def test_reserved_opcode_inside_fragmented_message_is_1002(opcode):
    p = server()
    data = cf(TEXT, b"ab", fin=False) + cf(opcode, b"", fin=opcode >= 8)
    assert feed_all(p, data) == violation(1002)


@pytest.mark.parametrize("opcode", RESERVED_OPCODES)
def test_reserved_opcode_detected_from_header(opcode):
    # Only the two header bytes of a frame that announces a large payload.
    assert feed_all(server(), bytes([0x80 | opcode, 0x80 | 100])) == violation(1002)


def test_valid_frame_before_reserved_opcode_is_delivered():
    data = cf(TEXT, b"first") + cf(0x3, b"") + cf(TEXT, b"never")
    assert feed_all(server(), data) == [("text", "first"), ("violation", 1002)]


# -- control frames ---------------------------------------------------------


@pytest.mark.parametrize("is_client", [False, True])
@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_control_frame_125_bytes_ok_126_is_1002(is_client, opcode):
    mk = make_frame_for(is_client)
    payload125 = b"\x03\xe8" + b"r" * 123 if opcode == CLOSE else bytes(range(125))
    expected = {
        PING: ("ping", payload125),
        PONG: ("pong", payload125),
        CLOSE: ("close", 1000, "r" * 123),
    }[opcode]
    p = client() if is_client else server()
    assert feed_all(p, mk(opcode, payload125)) == [expected]
    p = client() if is_client else server()
    assert feed_all(p, mk(opcode, payload125 + b"x")) == violation(1002)


def test_control_frame_too_long_detected_from_header():
    # 16-bit length 126 on a ping: no mask key nor payload needed to reject it.
    assert feed_all(server(), b"\x89\xfe\x00\x7e") == violation(1002)
    assert feed_all(client(), b"\x8a\x7e\x00\x7e") == violation(1002)
    assert feed_all(client(), b"\x88\x7f" + struct.pack("!Q", 1 << 40)) == violation(1002)


def test_control_frame_short_length_in_long_form_is_ok():
    assert feed_all(server(), cf(PING, b"abc", form=64)) == [("ping", b"abc")]


@pytest.mark.parametrize("is_client", [False, True])
@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_fragmented_control_frame_is_1002(is_client, opcode):
    p = client() if is_client else server()
    assert feed_all(p, make_frame_for(is_client)(opcode, b"", fin=False)) == violation(1002)


def test_empty_ping_and_pong():
    assert feed_all(server(), cf(PING) + cf(PONG)) == [("ping", b""), ("pong", b"")]


def test_pings_between_fragments_in_order():
    data = (
        cf(TEXT, b"Hel", fin=False)
        + cf(PING, b"p1")
        + cf(PONG, b"q")
        + cf(CONT, b"l", fin=False, key=KEY2)
        + cf(PING, b"p2")
        + cf(CONT, b"o")
        + cf(PING, b"p3")
    )
    expected = [("ping", b"p1"), ("pong", b"q"), ("ping", b"p2"), ("text", "Hello"), ("ping", b"p3")]
    assert feed_all(server(), data) == expected
    # The ping is delivered as soon as it arrives, before the message is complete.
    p = server()
    assert feed_all(p, cf(BINARY, b"ab", fin=False) + cf(PING, b"now")) == [("ping", b"now")]
    assert feed_all(p, cf(CONT, b"cd")) == [("binary", b"abcd")]


def test_control_frames_do_not_count_toward_message_size():
    p = server(max_message_size=10)
    data = cf(TEXT, b"12345", fin=False) + cf(PING, b"x" * 100) + cf(CONT, b"67890")
    assert feed_all(p, data) == [("ping", b"x" * 100), ("text", "1234567890")]


# -- fragmentation rules -----------------------------------------------------


@pytest.mark.parametrize("is_client", [False, True])
def test_continuation_without_message_is_1002(is_client):
    mk = make_frame_for(is_client)
    for fin in (True, False):
        p = client() if is_client else server()
        assert feed_all(p, mk(CONT, b"abc", fin=fin)) == violation(1002)


def test_continuation_after_complete_message_is_1002():
    p = server()
    assert feed_all(p, cf(TEXT, b"a", fin=False) + cf(CONT, b"b")) == [("text", "ab")]
    assert feed_all(p, cf(CONT, b"c")) == violation(1002)


def test_continuation_header_alone_is_1002():
    assert feed_all(server(), b"\x80\xfe\x10\x00") == violation(1002)


@pytest.mark.parametrize("is_client", [False, True])
@pytest.mark.parametrize("first, second", [(TEXT, TEXT), (TEXT, BINARY), (BINARY, TEXT), (BINARY, BINARY)])
@pytest.mark.parametrize("second_fin", [True, False])
def test_new_data_frame_inside_fragmented_message_is_1002(is_client, first, second, second_fin):
    mk = make_frame_for(is_client)
    p = client() if is_client else server()
    data = mk(first, b"ab", fin=False) + mk(PING, b"x") + mk(second, b"cd", fin=second_fin)
    assert feed_all(p, data) == [("ping", b"x"), ("violation", 1002)]


def test_fragmented_text_assembled():
    parts = ["κό".encode(), "σμε".encode(), b"", b" and more"]
    whole = b"".join(parts)
    # Split a multi-byte character between fragments too.
    parts = [whole[:1], whole[1:3], whole[3:3], whole[3:7], whole[7:]]
    data = cf(TEXT, parts[0], fin=False)
    for i, part in enumerate(parts[1:], 1):
        data += cf(CONT, part, fin=i == len(parts) - 1, key=bytes([i, i * 3, 255 - i, 7]))
    assert feed_all(server(), data) == [("text", whole.decode())]


def test_fragmented_binary_assembled_with_long_fragments():
    chunks = [os.urandom(n) for n in (0, 1, 125, 126, 300, 65535, 65536, 3)]
    data = cf(BINARY, chunks[0], fin=False)
    for i, c in enumerate(chunks[1:], 1):
        data += cf(CONT, c, fin=i == len(chunks) - 1, key=os.urandom(4))
    assert feed_all(server(), data) == [("binary", b"".join(chunks))]


def test_two_fragmented_messages_in_a_row():
    data = (
        sf(TEXT, b"a", fin=False)
        + sf(CONT, b"b")
        + sf(BINARY, b"c", fin=False)
        + sf(CONT, b"d", fin=False)
        + sf(CONT, b"e")
        + sf(TEXT, b"single")
    )
    assert feed_all(client(), data) == [("text", "ab"), ("binary", b"cde"), ("text", "single")]


@pytest.mark.parametrize("is_client", [False, True])
def test_empty_messages(is_client):
    mk = make_frame_for(is_client)
    p = client() if is_client else server()
    data = (
        mk(TEXT)
        + mk(BINARY)
        + mk(TEXT, fin=False)
        + mk(CONT)
        + mk(BINARY, fin=False)
        + mk(CONT, fin=False)
        + mk(CONT)
        + mk(TEXT, b"", fin=False)
        + mk(CONT, b"x", fin=False)
        + mk(CONT, b"")
    )
    events = feed_all(p, data)
    assert events == [("text", ""), ("binary", b""), ("text", ""), ("binary", b""), ("text", "x")]


def test_empty_message_header_split():
    p = server()
    assert feed_all(p, b"\x81") == []
    assert feed_all(p, b"\x80") == []
    assert feed_all(p, KEY[:3]) == []
    assert feed_all(p, KEY[3:]) == [("text", "")]


# -- 64-bit length ------------------------------------------------------------


@pytest.mark.parametrize("is_client", [False, True])
@pytest.mark.parametrize("length", [1 << 63, (1 << 64) - 1, (1 << 63) + 5])
@pytest.mark.parametrize("max_size", [None, DEFAULT_MAX_MESSAGE_SIZE])
def test_64bit_length_with_top_bit_is_1002(is_client, length, max_size):
    p = client(max_size) if is_client else server(max_size)
    mbit = 0 if is_client else 0x80
    header = bytes([0x82, mbit | 127]) + struct.pack("!Q", length)
    assert feed_all(p, header) == violation(1002)


def test_64bit_length_without_top_bit_and_no_limit_waits():
    p = server(None)
    assert feed_all(p, bytes([0x82, 0xFF]) + struct.pack("!Q", (1 << 63) - 1) + KEY) == []
    assert feed_all(p, b"abc") == []


# -- UTF-8 ----------------------------------------------------------------------

INVALID_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xc0\xaf",  # overlong "/"
    b"\xe0\x80\xaf",  # overlong
    b"\xed\xa0\x80",  # surrogate U+D800
    b"\xed\xbf\xbf",  # surrogate U+DFFF
    b"\xf4\x90\x80\x80",  # U+110000
    b"\xf5\x80\x80\x80",
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",  # Autobahn 6.x
    b"hello\xc3",  # truncated at the end
    b"\xe2\x82",
]


@pytest.mark.parametrize("is_client", [False, True])
@pytest.mark.parametrize("bad", INVALID_UTF8)
def test_invalid_utf8_single_frame_is_1007(is_client, bad):
    p = client() if is_client else server()
    assert feed_all(p, make_frame_for(is_client)(TEXT, bad)) == violation(1007)


@pytest.mark.parametrize("bad", INVALID_UTF8)
def test_invalid_utf8_fragmented_is_1007(bad):
    p = server()
    data = cf(TEXT, b"ok ", fin=False) + cf(CONT, bad, fin=False) + cf(CONT, b" end")
    assert feed_all(p, data) == violation(1007)


@pytest.mark.parametrize("bad", INVALID_UTF8)
def test_invalid_utf8_is_fine_in_binary(bad):
    assert feed_all(server(), cf(BINARY, bad)) == [("binary", bad)]


def test_valid_utf8_edge_cases():
    for s in ["\x00", "\u007f", "\u0080", "\u07ff", "\u0800", "\uffff", "\U00010000", "\U0010ffff", "\ufeff"]:
        assert feed_all(server(), cf(TEXT, s.encode())) == [("text", s)]


@pytest.mark.parametrize("bad", [b"\xff", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xed\xa0\x80", b"\xf5"])
def test_invalid_utf8_in_first_fragment_fails_before_final_fragment(bad):
    p = server()
    # Only the first (non-final) fragment has arrived.
    assert feed_all(p, cf(TEXT, b"valid " + bad + b" more", fin=False)) == violation(1007)
    assert feed_all(p, cf(CONT, b"rest")) == []


def test_invalid_utf8_in_middle_fragment_fails_before_final_fragment():
    p = server()
    assert feed_all(p, cf(TEXT, "κόσμε".encode(), fin=False)) == []
    assert feed_all(p, cf(PING, b"x") + cf(CONT, b"\xf4\x90\x80\x80", fin=False)) == [
        ("ping", b"x"),
        ("violation", 1007),
    ]


def test_invalid_utf8_prefix_fails_fast_across_fragments():
    # Autobahn 6.4.3-style: the bad code point is split across fragments; it must fail on the
    # fragment that makes the sequence invalid, not on the final one.
    p = server()
    assert feed_all(p, cf(TEXT, b"\xce\xba\xf4", fin=False)) == []
    assert feed_all(p, cf(CONT, b"\x90", fin=False)) == violation(1007)


def test_invalid_utf8_surrogate_prefix_fails_fast():
    p = server()
    # No valid UTF-8 sequence starts with ED A0..BF, so this fragment is already invalid.
    assert feed_all(p, cf(TEXT, b"ab\xed\xa0", fin=False)) == violation(1007)


def test_single_big_frame_fails_as_soon_as_bad_bytes_arrive():
    payload = b"a" * 100 + b"\xff" + b"b" * 899
    data = cf(TEXT, payload)
    header_len = 4 + 4
    p = server()
    assert feed_all(p, data[: header_len + 100]) == []  # header + valid prefix: nothing yet
    assert feed_all(p, data[header_len + 100 : header_len + 101]) == violation(1007)
    assert feed_all(p, data[header_len + 101 :]) == []


def test_single_big_frame_unmasked_to_client_fails_early():
    payload = "é".encode() * 200 + b"\xc0\xaf" + b"x" * 600
    data = sf(TEXT, payload)
    p = client()
    assert feed_all(p, data[: 4 + 400]) == []
    assert feed_all(p, data[4 + 400 : 4 + 402]) == violation(1007)


def test_multibyte_character_split_across_feeds_and_fragments():
    text = "€𝄞ü"
    raw = text.encode()
    data = cf(TEXT, raw[:2], fin=False) + cf(CONT, raw[2:5], fin=False) + cf(CONT, raw[5:])
    p = server()
    assert feed_pieces(p, [data[i : i + 1] for i in range(len(data))]) == [("text", text)]


def test_truncated_utf8_at_end_of_fragmented_message_is_1007():
    p = server()
    assert feed_all(p, cf(TEXT, b"ab", fin=False)) == []
    assert feed_all(p, cf(CONT, b"\xe2\x82", fin=False)) == []  # could still be completed
    assert feed_all(p, cf(CONT, b"")) == violation(1007)


# -- max_message_size -----------------------------------------------------------


def test_max_message_size_from_7bit_header_alone():
    p = server(max_message_size=10)
    assert feed_all(p, b"\x81\x8b") == violation(1009)  # 11 bytes announced, no key, no payload


def test_max_message_size_from_16bit_header_alone():
    p = server(max_message_size=1000)
    assert feed_all(p, b"\x82\xfe" + struct.pack("!H", 1001)) == violation(1009)
    p = server(max_message_size=1000)
    assert feed_all(p, b"\x82\xfe" + struct.pack("!H", 1000)) == []


def test_max_message_size_from_64bit_header_alone():
    p = server()
    header = b"\x82\xff" + struct.pack("!Q", DEFAULT_MAX_MESSAGE_SIZE + 1)
    assert feed_all(p, header) == violation(1009)
    p = client()
    header = b"\x81\x7f" + struct.pack("!Q", 1 << 40)
    assert feed_all(p, header) == violation(1009)


def test_max_message_size_exact_limit_accepted():
    p = server(max_message_size=1000)
    payload = b"x" * 1000
    assert feed_all(p, cf(TEXT, payload)) == [("text", payload.decode())]


def test_max_message_size_across_fragments():
    p = server(max_message_size=1000)
    assert feed_all(p, cf(BINARY, b"a" * 600, fin=False)) == []
    assert feed_all(p, cf(CONT, b"b" * 399, fin=False)) == []
    # The header of the next continuation alone makes the total 1001.
    assert feed_all(p, b"\x80\x82") == violation(1009)


def test_max_message_size_across_fragments_exact():
    p = server(max_message_size=1000)
    data = cf(BINARY, b"a" * 600, fin=False) + cf(CONT, b"b" * 399, fin=False) + cf(CONT, b"c")
    assert feed_all(p, data) == [("binary", b"a" * 600 + b"b" * 399 + b"c")]


def test_max_message_size_resets_between_messages():
    p = server(max_message_size=100)
    data = b"".join(cf(TEXT, b"x" * 100) for _ in range(5))
    assert feed_all(p, data) == [("text", "x" * 100)] * 5
    data = cf(TEXT, b"x" * 60, fin=False) + cf(CONT, b"y" * 40) + cf(TEXT, b"z" * 60, fin=False) + cf(CONT, b"w" * 40)
    assert feed_all(p, data) == [("text", "x" * 60 + "y" * 40), ("text", "z" * 60 + "w" * 40)]


def test_no_max_message_size():
    p = server(max_message_size=None)
    payload = os.urandom(200_000)
    assert feed_all(p, cf(BINARY, payload)) == [("binary", payload)]


# -- close frames -------------------------------------------------------------


@pytest.mark.parametrize("is_client", [False, True])
@pytest.mark.parametrize(
    "payload, expected",
    [
        (b"", ("close", None, "")),
        (b"\x03\xe8", ("close", 1000, "")),
        (b"\x03\xe8bye", ("close", 1000, "bye")),
        (b"\x03\xe9" + "adiós".encode(), ("close", 1001, "adiós")),
        (b"\x0b\xb8", ("close", 3000, "")),
        (b"\x13\x87x", ("close", 4999, "x")),
        (b"\x03\xf6", ("close", 1014, "")),
    ],
)
def test_close_frame_parsing(is_client, payload, expected):
    p = client() if is_client else server()
    assert feed_all(p, make_frame_for(is_client)(CLOSE, payload)) == [expected]
    assert p.close_received is not None and (p.close_received.code, p.close_received.reason) == expected[1:]


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"\x03", 1002),
        (b"\x03\xe7", 1002),  # 999
        (b"\x03\xec", 1002),  # 1004
        (b"\x03\xed", 1002),  # 1005
        (b"\x03\xee", 1002),  # 1006
        (b"\x03\xf7", 1002),  # 1015
        (b"\x07\xd0", 1002),  # 2000
        (b"\x0b\xb7", 1002),  # 2999
        (b"\x13\x88", 1002),  # 5000
        (b"\xff\xff", 1002),
        (b"\x00\x00", 1002),
        (b"\x03\xe8\xff", 1007),
        (b"\x03\xe8ok\xed\xa0\x80", 1007),
    ],
)
def test_invalid_close_frames(payload, code):
    p = server()
    assert feed_all(p, cf(CLOSE, payload)) == violation(code)
    assert p.close_received is None


def test_data_after_close_is_ignored():
    p = server()
    data = cf(TEXT, b"before") + cf(CLOSE, b"\x03\xe8") + cf(TEXT, b"after") + b"\xff\xff garbage"
    assert feed_all(p, data) == [("text", "before"), ("close", 1000, "")]
    assert feed_all(p, cf(TEXT, b"later")) == []
    assert feed_all(p, b"\x00\x00garbage") == []


def test_close_in_middle_of_fragmented_message():
    p = server()
    data = cf(TEXT, b"part", fin=False) + cf(CLOSE, b"\x03\xe9") + cf(CONT, b"rest")
    assert feed_all(p, data) == [("close", 1001, "")]


def test_close_split_across_feeds():
    p = client()
    data = sf(CLOSE, b"\x03\xe8done")
    assert feed_all(p, data[:3]) == []
    assert feed_all(p, data[3:] + sf(TEXT, b"x")) == [("close", 1000, "done")]


# -- behaviour after a violation ---------------------------------------------


def test_input_after_violation_is_ignored():
    p = server()
    assert feed_all(p, sf(TEXT, b"unmasked") + cf(TEXT, b"good")) == violation(1002)
    assert feed_all(p, cf(TEXT, b"good")) == []
    assert feed_all(p, cf(CLOSE, b"\x03\xe8")) == []


def test_events_before_violation_are_kept():
    p = server()
    data = cf(TEXT, b"one") + cf(PING, b"p") + cf(BINARY, b"two") + cf(TEXT, b"\xff") + cf(TEXT, b"three")
    assert feed_all(p, data) == [("text", "one"), ("ping", b"p"), ("binary", b"two"), ("violation", 1007)]
    assert feed_all(p, cf(TEXT, b"four")) == []


def test_feed_empty_bytes():
    p = server()
    assert p.feed(b"") == []
    assert feed_all(p, cf(TEXT, b"x")) == [("text", "x")]


def test_feed_accepts_bytearray_and_memoryview():
    p = server()
    data = cf(TEXT, b"hello") + cf(BINARY, b"world")
    assert feed_all(p, bytearray(data[:5])) == []
    assert feed_all(p, memoryview(data[5:])) == [("text", "hello"), ("binary", b"world")]


# -- encoding ------------------------------------------------------------------


def test_server_encodes_unmasked():
    p = server()
    assert p.encode_message("Hello", binary=False) == b"\x81\x05Hello"
    assert p.encode_message(b"\x00\x01", binary=True) == b"\x82\x02\x00\x01"
    assert p.encode_message("é", binary=True) == b"\x82\x02\xc3\xa9"
    assert p.encode_message(b"x" * 300, binary=True) == b"\x82\x7e\x01\x2c" + b"x" * 300
    assert p.encode_message("", binary=False) == b"\x81\x00"
    assert p.encode_ping(b"Hello") == b"\x89\x05Hello"
    assert p.encode_pong() == b"\x8a\x00"
    assert p.encode_close(1000, "bye") == b"\x88\x05\x03\xe8bye"
    assert p.close_sent is not None


def test_client_encodes_masked_rfc_bytes(monkeypatch):
    monkeypatch.setattr(frames.os, "urandom", lambda n: KEY[:n])
    p = client()
    masked_hello = bytes([0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    assert p.encode_message("Hello", binary=False) == b"\x81\x85" + masked_hello
    assert p.encode_pong(b"Hello") == b"\x8a\x85" + masked_hello
    assert p.encode_ping() == b"\x89\x80" + KEY
    assert p.encode_close(None) == b"\x88\x80" + KEY


def test_client_encoding_uses_fresh_keys():
    p = client()
    a = p.encode_message(b"same payload", binary=True)
    b = p.encode_message(b"same payload", binary=True)
    assert a[:2] == b[:2] == b"\x82\x8c"
    assert xor(a[2:6], a[6:]) == xor(b[2:6], b[6:]) == b"same payload"
    assert a[2:6] != b[2:6]  # 2**-32 chance of a false failure


def test_encode_close_default_and_none():
    assert server().encode_close() == b"\x88\x02\x03\xe8"
    assert server().encode_close(None) == b"\x88\x00"


def test_encode_after_close_raises():
    p = server()
    p.encode_close(1001)
    with pytest.raises(WebSocketClosedError):
        p.encode_message("x", binary=False)
    with pytest.raises(WebSocketClosedError):
        p.encode_ping()
    with pytest.raises(WebSocketClosedError):
        p.encode_pong()
    with pytest.raises(WebSocketClosedError):
        p.encode_close()


@pytest.mark.parametrize("code", [1005, 1006, 1015, 999, 2000, 5000])
def test_encode_close_invalid_code_keeps_state(code):
    p = server()
    with pytest.raises(ValueError):
        p.encode_close(code)
    assert p.close_sent is None
    assert p.encode_close(1000) == b"\x88\x02\x03\xe8"


def test_encode_close_reason_too_long():
    p = server()
    with pytest.raises(ValueError):
        p.encode_close(1000, "x" * 124)
    assert p.close_sent is None


def test_encode_control_too_long():
    p = server()
    assert len(p.encode_ping(b"x" * 125)) == 127
    with pytest.raises(ValueError):
        p.encode_ping(b"x" * 126)
    with pytest.raises(ValueError):
        p.encode_pong(b"x" * 126)


# -- every split point ------------------------------------------------------------


def _server_stream():
    text = "Grüße, 世界 🌍"
    raw = text.encode()
    return (
        (
            cf(TEXT, b"Hello")
            + cf(BINARY, bytes(range(256)) + b"\x00" * 44, key=KEY2)  # 16-bit length
            + cf(TEXT, raw[:3], fin=False)
            + cf(PING, b"ping-1")
            + cf(CONT, raw[3:9], fin=False, key=b"\x10\x20\x30\x40")
            + cf(PONG, b"")
            + cf(CONT, raw[9:])
            + cf(TEXT)
            + cf(BINARY)
            + cf(BINARY, b"", fin=False)
            + cf(CONT, b"\x00\x01", fin=False)
            + cf(CONT, b"")
            + cf(TEXT, b"long form", form=64)
            + cf(CLOSE, b"\x03\xe8bye")
            + cf(TEXT, b"ignored")
        ),
        [
            ("text", "Hello"),
            ("binary", bytes(range(256)) + b"\x00" * 44),
            ("ping", b"ping-1"),
            ("pong", b""),
            ("text", text),
            ("text", ""),
            ("binary", b""),
            ("binary", b"\x00\x01"),
            ("text", "long form"),
            ("close", 1000, "bye"),
        ],
    )


def _client_stream():
    return (
        sf(TEXT, b"Hel", fin=False)
        + sf(CONT, b"lo")
        + sf(PING, b"Hello")
        + sf(BINARY, b"\xff" * 130)
        + sf(TEXT, "ünïcödé".encode())
        + sf(CLOSE)
    ), [
        ("text", "Hello"),
        ("ping", b"Hello"),
        ("binary", b"\xff" * 130),
        ("text", "ünïcödé"),
        ("close", None, ""),
    ]


def _violation_streams():
    # (is_client, stream, expected): streams that end in a violation after valid frames.
    return [
        (False, cf(TEXT, b"ok") + cf(TEXT, b"abc\xffdef"), [("text", "ok"), ("violation", 1007)]),
        (False, cf(TEXT, b"ok", fin=False) + cf(PING, b"p") + cf(BINARY, b"x"), [("ping", b"p"), ("violation", 1002)]),
        (False, cf(PING, b"p") + sf(TEXT, b"unmasked"), [("ping", b"p"), ("violation", 1002)]),
        (True, sf(TEXT, "€".encode(), fin=False) + sf(CONT, b"\xed\xa0\x80x"), [("violation", 1007)]),
        (True, sf(BINARY, b"ok") + sf(CLOSE, b"\x03\xed"), [("binary", b"ok"), ("violation", 1002)]),
    ]


def _all_streams():
    s, e = _server_stream()
    c, ce = _client_stream()
    return [(False, s, e), (True, c, ce)] + _violation_streams()


@pytest.mark.parametrize("case", range(len(_all_streams())))
def test_every_two_piece_split_gives_same_events(case):
    is_client, stream, expected = _all_streams()[case]
    assert feed_all(Protocol(side_of(is_client)), stream) == expected
    for cut in range(len(stream) + 1):
        p = Protocol(side_of(is_client))
        got = feed_pieces(p, [stream[:cut], stream[cut:]])
        assert got == expected, f"cut at {cut}"


@pytest.mark.parametrize("case", range(len(_all_streams())))
def test_one_byte_at_a_time_gives_same_events(case):
    is_client, stream, expected = _all_streams()[case]
    p = Protocol(side_of(is_client))
    assert feed_pieces(p, [stream[i : i + 1] for i in range(len(stream))]) == expected


def test_splits_around_64bit_frame():
    payload = bytes(i % 251 for i in range(70000))
    stream = cf(BINARY, payload) + cf(TEXT, b"after")
    expected = [("binary", payload), ("text", "after")]
    cuts = list(range(0, 20)) + [100, 4097, 69999, 70000, 70001, 70012, 70013, 70014, len(stream) - 1]
    for cut in cuts:
        p = server()
        assert feed_pieces(p, [stream[:cut], stream[cut:]]) == expected, cut
    # Many small irregular pieces.
    p = server()
    pieces, i, step = [], 0, 1
    while i < len(stream):
        pieces.append(stream[i : i + step])
        i += step
        step = step * 3 % 1021 + 1
    assert feed_pieces(p, pieces) == expected


def test_every_split_of_deflate_stream():
    c, s = deflate_protocols()
    msgs = ["compress me " * 20, b"\x00" * 500, "short", "compress me " * 20 + "!", b"xyz" * 40]
    stream = b"".join(c.encode_message(m, binary=isinstance(m, bytes)) for m in msgs)
    expected = [("binary", m) if isinstance(m, bytes) else ("text", m) for m in msgs]
    # Each cut needs a fresh server extension with a fresh inflate context.
    for cut in range(len(stream) + 1):
        _, s_ext, _ = deflate_pair()
        p = server(deflate=s_ext)
        assert feed_pieces(p, [stream[:cut], stream[cut:]]) == expected, cut
    _, s_ext, _ = deflate_pair()
    p = server(deflate=s_ext)
    assert feed_pieces(p, [stream[i : i + 1] for i in range(len(stream))]) == expected


# -- hypothesis properties ---------------------------------------------------------

message_st = st.one_of(st.text(max_size=300), st.binary(max_size=300))
big_message_st = st.one_of(
    message_st,
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(20, 20000)),
)


def _expected(msgs):
    return [("binary", m) if isinstance(m, bytes) else ("text", m) for m in msgs]


@given(msgs=st.lists(big_message_st, max_size=8))
@settings(max_examples=60, deadline=None)
def test_roundtrip_client_to_server(msgs):
    c, s = client(), server()
    stream = b"".join(c.encode_message(m, binary=isinstance(m, bytes)) for m in msgs)
    assert feed_all(s, stream) == _expected(msgs)


@given(msgs=st.lists(big_message_st, max_size=8))
@settings(max_examples=60, deadline=None)
def test_roundtrip_server_to_client(msgs):
    c, s = client(), server()
    stream = b"".join(s.encode_message(m, binary=isinstance(m, bytes)) for m in msgs)
    assert feed_all(c, stream) == _expected(msgs)


@given(msgs=st.lists(big_message_st, max_size=8))
@settings(max_examples=60, deadline=None)
def test_roundtrip_with_deflate_both_directions(msgs):
    c, s = deflate_protocols()
    up = b"".join(c.encode_message(m, binary=isinstance(m, bytes)) for m in msgs)
    assert feed_all(s, up) == _expected(msgs)
    down = b"".join(s.encode_message(m, binary=isinstance(m, bytes)) for m in msgs)
    assert feed_all(c, down) == _expected(msgs)


@st.composite
def fragmented_stream(draw):
    """A random valid client->server stream: messages split in fragments, control frames in between."""
    msgs = draw(st.lists(message_st, max_size=6))
    out = b""
    expected = []
    for m in msgs:
        raw = m.encode() if isinstance(m, str) else m
        opcode = TEXT if isinstance(m, str) else BINARY
        cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=4)))
        pieces = [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]
        for i, piece in enumerate(pieces):
            key = draw(st.binary(min_size=4, max_size=4))
            form = draw(st.sampled_from([None, None, 16, 64]))
            if form == 16 and len(piece) > 65535:
                form = None
            out += cf(opcode if i == 0 else CONT, piece, fin=i == len(pieces) - 1, key=key, form=form)
            if i < len(pieces) - 1 and draw(st.booleans()):
                payload = draw(st.binary(max_size=20))
                ctl = draw(st.sampled_from([PING, PONG]))
                out += cf(ctl, payload, key=key)
                expected.append(("ping" if ctl == PING else "pong", payload))
        expected.append(("text" if opcode == TEXT else "binary", m))
    if draw(st.booleans()):
        out += cf(CLOSE, b"\x03\xe8end")
        expected.append(("close", 1000, "end"))
        out += draw(st.binary(max_size=30))  # ignored
    return out, expected


@given(data=fragmented_stream(), cuts=st.lists(st.integers(0, 5000), max_size=10))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_cut_points_same_events(data, cuts):
    stream, expected = data
    assert feed_all(server(), stream) == expected
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0] + points, points + [len(stream)])]
    assert feed_pieces(server(), pieces) == expected


@given(msgs=st.lists(message_st, max_size=5), cuts=st.lists(st.integers(0, 3000), max_size=8))
@settings(max_examples=80, deadline=None)
def test_random_cut_points_deflate(msgs, cuts):
    c, s = deflate_protocols()
    stream = b"".join(c.encode_message(m, binary=isinstance(m, bytes)) for m in msgs)
    points = sorted({min(x, len(stream)) for x in cuts})
    pieces = [stream[a:b] for a, b in zip([0] + points, points + [len(stream)])]
    assert feed_pieces(s, pieces) == _expected(msgs)


def _check_garbage_events(p: Protocol, chunks):
    events = []
    for chunk in chunks:
        got = p.feed(chunk)  # must never raise
        assert isinstance(got, list)
        events.extend(got)
    kinds = norm(events)
    violations = [e for e in kinds if e[0] == "violation"]
    closes = [e for e in kinds if e[0] == "close"]
    assert len(violations) + len(closes) <= 1
    if violations:
        assert kinds[-1] == violations[0]
        assert violations[0][1] in (1002, 1007, 1009)
    if closes:
        assert kinds[-1] == closes[0]
    if violations or closes:
        assert p.feed(cf(TEXT, b"x") + sf(TEXT, b"x")) == []
    return kinds


@given(
    garbage=st.binary(max_size=400),
    is_client=st.booleans(),
    max_size=st.sampled_from([None, 0, 10, 1000]),
    cuts=st.lists(st.integers(0, 400), max_size=5),
)
@settings(max_examples=300, deadline=None)
def test_random_garbage_never_raises(garbage, is_client, max_size, cuts):
    p = Protocol(side_of(is_client), max_message_size=max_size)
    points = sorted({min(c, len(garbage)) for c in cuts})
    chunks = [garbage[a:b] for a, b in zip([0] + points, points + [len(garbage)])]
    _check_garbage_events(p, chunks)


@st.composite
def frame_like_garbage(draw):
    """Sequences of frames with random header bits, so that the parser gets past the first header."""
    out = b""
    for _ in range(draw(st.integers(1, 6))):
        b0 = draw(st.integers(0, 255))
        payload = draw(st.binary(max_size=150))
        masked = draw(st.booleans())
        key = draw(st.binary(min_size=4, max_size=4)) if masked else None
        form = draw(st.sampled_from([None, 16, 64]))
        fin = bool(b0 & 0x80)
        out += frame(
            b0 & 0x0F,
            payload,
            fin=fin,
            rsv1=bool(b0 & 0x40),
            rsv2=bool(b0 & 0x20),
            rsv3=bool(b0 & 0x10),
            key=key,
            form=form,
        )
    return out + draw(st.binary(max_size=10))


@given(
    garbage=frame_like_garbage(),
    is_client=st.booleans(),
    use_deflate=st.booleans(),
    max_size=st.sampled_from([None, 50, 1 << 20]),
)
@settings(max_examples=300, deadline=None)
def test_random_frames_never_raise(garbage, is_client, use_deflate, max_size):
    ext = None
    if use_deflate:
        c_ext, s_ext, _ = deflate_pair()
        ext = c_ext if is_client else s_ext
    p = Protocol(side_of(is_client), max_message_size=max_size, deflate=ext)
    _check_garbage_events(p, [garbage[: len(garbage) // 2], garbage[len(garbage) // 2 :]])


@given(payload=st.binary(max_size=200), opcode=st.sampled_from([TEXT, BINARY]), fin=st.booleans())
@settings(max_examples=200, deadline=None)
def test_random_compressed_payload_never_raises(payload, opcode, fin):
    _, s_ext, _ = deflate_pair()
    p = server(max_message_size=1000, deflate=s_ext)
    kinds = _check_garbage_events(p, [cf(opcode, payload, rsv1=True, fin=fin)])
    for k in kinds:
        if k[0] == "violation" and k[1] != 1009:
            assert k[1] == (1007 if opcode == TEXT else 1002)


# -- permessage-deflate -----------------------------------------------------------------


def test_deflate_roundtrip_and_rsv1():
    c, s = deflate_protocols()
    long_text = "The quick brown fox jumps over the lazy dog. " * 10
    frame_bytes = c.encode_message(long_text, binary=False)
    assert frame_bytes[0] == 0xC1  # FIN + RSV1 + text
    assert len(frame_bytes) < len(long_text)
    assert feed_all(s, frame_bytes) == [("text", long_text)]
    short = c.encode_message("hi", binary=False)
    assert short[0] == 0x81  # below the threshold: sent plain
    assert feed_all(s, short) == [("text", "hi")]
    down = s.encode_message(b"\x01\x02" * 200, binary=True)
    assert down[0] == 0xC2 and not down[1] & 0x80
    assert feed_all(c, down) == [("binary", b"\x01\x02" * 200)]


def test_deflate_hand_built_compressed_frames():
    _, s_ext, _ = deflate_pair()
    p = server(deflate=s_ext)
    text = "permessage-deflate " * 30
    comp = raw_deflate(text.encode())
    assert feed_all(p, cf(TEXT, comp, rsv1=True)) == [("text", text)]
    # Fragmented: RSV1 only on the first frame.
    comp = raw_deflate(b"binary data " * 50)
    a, b = len(comp) // 3, 2 * len(comp) // 3
    data = (
        cf(BINARY, comp[:a], rsv1=True, fin=False)
        + cf(PING, b"between")
        + cf(CONT, comp[a:b], fin=False)
        + cf(CONT, comp[b:])
    )
    assert feed_all(p, data) == [("ping", b"between"), ("binary", b"binary data " * 50)]


def test_deflate_rfc7692_example_hello():
    # RFC 7692 section 7.2.3.1: "Hello" compressed is f2 48 cd c9 c9 07 00.
    _, s_ext, _ = deflate_pair()
    p = server(deflate=s_ext)
    assert feed_all(p, cf(TEXT, bytes.fromhex("f248cdc9c90700"), rsv1=True)) == [("text", "Hello")]
    # Section 7.2.3.2: the same message sent in two fragments.
    _, s_ext, _ = deflate_pair()
    p = server(deflate=s_ext)
    data = cf(TEXT, bytes.fromhex("f248cd"), rsv1=True, fin=False) + cf(CONT, bytes.fromhex("c9c90700"))
    assert feed_all(p, data) == [("text", "Hello")]
    # Section 7.2.3.3: a stored (uncompressed) block.
    _, s_ext, _ = deflate_pair()
    p = server(deflate=s_ext)
    assert feed_all(p, cf(TEXT, bytes.fromhex("0005 00fa ff48 656c 6c6f 00"), rsv1=True)) == [("text", "Hello")]


def test_deflate_rfc7692_example_empty_message():
    # Section 7.2.3.6: an empty message may be sent as a single 0x00 byte.
    _, s_ext, _ = deflate_pair()
    p = server(deflate=s_ext)
    assert feed_all(p, cf(TEXT, b"\x00", rsv1=True)) == [("text", "")]
    # The inflate context is still usable afterwards.
    assert feed_all(p, cf(TEXT, bytes.fromhex("f248cdc9c90700"), rsv1=True)) == [("text", "Hello")]


def test_deflate_context_takeover_rfc_example():
    # Section 7.2.3.2 of RFC 7692: the second "Hello" reuses the first one's window.
    _, s_ext, _ = deflate_pair()
    p = server(deflate=s_ext)
    data = cf(TEXT, bytes.fromhex("f248cdc9c90700"), rsv1=True) + cf(TEXT, bytes.fromhex("f200110000"), rsv1=True)
    assert feed_all(p, data) == [("text", "Hello"), ("text", "Hello")]


def test_deflate_rsv1_on_continuation_is_1002():
    _, s_ext, _ = deflate_pair()
    p = server(deflate=s_ext)
    comp = raw_deflate(b"abc" * 50)
    data = cf(TEXT, comp[:5], rsv1=True, fin=False) + cf(CONT, comp[5:], rsv1=True)
    assert feed_all(p, data) == violation(1002)


def test_deflate_rsv1_on_continuation_of_plain_message_is_1002():
    _, s_ext, _ = deflate_pair()
    p = server(deflate=s_ext)
    data = cf(TEXT, b"abc", fin=False) + cf(CONT, b"def", rsv1=True)
    assert feed_all(p, data) == violation(1002)


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_deflate_rsv1_on_control_frame_is_1002(opcode):
    c_ext, s_ext, _ = deflate_pair()
    p = server(deflate=s_ext)
    assert feed_all(p, cf(opcode, b"", rsv1=True)) == violation(1002)
    p = client(deflate=c_ext)
    assert feed_all(p, sf(opcode, b"", rsv1=True)) == violation(1002)


@pytest.mark.parametrize("bits", [{"rsv2": True}, {"rsv3": True}, {"rsv1": True, "rsv2": True}])
def test_deflate_rsv2_rsv3_still_1002(bits):
    _, s_ext, _ = deflate_pair()
    p = server(deflate=s_ext)
    assert feed_all(p, cf(TEXT, raw_deflate(b"a" * 40), **bits)) == violation(1002)


BAD_DEFLATE = [
    b"\xff\xff\xff\xff",  # reserved block type
    b"\x07",  # BTYPE=11
    b"\x00\x05\x00\x00\x00",  # stored block whose NLEN is not ~LEN
]


@pytest.mark.parametrize("payload", BAD_DEFLATE)
def test_deflate_not_inflating_text_is_1007(payload):
    _, s_ext, _ = deflate_pair()
    p = server(deflate=s_ext)
    assert feed_all(p, cf(TEXT, payload, rsv1=True)) == violation(1007)


@pytest.mark.parametrize("payload", BAD_DEFLATE)
def test_deflate_not_inflating_binary_is_1002(payload):
    _, s_ext, _ = deflate_pair()
    p = server(deflate=s_ext)
    assert feed_all(p, cf(BINARY, payload, rsv1=True)) == violation(1002)


def test_deflate_not_inflating_detected_in_first_fragment():
    c_ext, _, _ = deflate_pair()
    p = client(deflate=c_ext)
    assert feed_all(p, sf(TEXT, b"\xff\xff", rsv1=True, fin=False)) == violation(1007)


def test_deflate_inflated_invalid_utf8_is_1007():
    _, s_ext, _ = deflate_pair()
    p = server(deflate=s_ext)
    assert feed_all(p, cf(TEXT, raw_deflate(b"abc\xff" * 20), rsv1=True)) == violation(1007)


@functools.cache
def _bomb() -> bytes:
    # 11 MiB of zeros in a few KiB.
    return raw_deflate(b"\x00" * (11 << 20), wbits=9, level=9)


def test_deflate_bomb_is_1009():
    bomb = _bomb()
    assert len(bomb) < 64 * 1024
    _, s_ext, _ = deflate_pair()
    p = server(max_message_size=1 << 20, deflate=s_ext)
    assert feed_all(p, cf(BINARY, bomb, rsv1=True)) == violation(1009)
    _, s_ext, _ = deflate_pair()
    p = server(max_message_size=1 << 20, deflate=s_ext)
    assert feed_all(p, cf(TEXT, bomb, rsv1=True)) == violation(1009)


def test_deflate_bomb_in_fragments_is_1009():
    bomb = _bomb()
    _, s_ext, _ = deflate_pair()
    p = server(max_message_size=1 << 20, deflate=s_ext)
    events = []
    pieces = [bomb[i : i + 512] for i in range(0, len(bomb), 512)]
    events += p.feed(cf(BINARY, pieces[0], rsv1=True, fin=False))
    for piece in pieces[1:]:
        events += p.feed(cf(CONT, piece, fin=False))
        if events:
            break
    assert norm(events) == violation(1009)


def test_deflate_inflated_size_limit_exact():
    for n, expected in [(1000, [("binary", b"a" * 1000)]), (1001, violation(1009))]:
        _, s_ext, _ = deflate_pair()
        p = server(max_message_size=1000, deflate=s_ext)
        assert feed_all(p, cf(BINARY, raw_deflate(b"a" * n), rsv1=True)) == expected, n


def test_deflate_compressed_wire_size_limit_from_header():
    _, s_ext, _ = deflate_pair()
    p = server(max_message_size=1000, deflate=s_ext)
    assert feed_all(p, b"\xc2\xfe" + struct.pack("!H", 5000)) == violation(1009)


def test_deflate_uncompressed_message_with_extension():
    _, s_ext, _ = deflate_pair()
    p = server(deflate=s_ext)
    assert feed_all(p, cf(TEXT, b"plain") + cf(BINARY, b"raw", fin=False) + cf(CONT, b"!")) == [
        ("text", "plain"),
        ("binary", b"raw!"),
    ]


def test_deflate_context_takeover_100_messages():
    c, s = deflate_protocols()
    rng = random.Random(1234)
    msg = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ,.") for _ in range(300))
    sizes_up, sizes_down = [], []
    for i in range(100):
        m = msg + str(i)
        up = c.encode_message(m, binary=False)
        sizes_up.append(len(up))
        assert feed_all(s, up) == [("text", m)], i
        down = s.encode_message(m.encode(), binary=True)
        sizes_down.append(len(down))
        assert feed_all(c, down) == [("binary", m.encode())], i
    # With the window kept, every later message is a few back-references.
    assert max(sizes_up[1:]) < sizes_up[0] // 3
    assert max(sizes_down[1:]) < sizes_down[0] // 3


def test_deflate_no_context_takeover_100_messages():
    opts = {"no_context_takeover": True}
    c, s = deflate_protocols(client_options=opts, server_options=opts)
    msg = "no context takeover: every message stands alone " * 4
    first_down = None
    for _ in range(100):
        down = s.encode_message(msg, binary=False)
        if first_down is None:
            first_down = down
        assert down == first_down  # server frames are unmasked: identical bytes every time
        assert feed_all(c, down) == [("text", msg)]
        up = c.encode_message(msg, binary=False)
        assert feed_all(s, up) == [("text", msg)]
        # Each message inflates on its own.
        assert zlib.decompressobj(-15).decompress(server_payload(down) + TAIL) == msg.encode()


def test_deflate_message_with_bfinal_block_accepted():
    _, s_ext, _ = deflate_pair()
    p = server(deflate=s_ext)
    c = zlib.compressobj(6, zlib.DEFLATED, -9)
    comp = c.compress(b"Hello, BFINAL " * 10) + c.flush(zlib.Z_FINISH)
    assert feed_all(p, cf(TEXT, comp, rsv1=True)) == [("text", "Hello, BFINAL " * 10)]


# -- receiving large binary frames straight into their buffer -----------------------


def _receive_into(p: Protocol, rest: bytes, step: int) -> list:
    """Write ``rest`` into frame_buffer_space() ``step`` bytes at a time, as the I/O layer does."""
    events: list = []
    pos = 0
    while pos < len(rest):
        space = p.frame_buffer_space()
        assert space is not None
        n = min(step, len(space), len(rest) - pos)
        space[:n] = rest[pos : pos + n]
        space.release()
        events += p.frame_buffer_filled(n)
        pos += n
    return events


@pytest.mark.parametrize("step", [1, 4093, 65536, 1 << 20])
def test_large_binary_frame_received_into_its_buffer_is_the_same_message(step):
    payload = os.urandom(300_000)
    frame = cf(BINARY, payload, key=KEY2)
    p = server()
    head = 14 + 100_000  # the header and a third of the payload arrive through feed()
    assert p.feed(frame[:head]) == []
    assert p.frame_buffer_space() is not None  # a quarter is in: the buffer is offered
    events = _receive_into(p, frame[head:], step)
    assert [type(e) for e in events] == [Message] and events[0].data == payload
    assert p.frame_buffer_space() is None


def test_frame_buffer_is_not_offered_for_a_bare_header():
    """A header alone must not make the receiver allocate the announced payload."""
    p = server()
    assert p.feed(bytes([0x82, 0xFF]) + struct.pack("!Q", 5_000_000) + KEY) == []
    assert p.frame_buffer_space() is None
    assert p.feed(b"x" * 1000) == []
    assert p.frame_buffer_space() is None


def test_frame_buffer_is_not_used_for_text_frames():
    """Text keeps streaming so that invalid UTF-8 is found as it arrives."""
    text = ("é" * 100_000).encode()
    frame = cf(TEXT, text)
    p = server()
    assert p.feed(frame[: len(frame) // 2]) == []
    assert p.frame_buffer_space() is None
    assert [e.data for e in p.feed(frame[len(frame) // 2 :])] == [text.decode()]


def test_frame_buffer_mixes_with_feed_and_fragments():
    """Fragments, a ping between them, and feed() of the buffered part give one message."""
    a, b = os.urandom(200_000), os.urandom(150_000)
    stream = cf(BINARY, a, fin=False) + cf(PING, b"mid") + cf(CONT, b, key=KEY2)
    p = server()
    events = p.feed(stream[:100_000])
    events += _receive_into(p, stream[100_000 : 14 + 200_000], 50_000)
    events += p.feed(stream[14 + 200_000 :])
    assert [type(e) for e in events] == [Ping, Message]
    assert events[1].data == a + b


def test_frame_buffer_filled_rejects_more_than_the_frame_has():
    payload = os.urandom(100_000)
    p = server()
    p.feed(cf(BINARY, payload)[:60_000])
    space = p.frame_buffer_space()
    assert space is not None
    with pytest.raises(ValueError):
        p.frame_buffer_filled(len(space) + 1)


def test_pooled_frame_buffers_never_leak_an_earlier_message():
    """Buffers are reused across frames and connections: each message is exactly its own bytes."""
    from tornado_websocket.buffers import BufferPool

    pool = BufferPool()

    sizes = [400_000, 70_000, 300_000, 65_536, 400_000]
    a, b = Protocol(Side.SERVER, buffers=pool), Protocol(Side.SERVER, buffers=pool)
    for i, size in enumerate(sizes):
        payload = bytes([i + 1]) * size
        for p in (a, b):
            frame = cf(BINARY, payload, key=bytes([i, 0xA5, 0x5A, 0xFF]))
            head = 14 + size // 3
            assert p.feed(frame[:head]) == []
            events = _receive_into(p, frame[head:], 1 << 20)
            assert [e.data for e in events] == [payload]
    assert 0 < pool.pooled_bytes <= pool.max_bytes


def test_large_unmasked_frame_on_the_client_side():
    """A client receives unmasked server frames into the buffer too."""
    payload = os.urandom(200_000)
    frame = frames.encode_frame(frames.Opcode.BINARY, payload)
    p = Protocol(Side.CLIENT)
    assert p.feed(frame[:80_000]) == []
    events = _receive_into(p, frame[80_000:], 30_000)
    assert [e.data for e in events] == [payload] and type(events[0].data) is bytes


def test_a_connection_dropped_mid_frame_does_not_return_its_buffer():
    """The I/O layer may still hold a view of the buffer: it must not go back to the pool."""
    from tornado_websocket.buffers import BufferPool

    pool = BufferPool()

    p = Protocol(Side.SERVER, buffers=pool)
    p.feed(cf(BINARY, os.urandom(500_000))[:200_000])
    space = p.frame_buffer_space()
    assert space is not None
    before = pool.pooled_bytes
    p.connection_lost()
    assert p.state is State.CLOSED
    assert pool.pooled_bytes <= before
    space[:4] = b"late"  # a late write lands in a buffer nobody else has


# -- sending back the text just received ------------------------------------------------


def test_sending_the_received_str_reuses_its_utf8_bytes():
    """Given the bytes a text message came as, encoding that str does not encode it again; the frame is the same."""
    text = "échange-данные-数据 " * 100
    p = server()
    (event,) = p.feed(cf(TEXT, text.encode()))
    assert event.utf8 == text.encode()
    header, payload = p.encode_message_parts(event.data, False, event.utf8)
    assert payload is event.utf8  # the received bytes, not a new encoding
    assert p.encode_message_parts(event.data, False) == (header, payload)
    assert p.encode_message_parts(event.data, False)[1] is not payload
    assert p.encode_message(event.data, False, event.utf8) == header + payload


def test_reused_utf8_goes_through_deflate_and_client_masking():
    c_ext, s_ext, _ = deflate_pair()
    text = "données " * 500
    srv, cli = server(), Protocol(Side.CLIENT, deflate=c_ext)
    (event,) = srv.feed(cf(TEXT, text.encode()))
    wire = cli.encode_message(event.data, False, event.utf8)  # masked, compressed
    peer = server(deflate=s_ext)
    assert [e.data for e in peer.feed(wire)] == [text]


def test_side_and_state():
    p = Protocol(Side.SERVER)
    assert (p.side, p.state, p.is_client) == (Side.SERVER, State.OPEN, False)
    p.encode_close(1000, "bye")
    assert p.state is State.CLOSING and (p.close_sent.code, p.close_sent.reason) == (1000, "bye")
    with pytest.raises(WebSocketClosedError):
        p.encode_message("late", False)
    (event,) = p.feed(cf(CLOSE, struct.pack("!H", 1000)))
    assert type(event) is CloseReceived and p.close_received is event
    p.connection_lost()
    assert p.state is State.CLOSED
    with pytest.raises(TypeError):
        Protocol(False)  # type: ignore[arg-type]


def test_a_violation_makes_the_state_closing_and_stops_parsing():
    p = server()
    (event,) = p.feed(cf(0x3, b""))  # reserved opcode
    assert type(event) is ProtocolViolation and event.code == 1002
    assert p.state is State.CLOSING and p.close_sent is None
    assert p.feed(cf(TEXT, b"after")) == []


# -- the counters ------------------------------------------------------------

_SIZES = st.sampled_from([0, 1, 125, 126, 127, 1000, 65535, 65536, 70000])
_SENDS = st.lists(
    st.tuples(st.sampled_from(["text", "binary", "ping", "pong"]), _SIZES, st.booleans()), min_size=1, max_size=12
)


@settings(max_examples=60, deadline=None)
@given(sends=_SENDS, is_client=st.booleans(), deflated=st.booleans(), close=st.booleans())
def test_bytes_sent_is_every_encoded_byte(sends, is_client, deflated, close):
    """bytes_sent (kept as payloads + base headers + the rest) equals what was encoded, frame by frame."""
    pair = deflate_protocols() if deflated else (client(), server())
    p = pair[0] if is_client else pair[1]
    encoded = payload_bytes = messages = 0
    for kind, size, compress in sends:
        if kind in ("ping", "pong"):
            data = b"p" * min(size, 125)
            out = p.encode_ping(data) if kind == "ping" else p.encode_pong(data)
        else:
            data_bytes = os.urandom(size)
            data = data_bytes.hex()[:size] if kind == "text" else data_bytes
            out = p.encode_message(data, kind == "binary", compress=compress)
            messages += 1
            payload_bytes += size
        encoded += len(out)
        assert p.bytes_sent == encoded
    if close:
        encoded += len(p.encode_close(1000, "bye"))
    assert (p.bytes_sent, p.messages_sent, p.message_bytes_sent) == (encoded, messages, payload_bytes)
    p.bytes_sent += 7  # the I/O layer counts a frame it encoded itself (a prepared broadcast frame)
    assert p.bytes_sent == encoded + 7


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(_SIZES, min_size=1, max_size=8),
    cut=st.sampled_from([1, 3, 50, 4096, 1 << 20]),
    bad_tail=st.booleans(),
)
def test_received_counts_whatever_the_split(sizes, cut, bad_tail):
    """messages_received and its byte count are right however the input is cut, a violation included."""
    stream = b"".join(cf(frames.Opcode.BINARY, b"b" * n) for n in sizes)
    stream += cf(frames.Opcode.PING, b"x")
    if bad_tail:
        stream += cf(frames.Opcode.BINARY, b"z", rsv1=True)  # RSV1 without deflate: a violation
    p = server()
    cut = max(cut, len(stream) // 2000)  # at most ~2,000 pieces
    events = [e for i in range(0, len(stream), cut) for e in p.feed(stream[i : i + cut])]
    got = [e for e in events if isinstance(e, Message)]
    assert [len(m.data) for m in got] == sizes
    assert (p.messages_received, p.message_bytes_received) == (len(sizes), sum(sizes))
    assert any(isinstance(e, ProtocolViolation) for e in events) == bad_tail
    if bad_tail:  # input after the violation is ignored, and not counted
        assert len(stream) - len(cf(frames.Opcode.BINARY, b"z")) < p.bytes_received <= len(stream)
    else:
        assert p.bytes_received == len(stream)


@pytest.mark.parametrize("fragmented", [False, True])
def test_incompressible_message_at_the_limit_is_accepted(fragmented):
    """Deflate makes random bytes a little longer on the wire: a message of exactly the limit still fits."""
    limit = 4096
    _, s = deflate_protocols(max_message_size=limit)
    data = random.Random(7).randbytes(limit)
    compressed = raw_deflate(data)
    assert len(compressed) > limit  # on the wire it is over the limit

    def frames_of(payload: bytes) -> bytes:
        if not fragmented:
            return cf(frames.Opcode.BINARY, payload, rsv1=True)
        half = len(payload) // 2
        return cf(frames.Opcode.BINARY, payload[:half], rsv1=True, fin=False) + cf(
            frames.Opcode.CONTINUATION, payload[half:]
        )

    events = s.feed(frames_of(compressed))
    assert [type(e) for e in events] == [Message] and events[0].data == data
    events = s.feed(frames_of(raw_deflate(data + b"x")))
    assert [(type(e), getattr(e, "code", None)) for e in events] == [(ProtocolViolation, 1009)]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536])
@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("kind", ["bytes", "str", "str with its utf8"])
def test_encode_message_frames_every_header_size_exactly_and_counts_it(size, binary, kind):
    # encode_message has an inline path for short server frames: it must agree, at the
    # 125/126 boundary too, with an independent encoder, and count what it encoded.
    payload = ("é" * (size // 2) + "a" * (size % 2)).encode()
    assert len(payload) == size
    data = payload if kind == "bytes" else payload.decode()
    server = Protocol(Side.SERVER)
    frame = server.encode_message(data, binary, payload if kind == "str with its utf8" else None)
    opcode = frames.OP_BINARY if binary else frames.OP_TEXT
    assert frame == build_frame(opcode, payload, mask=False)
    assert (server.messages_sent, server.message_bytes_sent, server.bytes_sent) == (1, size, len(frame))
    (event,) = Protocol(Side.CLIENT).feed(frame)
    assert isinstance(event, Message) and event.data == (payload if binary else payload.decode())
