#!/usr/bin/env bash
# The documentation site (issue 15): Sphinx with the Markdown guides (myst-parser) and an API reference that
# docs/conf.py generates from the package's modules on every build. Built as HTML with every warning an error
# (-W, and -n: every cross-reference must resolve), then the examples in the docs and docstrings run as
# doctests. Python's and Tornado's object inventories come from Debian (python3-doc, python-tornado-doc), so
# intersphinx links them without the network. About 30 s here once installed.
# Usage: bash scripts/ci/docs.sh   (the site lands in docs/_build/html)
set -euo pipefail
cd "$(dirname "$0")/../.."

mapfile -t requirements < <(python3 scripts/ci/requirements.py docs)
python3 -m pip install --quiet --disable-pip-version-check "${requirements[@]}"

need_apt=()
[ -f /usr/share/doc/python3/html/objects.inv ] || need_apt+=(python3-doc)
[ -f /usr/share/doc/python-tornado-doc/html/objects.inv ] || need_apt+=(python-tornado-doc)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "warning: missing ${need_apt[*]} (run as root to install); Python/Tornado names stay plain text" >&2
    fi
fi

rm -rf docs/_build
echo "== docs: html (-W -n)"
python3 -m sphinx -W --keep-going -n -q -b html docs docs/_build/html
echo "== docs: doctest"
python3 -m sphinx -W --keep-going -n -q -b doctest docs docs/_build/doctest
grep -A4 "^Doctest summary" docs/_build/doctest/output.txt
