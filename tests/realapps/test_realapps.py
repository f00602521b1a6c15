"""Real applications from PyPI on tornado.websocket and on tornado_websocket, over real sockets.

Each scenario (``scenario_*.py``) runs in its own process: ``switch.py``
first puts the chosen module in place of ``tornado.websocket``, then the
application is imported and its own WebSocket server and client talk to each
other on 127.0.0.1 (distributed, which listens on every interface, runs in a
network namespace of its own that has only a loopback interface). The
``tornado`` mode is the reference: it shows each test can pass; the ``ours``
mode is the drop-in promise. A scenario that crashes fails its test with the
application's traceback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .scenario import RESULT_PREFIX
from .switch import MODES

pytestmark = pytest.mark.realapps

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODULE = {"tornado": "tornado.websocket", "ours": "tornado_websocket"}
SCENARIO_TIMEOUT = 40.0  # seconds, inside the scenario; the process gets 20 s more


class Outcome:
    """What a scenario process printed: its RESULT, and the whole output for log checks."""

    def __init__(self, result: dict[str, Any], output: str) -> None:
        self.result = result
        self.output = output


def in_loopback_namespace() -> list[str]:
    """A command prefix that runs a program in a new network namespace with only ``lo`` (up)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip to give the application a loopback-only network namespace")
    return ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


_outcomes: dict[tuple[str, str], Any] = {}


def run_scenario(name: str, mode: str, *, isolated_network: bool = False) -> Outcome:
    """Run ``scenario_<name>.py`` in ``mode`` (once per test session; tests of one application
    share the run); fail the test with the scenario's traceback if it did not finish."""
    key = (name, mode)
    if key not in _outcomes:
        try:
            _outcomes[key] = _run_scenario(name, mode, isolated_network=isolated_network)
        except BaseException as exc:  # skip or failure: every test of this run reports the same
            _outcomes[key] = exc
    outcome = _outcomes[key]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _run_scenario(name: str, mode: str, *, isolated_network: bool) -> Outcome:
    needs = {
        "dask": ["distributed"],
        "jupyter": ["jupyter_server", "ipykernel", "jupyter_server_proxy"],
        "bokeh": ["bokeh"],
    }
    for package in needs[name]:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (scripts/ci/realapps.sh installs it)")
    command = [sys.executable, str(HERE / f"scenario_{name}.py"), "--websocket", mode]
    command += ["--timeout", str(SCENARIO_TIMEOUT)]
    if isolated_network:
        command = in_loopback_namespace() + command
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(command, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT + 20, env=env, cwd=ROOT)
    output = proc.stdout + proc.stderr
    results = [line[len(RESULT_PREFIX) :] for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or len(results) != 1:
        tail = "\n".join(proc.stderr.splitlines()[-40:])
        pytest.fail(f"{name} on {MODULE[mode]} did not finish (exit {proc.returncode}):\n{tail}", pytrace=False)
    result = json.loads(results[0])
    assert result["websocket_module"] == MODULE[mode], "the switch did not put the module in place"
    return Outcome(result, output)


def errors_printed(outcome: Outcome) -> list[str]:
    """The distinct exception lines (``SomeError: ...``) the application printed or logged, first 5."""
    lines = [line.strip() for line in outcome.output.splitlines()]
    found = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line)]
    return list(dict.fromkeys(found))[:5]


def uncaught(outcome: Outcome) -> list[str]:
    """Log lines of exceptions that escaped into the WebSocket layer or an event loop."""
    return [line for line in outcome.result["logged"] if "Uncaught exception" in line or "never retrieved" in line]


@pytest.mark.parametrize("mode", MODES)
def test_dask_distributed_computes_over_ws(mode: str) -> None:
    """A Scheduler, a Worker and a Client on ws://: tasks run, 12 MiB move both ways, intact."""
    outcome = run_scenario("dask", mode, isolated_network=True)
    r = outcome.result
    assert r["handler_module"].startswith(MODULE[mode])
    assert r["scheduler_address"].startswith("ws://127.0.0.1:")
    assert r["worker_address"].startswith("ws://127.0.0.1:")
    assert r["workers_seen"] == [r["worker_address"]]
    assert r["squares"] == [i * i for i in range(20)]
    assert r["length"] == 12 * 1024 * 1024
    assert r["roundtrip_equal"] is True
    assert uncaught(outcome) == []


@pytest.mark.parametrize("mode", MODES)
def test_jupyter_server_kernel_and_terminal_channels(mode: str) -> None:
    """jupyter_server runs code in a real ipykernel and echo in a real shell over its WebSockets."""
    outcome = run_scenario("jupyter", mode)
    r = outcome.result
    for kernel, subprotocol in ((r["kernel"], None), (r["kernel_v1"], "v1.kernel.websocket.jupyter.org")):
        assert kernel["subprotocol"] == subprotocol
        assert kernel["reply_status"] == "ok"
        assert kernel["stdout"] == "42\n"
        assert {"status", "execute_input", "stream", "execute_reply"} <= set(kernel["msg_types"])
    assert r["terminal"]["first_message"] == ["setup", {}]
    assert r["terminal"]["echoed"] is True
    # WebSocketMixin.send_ping (every 100 ms here) must run cleanly, and its pings come back.
    assert len(r["keepalive"]["send_ping"]) >= 3
    assert set(r["keepalive"]["send_ping"]) == {"ok"}, sorted(set(r["keepalive"]["send_ping"]))
    assert len(r["keepalive"]["pongs"]) >= 2
    # jupyter_server's ping timeout is above its interval: Tornado says so once per process.
    warnings = [line for line in outcome.output.splitlines() if "cannot be longer than" in line]
    assert len(warnings) <= 1, warnings


@pytest.mark.parametrize("mode", MODES)
def test_jupyter_server_proxy_relays_a_websocket(mode: str) -> None:
    """jupyter-server-proxy relays a WebSocket to a backend with its own client connection subclass."""
    outcome = run_scenario("jupyter", mode)
    r = outcome.result["proxy"]
    assert r["echoed"] == "through the proxy", (
        f"the proxy closed the WebSocket (code {r['close_code']}); errors: {errors_printed(outcome)}"
    )
    assert r["backend_subprotocols"] == [["first", "second"]]
    assert r["backend_pings"] == ["relay"]
    assert r["after_ping"] == "backend got ping relay"
    assert uncaught(outcome) == []


@pytest.mark.parametrize("mode", MODES)
def test_bokeh_server_and_client_session(mode: str) -> None:
    """A Bokeh server app and a Bokeh client session: changes both ways, keepalive, close, bad client."""
    outcome = run_scenario("bokeh", mode)
    r = outcome.result
    assert r["handler_module"].startswith(MODULE[mode])
    assert r["first_text"] == "hello from the server"
    assert r["server_saw_value"] == 42
    assert r["client_saw_text"] == "pushed by the server"
    assert r["server_latest_pong"] >= 1
    assert (r["server_connections_while_open"], r["server_connections_after_close"]) == (1, 0)
    malformed = r["malformed_client"]
    assert malformed["ack"] is True
    assert malformed["after"] is None, "the server should have closed the connection"
    assert malformed["close_code"] not in (None, 1000)
    assert uncaught(outcome) == []
