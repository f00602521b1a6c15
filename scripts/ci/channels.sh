#!/bin/sh
# What the channels tests (tests/test_channels*.py, issue 13) need beyond '.[test]' and the redis-server that
# scripts/test.sh installs: redis-cli (the cluster fixture), and ip + nft for the lossy-link test (root only;
# without root or these tools that test skips itself). The tests themselves run in test.sh's pytest step.
#   sh scripts/ci/channels.sh          # install only
#   sh scripts/ci/channels.sh --run    # install, then run the channels test modules alone
set -eu

if [ "$(id -u)" = 0 ]; then
    missing=""
    command -v nft >/dev/null 2>&1 || missing="$missing nftables"
    command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
    command -v redis-cli >/dev/null 2>&1 || missing="$missing redis-tools"
    if [ -n "$missing" ]; then
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null 2>&1 || {
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
        }
    fi
fi
python3 -c "import redis" 2>/dev/null || python3 -m pip install --quiet "redis>=5"

if [ "${1:-}" = "--run" ]; then
    shift
    python3 -m pytest -x -q -p no:cacheprovider \
        tests/test_channels.py tests/test_channels_redis.py tests/test_channels_serve.py \
        tests/test_channels_faults.py tests/test_hub.py "$@"
fi
