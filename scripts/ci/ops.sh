#!/usr/bin/env bash
# What the operations tests (issue 16) need beyond '.[test]': prometheus-client (the metrics extra; the
# plain exposition is tested with it blocked), python-socks (SOCKS5), and the real proxies from Debian:
# tinyproxy (HTTP CONNECT), microsocks (SOCKS5) and HAProxy (draining). Installs only: the main pytest run of scripts/test.sh
# runs tests/test_{metrics,limits,shutdown,proxy}.py (about 15 s in all; the installs take ~30 s once).
set -euo pipefail
cd "$(dirname "$0")/../.."

python3 -m pip install --quiet --disable-pip-version-check 'prometheus-client>=0.20' 'python-socks[asyncio]>=2.4'

need_apt=()
command -v tinyproxy >/dev/null 2>&1 || need_apt+=(tinyproxy-bin)
command -v microsocks >/dev/null 2>&1 || need_apt+=(microsocks)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "warning: missing ${need_apt[*]} (run as root to install); the proxy tests will be skipped" >&2
    fi
fi

