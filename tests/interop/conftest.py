"""pytest glue for the interoperability matrix.

Every test of a pairing carries ``@pytest.mark.interop(peer=..., direction=...)``
and records the peer's version with ``record_property("peer_version", ...)``.
At the end of the session the outcome of each pairing is written to
``tests/interop/results.json`` (turn it into a table with ``matrix.py``).

A pairing's result is the worst of its tests: ``failed`` > ``xfailed`` (a
known bug of ours, marked ``xfail(strict=True)``) > ``skipped`` (peer
missing, locally only: with ``CI`` set a missing peer fails) > ``passed``.
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent

RESULTS_PATH = HERE / "results.json"
DIRECTIONS = ("our_server_their_client", "their_server_our_client")
RANK = {"passed": 0, "skipped": 1, "xfailed": 2, "failed": 3}

_results_key = pytest.StashKey[dict[str, dict[str, Any]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "interop(peer, direction): one pairing of the interop matrix (see tests/interop/conftest.py)"
    )
    config.stash[_results_key] = {}


def _phase_outcome(report: pytest.TestReport) -> tuple[str, str]:
    """(outcome, detail) of one phase of one test."""
    if hasattr(report, "wasxfail"):
        if report.skipped:
            return "xfailed", str(report.wasxfail)
        # xpassed: strict xfails are reported as failed, others as passed
        return ("failed" if report.failed else "passed"), f"XPASS: {report.wasxfail}"
    if report.passed:
        return "passed", ""
    if report.skipped:
        longrepr = report.longrepr
        detail = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        return "skipped", detail
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None) or report.longreprtext.strip()
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return "failed", " ".join(lines[:2])[:400] or "failed"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    marker = item.get_closest_marker("interop")
    if marker is None:
        return
    peer = marker.kwargs["peer"]
    direction = marker.kwargs["direction"]
    assert direction in DIRECTIONS, direction
    results = item.config.stash[_results_key]
    entry = results.setdefault(
        item.nodeid,
        {"test": item.nodeid, "peer": peer, "direction": direction, "outcome": "passed", "detail": ""},
    )
    props = dict(item.user_properties)
    if "peer_version" in props:
        entry["version"] = str(props["peer_version"])
    phase, detail = _phase_outcome(report)
    if RANK[phase] > RANK[entry["outcome"]]:  # a test's outcome is the worst of its phases
        entry["outcome"], entry["detail"] = phase, detail
    entry["duration"] = round(entry.get("duration", 0.0) + report.duration, 3)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller writes
        return
    results = session.config.stash.get(_results_key, {})
    if not results:
        return
    pairings: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in results.values():
        key = (entry["peer"], entry["direction"])
        pairing = pairings.setdefault(
            key,
            {"peer": entry["peer"], "direction": entry["direction"], "version": "?", "result": "passed", "tests": []},
        )
        if entry.get("version"):
            pairing["version"] = entry["version"]
        if RANK[entry["outcome"]] > RANK[pairing["result"]]:
            pairing["result"] = entry["outcome"]
        pairing["tests"].append(
            {k: entry.get(k) for k in ("test", "outcome", "detail", "duration") if entry.get(k) is not None}
        )
    try:
        import tornado

        import tornado_websocket

        ours = {"tornado_websocket": tornado_websocket.__version__, "tornado": tornado.version}
    except Exception:  # pragma: no cover
        ours = {}
    document = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **ours,
        "pairings": sorted(pairings.values(), key=lambda p: (p["peer"].lower(), p["direction"])),
    }
    RESULTS_PATH.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
