"""permessage-deflate on either deflate library: zlib-ng's binding (the [fast] extra) and the standard zlib.

deflate.py picks its library once, at import, so each library is tested in a
subprocess of its own (``TORNADO_WEBSOCKET_STDLIB_ZLIB=1`` forces the
standard library's). Whatever one side uses, the other side inflates it with
the standard library's zlib, byte for byte: the wire format is the same.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zlib

import pytest

from tornado_websocket import deflate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_ZLIB_NG = importlib.util.find_spec("zlib_ng") is not None
TAIL = b"\x00\x00\xff\xff"
MESSAGES = [
    json.dumps({"seq": i, "text": "échange данные 数据 " * (i % 7 + 1), "pad": "x" * i}).encode() for i in range(60)
]

# Run in a subprocess: compresses MESSAGES with our PerMessageDeflate (context kept, 13-bit window),
# inflates what the parent compressed with the standard zlib, checks the bomb limit, prints JSON.
CHILD = textwrap.dedent(
    """
    import base64, json, sys
    from tornado.httputil import HTTPHeaders
    from tornado_websocket import deflate
    from tornado_websocket.errors import ProtocolError
    from tornado_websocket.handshake import parse_extension_list

    job = json.loads(sys.stdin.read())
    offer = "permessage-deflate; client_max_window_bits"
    offers = parse_extension_list(HTTPHeaders({"Sec-WebSocket-Extensions": offer}))
    ours = deflate.negotiate_server(offers, {})[1]
    sent = [base64.b64encode(ours.compress(base64.b64decode(m))).decode() for m in job["messages"]]
    got = [base64.b64encode(ours.decompress(base64.b64decode(m), True, None)).decode() for m in job["incoming"]]
    bomb = deflate.negotiate_server(offers, {})[1]
    try:
        bomb.decompress(base64.b64decode(job["bomb"]), True, 1000)
        stopped = None
    except ProtocolError as exc:
        stopped = int(exc.code)
    print(json.dumps({"zlib": deflate.ZLIB, "sent": sent, "got": got, "bomb": stopped}))
    """
)


def run_child(stdlib: bool) -> dict[str, object]:
    client = zlib.compressobj(6, zlib.DEFLATED, -13, 8)  # a browser-like client, its window as negotiated
    incoming = []
    for message in MESSAGES:
        data = client.compress(message) + client.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(TAIL)
        incoming.append(base64.b64encode(data[:-4]).decode())
    bomb = zlib.compressobj(9, zlib.DEFLATED, -13)
    bomb_data = (bomb.compress(b"\0" * 10_000_000) + bomb.flush(zlib.Z_SYNC_FLUSH))[:-4]
    job = {
        "messages": [base64.b64encode(m).decode() for m in MESSAGES],
        "incoming": incoming,
        "bomb": base64.b64encode(bomb_data).decode(),
    }
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TORNADO_WEBSOCKET_STDLIB_ZLIB", None)
    if stdlib:
        env["TORNADO_WEBSOCKET_STDLIB_ZLIB"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", CHILD], input=json.dumps(job), capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("stdlib", [False, True], ids=["zlib-ng-if-installed", "stdlib-forced"])
def test_either_library_speaks_the_same_wire_format(stdlib):
    result = run_child(stdlib)
    expected_library = "zlib" if stdlib or not HAS_ZLIB_NG else "zlib_ng.zlib_ng"
    assert result["zlib"] == expected_library
    peer = zlib.decompressobj(-13)  # the client's inflater, kept across messages, standard zlib
    sent = result["sent"]
    assert isinstance(sent, list)
    for message, data in zip(MESSAGES, sent):
        assert peer.decompress(base64.b64decode(data) + TAIL) == message
    got = result["got"]
    assert isinstance(got, list)
    assert [base64.b64decode(m) for m in got] == MESSAGES
    assert result["bomb"] == 1009, "a message inflating past the room left is stopped (1009) with either library"


def test_the_library_in_this_process_is_named():
    forced = bool(os.environ.get("TORNADO_WEBSOCKET_STDLIB_ZLIB"))
    assert deflate.ZLIB == ("zlib" if forced or not HAS_ZLIB_NG else "zlib_ng.zlib_ng")


@pytest.mark.skipif(not HAS_ZLIB_NG, reason="zlib-ng is not installed (pip install tornado_websocket[fast])")
def test_zlib_ng_keeps_the_unconsumed_tail_the_bounded_inflate_needs():
    from zlib_ng import zlib_ng

    d = zlib_ng.decompressobj(-15)
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = c.compress(b"a" * 100_000) + c.flush(zlib.Z_SYNC_FLUSH)
    out = d.decompress(data, 1000)
    assert len(out) == 1000 and d.unconsumed_tail
