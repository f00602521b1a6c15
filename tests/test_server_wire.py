"""Socket-level tests: raw bytes against a real server, one rule of RFC 6455 at a time."""

from __future__ import annotations

import base64
import os
import struct

import pytest
import tornado.web
from conftest import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    build_frame,
    close_payload,
)

import tornado_websocket
from tornado_websocket.handshake import accept_key

pytestmark = pytest.mark.asyncio

MAX_SIZE = 1024


class Echo(tornado_websocket.WebSocketHandler):
    def on_message(self, message):
        self.write_message(message, binary=isinstance(message, bytes))


class Subprotocols(Echo):
    def select_subprotocol(self, subprotocols):
        return "chat.v2" if "chat.v2" in subprotocols else None


class NeedsAuth(Echo):
    def prepare(self):
        if self.request.headers.get("Authorization") != "Bearer good":
            raise tornado.web.HTTPError(401)


@pytest.fixture
def port(harness):
    return harness.serve(
        [(r"/ws", Echo), (r"/sub", Subprotocols), (r"/auth", NeedsAuth)],
        websocket_max_message_size=MAX_SIZE,
        trusted_origins=["https://trusted.example"],
    )


# -- the opening handshake ----------------------------------------------------


async def test_upgrade_answers_101_with_accept(harness, port):
    client = await harness.raw()
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    response = await client.request(key=key)
    assert response.status == 101
    assert response.headers["Sec-WebSocket-Accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert response.headers["Sec-WebSocket-Accept"] == accept_key(key)
    assert response.headers["Upgrade"].lower() == "websocket"
    assert "upgrade" in response.headers["Connection"].lower()
    assert "Sec-WebSocket-Protocol" not in response.headers
    assert "Content-Length" not in response.headers and "Transfer-Encoding" not in response.headers
    await client.send_text("hi")
    assert await client.read_text() == "hi"


async def test_upgrade_with_token_lists_and_case(harness, port):
    client = await harness.raw()
    response = await client.request(headers={"Upgrade": "WebSocket", "Connection": "keep-alive, UPGRADE"})
    assert response.status == 101
    assert response.headers["Sec-WebSocket-Accept"] == accept_key(client.key)


async def test_frames_sent_with_the_upgrade_request_are_not_lost(harness, port):
    client = await harness.raw()
    frames = build_frame(OP_TEXT, b"early-1") + build_frame(OP_TEXT, b"early-2")
    await client.send(client.upgrade_request() + frames)
    response = await client.read_response()
    assert response.status == 101
    assert await client.read_text() == "early-1"
    assert await client.read_text() == "early-2"


@pytest.mark.parametrize(
    "headers, named",
    [
        ({"Upgrade": None}, "Upgrade"),
        ({"Upgrade": "h2c"}, "Upgrade"),
        ({"Connection": None}, "Connection"),
        ({"Connection": "keep-alive"}, "Connection"),
        ({"Sec-WebSocket-Key": None}, "Sec-WebSocket-Key"),
        ({"Sec-WebSocket-Key": "not base64!"}, "Sec-WebSocket-Key"),
        ({"Sec-WebSocket-Key": base64.b64encode(b"short").decode()}, "Sec-WebSocket-Key"),
        ({"Sec-WebSocket-Version": None}, "Sec-WebSocket-Version"),
    ],
    ids=[
        "no-upgrade",
        "wrong-upgrade",
        "no-connection",
        "wrong-connection",
        "no-key",
        "key-not-base64",
        "key-not-16-bytes",
        "no-version",
    ],
)
async def test_bad_upgrade_request_is_400_naming_the_header(harness, port, headers, named):
    client = await harness.raw()
    response = await client.request(headers=headers)
    assert response.status == 400
    assert response.headers["Content-Type"].startswith("text/plain")
    assert named.encode() in response.body, response.body
    assert "Sec-WebSocket-Accept" not in response.headers


async def test_duplicate_key_is_400(harness, port):
    client = await harness.raw()
    other_key = base64.b64encode(os.urandom(16)).decode()
    response = await client.request(extra_lines=(f"Sec-WebSocket-Key: {other_key}",))
    assert response.status == 400
    assert b"Sec-WebSocket-Key" in response.body


async def test_http_10_is_400(harness, port):
    client = await harness.raw()
    response = await client.request(http_version="HTTP/1.0")
    assert response.status == 400
    assert b"HTTP/1.1" in response.body


async def test_version_12_is_426_with_supported_version(harness, port):
    client = await harness.raw()
    response = await client.request(headers={"Sec-WebSocket-Version": "12"})
    assert response.status == 426
    assert response.headers["Sec-WebSocket-Version"] == "13"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert b"Sec-WebSocket-Version" in response.body


async def test_post_is_405(harness, port):
    client = await harness.raw()
    response = await client.request(method="POST")
    assert response.status == 405
    assert response.headers["Allow"] == "GET"
    assert "Sec-WebSocket-Accept" not in response.headers


async def test_cross_origin_is_403(harness, port):
    client = await harness.raw()
    response = await client.request(headers={"Origin": "http://evil.example"})
    assert response.status == 403
    assert response.headers["Content-Type"].startswith("text/plain")
    assert b"evil.example" in response.body


async def test_cross_site_fetch_metadata_is_403(harness, port):
    client = await harness.raw()
    response = await client.request(headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert response.status == 403


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "SAME"},
        {"Origin": "SAME", "Sec-Fetch-Site": "same-origin"},
        {"Origin": "https://trusted.example"},
        {},
    ],
    ids=["same-origin", "same-origin-fetch-metadata", "trusted-origin", "no-origin"],
)
async def test_same_or_trusted_origin_passes(harness, port, headers):
    client = await harness.raw()
    headers = {k: (f"http://127.0.0.1:{port}" if v == "SAME" else v) for k, v in headers.items()}
    await client.handshake(headers=headers)
    await client.send_text("ok")
    assert await client.read_text() == "ok"


async def test_prepare_http_error_refuses_upgrade(harness, port):
    client = await harness.raw()
    response = await client.request("/auth")
    assert response.status == 401
    assert "Sec-WebSocket-Accept" not in response.headers
    allowed = await harness.raw()
    await allowed.handshake("/auth", headers={"Authorization": "Bearer good"})
    await allowed.send_text("authorized")
    assert await allowed.read_text() == "authorized"


async def test_subprotocol_selection_is_echoed(harness, port):
    client = await harness.raw()
    response = await client.handshake("/sub", headers={"Sec-WebSocket-Protocol": "chat.v1, chat.v2"})
    assert response.headers["Sec-WebSocket-Protocol"] == "chat.v2"
    none = await harness.raw()
    response = await none.handshake("/sub", headers={"Sec-WebSocket-Protocol": "other"})
    assert "Sec-WebSocket-Protocol" not in response.headers


# -- framing violations -> 1002 and TCP closed -----------------------------------

PROTOCOL_ERRORS = {
    "unmasked-client-frame": build_frame(OP_TEXT, b"hello", mask=False),
    "rsv1": build_frame(OP_TEXT, b"hello", rsv=4),
    "rsv2": build_frame(OP_TEXT, b"hello", rsv=2),
    "rsv3": build_frame(OP_TEXT, b"hello", rsv=1),
    "reserved-data-opcode-3": build_frame(0x3, b"x"),
    "reserved-data-opcode-7": build_frame(0x7, b"x"),
    "reserved-control-opcode-b": build_frame(0xB, b"x"),
    "reserved-control-opcode-f": build_frame(0xF, b""),
    "control-frame-126-bytes": build_frame(OP_PING, b"p" * 126),
    "close-frame-126-bytes": build_frame(OP_CLOSE, close_payload(1000, b"r" * 124)),
    "fragmented-ping": build_frame(OP_PING, b"p", fin=False),
    "continuation-no-message-open": build_frame(OP_CONT, b"x"),
    "final-continuation-no-message-open": build_frame(OP_CONT, b"x", fin=True),
    "text-inside-fragmented-message": build_frame(OP_TEXT, b"a", fin=False) + build_frame(OP_TEXT, b"b"),
    "binary-inside-fragmented-message": build_frame(OP_BINARY, b"a", fin=False) + build_frame(OP_BINARY, b"b"),
    "64-bit-length-top-bit": bytes((0x82, 0xFF)) + struct.pack("!Q", 1 << 63) + os.urandom(4),
}


@pytest.mark.parametrize("data", list(PROTOCOL_ERRORS.values()), ids=list(PROTOCOL_ERRORS))
async def test_protocol_violation_closes_with_1002_then_tcp(harness, port, data):
    client = await harness.raw_ws()
    await client.send(data)
    await client.expect_close_then_eof(1002)


async def test_violation_after_valid_messages_answers_them_first(harness, port):
    client = await harness.raw_ws()
    await client.send(build_frame(OP_TEXT, b"one") + build_frame(OP_TEXT, b"two") + build_frame(0x3, b""))
    assert await client.read_text() == "one"
    assert await client.read_text() == "two"
    await client.expect_close_then_eof(1002)


# -- invalid UTF-8 -> 1007 -------------------------------------------------------

INVALID_UTF8 = {
    "lone-ff": b"abc\xff",
    "overlong": b"\xc0\xaf",
    "surrogate": b"\xed\xa0\x80",
    "over-max-codepoint": b"\xf4\x90\x80\x80",
    "truncated-at-end": b"ok\xe2\x82",
}


@pytest.mark.parametrize("payload", list(INVALID_UTF8.values()), ids=list(INVALID_UTF8))
async def test_invalid_utf8_text_is_1007(harness, port, payload):
    client = await harness.raw_ws()
    await client.send_frame(OP_TEXT, payload)
    await client.expect_close_then_eof(1007)


async def test_invalid_utf8_in_final_fragment_is_1007(harness, port):
    client = await harness.raw_ws()
    await client.send(build_frame(OP_TEXT, b"valid ", fin=False) + build_frame(OP_CONT, b"\xe2\x82", fin=True))
    await client.expect_close_then_eof(1007)


@pytest.mark.parametrize(
    "payload", [b"\xff", b"ok\xed\xa0\x80", b"\xce\xba\xc0\xaf"], ids=["ff", "surrogate", "overlong"]
)
async def test_invalid_utf8_in_first_fragment_detected_before_the_end(harness, port, payload):
    """The final fragment is never sent: only incremental validation can answer."""
    client = await harness.raw_ws()
    await client.send_frame(OP_TEXT, payload, fin=False)
    await client.expect_close_then_eof(1007)


async def test_invalid_utf8_in_partial_frame_detected_before_the_end(harness, port):
    """One unfragmented text frame whose payload never fully arrives."""
    client = await harness.raw_ws()
    frame = build_frame(OP_TEXT, b"\xff" + b"x" * 500)
    await client.send(frame[:100])
    await client.expect_close_then_eof(1007)


async def test_utf8_split_across_fragments_is_valid(harness, port):
    client = await harness.raw_ws()
    text = "κόσμε €𝄞"
    data = text.encode("utf-8")
    cuts = [1, 4, 9, len(data) - 2]
    frames = []
    start = 0
    for i, cut in enumerate(cuts + [len(data)]):
        opcode = OP_TEXT if i == 0 else OP_CONT
        frames.append(build_frame(opcode, data[start:cut], fin=cut == len(data)))
        start = cut
    await client.send(b"".join(frames))
    assert await client.read_text() == text


async def test_binary_is_not_utf8_checked(harness, port):
    client = await harness.raw_ws()
    await client.send_frame(OP_BINARY, b"\xff\xfe\x00")
    assert await client.read_message() == (OP_BINARY, b"\xff\xfe\x00")


# -- message size -> 1009 --------------------------------------------------------


async def test_message_at_the_limit_passes(harness, port):
    client = await harness.raw_ws()
    await client.send_frame(OP_BINARY, b"x" * MAX_SIZE)
    assert await client.read_message() == (OP_BINARY, b"x" * MAX_SIZE)


async def test_oversized_frame_is_1009_after_only_the_header(harness, port):
    client = await harness.raw_ws()
    await client.send(build_frame(OP_BINARY, length=MAX_SIZE + 1, include_payload=False))
    await client.expect_close_then_eof(1009)


async def test_oversized_64bit_header_is_1009(harness, port):
    client = await harness.raw_ws()
    await client.send(build_frame(OP_TEXT, length=10 * 1024 * 1024 * 1024, include_payload=False))
    await client.expect_close_then_eof(1009)


async def test_oversized_fragmented_message_is_1009_at_the_fragment_header(harness, port):
    client = await harness.raw_ws()
    await client.send(build_frame(OP_TEXT, b"a" * 1000, fin=False))
    await client.send(build_frame(OP_CONT, length=MAX_SIZE - 1000 + 1, include_payload=False))
    await client.expect_close_then_eof(1009)


# -- close codes ---------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 3000, 4999])
async def test_valid_close_code_is_echoed_then_tcp_closed(harness, port, code):
    client = await harness.raw_ws()
    await client.send_close(code, b"bye")
    frame = await client.read_close()
    assert frame.close_code == code
    await client.expect_eof()


async def test_empty_close_is_answered(harness, port):
    client = await harness.raw_ws()
    await client.send_close(None)
    frame = await client.read_close()
    assert frame.close_code in (None, 1000)
    assert frame.close_reason == b""
    await client.expect_eof()


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535])
async def test_invalid_close_code_is_1002(harness, port, code):
    client = await harness.raw_ws()
    await client.send_close(code)
    await client.expect_close_then_eof(1002)


async def test_one_byte_close_payload_is_1002(harness, port):
    client = await harness.raw_ws()
    await client.send_frame(OP_CLOSE, b"\x03")
    await client.expect_close_then_eof(1002)


async def test_invalid_utf8_close_reason_is_1007(harness, port):
    client = await harness.raw_ws()
    await client.send_close(1000, b"bad \xff reason")
    await client.expect_close_then_eof(1007)


async def test_nothing_after_close_is_processed(harness, port):
    client = await harness.raw_ws()
    await client.send(
        build_frame(OP_CLOSE, close_payload(1000)) + build_frame(OP_TEXT, b"late") + build_frame(OP_PING, b"p")
    )
    frame = await client.read_close()
    assert frame.close_code == 1000
    await client.expect_eof()


async def test_messages_before_close_are_answered_before_the_close(harness, port):
    client = await harness.raw_ws()
    await client.send(build_frame(OP_TEXT, b"last words") + build_frame(OP_CLOSE, close_payload(1000)))
    assert await client.read_text() == "last words"
    assert (await client.read_close()).close_code == 1000
    await client.expect_eof()


# -- pings ---------------------------------------------------------------------


async def test_pings_answered_with_same_payload_in_order(harness, port):
    client = await harness.raw_ws()
    payloads = [b"", b"a", b"second", bytes(range(125))]
    await client.send(b"".join(build_frame(OP_PING, p) for p in payloads))
    for p in payloads:
        frame = await client.read_frame()
        assert (frame.opcode, frame.payload, frame.fin) == (OP_PONG, p, True)


async def test_pings_between_fragments_are_answered(harness, port):
    client = await harness.raw_ws()
    await client.send(build_frame(OP_TEXT, b"frag-1 ", fin=False))
    await client.send(build_frame(OP_PING, b"mid-1"))
    frame = await client.read_frame()
    assert (frame.opcode, frame.payload) == (OP_PONG, b"mid-1")  # answered while the message is open
    await client.send(build_frame(OP_CONT, b"frag-2 ", fin=False) + build_frame(OP_PING, b"mid-2"))
    frame = await client.read_frame()
    assert (frame.opcode, frame.payload) == (OP_PONG, b"mid-2")
    await client.send(build_frame(OP_CONT, b"frag-3", fin=True) + build_frame(OP_PING, b"after"))
    assert await client.read_text() == "frag-1 frag-2 frag-3"
    frame = await client.read_frame()
    assert (frame.opcode, frame.payload) == (OP_PONG, b"after")


async def test_unsolicited_pong_is_ignored(harness, port):
    client = await harness.raw_ws()
    await client.send(build_frame(OP_PONG, b"unsolicited") + build_frame(OP_TEXT, b"still here"))
    assert await client.read_text() == "still here"


# -- data transfer ---------------------------------------------------------------


async def test_many_frames_in_one_write_are_all_echoed(harness, port):
    client = await harness.raw_ws()
    messages = [f"message {i}".encode() for i in range(200)]
    await client.send(b"".join(build_frame(OP_TEXT, m) for m in messages))
    for m in messages:
        assert await client.read_text() == m.decode()


async def test_flood_of_frames_with_pings_keeps_order(harness, port):
    """More frames in one write than the server handles before yielding to other tasks."""
    client = await harness.raw_ws()
    frames = []
    expected = []
    for i in range(1500):
        frames.append(build_frame(OP_TEXT, f"f{i}".encode()))
        expected.append((OP_TEXT, f"f{i}".encode()))
        if i % 100 == 99:
            frames.append(build_frame(OP_PING, f"p{i}".encode()))
            expected.append((OP_PONG, f"p{i}".encode()))
    await client.send(b"".join(frames))
    for opcode, payload in expected:
        frame = await client.read_frame()
        assert (frame.opcode, frame.payload) == (opcode, payload)


async def test_mixed_frames_in_one_write_keep_order(harness, port):
    client = await harness.raw_ws()
    data = (
        build_frame(OP_TEXT, b"t1")
        + build_frame(OP_PING, b"p1")
        + build_frame(OP_BINARY, b"\x00b1", fin=False)
        + build_frame(OP_PING, b"p2")
        + build_frame(OP_CONT, b"b2")
        + build_frame(OP_TEXT, b"")
    )
    await client.send(data)
    assert await client.read_message() == (OP_TEXT, b"t1")
    assert (await client.read_frame())[2:4] == (OP_PONG, b"p1")
    assert (await client.read_frame())[2:4] == (OP_PONG, b"p2")
    assert await client.read_message() == (OP_BINARY, b"\x00b1b2")
    assert await client.read_message() == (OP_TEXT, b"")


async def test_frame_split_inside_header_mask_and_payload(harness, port, feed_spy):
    client = await harness.raw_ws()
    payload = bytes(range(256)) + b"odd-tail"  # 264 bytes: 16-bit length
    frame = build_frame(OP_BINARY, payload)  # 2 + 2 + 4 header bytes
    await feed_spy.send_in_pieces(client, frame, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 50, 101, 202, 203])
    assert await client.read_message() == (OP_BINARY, payload)
    assert feed_spy.calls >= 16


async def test_64bit_frame_split_in_pieces(harness, feed_spy):
    port = harness.serve([(r"/ws", Echo)])
    client = await harness.raw_ws(port=port)
    payload = os.urandom(70_001)
    frame = build_frame(OP_BINARY, payload)  # 2 + 8 + 4 header bytes
    await feed_spy.send_in_pieces(client, frame, [1, 3, 9, 11, 13, 15, 1001, 33_335, 70_000])
    assert await client.read_message() == (OP_BINARY, payload)


async def test_text_split_inside_a_character_across_reads(harness, port, feed_spy):
    client = await harness.raw_ws()
    text = "€uro 𝄞 κ"
    frame = build_frame(OP_TEXT, text.encode("utf-8"))
    header = 6
    # cut inside the 3-byte euro sign, inside the 4-byte clef and inside the 2-byte kappa
    cuts = [header + 1, header + 2, header + 9, header + 10, header + 11, header + 15]
    await feed_spy.send_in_pieces(client, frame, cuts)
    assert await client.read_text() == text


async def test_control_frames_split_across_reads(harness, port, feed_spy):
    client = await harness.raw_ws()
    ping = build_frame(OP_PING, b"split ping")
    await feed_spy.send_in_pieces(client, ping, [1, 3, 7, 9])
    frame = await client.read_frame()
    assert (frame.opcode, frame.payload) == (OP_PONG, b"split ping")
    close = build_frame(OP_CLOSE, close_payload(3001, b"split"))
    await feed_spy.send_in_pieces(client, close, [1, 2, 6, 7, 9])
    assert (await client.read_close()).close_code == 3001
    await client.expect_eof()


async def test_large_message_with_64bit_length(harness):
    port = harness.serve([(r"/ws", Echo)])
    client = await harness.raw_ws(port=port)
    payload = os.urandom(200_000)
    frame = build_frame(OP_BINARY, payload[:70_001], fin=False) + build_frame(OP_CONT, payload[70_001:])
    for i in range(0, len(frame), 65_537):
        await client.send(frame[i : i + 65_537])
    assert await client.read_message() == (OP_BINARY, payload)


async def test_zero_length_fragments(harness, port):
    client = await harness.raw_ws()
    await client.send(
        build_frame(OP_TEXT, b"", fin=False)
        + build_frame(OP_CONT, b"x", fin=False)
        + build_frame(OP_CONT, b"", fin=True)
    )
    assert await client.read_text() == "x"


async def test_clean_close_by_client_ends_with_tcp_close(harness, port):
    client = await harness.raw_ws()
    await client.send_text("before close")
    assert await client.read_text() == "before close"
    await client.send_close(1000, b"done")
    frame = await client.read_close()
    assert frame.close_code == 1000
    await client.expect_eof()


class CompressChoice(tornado_websocket.WebSocketHandler):
    """Sends each message back twice: compressed as negotiated, then with ``compress=False``."""

    def get_compression_options(self):
        return {}

    def on_message(self, message):
        self.write_message(message)
        self.write_message(message, compress=False)


async def test_compress_false_sends_one_message_uncompressed(harness):
    """RFC 7692 section 6: RSV1 is per message, so one message may go uncompressed on a deflate connection."""
    import zlib

    harness.serve([(r"/ws", CompressChoice)])
    client = await harness.raw()
    response = await client.handshake("/ws", headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
    assert response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
    text = "compress me " * 20
    await client.send_text(text)
    compressed, plain = await client.read_frame(rsv_allowed=4), await client.read_frame(rsv_allowed=4)
    assert (compressed.rsv, plain.rsv) == (4, 0)
    inflater = zlib.decompressobj(-15)
    assert inflater.decompress(compressed.payload + b"\x00\x00\xff\xff").decode() == text
    assert plain.payload.decode() == text
