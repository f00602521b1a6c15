#!/usr/bin/env bash
# The second browser engine of the interoperability matrix (issue 15): Debian's firefox-esr, driven headless
# through WebDriver BiDi by puppeteer-core (tests/interop/firefox/run.js), pinned by the committed lock file.
# puppeteer-core never downloads a browser; PUPPETEER_SKIP_DOWNLOAD says so anyway. Installs only: the main
# pytest run of scripts/test.sh runs the Firefox pairings in tests/interop (plain and deflate, ~40 s in all).
set -euo pipefail
cd "$(dirname "$0")/../.."

need_apt=()
command -v firefox-esr >/dev/null 2>&1 || need_apt+=(firefox-esr)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "warning: missing ${need_apt[*]} (run as root to install); the Firefox pairings will be skipped" >&2
    fi
fi

(cd tests/interop/firefox && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --silent --no-audit --no-fund)
echo "firefox: $(firefox-esr --version 2>/dev/null), puppeteer-core $(node -p 'require("./tests/interop/firefox/node_modules/puppeteer-core/package.json").version')"
