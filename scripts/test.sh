#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run it:
# lint (ruff), types (mypy --strict), and pytest (unit, wire, interop, browser).
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

# Debian packages for the real peers (a headless browser, Redis, nginx); root is needed to install them.
need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "warning: missing ${need_apt[*]} (run as root to install); their tests will be skipped" >&2
    fi
fi

# Node's ws package for the interop matrix, pinned by the committed lock file.
if [ -f tests/interop/node/package-lock.json ]; then
    (cd tests/interop/node && npm ci --silent --no-audit --no-fund)
fi

bash scripts/ci/ops.sh  # prometheus-client, python-socks, tinyproxy, microsocks, haproxy (issue 16)
# The PyPI applications tests/realapps runs (dask distributed, jupyter_server, bokeh).
bash scripts/ci/realapps.sh
sh scripts/ci/channels.sh   # redis-cli (the Redis Cluster fixture), nftables and iproute2 (the lossy-link test) (issue 13)
bash scripts/ci/firefox.sh  # Debian's firefox-esr and puppeteer-core for the interop matrix (issue 15)
bash scripts/ci/perf.sh     # zlib-ng, the [fast] extra (issue 14)

echo "== ruff"
ruff check tornado_websocket tests demos bench scripts fuzz
ruff format --check tornado_websocket tests demos bench scripts fuzz
echo "== mypy --strict"
mypy
echo "== pytest (with line coverage of the package, per module; at least 95%)"
# tests/test_hostile.py bounds memory growth, which coverage's tracer inflates: it runs on its own, after.
python3 -m pytest -p no:cacheprovider --cov=tornado_websocket --cov-report=term --cov-fail-under=95 \
    --ignore=tests/test_hostile.py "$@"
python3 -m pytest -p no:cacheprovider -q tests/test_hostile.py
echo "== the documentation site (Sphinx, warnings are errors) and its doctests"
bash scripts/ci/docs.sh
echo "== the release files on every supported Python (3.9-3.13), and without a C compiler"
bash scripts/ci/pythons.sh
echo "== the core suites again on uvloop"
TORNADO_WEBSOCKET_TEST_LOOP=uvloop python3 -m pytest -p no:cacheprovider -q \
    tests/test_frames.py tests/test_protocol.py tests/test_server_wire.py tests/test_client.py \
    tests/test_transport.py tests/test_handler.py
echo "== pytest again without the C speedups (pure-Python masking)"
TORNADO_WEBSOCKET_NO_SPEEDUPS=1 python3 -m pytest -p no:cacheprovider -q \
    tests/test_frames.py tests/test_protocol.py tests/test_transport.py tests/test_server_wire.py tests/test_client.py
echo "== TLS, broadcast and transport without the C speedups and on uvloop, deflate on the standard zlib"
bash scripts/ci/perf.sh --run

echo "== Autobahn|Testsuite (every case, our echo server and our client)"
# wstest is Python 2 software: scripts/autobahn.py installs it for a Python 2.7 (pyenv's, here).
if python3 -c "import sys; sys.path.insert(0, 'scripts'); import autobahn; autobahn.find_python2(None)" 2>/dev/null; then
    # Cases 1-10 in every way of receiving each side, then all 517 cases once each way (asyncio).
    python3 scripts/autobahn.py
    # Cases 1-10 again with our side on uvloop.
    python3 scripts/autobahn.py --loop uvloop --one-mode --skip-full
else
    echo "warning: no Python 2.7 on this machine: the Autobahn|Testsuite was not run" >&2
fi

echo "== fuzz (atheris, 60 s)"
corpus=$(mktemp -d)
cp fuzz/seeds/* "$corpus"/
if ! python3 fuzz/fuzz_protocol.py -max_total_time=60 -print_final_stats=1 "$corpus" > "$corpus.log" 2>&1; then
    tail -n 60 "$corpus.log"
    echo "fuzzing found an input that breaks the protocol's invariants (see above)" >&2
    exit 1
fi
grep -E "^stat::(number_of_executed_units|new_units_added)" "$corpus.log"
rm -rf "$corpus" "$corpus.log"
