"""The WebSocket frame format of RFC 6455 section 5.

Opcodes, close codes, frame encoding and masking. Nothing here does I/O;
parsing lives in :mod:`tornado_websocket.protocol`, which needs the state of
a whole connection.
"""

from __future__ import annotations

import enum
import os
import struct
from typing import Callable, Optional, Union

from tornado_websocket.errors import ProtocolError

# Opcodes as plain ints: the hot paths compare against these.
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 section 5.2)."""

    CONTINUATION = OP_CONTINUATION
    TEXT = OP_TEXT
    BINARY = OP_BINARY
    CLOSE = OP_CLOSE
    PING = OP_PING
    PONG = OP_PONG


class CloseCode(enum.IntEnum):
    """Close status codes (RFC 6455 section 7.4.1 and the IANA registry)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015


MAX_CONTROL_PAYLOAD = 125
MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2

_PACK_H = struct.Struct("!H").pack
_PACK_HEADER_16 = struct.Struct("!BBH").pack
_PACK_HEADER_64 = struct.Struct("!BBQ").pack
_UNPACK_H = struct.Struct("!H").unpack


def is_valid_close_code(code: int) -> bool:
    """Tell whether ``code`` may appear in a Close frame on the wire.

    1000-1003 and 1007-1014 are defined; 1004-1006 and 1015 are reserved and
    must never be sent; 3000-4999 belong to libraries and applications.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


_Buffer = Union[bytes, bytearray, memoryview]


def _mask_python(mask: bytes, data: _Buffer) -> bytes:
    """Pure-Python XOR of ``data`` with the 4-byte ``mask`` repeated."""
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


_mask_any: Optional[Callable[[bytes, _Buffer], bytes]]  # takes any buffer
_mask_bytes: Optional[Callable[[bytes, bytes], bytes]]  # takes bytes only
#: Set TORNADO_WEBSOCKET_NO_SPEEDUPS=1 to use the fallbacks (the test suite runs both ways).
NO_SPEEDUPS = bool(os.environ.get("TORNADO_WEBSOCKET_NO_SPEEDUPS"))
try:
    if NO_SPEEDUPS:
        raise ImportError("TORNADO_WEBSOCKET_NO_SPEEDUPS is set")
    from tornado_websocket._speedups import mask as _mask_any
except ImportError:  # built without a C compiler, or switched off
    _mask_any = None
try:
    if NO_SPEEDUPS:
        raise ImportError("TORNADO_WEBSOCKET_NO_SPEEDUPS is set")
    from tornado.speedups import websocket_mask as _mask_bytes
except ImportError:  # depends on how tornado was built
    _mask_bytes = None


def apply_mask(mask: bytes, data: _Buffer) -> bytes:
    """XOR ``data`` with ``mask`` (RFC 6455 section 5.3); masking and unmasking are the same.

    ``data`` may be bytes, bytearray or a memoryview: our C extension
    unmasks it in one pass without copying it first. Without the extension,
    ``tornado.speedups.websocket_mask`` (bytes only), else pure Python.
    Raises ValueError if ``mask`` is not 4 bytes (C paths).
    """
    if _mask_any is not None:
        return _mask_any(mask, data)
    if _mask_bytes is not None:
        return _mask_bytes(mask, data if type(data) is bytes else bytes(data))
    return _mask_python(mask, data)


def encode_header(opcode: int, length: int, *, fin: bool = True, rsv1: bool = False, mask: bytes = b"") -> bytes:
    """Encode a frame header for a payload of ``length`` bytes.

    ``mask`` is the 4-byte masking key of a client frame, empty for a server
    frame. The payload itself is not touched.
    """
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    mbit = 0x80 if mask else 0
    if length < 126:
        header = bytes((b0, mbit | length))
    elif length < 65536:
        header = _PACK_HEADER_16(b0, mbit | 126, length)
    else:
        header = _PACK_HEADER_64(b0, mbit | 127, length)
    return header + mask if mask else header


def encode_frame_parts(
    opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False, masked: bool = False
) -> tuple[bytes, bytes]:
    """Encode one frame as ``(header, payload)``: ``payload`` is the caller's bytes unless masked.

    Sending the two with one ``sendmsg()`` avoids copying a large payload.
    Masked frames get a fresh random key.
    """
    if masked:
        key = os.urandom(4)
        return encode_header(opcode, len(payload), fin=fin, rsv1=rsv1, mask=key), apply_mask(key, payload)
    return encode_header(opcode, len(payload), fin=fin, rsv1=rsv1), payload


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False, masked: bool = False) -> bytes:
    """Encode one complete frame; ``masked`` frames get a fresh random key."""
    header, body = encode_frame_parts(opcode, payload, fin=fin, rsv1=rsv1, masked=masked)
    return header + body


def encode_close_payload(code: Optional[int], reason: str = "") -> bytes:
    """Build the payload of a Close frame.

    Raises ``ValueError`` when ``code`` may not be sent (see
    :func:`is_valid_close_code`), when a reason is given without a code, or
    when the UTF-8 reason is longer than 123 bytes.
    """
    if code is None:
        if reason:
            raise ValueError("a close reason needs a close code")
        return b""
    if not is_valid_close_code(code):
        raise ValueError(f"close code {code} may not be sent (RFC 6455 section 7.4)")
    data = reason.encode("utf-8")
    if len(data) > MAX_CLOSE_REASON:
        raise ValueError(f"close reason is {len(data)} bytes, more than {MAX_CLOSE_REASON}")
    return _PACK_H(code) + data


def cut_close_reason(reason: str) -> str:
    """``reason`` cut to the 123 UTF-8 bytes a Close frame carries, at a character boundary."""
    data = reason.encode("utf-8")
    if len(data) <= MAX_CLOSE_REASON:
        return reason
    return data[:MAX_CLOSE_REASON].decode("utf-8", "ignore")


def parse_close_payload(payload: bytes) -> tuple[Optional[int], str]:
    """Read the code and reason of a received Close frame.

    An empty payload gives ``(None, "")``. Raises :class:`ProtocolError` with
    1002 for a 1-byte payload or a code that may not be sent, and 1007 for a
    reason that is not UTF-8.
    """
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
    (code,) = _UNPACK_H(payload[:2])
    if not is_valid_close_code(code):
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = bytes(payload[2:]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CloseCode.INVALID_DATA, "close reason is not valid UTF-8") from None
    return code, reason
