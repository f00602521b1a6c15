#!/usr/bin/env bash
# Every Python the package claims, from the built release files (issue 15).
#
# 1. `python -m build`: the sdist, and the wheel built from it by this machine's python3 (3.11, so the C
#    extension compiled from the sdist); `twine check --strict` on both; the sdist's contents checked.
# 2. Each of pyenv's 3.9, 3.10, 3.11, 3.12, 3.13 in a fresh venv, with the package installed from a release
#    file: the SDIST on 3.9, 3.10, 3.12 and 3.13 (so the C extension is compiled by that Python), the WHEEL on
#    3.11 (where it was built). Tests run from a copy of the checkout without the package, so the installed
#    copy is what they test (checked: imported from site-packages, C extension present). 3.9 and 3.10 get
#    Tornado 6.5 (6.6 needs 3.11; the oldest supported is 6.3). The core suites (CORE_SUITES) on each;
#    the whole suite on 3.13 (FULL_SUITE_PYTHON), whatever of the test extra installs there; the whole
#    suite on 3.11 is scripts/test.sh's main run.
# 3. The sdist with CC=false (no compiler, so no C extension) on 3.11: the core suites again.
#
# Usage: bash scripts/ci/pythons.sh [VERSION...]   (default: 3.9 3.10 3.11 3.12 3.13)
# Environment: PYTHONS_KEEP=1 keeps the temporary directory; PYENV_ROOT as pyenv's.
set -euo pipefail
cd "$(dirname "$0")/../.."
SOURCE=$PWD

versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.9 3.10 3.11 3.12 3.13)
FULL_SUITE_PYTHON=${FULL_SUITE_PYTHON:-3.13}
WHEEL_PYTHON=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')  # the wheel is for this one
NO_COMPILER_PYTHON=$WHEEL_PYTHON

# The suites that run on every Python: the Sans-I/O core, the driver, both faces, the handshake and the
# client's way out (proxy, TLS). Each is a test module per package module.
CORE_SUITES=(
    test_frames.py test_protocol.py test_handshake.py test_server_wire.py test_client.py test_transport.py
    test_handler.py test_proxy.py test_connection.py test_endpoint.py test_options.py test_layering.py
)
# What they need of the test extra (scripts/ci/requirements.py reads the versions from pyproject.toml).
CORE_REQUIREMENTS=(pytest pytest-timeout pytest-asyncio pytest-xdist hypothesis trustme websockets requests)
SOCKS='python-socks[asyncio]>=2.4'  # as scripts/ci/ops.sh installs it (not in the test extra)

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
# The sdist carries what a build from it needs, and the docs and tests (MANIFEST.in).
members=$(tar -tzf "$sdist")
for member in tornado_websocket/_speedups.c tornado_websocket/py.typed setup.py pyproject.toml README.md LICENSE \
    CHANGELOG.md docs/conf.py tests/conftest.py; do
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
core_requirements+=("$SOCKS")

# venv VERSION NAME: a fresh venv of pyenv's Python VERSION at $work/NAME; its python is printed.
venv() {
    local python
    python=$(find_python "$1") || { echo "no Python $1 in pyenv" >&2; return 1; }
    "$python" -m venv "$work/$2"
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

# pip_install PYTHON ARG...: pip install into the venv of PYTHON, quietly.
pip_install() {
    local python=$1
    shift
    "$python" -m pip install --quiet --disable-pip-version-check "$@"
}

# The whole test extra, as far as it installs on PYTHON (what has no build there is left out: its tests skip).
install_test_extra() {
    local python=$1 requirement
    mapfile -t all_requirements < <(python3 scripts/ci/requirements.py test)
    pip_install "$python" 'prometheus-client>=0.20' "$SOCKS"
    if ! pip_install "$python" "${all_requirements[@]}" > "$work/pip.log" 2>&1; then
        for requirement in "${all_requirements[@]}"; do
            pip_install "$python" "$requirement" > "$work/pip.log" 2>&1 \
                || echo "note: '$requirement' does not install on this Python: the tests that need it skip"
        done
    fi
}

failed=()
for version in "${versions[@]}"; do
    release=$sdist what="the sdist, compiled by this Python"
    if [ "$version" = "$WHEEL_PYTHON" ]; then
        release=$wheel what="the wheel built from the sdist"
    fi
    if [ "$version" = "$FULL_SUITE_PYTHON" ]; then
        echo "== Python $version: $what; the whole suite $(elapsed)"
    else
        echo "== Python $version: $what; the core suites $(elapsed)"
    fi
    if ! python=$(venv "$version" "py$version"); then
        failed+=("$version (no interpreter)")
        continue
    fi
    pip_install "$python" "$release" "${core_requirements[@]}"
    check_install "$python" yes
    if [ "$version" = "$FULL_SUITE_PYTHON" ]; then
        install_test_extra "$python"
        # As scripts/test.sh: tests/test_hostile.py (it bounds memory growth) alone; tests/realapps is
        # scripts/ci/realapps.sh's (pinned applications, not part of the test extra).
        run_suites "$python" "Python $version" --ignore=tests/test_hostile.py --ignore=tests/realapps \
            || failed+=("$version")
        (cd "$work/run" && "$python" -m pytest -p no:cacheprovider -q tests/test_hostile.py) \
            || failed+=("$version (test_hostile.py)")
    else
        run_suites "$python" "Python $version" "${CORE_SUITES[@]/#/tests/}" || failed+=("$version")
    fi
done

echo "== Python $NO_COMPILER_PYTHON, CC=false: the sdist without the C extension; the core suites $(elapsed)"
python=$(venv "$NO_COMPILER_PYTHON" "nocc")
CC=false pip_install "$python" --no-cache-dir "$sdist" "${core_requirements[@]}"
check_install "$python" no
TORNADO_WEBSOCKET_EXPECT_NO_EXTENSION=1 run_suites "$python" "no compiler" "${CORE_SUITES[@]/#/tests/}" \
    || failed+=("CC=false")

echo "== pythons: done $(elapsed)"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
