"""Run the Autobahn|Testsuite against our echo server and our client; fail on any failed case.

The testsuite (``wstest``, the conformance suite most WebSocket libraries
report against) is Python 2 software: this script installs it from PyPI
for a Python 2.7 interpreter into ``.autobahn/`` (once), then

1. starts ``demos/echo.py`` and runs ``wstest -m fuzzingclient`` against it
   (every case: framing, pings, fragmentation, UTF-8, close handling, limits,
   permessage-deflate);
2. runs ``wstest -m fuzzingserver`` and drives ``demos/autobahn_client.py``
   (our ``websocket_connect``) through every case.

Cases 1-10 run in every way the server can receive (push, the seed's
callback, a coroutine ``on_message``, a pull loop, ``async for``) and every
way the client can (callback, ``read_message()`` loop, ``async for``); the
whole suite (517 cases) runs once each way. Each case's behaviour must be
OK or INFORMATIONAL (NON-STRICT counts as a failure: ``--allow-non-strict``
accepts it), and its close behaviour OK or INFORMATIONAL. The HTML reports stay in
``.autobahn/reports/{servers,clients}/index.html``.

    python scripts/autobahn.py [--python2 PATH] [--cases 1.*,2.*] [--only server|client]
        [--skip-modes] [--skip-full] [--one-mode] [--loop asyncio|uvloop] [--allow-non-strict]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Any, Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, ".autobahn")
SITE = os.path.join(WORK, "site")
PASSING = {"OK", "INFORMATIONAL"}
PASSING_CLOSE = {"OK", "INFORMATIONAL"}
SUITE_TIMEOUT = 1800.0  # seconds for one direction (all 517 cases take 6-9 minutes here)

# wstest with its dependencies installed with ``pip --target`` (namespace packages need addsitedir).
WSTEST = """
import site, sys
site.addsitedir({site!r})
sys.argv[0] = "wstest"
from autobahntestsuite.wstest import run
run()
"""


def find_python2(given: str | None) -> str:
    """The Python 2.7 to run wstest with; raises SystemExit if there is none."""
    candidates = [given] if given else []
    candidates += [shutil.which("python2.7"), shutil.which("python2")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/2.7*/bin/python")), reverse=True)
    for path in candidates:
        if path and os.path.exists(path):
            version = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True)
            if version.returncode == 0 and version.stdout.strip() == b"(2, 7)":
                return path
    raise SystemExit("no Python 2.7 found (the Autobahn testsuite needs it): pass --python2 PATH")


def install(python2: str) -> list[str]:
    """Install autobahntestsuite for ``python2`` (once); return the wstest command."""
    if not os.path.exists(os.path.join(SITE, "autobahntestsuite")):
        os.makedirs(SITE, exist_ok=True)
        subprocess.run(
            [
                python2,
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "--target",
                SITE,
                "autobahntestsuite",
            ],
            check=True,
        )
    return [python2, "-c", WSTEST.format(site=SITE)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise SystemExit(f"nothing listened on port {port} within {timeout:.0f} s")


@contextlib.contextmanager
def running(cmd: list[str], port: int, log: str) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, proc)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def check(index_path: str, agent: str) -> bool:
    """Print the tally of one report; True if every case passed."""
    with open(index_path) as f:
        results: dict[str, Any] = json.load(f)[agent]
    tally = collections.Counter((r["behavior"], r["behaviorClose"]) for r in results.values())
    failed = sorted(
        (c for c, r in results.items() if r["behavior"] not in PASSING or r["behaviorClose"] not in PASSING_CLOSE),
        key=lambda case: [int(x) for x in case.split(".")],
    )
    print(f"  {len(results)} cases: " + ", ".join(f"{b}/{c}: {n}" for (b, c), n in sorted(tally.items())))
    for case in failed:
        r = results[case]
        print(f"  FAILED {case}: behavior {r['behavior']}, close {r['behaviorClose']}")
    return bool(results) and not failed


#: The echo demo's paths for each way the server can receive (see demos/echo.py's ECHO_MODES).
SERVER_MODES = ("push", "callback", "coroutine", "pull", "async-for")
#: The ways our client receives (see demos/autobahn_client.py's MODES).
CLIENT_MODES = ("callback", "read-loop", "async-for")
#: Cases run in every mode: framing, pings, fragmentation, UTF-8, close handling, limits.
MODE_CASES = [f"{n}.*" for n in range(1, 11)]
#: The event loop our side runs on (``--loop``).
LOOP = ["asyncio"]


def run_server_suite(wstest: list[str], cases: list[str], modes: tuple[str, ...], report: str) -> bool:
    """fuzzingclient (wstest as the client) against demos/echo.py, one agent per way of receiving."""
    port = free_port()
    outdir = os.path.join(WORK, "reports", report)
    shutil.rmtree(outdir, ignore_errors=True)
    spec = {
        "outdir": outdir,
        "servers": [
            {"agent": f"tornado_websocket-{mode}", "url": f"ws://127.0.0.1:{port}/echo/{mode}"} for mode in modes
        ],
        "cases": cases,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    spec_path = os.path.join(WORK, "fuzzingclient.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    echo = [sys.executable, "demos/echo.py", "--port", str(port), "--address", "127.0.0.1", "--loop", LOOP[0]]
    print(f"== Autobahn fuzzingclient against demos/echo.py (port {port}), cases {','.join(cases)}", flush=True)
    with running(echo, port, os.path.join(WORK, "echo.log")):
        subprocess.run(
            wstest + ["-m", "fuzzingclient", "-s", spec_path],
            cwd=WORK,
            check=True,
            timeout=SUITE_TIMEOUT,
            stdout=subprocess.DEVNULL,
        )
    ok = True
    for mode in modes:
        print(f"  server, {mode}:")
        ok = check(os.path.join(outdir, "index.json"), f"tornado_websocket-{mode}") and ok
    return ok


def run_client_suite(wstest: list[str], cases: list[str], modes: tuple[str, ...], report: str) -> bool:
    """fuzzingserver (wstest as the server) driving demos/autobahn_client.py once per way of receiving."""
    port = free_port()
    outdir = os.path.join(WORK, "reports", report)
    shutil.rmtree(outdir, ignore_errors=True)
    spec = {
        "url": f"ws://127.0.0.1:{port}",
        "outdir": outdir,
        "cases": cases,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    spec_path = os.path.join(WORK, "fuzzingserver.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    print(f"== Autobahn fuzzingserver driving demos/autobahn_client.py (port {port}), cases {','.join(cases)}")
    server = wstest + ["-m", "fuzzingserver", "-s", spec_path]
    with running(server, port, os.path.join(WORK, "fuzzingserver.log")):
        for mode in modes:
            subprocess.run(
                [
                    sys.executable,
                    "demos/autobahn_client.py",
                    f"ws://127.0.0.1:{port}",
                    "--mode",
                    mode,
                    "--loop",
                    LOOP[0],
                ],
                cwd=ROOT,
                check=True,
                timeout=SUITE_TIMEOUT,
            )
    ok = True
    for mode in modes:
        print(f"  client, {mode}:")
        ok = check(os.path.join(outdir, "index.json"), f"tornado_websocket-{mode}") and ok
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python2", help="the Python 2.7 interpreter for wstest (default: found on this machine)")
    parser.add_argument("--cases", default="*", help="comma-separated case patterns for the whole-suite run")
    parser.add_argument("--only", choices=["server", "client"], help="run one direction only")
    parser.add_argument(
        "--skip-modes", action="store_true", help="skip the runs of cases 1-10 in every way of receiving"
    )
    parser.add_argument("--skip-full", action="store_true", help="skip the whole-suite run (push / callback)")
    parser.add_argument("--allow-non-strict", action="store_true", help="accept NON-STRICT cases")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio", help="our side's event loop")
    parser.add_argument(
        "--one-mode", action="store_true", help="cases 1-10 in one way of receiving each side (push, callback)"
    )
    args = parser.parse_args()
    LOOP[0] = args.loop
    if args.allow_non_strict:
        PASSING.add("NON-STRICT")
    wstest = install(find_python2(args.python2))
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    ok = True
    if args.only != "client":
        if not args.skip_modes:
            modes = SERVER_MODES[:1] if args.one_mode else SERVER_MODES
            ok = run_server_suite(wstest, MODE_CASES, modes, f"servers-modes-{args.loop}") and ok
        if not args.skip_full:
            ok = run_server_suite(wstest, cases, ("push",), "servers") and ok
    if args.only != "server":
        if not args.skip_modes:
            modes = CLIENT_MODES[:1] if args.one_mode else CLIENT_MODES
            ok = run_client_suite(wstest, MODE_CASES, modes, f"clients-modes-{args.loop}") and ok
        if not args.skip_full:
            ok = run_client_suite(wstest, cases, ("callback",), "clients") and ok
    print("Autobahn|Testsuite: " + ("every case passed" if ok else "FAILED (see above)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
