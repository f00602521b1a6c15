#!/usr/bin/env bash
# Every Python the package claims, from the built release files (issue 15).
#
# 1. `python -m build`: the sdist, and the wheel built from it; `twine check` on both.
# 2. For each of pyenv's 3.9, 3.10, 3.11, 3.12 and 3.13: a fresh venv, the SDIST installed into it (so the C
#    extension is compiled by that Python), and the core suites run from a copy of tests/ outside the
#    source tree, so the installed copy is what is tested (checked: site-packages, _speedups compiled).
#    Each resolves its own Tornado: 6.6 needs Python 3.10+, so 3.9 gets 6.5 (the oldest we support is 6.3).
# 3. The sdist installed with CC=false (no compiler: no C extension) on 3.11, the core suites again.
# 4. The wheel (built by this machine's python3, 3.11) installed on 3.11: the frames and handshake suites.
# 5. The sdist on 3.13 and the whole suite there (what has no 3.13 build, such as atheris, is left out and
#    its tests skip). The whole suite on 3.11 is scripts/test.sh's main run.
#
# Usage: bash scripts/ci/pythons.sh [VERSION...]   (default: 3.9 3.10 3.11 3.12 3.13)
# Environment: PYTHONS_KEEP=1 keeps the temporary directory; PYENV_ROOT as pyenv's.
set -euo pipefail
cd "$(dirname "$0")/../.."
SOURCE=$PWD

versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.9 3.10 3.11 3.12 3.13)
FULL_SUITE_PYTHON=${FULL_SUITE_PYTHON:-3.13}
NO_COMPILER_PYTHON=${NO_COMPILER_PYTHON:-3.11}

# The suites that run on every Python: the Sans-I/O core, the driver, both faces, the handshake and the
# client's way out (proxy, TLS). Each is a test module per package module.
CORE_SUITES=(
    test_frames.py test_protocol.py test_handshake.py test_server_wire.py test_client.py test_transport.py
    test_handler.py test_proxy.py test_connection.py test_endpoint.py test_options.py test_layering.py
)
# What they need of the test extra (scripts/ci/requirements.py reads the versions from pyproject.toml).
CORE_REQUIREMENTS=(pytest pytest-timeout pytest-asyncio pytest-xdist hypothesis trustme websockets)

work=$(mktemp -d "${TMPDIR:-/tmp}/pythons.XXXXXX")
cleanup() { [ -n "${PYTHONS_KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
started=$SECONDS
elapsed() { echo "($((SECONDS - started)) s)"; }

echo "== build: sdist and wheel"
python3 -m build --outdir "$work/dist" "$SOURCE" > "$work/build.log" 2>&1 || { tail -n 40 "$work/build.log"; exit 1; }
sdist=$(ls "$work"/dist/*.tar.gz)
wheel=$(ls "$work"/dist/*.whl)
python3 -m twine check --strict "$sdist" "$wheel"
# The sdist carries what a build from it needs and what the docs and tests read.
members=$(tar -tzf "$sdist")
for member in tornado_websocket/_speedups.c tornado_websocket/py.typed setup.py pyproject.toml README.md LICENSE; do
    grep -q "/$member\$" <<< "$members" || { echo "the sdist lacks $member" >&2; exit 1; }
done
ls -l "$work/dist"

# A copy of the checkout WITHOUT the package (tests, demos, fuzz seeds, docs, pyproject.toml's pytest
# settings; Node's installed ws too): `import tornado_websocket` there can only find the installed copy.
mkdir -p "$work/run"
tar -C "$SOURCE" --exclude=./tornado_websocket --exclude=./.git --exclude=./build --exclude=./dist \
    --exclude=./docs/_build --exclude='__pycache__' --exclude=./.autobahn --exclude=./.hypothesis -cf - . \
    | tar -C "$work/run" -xf -

find_python() {  # pyenv's newest X.Y, or nothing
    local root=${PYENV_ROOT:-$HOME/.pyenv}
    local dir
    dir=$(ls -d "$root"/versions/"$1".* 2>/dev/null | sort -V | tail -n 1)
    [ -n "$dir" ] && [ -x "$dir/bin/python$1" ] && echo "$dir/bin/python$1"
}

mapfile -t core_requirements < <(python3 scripts/ci/requirements.py test --only "${CORE_REQUIREMENTS[@]}")

# venv VERSION NAME: a fresh venv of pyenv's Python VERSION at $work/NAME; its python is printed.
venv() {
    local python
    python=$(find_python "$1") || { echo "no Python $1 in pyenv" >&2; return 1; }
    "$python" -m venv "$work/$2"
    "$work/$2/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    echo "$work/$2/bin/python"
}

# check_install PYTHON SPEEDUPS(yes|no): the package imported is the installed one, with or without C.
check_install() {
    (cd "$work/run" && "$1" - "$2" <<'EOF'
import sys, sysconfig, tornado, tornado_websocket
speedups = sys.argv[1] == "yes"
where = tornado_websocket.__file__
assert where.startswith(sysconfig.get_paths()["purelib"]) or where.startswith(sysconfig.get_paths()["platlib"]), where
try:
    import tornado_websocket._speedups  # noqa: F401
    compiled = True
except ImportError:
    compiled = False
assert compiled == speedups, f"C speedups compiled: {compiled}, expected {speedups}"
print(f"python {sys.version.split()[0]}, tornado {tornado.version}, tornado_websocket {tornado_websocket.__version__}"
      f" from {where}, C speedups: {compiled}")
EOF
    )
}

run_suites() {  # PYTHON LABEL [pytest args...]
    local python=$1 label=$2
    shift 2
    echo "-- $label: pytest $*"
    (cd "$work/run" && "$python" -m pytest -p no:cacheprovider -q -n 2 "$@")
}

failed=()
for version in "${versions[@]}"; do
    echo "== Python $version: the sdist, compiled here; the core suites $(elapsed)"
    if ! python=$(venv "$version" "py$version"); then
        failed+=("$version (no interpreter)")
        continue
    fi
    "$python" -m pip install --quiet --disable-pip-version-check "$sdist" "${core_requirements[@]}"
    check_install "$python" yes
    suites=("${CORE_SUITES[@]/#/tests/}")
    run_suites "$python" "Python $version" "${suites[@]}" || failed+=("$version")
done

echo "== Python $NO_COMPILER_PYTHON, CC=false: the sdist without the C extension; the core suites $(elapsed)"
python=$(venv "$NO_COMPILER_PYTHON" "nocc")
CC=false "$python" -m pip install --quiet --disable-pip-version-check --no-cache-dir "$sdist" "${core_requirements[@]}"
check_install "$python" no
TORNADO_WEBSOCKET_EXPECT_NO_EXTENSION=1 run_suites "$python" "no compiler" "${CORE_SUITES[@]/#/tests/}" || failed+=("CC=false")

echo "== Python $NO_COMPILER_PYTHON: the wheel (built here, for this Python); the frames and handshake suites $(elapsed)"
python=$(venv "$NO_COMPILER_PYTHON" "wheel")
"$python" -m pip install --quiet --disable-pip-version-check "$wheel" "${core_requirements[@]}"
check_install "$python" yes
run_suites "$python" "wheel" tests/test_frames.py tests/test_handshake.py || failed+=("wheel")

echo "== Python $FULL_SUITE_PYTHON: the sdist, the whole suite $(elapsed)"
python=$(venv "$FULL_SUITE_PYTHON" "full")
mapfile -t all_requirements < <(python3 scripts/ci/requirements.py test)
"$python" -m pip install --quiet --disable-pip-version-check "$sdist" 'prometheus-client>=0.20' 'python-socks[asyncio]>=2.4'
if ! "$python" -m pip install --quiet --disable-pip-version-check "${all_requirements[@]}" > "$work/pip.log" 2>&1; then
    # One at a time: what has no build for this Python (atheris, say) is left out, and its tests skip.
    for requirement in "${all_requirements[@]}"; do
        "$python" -m pip install --quiet --disable-pip-version-check "$requirement" > "$work/pip.log" 2>&1 \
            || echo "note: '$requirement' does not install on Python $FULL_SUITE_PYTHON: the tests that need it skip"
    done
fi
check_install "$python" yes
# As scripts/test.sh: tests/test_hostile.py (bounds memory growth) alone; tests/realapps is scripts/ci/realapps.sh's.
run_suites "$python" "full suite" --ignore=tests/test_hostile.py --ignore=tests/realapps || failed+=("$FULL_SUITE_PYTHON full")
(cd "$work/run" && "$python" -m pytest -p no:cacheprovider -q tests/test_hostile.py) || failed+=("$FULL_SUITE_PYTHON hostile")

echo "== pythons: done $(elapsed)"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
