"""Measure the memory one connection's permessage-deflate state keeps, per option set.

Run ``python bench/deflate_memory.py``; it prints a Markdown table (KiB per
connection, median of 3 runs of 200 connections each, measured with
tracemalloc, which sees zlib's allocations) for docs/compression.md, for
the deflate library in use (zlib-ng's where installed;
``TORNADO_WEBSOCKET_STDLIB_ZLIB=1`` for the standard library's).
"""

from __future__ import annotations

import json
import statistics
import tracemalloc

from tornado.httputil import HTTPHeaders

from tornado_websocket.deflate import ZLIB, PerMessageDeflate, negotiate_server
from tornado_websocket.handshake import parse_extension_list

MESSAGE = json.dumps([{"id": i, "name": f"user{i}", "text": "hello there " * 3} for i in range(40)]).encode()
CONNECTIONS = 200

CASES = {
    "defaults ({})": {},
    "max_window_bits=15, mem_level=8 (zlib/Tornado defaults)": {"max_window_bits": 15, "mem_level": 8},
    "max_window_bits=9, mem_level=1": {"max_window_bits": 9, "mem_level": 1},
    "no_context_takeover=True": {"no_context_takeover": True},
}


def one_run(options: dict[str, object]) -> float:
    headers = HTTPHeaders({"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"})
    peers = []
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(CONNECTIONS):
        accepted = negotiate_server(parse_extension_list(headers), options)
        assert accepted is not None
        ours: PerMessageDeflate = accepted[1]
        compressed = ours.compress(MESSAGE)
        assert compressed is not None
        ours.decompress(compressed, True, None)  # inflate state too (as if the client sent it)
        peers.append(ours)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / CONNECTIONS / 1024


def main() -> None:
    print(f"deflate library: {ZLIB}\n")
    print("| options | KiB per connection |")
    print("|---|---|")
    for name, options in CASES.items():
        print(f"| {name} | {statistics.median(one_run(options) for _ in range(3)):.0f} |")


if __name__ == "__main__":
    main()
