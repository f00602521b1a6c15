"""Tests for the opening handshake (RFC 6455 section 4) and permessage-deflate negotiation (RFC 7692)."""

from __future__ import annotations

import base64
import os
import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.httputil import HTTPHeaders

from tornado_websocket import deflate
from tornado_websocket.deflate import (
    DeflateOptions,
    PerMessageDeflate,
    accept_client_response,
    client_offer,
    negotiate_server,
)
from tornado_websocket.errors import HandshakeError, WebSocketHandshakeError
from tornado_websocket.handshake import (
    accept_key,
    client_request_headers,
    format_extension,
    generate_key,
    parse_extension_list,
    parse_response_head,
    parse_token_list,
    response_headers,
    validate_request,
    validate_response,
)

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
TAIL = b"\x00\x00\xff\xff"
PMD = "permessage-deflate"


# -- helpers ---------------------------------------------------------------


def headers(*pairs) -> HTTPHeaders:
    h = HTTPHeaders()
    for name, value in pairs:
        h.add(name, value)
    return h


GOOD_REQUEST = [
    ("Host", "server.example.com"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", RFC_KEY),
    ("Sec-WebSocket-Version", "13"),
]


def request(replace=None, drop=(), add=()) -> HTTPHeaders:
    """GOOD_REQUEST with some headers replaced, dropped or added."""
    replace = replace or {}
    pairs = []
    for name, value in GOOD_REQUEST:
        if name in drop:
            continue
        pairs.append((name, replace.get(name, value)))
    pairs.extend(add)
    return headers(*pairs)


def expect_handshake_error(method, version, h, status):
    with pytest.raises(HandshakeError) as info:
        validate_request(method, version, h)
    assert info.value.status == status
    assert info.value.reason
    return info.value


def good_response(key=RFC_KEY, extra=()) -> HTTPHeaders:
    return headers(
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept_key(key)), *extra
    )


def ext_list(*lines):
    return parse_extension_list(headers(*[("Sec-WebSocket-Extensions", line) for line in lines]))


def negotiate(offer_line, options=None):
    result = negotiate_server(ext_list(offer_line), options or {})
    return None if result is None else result[0]


def inflate_into(d, data: bytes, step: int = 32) -> bytes:
    """Inflate one message with a small output buffer.

    zlib only checks distances against the window when the match reaches back
    past the output of the current call, so a small ``max_length`` makes a
    decompressor with a small window actually reject far references.
    """
    out = []
    buf = data + TAIL
    while True:
        chunk = d.decompress(buf, step)
        out.append(chunk)
        buf = d.unconsumed_tail
        if not buf and not chunk:
            return b"".join(out)


def inflate(data: bytes, wbits: int) -> bytes:
    """Inflate one message with a ``wbits`` window, failing on references beyond it."""
    return inflate_into(zlib.decompressobj(-wbits), data)


def test_inflate_helper_detects_too_far_references():
    data = far_repeats()
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert inflate(out, 15) == data
    with pytest.raises(zlib.error):
        inflate(out, 9)


def far_repeats(seed: int = 7, size: int = 6000) -> bytes:
    """Data whose only redundancy is far back: a random block repeated at distance 2000."""
    rng = random.Random(seed)
    block = bytes(rng.getrandbits(8) for _ in range(2000))
    return (block * (size // 2000 + 1))[:size]


# -- accept key / simple helpers ---------------------------------------------


def test_accept_key_rfc_example():
    assert accept_key(RFC_KEY) == RFC_ACCEPT


def test_generate_key_is_base64_of_16_random_bytes():
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert len(base64.b64decode(key, validate=True)) == 16
        assert len(key) == 24


def test_response_headers_exact():
    assert response_headers(RFC_KEY, None, None) == {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Accept": RFC_ACCEPT,
    }
    assert response_headers(RFC_KEY, "chat", "permessage-deflate; server_max_window_bits=13") == {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Accept": RFC_ACCEPT,
        "Sec-WebSocket-Protocol": "chat",
        "Sec-WebSocket-Extensions": "permessage-deflate; server_max_window_bits=13",
    }


def test_client_request_headers_exact():
    assert client_request_headers(RFC_KEY, ["chat", "superchat"], "permessage-deflate") == {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": RFC_KEY,
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Protocol": "chat, superchat",
        "Sec-WebSocket-Extensions": "permessage-deflate",
    }
    assert "Sec-WebSocket-Protocol" not in client_request_headers(RFC_KEY, None, None)
    assert "Sec-WebSocket-Extensions" not in client_request_headers(RFC_KEY, [], "")


@pytest.mark.parametrize("bad", ["", "a b", "a,b", "chat;v=1", 'x"y', "é"])
def test_client_request_headers_invalid_subprotocol(bad):
    with pytest.raises(ValueError):
        client_request_headers(RFC_KEY, ["ok", bad], None)


def test_parse_token_list():
    h = headers(("Connection", "keep-alive, Upgrade"), ("Connection", ",foo ,, bar"))
    assert parse_token_list(h, "Connection") == ["keep-alive", "Upgrade", "foo", "bar"]
    assert parse_token_list(h, "Missing") == []


# -- validate_request ---------------------------------------------------------


def test_validate_request_ok_returns_key():
    assert validate_request("GET", "HTTP/1.1", request()) == RFC_KEY
    assert accept_key(validate_request("GET", "HTTP/1.1", request())) == RFC_ACCEPT


def test_validate_request_any_random_key():
    key = generate_key()
    assert validate_request("GET", "HTTP/1.1", request({"Sec-WebSocket-Key": key})) == key


@pytest.mark.parametrize(
    "upgrade", ["websocket", "WebSocket", "WEBSOCKET", "websocket, h2c", "h2c, WebSocket", "foo,websocket"]
)
def test_upgrade_header_accepted(upgrade):
    assert validate_request("GET", "HTTP/1.1", request({"Upgrade": upgrade})) == RFC_KEY


def test_upgrade_header_on_two_lines_accepted():
    h = request(drop=("Upgrade",), add=[("Upgrade", "h2c"), ("Upgrade", "websocket")])
    assert validate_request("GET", "HTTP/1.1", h) == RFC_KEY


@pytest.mark.parametrize("upgrade", ["h2c", "websockets", "web socket", "websocket/13x", "TLS/1.0"])
def test_upgrade_header_wrong_is_400(upgrade):
    expect_handshake_error("GET", "HTTP/1.1", request({"Upgrade": upgrade}), 400)


def test_upgrade_header_missing_is_400():
    expect_handshake_error("GET", "HTTP/1.1", request(drop=("Upgrade",)), 400)


@pytest.mark.parametrize(
    "connection",
    [
        "Upgrade",
        "upgrade",
        "UPGRADE",
        "keep-alive, Upgrade",
        "keep-alive,upgrade",
        "Upgrade, keep-alive",
        "keep-alive , UpGrAdE , close-later",
    ],
)
def test_connection_header_token_lists_accepted(connection):
    assert validate_request("GET", "HTTP/1.1", request({"Connection": connection})) == RFC_KEY


def test_connection_header_on_two_lines_accepted():
    h = request(drop=("Connection",), add=[("Connection", "keep-alive"), ("Connection", "Upgrade")])
    assert validate_request("GET", "HTTP/1.1", h) == RFC_KEY


@pytest.mark.parametrize("connection", ["keep-alive", "close", "Upgrade-Insecure-Requests", "upgraded", "websocket"])
def test_connection_header_wrong_is_400(connection):
    expect_handshake_error("GET", "HTTP/1.1", request({"Connection": connection}), 400)


def test_connection_header_missing_is_400():
    expect_handshake_error("GET", "HTTP/1.1", request(drop=("Connection",)), 400)


def test_missing_key_is_400():
    expect_handshake_error("GET", "HTTP/1.1", request(drop=("Sec-WebSocket-Key",)), 400)


def test_two_keys_is_400():
    h = request(add=[("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode())])
    expect_handshake_error("GET", "HTTP/1.1", h, 400)
    # Same key twice is still two headers.
    h = request(add=[("Sec-WebSocket-Key", RFC_KEY)])
    expect_handshake_error("GET", "HTTP/1.1", h, 400)


@pytest.mark.parametrize(
    "key",
    [
        "not base64!",
        "dGhlIHNhbXBsZSBub25jZQ",  # missing padding
        base64.b64encode(b"x" * 15).decode(),
        base64.b64encode(b"x" * 17).decode(),
        base64.b64encode(b"x" * 32).decode(),
        base64.b64encode(b"").decode() or "=",
        "dGhlIHNhbXBsZSBub25jZQ==dGhl",
        "dGhlIHNhbXBs ZSBub25jZQ==",
        "dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ==",
        "ÄGhlIHNhbXBsZSBub25jZQ==",
        "dGhlIHNhbXBsZSBub25jZQ-_",
    ],
)
def test_bad_key_is_400(key):
    expect_handshake_error("GET", "HTTP/1.1", request({"Sec-WebSocket-Key": key}), 400)


@pytest.mark.parametrize("version", ["12", "8", "7", "14", "0", "13, 8"])
def test_wrong_version_is_426_with_version_header(version):
    err = expect_handshake_error("GET", "HTTP/1.1", request({"Sec-WebSocket-Version": version}), 426)
    assert err.headers == {"Sec-WebSocket-Version": "13"}


def test_missing_version_is_400_with_version_header():
    err = expect_handshake_error("GET", "HTTP/1.1", request(drop=("Sec-WebSocket-Version",)), 400)
    assert err.headers.get("Sec-WebSocket-Version") == "13"


@pytest.mark.parametrize("method", ["POST", "PUT", "HEAD", "OPTIONS", "CONNECT", "get"])
def test_non_get_is_405(method):
    err = expect_handshake_error(method, "HTTP/1.1", request(), 405)
    assert err.headers.get("Allow") == "GET"


def test_http_10_is_400():
    expect_handshake_error("GET", "HTTP/1.0", request(), 400)


def test_missing_host_is_400():
    expect_handshake_error("GET", "HTTP/1.1", request(drop=("Host",)), 400)


def test_405_takes_precedence_over_other_problems():
    expect_handshake_error("POST", "HTTP/1.0", headers(), 405)


def test_empty_request_is_400():
    expect_handshake_error("GET", "HTTP/1.1", headers(), 400)


# -- parse_response_head (the client's upgrade answer, a proxy's answer to CONNECT) ----------


def test_parse_response_head_rfc_example():
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + RFC_ACCEPT.encode() + b"\r\n\r\n"
    )
    status, h = parse_response_head(head)
    assert (status.version, status.code, status.reason) == ("HTTP/1.1", 101, "Switching Protocols")
    assert list(h.get_all()) == [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-Websocket-Accept", RFC_ACCEPT),
    ]
    assert validate_response(status.code, h, b"", RFC_KEY, None) is None


def test_parse_response_head_bare_newlines_repeated_and_latin1_headers():
    status, h = parse_response_head(b"HTTP/1.0 200 OK\nVia: 1.1 a\nVia: 1.1 b\nX-Name: caf\xe9\n\n")
    assert (status.version, status.code) == ("HTTP/1.0", 200)
    assert h.get_list("Via") == ["1.1 a", "1.1 b"]
    assert h["X-Name"] == "caf\u00e9"


@pytest.mark.parametrize(
    "head",
    [b"SSH-2.0-OpenSSH_9.2\r\n\r\n", b"\r\n\r\n", b"HTTP/1.1 abc Nope\r\n\r\n", b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"],
)
def test_parse_response_head_not_http_is_599(head):
    with pytest.raises(WebSocketHandshakeError, match="malformed handshake response: ") as info:
        parse_response_head(head)
    assert info.value.code == 599
    with pytest.raises(WebSocketHandshakeError, match="malformed answer from the proxy to CONNECT: "):
        parse_response_head(head, "answer from the proxy to CONNECT")


# -- validate_response ------------------------------------------------------------


def test_validate_response_ok():
    assert validate_response(101, good_response(), b"", RFC_KEY, None) is None
    assert validate_response(101, good_response(), b"", RFC_KEY, ["chat"]) is None


def test_validate_response_rfc_accept_literal():
    h = headers(("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", RFC_ACCEPT))
    assert validate_response(101, h, b"", RFC_KEY, None) is None


def test_validate_response_token_lists():
    h = headers(("Upgrade", "WebSocket"), ("Connection", "keep-alive, upgrade"), ("Sec-WebSocket-Accept", RFC_ACCEPT))
    assert validate_response(101, h, b"", RFC_KEY, None) is None


def test_validate_response_subprotocol_chosen():
    h = good_response(extra=[("Sec-WebSocket-Protocol", "superchat")])
    assert validate_response(101, h, b"", RFC_KEY, ["chat", "superchat"]) == "superchat"


@pytest.mark.parametrize("status", [200, 400, 403, 404, 426, 500])
def test_validate_response_wrong_status(status):
    h = good_response()
    with pytest.raises(WebSocketHandshakeError) as info:
        validate_response(status, h, b"denied", RFC_KEY, None)
    assert info.value.code == status
    assert info.value.body == b"denied"
    assert info.value.headers is h


@pytest.mark.parametrize(
    "pairs",
    [
        [("Connection", "Upgrade"), ("Sec-WebSocket-Accept", RFC_ACCEPT)],  # no Upgrade
        [("Upgrade", "h2c"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", RFC_ACCEPT)],
        [("Upgrade", "websocket"), ("Sec-WebSocket-Accept", RFC_ACCEPT)],  # no Connection
        [("Upgrade", "websocket"), ("Connection", "keep-alive"), ("Sec-WebSocket-Accept", RFC_ACCEPT)],
        [("Upgrade", "websocket"), ("Connection", "Upgrade")],  # no accept
        [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo")],
        [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept_key(generate_key()))],
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", RFC_ACCEPT),
            ("Sec-WebSocket-Accept", RFC_ACCEPT),
        ],
    ],
)
def test_validate_response_bad_headers(pairs):
    with pytest.raises(WebSocketHandshakeError) as info:
        validate_response(101, headers(*pairs), b"", RFC_KEY, None)
    assert info.value.code == 101


@pytest.mark.parametrize(
    "chosen, offered",
    [
        ("chat", None),
        ("chat", []),
        ("other", ["chat"]),
        ("chat, superchat", ["chat", "superchat"]),
        ("Chat", ["chat"]),
    ],
)
def test_validate_response_subprotocol_not_offered(chosen, offered):
    h = good_response(extra=[("Sec-WebSocket-Protocol", chosen)])
    with pytest.raises(WebSocketHandshakeError):
        validate_response(101, h, b"", RFC_KEY, offered)


# -- parse_extension_list ---------------------------------------------------------


@pytest.mark.parametrize(
    "lines, expected",
    [
        ([PMD], [(PMD, [])]),
        (["permessage-deflate; client_max_window_bits"], [(PMD, [("client_max_window_bits", None)])]),
        (
            ["permessage-deflate; server_max_window_bits=10; client_no_context_takeover"],
            [(PMD, [("server_max_window_bits", "10"), ("client_no_context_takeover", None)])],
        ),
        (['permessage-deflate; server_max_window_bits="10"'], [(PMD, [("server_max_window_bits", "10")])]),
        (['x; a="\\b\\c"'], [("x", [("a", "bc")])]),
        (["permessage-deflate ;client_max_window_bits = 12"], [(PMD, [("client_max_window_bits", "12")])]),
        (["x ;a=1;b"], [("x", [("a", "1"), ("b", None)])]),
        (
            ["permessage-deflate; client_max_window_bits, permessage-deflate, x-webkit-deflate-frame"],
            [(PMD, [("client_max_window_bits", None)]), (PMD, []), ("x-webkit-deflate-frame", [])],
        ),
        (
            ["foo; a=1", "permessage-deflate; server_no_context_takeover", "bar"],
            [("foo", [("a", "1")]), (PMD, [("server_no_context_takeover", None)]), ("bar", [])],
        ),
        (["permessage-deflate, , x"], [(PMD, []), ("x", [])]),
        ([""], []),
        ([", ,"], []),
        ([], []),
    ],
)
def test_parse_extension_list(lines, expected):
    assert ext_list(*lines) == expected


@pytest.mark.parametrize(
    "line",
    [
        "permessage-deflate;",
        "permessage-deflate;;client_max_window_bits",
        "; a=1",
        "per message",
        "x, y z",
        "x; a=",
        "x; =1",
        "x; a=1=2",
        "x; a b",
        "x; a=@",
        'x; a="unterminated',
        'x; a="b, y',
        'x; a=""',
        'x; a="1,2"',
        'x; a="1;2"',
        'x; a="b"c',
        'x; a="\\"b\\""',
        "x; a=b\\",
        "x; a=(b)",
    ],
)
def test_parse_extension_list_malformed(line):
    with pytest.raises(ValueError):
        ext_list(line)


def test_parse_extension_list_malformed_on_second_line():
    with pytest.raises(ValueError):
        ext_list(PMD, "x;")


def test_format_extension():
    assert format_extension(PMD, []) == PMD
    assert (
        format_extension(PMD, [("server_no_context_takeover", None), ("client_max_window_bits", "10")])
        == "permessage-deflate; server_no_context_takeover; client_max_window_bits=10"
    )


# -- negotiate_server: RFC 7692 section 7 ---------------------------------------------

WIDE = {"max_window_bits": 15}  # server options that do not narrow any window


@pytest.mark.parametrize(
    "offer, options, response",
    [
        # No parameters.
        (PMD, WIDE, PMD),
        (PMD, {}, "permessage-deflate; server_max_window_bits=13"),
        # server_no_context_takeover (7.1.1.1): accepting it means echoing it.
        ("permessage-deflate; server_no_context_takeover", WIDE, "permessage-deflate; server_no_context_takeover"),
        (
            "permessage-deflate; server_no_context_takeover",
            {},
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=13",
        ),
        (PMD, {**WIDE, "server_no_context_takeover": True}, "permessage-deflate; server_no_context_takeover"),
        # client_no_context_takeover (7.1.1.2).
        ("permessage-deflate; client_no_context_takeover", WIDE, "permessage-deflate; client_no_context_takeover"),
        (PMD, {**WIDE, "client_no_context_takeover": True}, "permessage-deflate; client_no_context_takeover"),
        (
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
            WIDE,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        # client_max_window_bits without a value (7.1.2.2).
        ("permessage-deflate; client_max_window_bits", WIDE, PMD),
        (
            "permessage-deflate; client_max_window_bits",
            {},
            "permessage-deflate; server_max_window_bits=13; client_max_window_bits=13",
        ),
        (
            "permessage-deflate; client_max_window_bits",
            {"client_max_window_bits": 10, "server_max_window_bits": 15},
            "permessage-deflate; client_max_window_bits=10",
        ),
        # Everything at once.
        (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
            "server_max_window_bits=10; client_max_window_bits=11",
            {},
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
            "server_max_window_bits=10; client_max_window_bits=11",
        ),
        # Quoted values are the same as tokens.
        ('permessage-deflate; server_max_window_bits="12"', WIDE, "permessage-deflate; server_max_window_bits=12"),
    ],
)
def test_negotiate_server_rows(offer, options, response):
    assert negotiate(offer, options) == response


@pytest.mark.parametrize("bits", range(9, 16))
def test_negotiate_server_max_window_bits_values(bits):
    assert negotiate(f"permessage-deflate; server_max_window_bits={bits}", WIDE) == (
        f"permessage-deflate; server_max_window_bits={bits}"
    )
    # The server may answer with a smaller window than offered, never a larger one.
    assert negotiate(f"permessage-deflate; server_max_window_bits={bits}", {}) == (
        f"permessage-deflate; server_max_window_bits={min(bits, 13)}"
    )


def test_negotiate_server_max_window_bits_8_declined():
    # zlib's deflate cannot use a 256-byte window, so the offer is declined (not answered with 9).
    assert negotiate("permessage-deflate; server_max_window_bits=8", WIDE) is None
    assert negotiate("permessage-deflate; server_max_window_bits=8", {}) is None
    assert negotiate("permessage-deflate; server_max_window_bits=8; client_max_window_bits", {}) is None


@pytest.mark.parametrize("bits", range(8, 16))
def test_negotiate_client_max_window_bits_values(bits):
    assert negotiate(f"permessage-deflate; client_max_window_bits={bits}", WIDE) == (
        f"permessage-deflate; client_max_window_bits={bits}"
    )
    assert negotiate(f"permessage-deflate; client_max_window_bits={bits}", {}) == (
        f"permessage-deflate; server_max_window_bits=13; client_max_window_bits={min(bits, 13)}"
    )


def test_negotiate_several_offers_first_acceptable_wins():
    line = (
        "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=8, "
        "permessage-deflate; foo, permessage-deflate; server_max_window_bits=10, permessage-deflate"
    )
    assert negotiate(line, WIDE) == "permessage-deflate; server_max_window_bits=10"


def test_negotiate_offers_across_header_lines():
    offers = ext_list("permessage-deflate; client_max_window_bits=16", "permessage-deflate; client_no_context_takeover")
    result = negotiate_server(offers, WIDE)
    assert result is not None and result[0] == "permessage-deflate; client_no_context_takeover"


def test_negotiate_first_of_two_acceptable():
    assert negotiate("permessage-deflate; server_no_context_takeover, permessage-deflate", WIDE) == (
        "permessage-deflate; server_no_context_takeover"
    )


@pytest.mark.parametrize(
    "params",
    [
        "foo",
        "foo=1",
        "server_no_context_takeover; server_no_context_takeover",
        "client_no_context_takeover; client_no_context_takeover",
        "server_max_window_bits=10; server_max_window_bits=10",
        "client_max_window_bits; client_max_window_bits",
        "client_max_window_bits=10; client_max_window_bits",
        "server_max_window_bits",  # needs a value
        "server_max_window_bits=7",
        "server_max_window_bits=16",
        "server_max_window_bits=0",
        "server_max_window_bits=abc",
        "server_max_window_bits=-9",
        "server_max_window_bits=+9",
        "server_max_window_bits=010",
        "server_max_window_bits=1e1",
        "server_max_window_bits=100",
        "client_max_window_bits=7",
        "client_max_window_bits=16",
        "client_max_window_bits=abc",
        "client_max_window_bits=9.5",
        "server_no_context_takeover=1",
        'client_no_context_takeover="true"',
        "client_no_context_takeover=",
        "Server_No_Context_Takeover",
    ],
)
def test_negotiate_declines_bad_offers(params):
    line = f"permessage-deflate; {params}"
    try:
        offers = ext_list(line)
    except ValueError:
        return  # not even parseable: certainly not accepted
    assert negotiate_server(offers, WIDE) is None
    assert negotiate_server(offers, {}) is None
    # A bad offer followed by a good one: the good one is used.
    result = negotiate_server(offers + [(PMD, [])], WIDE)
    assert result is not None and result[0] == PMD


@pytest.mark.parametrize(
    "params", ["server_max_window_bits=09", "client_max_window_bits=09", "client_max_window_bits=08"]
)
def test_negotiate_declines_leading_zero_window_bits(params):
    assert negotiate(f"permessage-deflate; {params}", WIDE) is None


def test_negotiate_other_extensions_ignored():
    assert negotiate_server(ext_list("x-webkit-deflate-frame"), {}) is None
    assert negotiate_server(ext_list("permessage-foo; server_max_window_bits=10"), {}) is None
    assert negotiate_server([], {}) is None


@pytest.mark.parametrize(
    "options",
    [
        {"max_window_bits": 8},
        {"server_max_window_bits": 16},
        {"client_max_window_bits": 7},
        {"compression_level": 10},
        {"mem_level": 0},
        {"mem_level": 10},
    ],
)
def test_negotiate_invalid_options(options):
    with pytest.raises(ValueError):
        negotiate_server(ext_list(PMD), options)
    with pytest.raises(ValueError):
        client_offer(options)


def test_deflate_options_from_dict():
    opts = DeflateOptions.from_dict({"max_window_bits": 10, "no_context_takeover": True, "client_max_window_bits": 12})
    assert opts.server_max_window_bits == 10
    assert opts.client_max_window_bits == 12
    assert opts.server_no_context_takeover and opts.client_no_context_takeover


def _offer_params(offer_params):
    return {name: value for name, value in offer_params}


@st.composite
def offer_strategy(draw):
    params = []
    if draw(st.booleans()):
        params.append(("server_no_context_takeover", None))
    if draw(st.booleans()):
        params.append(("client_no_context_takeover", None))
    if draw(st.booleans()):
        params.append(("server_max_window_bits", str(draw(st.integers(9, 15)))))
    choice = draw(st.sampled_from(["none", "novalue", "value"]))
    if choice == "novalue":
        params.append(("client_max_window_bits", None))
    elif choice == "value":
        params.append(("client_max_window_bits", str(draw(st.integers(8, 15)))))
    return draw(st.permutations(params))


@given(
    params=offer_strategy(),
    server_bits=st.integers(9, 15),
    client_bits=st.integers(9, 15),
    s_nct=st.booleans(),
    c_nct=st.booleans(),
)
@settings(max_examples=120, deadline=None)
def test_negotiate_response_only_has_what_client_can_accept(params, server_bits, client_bits, s_nct, c_nct):
    options = {
        "server_max_window_bits": server_bits,
        "client_max_window_bits": client_bits,
        "server_no_context_takeover": s_nct,
        "client_no_context_takeover": c_nct,
    }
    result = negotiate_server([(PMD, list(params))], options)
    assert result is not None  # every generated offer is valid
    response_line, server_ext = result
    [(name, resp)] = ext_list(response_line)
    assert name == PMD
    offered = _offer_params(params)
    answered = _offer_params(resp)
    assert len(answered) == len(resp)  # no duplicates
    assert set(answered) <= {
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
    }
    for flag in ("server_no_context_takeover", "client_no_context_takeover"):
        if flag in answered:
            assert answered[flag] is None  # flags never carry a value
    if "server_no_context_takeover" in offered:
        assert "server_no_context_takeover" in answered  # 7.1.1.1: accepting means echoing
    if "server_max_window_bits" in offered:
        # 7.1.2.1: echoed with the same or a smaller value.
        assert int(answered["server_max_window_bits"]) <= int(offered["server_max_window_bits"])
    if "server_max_window_bits" in answered:
        assert 9 <= int(answered["server_max_window_bits"]) <= server_bits
    if "client_max_window_bits" not in offered:
        assert "client_max_window_bits" not in answered  # 7.1.2.2: MUST NOT
    if "client_max_window_bits" in answered:
        value = answered["client_max_window_bits"]
        assert value is not None  # a response always has a value
        if offered["client_max_window_bits"] is not None:
            assert int(value) <= int(offered["client_max_window_bits"])
    for v in answered.values():
        assert v is None or (v.isdigit() and not v.startswith("0"))

    # The server keeps to the window it answered with: data repeating just past that window
    # must not be compressed with references that reach back that far.
    bits = int(answered.get("server_max_window_bits") or 15)
    if bits < 15:
        _, fresh_ext = negotiate_server([(PMD, list(params))], options)
        block = bytes(random.Random(bits).getrandbits(8) for _ in range(2**bits + 100))
        fresh_ext_out = fresh_ext.compress(block * 2)
        assert inflate_into(zlib.decompressobj(-bits), fresh_ext_out, step=256) == block * 2

    # And it works: a client honouring that response talks to this server.
    client_ext = PerMessageDeflate(
        send_window_bits=int(answered.get("client_max_window_bits") or 15),
        receive_window_bits=int(answered.get("server_max_window_bits") or 15),
        send_no_context_takeover="client_no_context_takeover" in answered,
        receive_no_context_takeover="server_no_context_takeover" in answered,
        options=DeflateOptions(threshold=0),
    )
    data = far_repeats(size=3000)
    for _ in range(2):
        assert server_ext.decompress(client_ext.compress(data), True, None) == data
        assert client_ext.decompress(server_ext.compress(data), True, None) == data


def test_negotiated_server_window_is_honoured():
    result = negotiate_server(ext_list("permessage-deflate; server_max_window_bits=9"), WIDE)
    assert result is not None
    response, ext = result
    assert response == "permessage-deflate; server_max_window_bits=9"
    data = far_repeats()
    out = ext.compress(data)
    assert inflate(out, 9) == data  # a 13- or 15-bit compressor would reach 2000 bytes back


def test_default_server_window_is_13_bits():
    result = negotiate_server(ext_list(PMD), {})
    assert result is not None
    response, ext = result
    assert response == "permessage-deflate; server_max_window_bits=13"
    rng = random.Random(3)
    block = bytes(rng.getrandbits(8) for _ in range(10000))  # repeats 10000 bytes back: > 8 KiB
    out = ext.compress(block * 2)
    assert inflate(out, 13) == block * 2


def test_negotiated_server_no_context_takeover_is_honoured():
    result = negotiate_server(ext_list("permessage-deflate; server_no_context_takeover"), WIDE)
    assert result is not None
    _, ext = result
    msg = b"the same message twice " * 10
    first = ext.compress(msg)
    second = ext.compress(msg)
    assert first == second
    assert inflate(second, 15) == msg  # inflates without the first message's window


def test_negotiated_context_takeover_by_default():
    _, ext = negotiate_server(ext_list(PMD), WIDE)
    msg = b"the same message twice " * 10
    first = ext.compress(msg)
    second = ext.compress(msg)
    assert len(second) < len(first) // 3


# -- client_offer / accept_client_response ---------------------------------------------


@pytest.mark.parametrize(
    "options, offer",
    [
        ({}, "permessage-deflate; server_max_window_bits=13; client_max_window_bits=13"),
        ({"max_window_bits": 15}, "permessage-deflate; client_max_window_bits"),
        (
            {"max_window_bits": 15, "no_context_takeover": True},
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits",
        ),
        (
            {"server_max_window_bits": 9, "client_max_window_bits": 15},
            "permessage-deflate; server_max_window_bits=9; client_max_window_bits",
        ),
    ],
)
def test_client_offer_exact(options, offer):
    assert client_offer(options) == offer
    # The offer is something our own server accepts.
    assert negotiate_server(ext_list(offer), options) is not None


def test_accept_client_response_declined():
    assert accept_client_response([], {}) is None


@pytest.mark.parametrize(
    "lines",
    [
        ["x-webkit-deflate-frame"],
        ["permessage-deflate", "permessage-deflate"],
        ["permessage-deflate, permessage-deflate"],
        ["permessage-deflate, x-foo"],
        ["x-foo, permessage-deflate"],
    ],
)
def test_accept_client_response_unoffered_extension(lines):
    with pytest.raises(ValueError):
        accept_client_response(ext_list(*lines), WIDE)


@pytest.mark.parametrize(
    "params",
    [
        "foo",
        "client_max_window_bits",  # a response must give a value
        "server_max_window_bits",
        "server_max_window_bits=16",
        "server_max_window_bits=7",
        "client_max_window_bits=7",
        "client_max_window_bits=16",
        "client_max_window_bits=x",
        "server_no_context_takeover=1",
        "server_no_context_takeover; server_no_context_takeover",
        "client_max_window_bits=10; client_max_window_bits=10",
    ],
)
def test_accept_client_response_bad_params(params):
    with pytest.raises(ValueError):
        accept_client_response(ext_list(f"permessage-deflate; {params}"), WIDE)


def test_accept_client_response_server_window_checks():
    # We offered server_max_window_bits=13 (the default), so the answer must name 13 or less.
    assert accept_client_response(ext_list("permessage-deflate; server_max_window_bits=13"), {}) is not None
    assert accept_client_response(ext_list("permessage-deflate; server_max_window_bits=9"), {}) is not None
    with pytest.raises(ValueError):
        accept_client_response(ext_list("permessage-deflate; server_max_window_bits=14"), {})
    with pytest.raises(ValueError):
        accept_client_response(ext_list(PMD), {})
    # Without an offered limit the server may still name one.
    assert accept_client_response(ext_list("permessage-deflate; server_max_window_bits=10"), WIDE) is not None


def test_accept_client_response_server_no_context_takeover_required_when_offered():
    opts = {**WIDE, "server_no_context_takeover": True}
    with pytest.raises(ValueError):
        accept_client_response(ext_list(PMD), opts)
    assert accept_client_response(ext_list("permessage-deflate; server_no_context_takeover"), opts) is not None
    # The server may add it even when it was not offered.
    assert accept_client_response(ext_list("permessage-deflate; server_no_context_takeover"), WIDE) is not None


def test_accept_client_response_client_no_context_takeover_honoured():
    ext = accept_client_response(ext_list("permessage-deflate; client_no_context_takeover"), WIDE)
    assert ext is not None
    msg = b"identical message " * 10
    assert ext.compress(msg) == ext.compress(msg)


def test_accept_client_response_client_window_honoured():
    ext = accept_client_response(ext_list("permessage-deflate; client_max_window_bits=9"), WIDE)
    assert ext is not None
    data = far_repeats()
    assert inflate(ext.compress(data), 9) == data


@given(data=st.binary(min_size=1, max_size=3000), reps=st.integers(1, 4))
@settings(max_examples=60, deadline=None)
def test_client_window_8_output_inflates_with_256_byte_window(data, reps):
    # The client cannot deflate with 8 bits and uses 9; zlib never reaches further back than
    # 512 - 262 = 250 bytes with a 9-bit window, so the server's 8-bit inflater still copes.
    ext = accept_client_response(ext_list("permessage-deflate; client_max_window_bits=8"), {**WIDE, "threshold": 0})
    assert ext is not None
    msg = data * reps
    d = zlib.decompressobj(-8)
    for _ in range(2):  # the second message uses the first one's window
        out = ext.compress(msg)
        assert inflate_into(d, out, step=16) == msg


def test_accept_client_response_leading_zero_rejected():
    with pytest.raises(ValueError):
        accept_client_response(ext_list("permessage-deflate; server_max_window_bits=09"), {})


@pytest.mark.parametrize(
    "client_options, server_options",
    [
        ({}, {}),
        (WIDE, WIDE),
        ({"no_context_takeover": True}, {}),
        ({}, {"no_context_takeover": True}),
        ({"server_max_window_bits": 9, "client_max_window_bits": 9}, {}),
        ({"max_window_bits": 15}, {"client_max_window_bits": 9, "server_max_window_bits": 10}),
        ({"compression_level": 0}, {"compression_level": 9, "mem_level": 9}),
    ],
)
def test_full_negotiation_roundtrip(client_options, server_options):
    offer = client_offer(client_options)
    result = negotiate_server(ext_list(offer), server_options)
    assert result is not None
    response, server_ext = result
    client_ext = accept_client_response(ext_list(response), client_options)
    assert client_ext is not None
    rng = random.Random(99)
    for i in range(20):
        msg = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))) * rng.randint(1, 20)
        up = client_ext.compress(msg)
        if up is not None:
            assert server_ext.decompress(up, True, None) == msg, i
        down = server_ext.compress(msg)
        if down is not None:
            assert client_ext.decompress(down, True, None) == msg, i


def test_threshold_sends_small_messages_plain():
    _, ext = negotiate_server(ext_list(PMD), {"threshold": 100})
    assert ext.compress(b"x" * 99) is None
    assert ext.compress(b"x" * 100) is not None
    _, ext = negotiate_server(ext_list(PMD), {})
    assert ext.compress(b"x" * 31) is None
    assert ext.compress(b"x" * 32) is not None


def test_decompress_limit_raises_1009():
    from tornado_websocket.errors import ProtocolError

    _, ext = negotiate_server(ext_list(PMD), {})
    c = zlib.compressobj(6, zlib.DEFLATED, -9)
    data = c.compress(b"a" * 5000) + c.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(ProtocolError) as info:
        ext.decompress(data[:-4], True, 4999)
    assert info.value.code == 1009
    _, ext = negotiate_server(ext_list(PMD), {})
    assert ext.decompress(data[:-4], True, 5000) == b"a" * 5000


def test_decompress_garbage_raises_deflate_error():
    _, ext = negotiate_server(ext_list(PMD), {})
    with pytest.raises(deflate.DeflateError):
        ext.decompress(b"\xff\xff\xff", True, None)


def test_unknown_compression_options_are_ignored_with_a_warning(caplog):
    """As Tornado does: an unknown key does not break every handshake; it is logged once per process."""
    from tornado_websocket import options

    opts = DeflateOptions.from_dict({"bogus": 1, "compression_level": 3})
    assert opts.compression_level == 3
    options.LOG._once.discard("compression:bogus")
    with caplog.at_level("WARNING", logger="tornado.general"):
        for _ in range(3):
            options.warn_unknown_compression_options({"bogus": 1, "compression_level": 3})
    assert [r.getMessage() for r in caplog.records if "bogus" in r.getMessage()] == [
        "ignoring unknown compression options: bogus"
    ]
