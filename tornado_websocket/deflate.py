"""permessage-deflate (RFC 7692): negotiation and per-message (de)compression, without I/O.

The server calls :func:`negotiate_server` with the client's offers; the
client sends :func:`client_offer` and checks the answer with
:func:`accept_client_response`. Both get a :class:`PerMessageDeflate` that
compresses outgoing messages and inflates incoming ones in bounded steps,
so a small message that would inflate past ``max_message_size`` is stopped
after allocating no more than the limit.

The deflate library is zlib-ng's Python binding when it is installed
(``pip install tornado_websocket[fast]``: the same API and the same wire
format, faster), else the standard library's ``zlib``;
``TORNADO_WEBSOCKET_STDLIB_ZLIB=1`` forces the standard library's.
:data:`ZLIB` names the one in use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from tornado_websocket.errors import ProtocolError
from tornado_websocket.frames import CloseCode
from tornado_websocket.handshake import ExtensionOffer, ExtensionParams, format_extension

#: Set TORNADO_WEBSOCKET_STDLIB_ZLIB=1 to use the standard library's zlib even where zlib-ng is installed.
STDLIB_ZLIB = bool(os.environ.get("TORNADO_WEBSOCKET_STDLIB_ZLIB"))
try:
    if STDLIB_ZLIB:
        raise ImportError("TORNADO_WEBSOCKET_STDLIB_ZLIB is set")
    from zlib_ng import zlib_ng as zlib
except ImportError:
    import zlib  # type: ignore[no-redef]

#: The deflate library in use: ``"zlib_ng.zlib_ng"`` or ``"zlib"``.
ZLIB = zlib.__name__
_ZLIB_ERROR: Any = zlib.error

EXTENSION_NAME = "permessage-deflate"
_TAIL = b"\x00\x00\xff\xff"
_PARAMS = (
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
)


class DeflateError(ValueError):
    """A compressed message does not inflate."""


@dataclass(frozen=True)
class DeflateOptions:
    """Settings for permessage-deflate, from ``get_compression_options()`` or ``compression_options=``.

    ``server_max_window_bits`` / ``client_max_window_bits`` (9-15) size the
    LZ77 window of each direction, and with it the memory a connection
    keeps between messages; ``*_no_context_takeover`` forgets the window
    after every message instead. ``compression_level`` (-1, zlib's default, or 0-9) and
    ``mem_level`` (1-9) go to zlib. Messages shorter than ``threshold``
    bytes are sent uncompressed. See ``docs/compression.md`` for what each
    costs per connection.
    """

    compression_level: int = 1
    mem_level: int = 5
    server_max_window_bits: int = 13
    client_max_window_bits: int = 13
    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    threshold: int = 32

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> DeflateOptions:
        """Build options from a dict; raises ``ValueError`` for out-of-range values.

        Unknown keys are ignored, as Tornado does (:func:`unknown_options`
        names them, for the caller to warn about).

        ``max_window_bits`` sets both window sizes, ``no_context_takeover`` both flags.
        """
        options = dict(options)
        if "max_window_bits" in options:
            bits = options.pop("max_window_bits")
            options.setdefault("server_max_window_bits", bits)
            options.setdefault("client_max_window_bits", bits)
        if "no_context_takeover" in options:
            flag = options.pop("no_context_takeover")
            options.setdefault("server_no_context_takeover", flag)
            options.setdefault("client_no_context_takeover", flag)
        for name in unknown_options(options):
            del options[name]
        result = cls(**options)
        for name in ("server_max_window_bits", "client_max_window_bits"):
            if not 9 <= getattr(result, name) <= 15:
                raise ValueError(f"{name} must be between 9 and 15")
        if not -1 <= result.compression_level <= 9:
            raise ValueError("compression_level must be between -1 and 9")
        if not 1 <= result.mem_level <= 9:
            raise ValueError("mem_level must be between 1 and 9")
        return result


def unknown_options(options: dict[str, Any]) -> list[str]:
    """The keys of a compression options dict that :class:`DeflateOptions` does not know, sorted."""
    known = set(DeflateOptions.__dataclass_fields__) | {"max_window_bits", "no_context_takeover"}
    return sorted(set(options) - known)


class PerMessageDeflate:
    """The negotiated extension of one connection: compresses what we send, inflates what we get."""

    __slots__ = (
        "_level",
        "_mem_level",
        "_send_bits",
        "_recv_bits",
        "_send_reset",
        "_recv_reset",
        "_threshold",
        "_compressor",
        "_decompressor",
    )

    def __init__(
        self,
        *,
        send_window_bits: int,
        receive_window_bits: int,
        send_no_context_takeover: bool,
        receive_no_context_takeover: bool,
        options: DeflateOptions,
    ) -> None:
        self._level = options.compression_level
        self._mem_level = options.mem_level
        # zlib cannot compress with a 256-byte window; 9 is the smallest it writes.
        self._send_bits = max(send_window_bits, 9)
        self._recv_bits = receive_window_bits
        self._send_reset = send_no_context_takeover
        self._recv_reset = receive_no_context_takeover
        self._threshold = options.threshold
        self._compressor: Optional[Any] = None
        self._decompressor: Optional[Any] = None

    def compress(self, data: bytes) -> Optional[bytes]:
        """Compress one whole message; ``None`` when it is below the threshold (send it plain)."""
        if len(data) < self._threshold:
            return None
        compressor = self._compressor
        if compressor is None:
            compressor = zlib.compressobj(self._level, zlib.DEFLATED, -self._send_bits, self._mem_level)
        out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        self._compressor = None if self._send_reset else compressor
        if out.endswith(_TAIL):
            out = out[:-4]
        return out or b"\x00"

    def decompress(self, data: bytes, end_of_message: bool, room: Optional[int]) -> bytes:
        """Inflate the next piece of a message, producing at most ``room`` bytes.

        Raises :class:`ProtocolError` (1009) when the output would exceed
        ``room`` and :class:`DeflateError` when the data does not inflate.
        """
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = self._decompressor = zlib.decompressobj(-self._recv_bits)
        try:
            if end_of_message:
                data = data + _TAIL
            if room is None:
                out = decompressor.decompress(data)
            else:
                out = decompressor.decompress(data, room + 1)
                if len(out) > room or decompressor.unconsumed_tail:
                    raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "message too big after decompression")
        except _ZLIB_ERROR as exc:
            raise DeflateError(f"compressed message does not inflate: {exc}") from None
        if decompressor.eof:
            # The sender ended the stream with a BFINAL block (RFC 7692 section 7.2.3.4): only
            # the tail we appended may follow it, and the next message starts a new stream.
            if not end_of_message or decompressor.unused_data not in (b"", _TAIL):
                raise DeflateError("data after the end of the deflate stream")
            self._decompressor = None
        elif end_of_message and self._recv_reset:
            self._decompressor = None
        return out


def _parse_params(params: ExtensionParams) -> Optional[dict[str, Optional[int]]]:
    """Validate one offer's or response's parameters; ``None`` when they are not acceptable.

    Window bits take integers 8-15; ``client_max_window_bits`` may have no
    value (``-1`` here); the ``no_context_takeover`` flags take none.
    Unknown or repeated parameters make the whole set invalid.
    """
    result: dict[str, Optional[int]] = {}
    for name, value in params:
        if name not in _PARAMS or name in result:
            return None
        if name.endswith("no_context_takeover"):
            if value is not None:
                return None
            result[name] = None
        else:
            if value is None:
                if name != "client_max_window_bits":
                    return None
                result[name] = -1
            elif not (value.isdigit() and value[0] != "0" and 8 <= int(value) <= 15):
                return None
            else:
                result[name] = int(value)
    return result


def negotiate_server(offers: list[ExtensionOffer], options: dict[str, Any]) -> Optional[tuple[str, PerMessageDeflate]]:
    """Accept the first acceptable permessage-deflate offer (RFC 7692 section 7).

    Returns the ``Sec-WebSocket-Extensions`` value to answer with and the
    extension, or ``None`` when no offer can be accepted (the connection
    then runs uncompressed). Raises ``ValueError`` for invalid ``options``.
    """
    opts = DeflateOptions.from_dict(options)
    for name, raw_params in offers:
        if name != EXTENSION_NAME:
            continue
        params = _parse_params(raw_params)
        if params is None:
            continue
        response: ExtensionParams = []
        server_reset = "server_no_context_takeover" in params or opts.server_no_context_takeover
        if server_reset:
            response.append(("server_no_context_takeover", None))
        client_reset = "client_no_context_takeover" in params or opts.client_no_context_takeover
        if client_reset:
            response.append(("client_no_context_takeover", None))

        send_bits = opts.server_max_window_bits
        offered_server_bits = params.get("server_max_window_bits")
        if offered_server_bits is not None:
            if offered_server_bits < 9:
                continue  # zlib cannot compress with a 256-byte window
            send_bits = min(send_bits, offered_server_bits)
        if send_bits < 15 or offered_server_bits is not None:
            response.append(("server_max_window_bits", str(send_bits)))

        receive_bits = 15
        offered_client_bits = params.get("client_max_window_bits", 0)
        if offered_client_bits:  # offered, with (8-15) or without (-1) a value
            receive_bits = opts.client_max_window_bits
            if offered_client_bits > 0:
                receive_bits = min(receive_bits, offered_client_bits)
            if receive_bits < 15 or offered_client_bits > 0:
                response.append(("client_max_window_bits", str(receive_bits)))

        extension = PerMessageDeflate(
            send_window_bits=send_bits,
            receive_window_bits=receive_bits,
            send_no_context_takeover=server_reset,
            receive_no_context_takeover=client_reset,
            options=opts,
        )
        return format_extension(EXTENSION_NAME, response), extension
    return None


def client_offer(options: dict[str, Any]) -> str:
    """The ``Sec-WebSocket-Extensions`` value a client sends to offer permessage-deflate.

    Raises ``ValueError`` for invalid ``options``.
    """
    opts = DeflateOptions.from_dict(options)
    params: ExtensionParams = []
    if opts.server_no_context_takeover:
        params.append(("server_no_context_takeover", None))
    if opts.client_no_context_takeover:
        params.append(("client_no_context_takeover", None))
    if opts.server_max_window_bits < 15:
        params.append(("server_max_window_bits", str(opts.server_max_window_bits)))
    if opts.client_max_window_bits < 15:
        params.append(("client_max_window_bits", str(opts.client_max_window_bits)))
    else:
        params.append(("client_max_window_bits", None))
    return format_extension(EXTENSION_NAME, params)


def accept_client_response(extensions: list[ExtensionOffer], options: dict[str, Any]) -> Optional[PerMessageDeflate]:
    """Check the server's ``Sec-WebSocket-Extensions`` answer to :func:`client_offer`.

    Returns the extension, or ``None`` when the server declined it. Raises
    ``ValueError`` when the answer names another extension, repeats this
    one, or has parameters the offer did not allow (the client must then
    fail the connection).
    """
    if not extensions:
        return None
    if len(extensions) > 1 or extensions[0][0] != EXTENSION_NAME:
        raise ValueError(
            "server accepted an extension that was not offered: " + ", ".join(name for name, _ in extensions)
        )
    opts = DeflateOptions.from_dict(options)
    params = _parse_params(extensions[0][1])
    if params is None:
        raise ValueError("server answered permessage-deflate with invalid parameters")
    server_bits = params.get("server_max_window_bits") or 15
    if opts.server_max_window_bits < 15 and server_bits > opts.server_max_window_bits:
        raise ValueError("server_max_window_bits is larger than offered")
    if opts.server_no_context_takeover and "server_no_context_takeover" not in params:
        raise ValueError("server ignored server_no_context_takeover")
    client_bits = params.get("client_max_window_bits")
    if client_bits == -1:
        raise ValueError("client_max_window_bits needs a value in a response")
    send_bits = min(client_bits or 15, opts.client_max_window_bits)
    return PerMessageDeflate(
        send_window_bits=send_bits,
        receive_window_bits=server_bits,
        send_no_context_takeover="client_no_context_takeover" in params or opts.client_no_context_takeover,
        receive_no_context_takeover="server_no_context_takeover" in params,
        options=opts,
    )
