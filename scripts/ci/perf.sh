#!/usr/bin/env bash
# What the performance work (issue 14) needs beyond '.[test]', and its extra CI runs.
# Installs: zlib-ng (the [fast] extra: permessage-deflate on zlib-ng; tests/test_deflate_zlib.py runs
# both libraries in subprocesses either way). Then, after the main pytest run of scripts/test.sh:
#   bash scripts/ci/perf.sh --run
# runs the TLS transport, broadcast and transport tests without the C speedups (the pure-Python broadcast
# path, no OpenSSL read-ahead) and on uvloop, and the deflate suites with the standard zlib forced
# (3.5 min on the busy shared machine, most of it waiting).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "${1:-}" != "--run" ]; then
    python3 -m pip install --quiet --disable-pip-version-check 'zlib-ng>=0.5'
    exit 0
fi
TORNADO_WEBSOCKET_NO_SPEEDUPS=1 python3 -m pytest -p no:cacheprovider -q \
    tests/test_tls.py tests/test_broadcast.py tests/test_transport.py
TORNADO_WEBSOCKET_TEST_LOOP=uvloop python3 -m pytest -p no:cacheprovider -q \
    tests/test_tls.py tests/test_broadcast.py
TORNADO_WEBSOCKET_STDLIB_ZLIB=1 python3 -m pytest -p no:cacheprovider -q \
    tests/test_deflate_zlib.py tests/test_protocol.py tests/test_broadcast.py
