"""Tests for tornado_websocket.frames: masking, header encoding, close payloads."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tornado_websocket import frames
from tornado_websocket.errors import ProtocolError
from tornado_websocket.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CloseCode,
    Opcode,
    _mask_python,
    apply_mask,
    encode_close_payload,
    encode_frame,
    encode_header,
    is_valid_close_code,
    parse_close_payload,
)

RFC_KEY = b"\x37\xfa\x21\x3d"  # the masking key of the RFC 6455 section 5.7 examples


def naive_mask(mask: bytes, data: bytes) -> bytes:
    """Byte-by-byte reference implementation of RFC 6455 section 5.3."""
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


# -- constants -------------------------------------------------------------


def test_opcode_values():
    assert (OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG) == (0, 1, 2, 8, 9, 0xA)
    assert [int(o) for o in Opcode] == [0, 1, 2, 8, 9, 10]


def test_close_code_values():
    assert CloseCode.NORMAL_CLOSURE == 1000
    assert CloseCode.PROTOCOL_ERROR == 1002
    assert CloseCode.INVALID_DATA == 1007
    assert CloseCode.MESSAGE_TOO_BIG == 1009
    assert CloseCode.TLS_HANDSHAKE == 1015


# -- masking ---------------------------------------------------------------


# Set by scripts/ci/pythons.sh for the install made without a C compiler (CC=false).
BUILT_WITHOUT_C = bool(os.environ.get("TORNADO_WEBSOCKET_EXPECT_NO_EXTENSION"))


def test_c_speedups_are_available_unless_switched_off():
    # Our extension is built by `pip install` (a C compiler is in CI) and Tornado ships
    # websocket_mask; if either were missing the comparisons below would be vacuous.
    # scripts/test.sh runs the protocol tests a second time with them switched off;
    # scripts/ci/pythons.sh installs the sdist once without a compiler.
    if frames.NO_SPEEDUPS:
        assert frames._mask_any is None and frames._mask_bytes is None
    elif BUILT_WITHOUT_C:
        assert frames._mask_any is None  # the build went on without the extension
        assert frames._mask_bytes is not None  # Tornado's, from its wheel
    else:
        assert frames._mask_any is not None
        assert frames._mask_bytes is not None


MASKS = {"pure Python": lambda key, data: _mask_python(key, data)}
if frames._mask_any is not None:
    MASKS["ours (C, any buffer)"] = lambda key, data: frames._mask_any(key, data)
if frames._mask_bytes is not None:
    MASKS["tornado.speedups (bytes)"] = lambda key, data: frames._mask_bytes(key, bytes(data))


@pytest.fixture(params=["extension", "tornado", "python"])
def apply_mask_path(request, monkeypatch):
    """apply_mask as it runs with our extension, without it (Tornado's), and with neither."""
    if request.param != "extension":
        monkeypatch.setattr(frames, "_mask_any", None)
    if request.param == "python":
        monkeypatch.setattr(frames, "_mask_bytes", None)
    return request.param


def test_apply_mask_every_fallback(apply_mask_path):
    data = bytes(range(256)) * 3 + b"tail"
    expected = naive_mask(RFC_KEY, data)
    for kind in (bytes, bytearray, memoryview):
        out = apply_mask(RFC_KEY, kind(data))
        assert out == expected
        assert type(out) is bytes
    view = memoryview(bytearray(b"xx" + data + b"yy"))[2:-2]
    assert apply_mask(RFC_KEY, view) == expected


@pytest.mark.skipif(frames._mask_any is None, reason="our C extension is switched off or not built")
def test_c_mask_rejects_bad_keys_and_non_buffers():
    with pytest.raises(ValueError):
        frames._mask_any(b"abc", b"data")
    with pytest.raises(ValueError):
        frames._mask_any(b"abcde", b"data")
    with pytest.raises(TypeError):
        frames._mask_any(b"abcd", "text")
    # A non-contiguous view is refused rather than read wrongly.
    with pytest.raises((TypeError, BufferError, ValueError)):
        frames._mask_any(b"abcd", memoryview(b"abcdefgh")[::2])


def test_rfc_example_mask():
    # RFC 6455 section 5.7: "Hello" masked with 37 fa 21 3d.
    assert apply_mask(RFC_KEY, b"Hello") == bytes([0x7F, 0x9F, 0x4D, 0x51, 0x58])
    assert _mask_python(RFC_KEY, b"Hello") == bytes([0x7F, 0x9F, 0x4D, 0x51, 0x58])
    assert apply_mask(RFC_KEY, bytes([0x7F, 0x9F, 0x4D, 0x51, 0x58])) == b"Hello"


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1000, 4097])
def test_mask_lengths_agree(n):
    data = bytes((i * 7 + 3) & 0xFF for i in range(n))
    key = b"\x01\x80\xff\x00"
    expected = naive_mask(key, data)
    for name, mask in MASKS.items():
        assert mask(key, data) == expected, name
    assert apply_mask(key, data) == expected


def test_mask_empty():
    assert _mask_python(RFC_KEY, b"") == b""
    assert apply_mask(RFC_KEY, b"") == b""


def test_mask_leading_zero_bytes_preserved():
    # int.from_bytes/to_bytes must keep leading zero bytes.
    key = b"\xaa\xbb\xcc\xdd"
    data = b"\xaa\xbb\xcc\xdd\xaa"
    assert _mask_python(key, data) == b"\x00\x00\x00\x00\x00"
    assert apply_mask(key, data) == b"\x00\x00\x00\x00\x00"


def test_apply_mask_accepts_bytes_like():
    data = b"some payload data"
    expected = naive_mask(RFC_KEY, data)
    assert apply_mask(RFC_KEY, bytearray(data)) == expected
    assert apply_mask(RFC_KEY, memoryview(data)) == expected
    assert type(apply_mask(RFC_KEY, bytearray(data))) is bytes


@given(mask=st.binary(min_size=4, max_size=4), data=st.binary(max_size=600))
@settings(max_examples=300, deadline=None)
def test_mask_c_and_python_agree(mask, data):
    expected = naive_mask(mask, data)
    for name, fn in MASKS.items():
        assert fn(mask, data) == expected, name
        assert fn(mask, bytearray(data)) == expected, name
    assert apply_mask(mask, data) == expected


@given(mask=st.binary(min_size=4, max_size=4), data=st.binary(max_size=300))
@settings(max_examples=100, deadline=None)
def test_mask_is_involution(mask, data):
    assert apply_mask(mask, apply_mask(mask, data)) == data
    assert _mask_python(mask, _mask_python(mask, data)) == data


@given(mask=st.binary(min_size=4, max_size=4), data=st.binary(max_size=200), cut=st.integers(0, 200))
@settings(max_examples=100, deadline=None)
def test_mask_in_pieces_with_rotated_key(mask, data, cut):
    # What the streaming parser does: mask a prefix, rotate the key by len(prefix) % 4, mask the rest.
    cut = min(cut, len(data))
    shift = cut % 4
    rotated = mask[shift:] + mask[:shift]
    assert apply_mask(mask, data[:cut]) + apply_mask(rotated, data[cut:]) == apply_mask(mask, data)


# -- header encoding --------------------------------------------------------


@pytest.mark.parametrize(
    "opcode, length, kwargs, expected",
    [
        (OP_TEXT, 0, {}, b"\x81\x00"),
        (OP_TEXT, 5, {}, b"\x81\x05"),
        (OP_BINARY, 125, {}, b"\x82\x7d"),
        (OP_BINARY, 126, {}, b"\x82\x7e\x00\x7e"),
        (OP_BINARY, 256, {}, b"\x82\x7e\x01\x00"),
        (OP_BINARY, 65535, {}, b"\x82\x7e\xff\xff"),
        (OP_BINARY, 65536, {}, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
        (OP_BINARY, 2**32, {}, b"\x82\x7f\x00\x00\x00\x01\x00\x00\x00\x00"),
        (OP_BINARY, 2**63 - 1, {}, b"\x82\x7f\x7f\xff\xff\xff\xff\xff\xff\xff"),
        (OP_TEXT, 3, {"fin": False}, b"\x01\x03"),
        (OP_CONTINUATION, 2, {}, b"\x80\x02"),
        (OP_CONTINUATION, 2, {"fin": False}, b"\x00\x02"),
        (OP_TEXT, 5, {"rsv1": True}, b"\xc1\x05"),
        (OP_TEXT, 5, {"rsv1": True, "fin": False}, b"\x41\x05"),
        (OP_PING, 5, {}, b"\x89\x05"),
        (OP_PONG, 5, {"mask": RFC_KEY}, b"\x8a\x85" + RFC_KEY),
        (OP_CLOSE, 0, {"mask": RFC_KEY}, b"\x88\x80" + RFC_KEY),
        (OP_TEXT, 125, {"mask": RFC_KEY}, b"\x81\xfd" + RFC_KEY),
        (OP_TEXT, 126, {"mask": RFC_KEY}, b"\x81\xfe\x00\x7e" + RFC_KEY),
        (OP_TEXT, 65535, {"mask": RFC_KEY}, b"\x81\xfe\xff\xff" + RFC_KEY),
        (OP_TEXT, 65536, {"mask": RFC_KEY}, b"\x81\xff\x00\x00\x00\x00\x00\x01\x00\x00" + RFC_KEY),
        (
            OP_BINARY,
            70000,
            {"mask": RFC_KEY, "rsv1": True, "fin": False},
            b"\x42\xff" + struct.pack("!Q", 70000) + RFC_KEY,
        ),
    ],
)
def test_encode_header_exact(opcode, length, kwargs, expected):
    assert encode_header(opcode, length, **kwargs) == expected


def test_encode_frame_unmasked_rfc_examples():
    assert encode_frame(OP_TEXT, b"Hello") == b"\x81\x05Hello"
    assert encode_frame(OP_PING, b"Hello") == b"\x89\x05Hello"
    assert encode_frame(OP_TEXT, b"Hel", fin=False) == b"\x01\x03Hel"
    assert encode_frame(OP_CONTINUATION, b"lo") == b"\x80\x02lo"
    assert encode_frame(OP_BINARY, bytes(256)) == b"\x82\x7e\x01\x00" + bytes(256)
    assert encode_frame(OP_BINARY, bytes(65536)) == b"\x82\x7f" + struct.pack("!Q", 65536) + bytes(65536)


def test_encode_frame_masked_uses_random_key(monkeypatch):
    monkeypatch.setattr(frames.os, "urandom", lambda n: RFC_KEY[:n])
    # RFC 6455 section 5.7, "A single-frame masked text message" and the masked Pong.
    assert encode_frame(OP_TEXT, b"Hello", masked=True) == bytes(
        [0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]
    )
    assert encode_frame(OP_PONG, b"Hello", masked=True) == bytes(
        [0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]
    )


def test_encode_frame_masked_structure():
    payload = bytes(range(200))
    out = encode_frame(OP_BINARY, payload, masked=True)
    assert out[:4] == b"\x82\xfe\x00\xc8"
    key = out[4:8]
    assert apply_mask(key, out[8:]) == payload
    assert len(out) == 8 + 200


# -- close payloads ---------------------------------------------------------

VALID_CODES = list(range(1000, 1004)) + list(range(1007, 1015)) + [3000, 3999, 4000, 4999]
INVALID_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 5001, 65535]


@pytest.mark.parametrize("code", VALID_CODES)
def test_valid_close_codes(code):
    assert is_valid_close_code(code)
    payload = encode_close_payload(code, "ok")
    assert payload == struct.pack("!H", code) + b"ok"
    assert parse_close_payload(payload) == (code, "ok")
    assert parse_close_payload(struct.pack("!H", code)) == (code, "")


def test_valid_close_code_ranges_exhaustive():
    for code in range(0, 70000):
        expected = 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999
        assert is_valid_close_code(code) is expected, code


@pytest.mark.parametrize("code", INVALID_CODES)
def test_invalid_close_codes_on_parse(code):
    assert not is_valid_close_code(code)
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(struct.pack("!H", code) + b"reason")
    assert info.value.code == 1002


@pytest.mark.parametrize("code", INVALID_CODES)
def test_invalid_close_codes_on_encode(code):
    with pytest.raises(ValueError):
        encode_close_payload(code)


def test_close_payload_empty():
    assert encode_close_payload(None) == b""
    assert parse_close_payload(b"") == (None, "")


def test_close_reason_without_code_rejected():
    with pytest.raises(ValueError):
        encode_close_payload(None, "why")


@pytest.mark.parametrize("payload", [b"\x03", b"\xe8", b"\x00"])
def test_close_payload_one_byte_is_1002(payload):
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(payload)
    assert info.value.code == 1002


@pytest.mark.parametrize("reason", [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"ok\xe2\x82", b"\xf4\x90\x80\x80", b"\x80"])
def test_close_reason_invalid_utf8_is_1007(reason):
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(b"\x03\xe8" + reason)
    assert info.value.code == 1007


def test_close_reason_utf8_roundtrip():
    reason = "κόσμε ✓ 𝄞"
    payload = encode_close_payload(1001, reason)
    assert payload == b"\x03\xe9" + reason.encode("utf-8")
    assert parse_close_payload(payload) == (1001, reason)


def test_close_reason_length_limit():
    assert len(encode_close_payload(1000, "x" * 123)) == 125
    with pytest.raises(ValueError):
        encode_close_payload(1000, "x" * 124)
    # 61 two-byte characters = 122 bytes is fine, 62 = 124 bytes is not (bytes count, not characters).
    assert len(encode_close_payload(1000, "é" * 61)) == 124
    with pytest.raises(ValueError):
        encode_close_payload(1000, "é" * 62)


def test_parse_close_payload_accepts_bytes_like():
    assert parse_close_payload(bytearray(b"\x0b\xb8hi")) == (3000, "hi")
    assert parse_close_payload(memoryview(b"\x0f\xa0")) == (4000, "")


@given(code=st.sampled_from(VALID_CODES), reason=st.text(max_size=40))
@settings(max_examples=100, deadline=None)
def test_close_payload_roundtrip_property(code, reason):
    if len(reason.encode("utf-8")) > 123:
        with pytest.raises(ValueError):
            encode_close_payload(code, reason)
    else:
        assert parse_close_payload(encode_close_payload(code, reason)) == (code, reason)
