"""The Sans-I/O WebSocket connection state machine (RFC 6455 sections 5-7).

:class:`Protocol` takes the bytes that arrive (:meth:`Protocol.feed`) and
returns events; it turns outgoing messages and control frames into bytes
(:meth:`Protocol.encode_message` and friends). It never touches a socket and
never answers a ping or a close by itself: the caller dispatches events in
order and asks for the answer, so that replies written while handling a
message leave before the close that followed it.

Server and client share it; ``side`` (:class:`Side`) decides who masks.
It imports only the standard library and the other Sans-I/O modules: no
thread-locals, no module-level state. What the I/O layer lends it (a pool
of receive buffers for large frames) is passed in.
"""

from __future__ import annotations

import codecs
import enum
from typing import Callable, Optional, Union, cast
from typing import Protocol as TypingProtocol

from tornado_websocket.deflate import DeflateError, PerMessageDeflate
from tornado_websocket.errors import ProtocolError, WebSocketClosedError
from tornado_websocket.frames import (
    MAX_CONTROL_PAYLOAD,
    NO_SPEEDUPS,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CloseCode,
    apply_mask,
    encode_close_payload,
    encode_frame,
    encode_frame_parts,
    parse_close_payload,
)

DEFAULT_MAX_MESSAGE_SIZE = 10 * 1024 * 1024
# Binary frames from this size on are gathered into one buffer instead of streamed in pieces.
DIRECT_FRAME_MIN = 64 * 1024

_new_utf8_decoder: Callable[[], codecs.IncrementalDecoder] = codecs.getincrementaldecoder("utf-8")

# The C fast path for whole messages (see _speedups.c); None without the extension or with
# TORNADO_WEBSOCKET_NO_SPEEDUPS=1, and then the Python loop below does all of it.
_parse_messages: Optional[Callable[..., tuple[int, int, int]]]
try:
    if NO_SPEEDUPS:
        raise ImportError("TORNADO_WEBSOCKET_NO_SPEEDUPS is set")
    from tornado_websocket._speedups import parse_messages as _parse_messages
except ImportError:
    _parse_messages = None


class Side(enum.Enum):
    """Which end of the connection a :class:`Protocol` is: the client masks what it sends."""

    SERVER = "server"
    CLIENT = "client"


class State(enum.Enum):
    """Where a connection is in its life (RFC 6455 section 4 and 7).

    ``CONNECTING`` is never held by a :class:`Protocol` (it is made once the
    handshake succeeded) but names the time before, for the layers above.
    ``CLOSING``: a Close frame went one way or the peer broke the protocol.
    ``CLOSED``: the TCP connection is gone (:meth:`Protocol.connection_lost`).
    """

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class BufferProvider(TypingProtocol):
    """Lends the buffers that large binary frames are received into (see :meth:`Protocol.frame_buffer_space`)."""

    def take(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes; its contents are undefined."""

    def give(self, buf: bytearray) -> None:
        """``buf`` is no longer used (no view of it remains)."""


class Message:
    """A complete data message: ``data`` is ``str`` for text, ``bytes`` for binary.

    ``utf8`` is the payload a whole text frame was decoded from (else
    ``None``), so that the I/O layer can send that very ``str`` back without
    encoding it again.
    """

    __slots__ = ("data", "utf8")
    __match_args__ = ("data",)

    def __init__(self, data: Union[str, bytes], utf8: Optional[bytes] = None) -> None:
        self.data = data
        self.utf8 = utf8

    def __repr__(self) -> str:
        return f"Message({self.data!r})"


class _Control:
    """A ping or pong and its payload."""

    __slots__ = ("payload",)
    __match_args__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.payload!r})"


class Ping(_Control):
    """A ping arrived; answer it with :meth:`Protocol.encode_pong` of ``payload``."""

    __slots__ = ()


class Pong(_Control):
    """A pong arrived."""

    __slots__ = ()


class Close:
    """The code and reason of a Close frame; ``code`` is ``None`` when the frame carried none."""

    __slots__ = ("code", "reason")
    __match_args__ = ("code", "reason")

    def __init__(self, code: Optional[int], reason: str) -> None:
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.reason!r})"


class CloseReceived(Close):
    """The peer sent a Close frame. Nothing after it is parsed.

    If no close was sent yet, answer with :meth:`Protocol.encode_close`.
    """

    __slots__ = ()


class ProtocolViolation(Close):
    """The peer broke the protocol: send a close with ``code`` and drop the connection.

    Nothing after it is parsed.
    """

    __slots__ = ()

    code: int


#: Payloads from this size are unmasked out of a memoryview of the input rather than a copy.
UNMASK_VIEW_MIN = 1024

Event = Union[Message, Ping, Pong, CloseReceived, ProtocolViolation]


class Protocol:
    """One WebSocket connection's framing state, without I/O.

    ``side`` says which end this is. ``max_message_size`` bounds a message
    (after decompression); ``None`` means no limit. ``deflate`` is the
    negotiated permessage-deflate extension, if any: it allows RSV1 on the
    first frame of a data message. ``buffers`` lends the buffers large
    binary frames are received into (see :meth:`frame_buffer_space`); without
    it each such frame gets a new one.

    :attr:`state` is the one place the connection's life is kept;
    :attr:`close_sent` and :attr:`close_received` hold the Close frames that
    went each way (``None`` until then).

    Counters, from the start: ``bytes_received`` / ``bytes_sent`` on the
    wire (every frame, as fed and as encoded), ``messages_received`` /
    ``messages_sent`` (data messages) and ``message_bytes_received`` /
    ``message_bytes_sent`` (their payloads, uncompressed).
    """

    __slots__ = (
        "side",
        "state",
        "bytes_received",
        "_sent_extra",
        "_base_header",
        "messages_received",
        "messages_sent",
        "message_bytes_received",
        "message_bytes_sent",
        "max_message_size",
        "deflate",
        "buffers",
        "close_sent",
        "close_received",
        "_masked",
        "_receiving",
        "_buf",
        "_msg_opcode",
        "_msg_compressed",
        "_msg_wire_size",
        "_msg_size",
        "_msg_parts",
        "_decoder",
        "_frame_remaining",
        "_frame_fin",
        "_frame_mask",
        "_frame_buf",
        "_frame_filled",
        "_frame_length",
        "_frame_direct",
        "_frame_raw",
    )

    def __init__(
        self,
        side: Side,
        max_message_size: Optional[int] = DEFAULT_MAX_MESSAGE_SIZE,
        deflate: Optional[PerMessageDeflate] = None,
        buffers: Optional[BufferProvider] = None,
    ) -> None:
        if not isinstance(side, Side):
            raise TypeError(f"side must be Side.SERVER or Side.CLIENT, not {side!r}")
        self.side = side
        self.state = State.OPEN
        self.bytes_received = 0
        self._sent_extra = 0  # see bytes_sent
        self.messages_received = self.messages_sent = 0
        self.message_bytes_received = self.message_bytes_sent = 0
        self.max_message_size = max_message_size
        self.deflate = deflate
        self.buffers = buffers
        self.close_sent: Optional[Close] = None
        self.close_received: Optional[CloseReceived] = None
        self._masked = side is Side.CLIENT  # the client masks what it sends and expects no mask
        self._base_header = 6 if self._masked else 2  # a frame header under 126 bytes (with the mask key)
        # False once nothing more is parsed: after the peer's Close, a violation, or the end of TCP.
        self._receiving = True
        self._buf = bytearray()
        # The data message being assembled; _msg_opcode is None between messages.
        self._msg_opcode: Optional[int] = None
        self._msg_compressed = False
        self._msg_wire_size = 0
        self._msg_size = 0
        self._msg_parts: list[Union[str, bytes]] = []
        self._decoder: Optional[codecs.IncrementalDecoder] = None
        # A data frame whose header was parsed but whose payload is still arriving.
        self._frame_remaining = 0
        self._frame_fin = False
        self._frame_mask = b""
        # The payload buffer of a large binary frame (see frame_buffer_space).
        self._frame_buf: Optional[bytearray] = None
        self._frame_filled = 0
        self._frame_length = 0
        self._frame_direct = False  # a large uncompressed binary frame, which may use _frame_buf
        self._frame_raw: list[bytes] = []  # its masked pieces before _frame_buf exists

    @property
    def is_client(self) -> bool:
        """True for :attr:`Side.CLIENT`."""
        return self._masked

    # -- receiving ---------------------------------------------------------

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> list[Event]:
        """Parse every complete frame in what has arrived; return the events in order.

        Data-frame payloads are consumed as they arrive, so invalid UTF-8 and
        oversized messages are found before the rest of the message is
        buffered. After a :class:`CloseReceived` or :class:`ProtocolViolation`
        event, later input is ignored. Never raises for bad input.
        """
        events: list[Event] = []
        if not self._receiving or not data:
            return events
        self.bytes_received += len(data)
        buf: Union[bytes, bytearray, memoryview]
        pos = 0
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data
            fast = _parse_messages
            if fast is not None and not self._frame_remaining and self._msg_opcode is None:
                # Whole messages first, in C; the parse loop below takes the rest, if any.
                limit = -1 if self.max_message_size is None else self.max_message_size
                pos, taken, taken_bytes = fast(data, 0, not self._masked, limit, Message, events)
                self.messages_received += taken
                self.message_bytes_received += taken_bytes
                if pos == len(data):
                    return events  # the usual read: nothing else in it
        try:
            pos = self._parse(buf, events, pos)
        except ProtocolError as exc:
            self._stop_receiving()
            self.state = State.CLOSING
            events.append(ProtocolViolation(exc.code, exc.reason))
            return events
        if not self._receiving:
            self._buf = bytearray()
        elif buf is data:
            if pos < len(data):
                self._buf = bytearray(data[pos:])
        else:
            del self._buf[:pos]
        return events

    def connection_lost(self) -> None:
        """The TCP connection is gone: :attr:`state` becomes ``CLOSED``.

        Buffers and the compression state (tens of KiB) are dropped.
        """
        self._stop_receiving()
        self.state = State.CLOSED
        self.deflate = None

    def _stop_receiving(self) -> None:
        self._receiving = False
        # A frame buffer in use is not given back: the I/O layer may still hold a view of it.
        self._frame_buf = None
        self._buf = bytearray()
        self._frame_raw = []
        self._msg_parts = []
        self._decoder = None

    def _parse(self, buf: Union[bytes, bytearray, memoryview], events: list[Event], pos: int = 0) -> int:
        """Consume frames from ``buf`` from ``pos`` on; return where the consumed bytes end."""
        end = len(buf)
        whole = whole_bytes = 0  # fast-path messages, counted once at the end
        fast = _parse_messages
        limit = -1 if self.max_message_size is None else self.max_message_size
        try:
            while pos < end:
                if fast is not None and not self._frame_remaining and self._msg_opcode is None:
                    # Whole, final, uncompressed messages in C; it stops at anything else
                    # (which the Python code below then accepts or refuses as always).
                    pos, taken, taken_bytes = fast(buf, pos, not self._masked, limit, Message, events)
                    if taken:
                        whole += taken
                        whole_bytes += taken_bytes
                        continue
                if self._frame_remaining:
                    # Inside the payload of a data frame: take what is there.
                    take = min(end - pos, self._frame_remaining)
                    if self._frame_buf is not None:
                        filled = self._frame_filled
                        with memoryview(buf) as view:
                            self._frame_buf[filled : filled + take] = view[pos : pos + take]
                        pos += take
                        self._frame_filled_in(take, events)
                        continue
                    if self._frame_direct:
                        # A large binary frame: keep the pieces masked, to unmask the whole
                        # payload at once (see frame_buffer_space).
                        self._frame_raw.append(bytes(buf[pos : pos + take]))
                        pos += take
                        self._frame_remaining -= take
                        if not self._frame_remaining:
                            self._frame_complete(b"".join(self._frame_raw), events)
                        continue
                    chunk = bytes(buf[pos : pos + take])
                    pos += take
                    self._frame_remaining -= take
                    mask = self._frame_mask
                    if mask:
                        chunk = apply_mask(mask, chunk)
                        shift = take % 4
                        self._frame_mask = mask[shift:] + mask[:shift]
                    frame_done = not self._frame_remaining
                    self._message_data(chunk, frame_done and self._frame_fin, events)
                    continue

                if end - pos < 2:
                    break
                b0 = buf[pos]
                b1 = buf[pos + 1]
                length = b1 & 0x7F
                if length < 126:
                    start = pos + 2
                elif length == 126:
                    if end - pos < 4:
                        break
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                    start = pos + 4
                else:
                    if end - pos < 10:
                        break
                    length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    if length >> 63:
                        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "64-bit frame length with the top bit set")
                    start = pos + 10
                opcode = b0 & 0x0F
                fin = b0 & 0x80
                self._check_header(b0, b1, opcode, length)
                mask = b""
                if b1 & 0x80:
                    if end - start < 4:
                        break
                    mask = bytes(buf[start : start + 4])
                    start += 4
                stop = start + length

                if opcode >= 0x8:
                    if stop > end:
                        break
                    payload = bytes(buf[start:stop])
                    if mask:
                        payload = apply_mask(mask, payload)
                    pos = stop
                    if self._control_frame(opcode, payload, events):
                        return pos
                    continue

                if stop <= end and fin and opcode != OP_CONTINUATION and not b0 & 0x40:
                    # Fast path: a whole, uncompressed, unfragmented message.
                    if not mask:
                        payload = bytes(buf[start:stop])
                    elif length < UNMASK_VIEW_MIN:
                        payload = apply_mask(mask, buf[start:stop])
                    else:
                        with memoryview(buf) as view:  # unmask straight out of the input, no copy first
                            payload = apply_mask(mask, view[start:stop])
                    pos = stop
                    whole += 1
                    whole_bytes += length
                    if opcode == OP_TEXT:
                        try:
                            events.append(Message(payload.decode("utf-8"), payload))
                        except UnicodeDecodeError:
                            raise ProtocolError(CloseCode.INVALID_DATA, "text message is not valid UTF-8") from None
                    else:
                        events.append(Message(payload))
                    continue

                # A data frame to stream: start a message if this frame opens one.
                if opcode != OP_CONTINUATION:
                    self._msg_opcode = opcode
                    self._msg_compressed = bool(b0 & 0x40)
                    self._msg_wire_size = 0
                    self._msg_size = 0
                    self._msg_parts = []
                    self._decoder = _new_utf8_decoder() if opcode == OP_TEXT else None
                self._msg_wire_size += length
                pos = start
                self._frame_remaining = length
                self._frame_fin = bool(fin)
                self._frame_mask = mask
                self._frame_length = length
                self._frame_direct = length >= DIRECT_FRAME_MIN and self._decoder is None and not self._msg_compressed
                if length == 0:
                    self._message_data(b"", bool(fin), events)
            return pos
        finally:
            if whole:
                self.messages_received += whole
                self.message_bytes_received += whole_bytes

    def frame_buffer_space(self) -> Optional[memoryview]:
        """Where the rest of a large binary frame's payload goes, for receiving straight into it.

        ``None`` unless a binary frame of at least 64 KiB is at least a quarter received.
        After writing ``n`` bytes at the start of the view, call
        :meth:`frame_buffer_filled`. Lets the I/O layer skip its own buffer
        copies for large messages; :meth:`feed` works as well.
        """
        if not self._receiving or not self._frame_remaining:
            return None
        if self._frame_buf is None:
            received = self._frame_length - self._frame_remaining
            if not self._frame_direct or received * 3 < self._frame_remaining:
                return None
            # A quarter of a large binary frame is in: gather the whole payload in one
            # buffer (not sooner, so that a bare header cannot make us allocate it).
            buffers = self.buffers
            buf = bytearray(self._frame_length) if buffers is None else buffers.take(self._frame_length)
            filled = 0
            for piece in self._frame_raw:
                buf[filled : filled + len(piece)] = piece
                filled += len(piece)
            self._frame_buf = buf
            self._frame_raw = []
            self._frame_filled = received
        return memoryview(self._frame_buf)[self._frame_filled : self._frame_length]

    def frame_buffer_filled(self, n: int) -> list[Event]:
        """Account for ``n`` bytes received into :meth:`frame_buffer_space`; return the events."""
        events: list[Event] = []
        if n <= 0 or self._frame_buf is None:
            return events
        if n > self._frame_remaining:
            raise ValueError("more bytes than the frame has left")
        self.bytes_received += n
        self._frame_filled_in(n, events)
        return events

    def _frame_filled_in(self, n: int, events: list[Event]) -> None:
        """``n`` more payload bytes are in the frame buffer; finish the frame when it is full."""
        self._frame_filled += n
        self._frame_remaining -= n
        if self._frame_remaining:
            return
        buf = self._frame_buf
        assert buf is not None
        self._frame_buf = None
        with memoryview(buf) as view:
            self._frame_complete(view[: self._frame_length], events)
        if self.buffers is not None:
            self.buffers.give(buf)

    def _frame_complete(self, masked_payload: Union[bytes, memoryview], events: list[Event]) -> None:
        """The whole (still masked) payload of a large binary frame is in: unmask it into its own bytes."""
        self._frame_raw = []
        mask = self._frame_mask
        if mask:
            payload = apply_mask(mask, masked_payload)
        else:
            payload = masked_payload if type(masked_payload) is bytes else bytes(masked_payload)
        self._message_data(payload, self._frame_fin, events)

    def _check_header(self, b0: int, b1: int, opcode: int, length: int) -> None:
        """Raise :class:`ProtocolError` for a frame header that may not be accepted."""
        if bool(b1 & 0x80) == self._masked:
            raise ProtocolError(
                CloseCode.PROTOCOL_ERROR,
                "masked frame from the server" if self._masked else "unmasked frame from the client",
            )
        if b0 & 0x70:
            if b0 & 0x30 or self.deflate is None:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set without an extension")
            if opcode not in (OP_TEXT, OP_BINARY):
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "RSV1 set on a continuation or control frame")
        if opcode >= 0x8:
            if opcode > OP_PONG:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
            if not b0 & 0x80:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "control frame payload over 125 bytes")
            return
        if opcode == OP_CONTINUATION:
            if self._msg_opcode is None:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "continuation frame with no message open")
            total = self._msg_wire_size + length
        elif opcode > OP_BINARY:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        elif self._msg_opcode is not None:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "new data frame inside a fragmented message")
        else:
            total = length
        limit = self.max_message_size
        if limit is not None:
            if self._msg_compressed if opcode == OP_CONTINUATION else b0 & 0x40:
                # Compressed data can be slightly larger than what it encodes.
                limit += limit // 1024 + 64
            if total > limit:
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "message too big")

    def _message_data(self, chunk: bytes, message_done: bool, events: list[Event]) -> None:
        """Add payload bytes to the message being assembled; emit it when done."""
        if self._msg_compressed:
            assert self.deflate is not None
            room = None if self.max_message_size is None else self.max_message_size - self._msg_size
            try:
                chunk = self.deflate.decompress(chunk, message_done, room)
            except DeflateError as exc:
                code = CloseCode.INVALID_DATA if self._decoder else CloseCode.PROTOCOL_ERROR
                raise ProtocolError(code, str(exc)) from None
        self._msg_size += len(chunk)
        decoder = self._decoder
        if decoder is not None:
            try:
                self._msg_parts.append(decoder.decode(chunk, message_done))
            except UnicodeDecodeError:
                raise ProtocolError(CloseCode.INVALID_DATA, "text message is not valid UTF-8") from None
            if not message_done:
                pending = decoder.getstate()[0]
                # Python's decoder waits for the third byte of ED A0-BF, a surrogate: fail now.
                if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
                    raise ProtocolError(CloseCode.INVALID_DATA, "text message is not valid UTF-8")
        else:
            self._msg_parts.append(chunk)
        if not message_done:
            return
        parts = self._msg_parts
        self.messages_received += 1
        self.message_bytes_received += self._msg_size
        if decoder is not None:
            events.append(Message("".join(cast("list[str]", parts))))
        else:
            events.append(Message(b"".join(cast("list[bytes]", parts))))
        self._msg_opcode = None
        self._msg_parts = []
        self._decoder = None

    def _control_frame(self, opcode: int, payload: bytes, events: list[Event]) -> bool:
        """Emit the event of a control frame; return True when parsing must stop."""
        if opcode == OP_PING:
            events.append(Ping(payload))
        elif opcode == OP_PONG:
            events.append(Pong(payload))
        else:
            code, reason = parse_close_payload(payload)
            event = CloseReceived(code, reason)
            self.close_received = event
            self.state = State.CLOSING
            self._stop_receiving()
            events.append(event)
            return True
        return False

    # -- sending -----------------------------------------------------------

    def encode_message(
        self, data: Union[str, bytes], binary: bool, utf8: Optional[bytes] = None, compress: bool = True
    ) -> bytes:
        """Encode a data message as frame bytes (compressed when deflate is on).

        ``str`` data is UTF-8 encoded (or ``utf8`` used, see
        :meth:`encode_message_parts`). Raises :class:`WebSocketClosedError`
        once a close was sent.
        """
        if self.deflate is None and not self._masked and self.close_sent is None:
            # The common case inline: a server frame, uncompressed, with a 2-byte header.
            if type(data) is str:
                payload: Optional[bytes] = data.encode("utf-8") if utf8 is None else utf8
            elif type(data) is bytes:
                payload = data
            else:
                payload = None
            if payload is not None and len(payload) < 126:
                self.messages_sent += 1
                self.message_bytes_sent += len(payload)
                return bytes((0x82 if binary else 0x81, len(payload))) + payload
        header, payload = self.encode_message_parts(data, binary, utf8, compress)
        return header + payload

    def encode_message_parts(
        self, data: Union[str, bytes], binary: bool, utf8: Optional[bytes] = None, compress: bool = True
    ) -> tuple[bytes, bytes]:
        """Like :meth:`encode_message`, as ``(header, payload)`` to send without joining them.

        ``utf8``, if given, is ``data`` already encoded (the caller vouches
        for it): the I/O layer passes the bytes a text message was received
        as when the application sends that very ``str`` back. ``compress``
        False sends this message uncompressed even with permessage-deflate
        (RFC 7692 section 6: RSV1 is per message).
        """
        if self.close_sent is not None:
            raise WebSocketClosedError("the connection is closing")
        if isinstance(data, str):
            payload = data.encode("utf-8") if utf8 is None else utf8
        else:
            payload = data
        opcode = OP_BINARY if binary else OP_TEXT
        size = len(payload)
        self.messages_sent += 1
        self.message_bytes_sent += size
        deflate = self.deflate
        if deflate is not None and compress:
            compressed = deflate.compress(payload)
            if compressed is not None:
                parts = encode_frame_parts(opcode, compressed, rsv1=True, masked=self._masked)
                self._sent_extra += len(parts[0]) + len(compressed) - size - self._base_header
                return parts
        parts = encode_frame_parts(opcode, payload, masked=self._masked)
        if size >= 126:  # a longer header than bytes_sent counts per message
            self._sent_extra += len(parts[0]) - self._base_header
        return parts

    @property
    def bytes_sent(self) -> int:
        """Bytes encoded for the wire so far (every frame, control frames included).

        Kept as the messages' payload bytes plus a base header per message
        plus ``_sent_extra`` (longer headers, compression, control
        frames), so that a small message costs no third counter.
        """
        return self._sent_extra + self.message_bytes_sent + self.messages_sent * self._base_header

    @bytes_sent.setter
    def bytes_sent(self, value: int) -> None:
        self._sent_extra += value - self.bytes_sent

    def count_sent_message(self, payload_size: int, frame_size: int) -> None:
        """Count one data frame encoded elsewhere (once for many): ``payload_size`` bytes in ``frame_size``."""
        self.messages_sent += 1
        self.message_bytes_sent += payload_size
        self._sent_extra += frame_size - payload_size - self._base_header

    def encode_ping(self, payload: bytes = b"") -> bytes:
        """Encode a Ping; raises ``ValueError`` over 125 bytes, :class:`WebSocketClosedError` after close."""
        return self._encode_control(OP_PING, payload)

    def encode_pong(self, payload: bytes = b"") -> bytes:
        """Encode a Pong; raises like :meth:`encode_ping`."""
        return self._encode_control(OP_PONG, payload)

    def _encode_control(self, opcode: int, payload: bytes) -> bytes:
        if self.close_sent is not None:
            raise WebSocketClosedError("the connection is closing")
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise ValueError(f"control frame payload is {len(payload)} bytes, more than 125")
        frame = encode_frame(opcode, payload, masked=self._masked)
        self._sent_extra += len(frame)
        return frame

    def encode_close(self, code: Optional[int] = CloseCode.NORMAL_CLOSURE, reason: str = "") -> bytes:
        """Encode our Close frame; :attr:`close_sent` holds it and :attr:`state` becomes ``CLOSING``.

        Raises ``ValueError`` for a code that may not be sent or a reason
        over 123 bytes, :class:`WebSocketClosedError` if a close was sent
        already or the connection is gone.
        """
        if self.close_sent is not None or self.state is State.CLOSED:
            raise WebSocketClosedError("a close frame was sent already")
        payload = encode_close_payload(code, reason)
        self.close_sent = Close(code, reason)
        self.state = State.CLOSING
        frame = encode_frame(OP_CLOSE, payload, masked=self._masked)
        self._sent_extra += len(frame)
        return frame
