"""What every scenario script shares: run its coroutine bounded, report one JSON result line.

A scenario (a coroutine function for :func:`run`, a blocking function for
:func:`run_blocking`) prints ``RESULT {...}`` on success (its observations, plus the
log records at WARNING and above that the application emitted) and exits 0;
on an exception or a timeout it prints the traceback and
``FAILED <type>: <message>`` to stderr and exits 1. The pytest side
(``test_realapps.py``) asserts on the observations.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import traceback
from typing import Any, Awaitable, Callable

RESULT_PREFIX = "RESULT "


class LogCollector(logging.Handler):
    """Keeps ``level: logger: message`` (first line of any traceback too) of every record it sees."""

    def __init__(self, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = f"{record.levelname}: {record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line += f" [{type(exc).__name__}: {exc}]"
            if os.environ.get("SCENARIO_TRACEBACKS"):
                traceback.print_exception(exc, file=sys.stderr)
        self.lines.append(line[:500])


def run(main: Callable[[], Awaitable[dict[str, Any]]], timeout: float) -> None:
    """Run the coroutine function ``main`` for at most ``timeout`` seconds, print its result and exit."""
    report(lambda: asyncio.run(asyncio.wait_for(main(), timeout)))


def run_blocking(main: Callable[[], dict[str, Any]], timeout: float) -> None:
    """Run the blocking ``main`` (it drives its own loop), stopped by SIGALRM after ``timeout`` seconds."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the scenario took longer than {timeout} s")

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        report(main)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def report(main: Callable[[], dict[str, Any]]) -> None:
    collector = LogCollector()
    logging.getLogger().addHandler(collector)
    try:
        result = main()
    except BaseException as exc:  # report everything, including the timeout
        traceback.print_exc()
        print(f"FAILED {type(exc).__name__}: {exc}", file=sys.stderr)
        print("LOGGED " + json.dumps(collector.lines), file=sys.stderr)
        sys.stderr.flush()
        sys.exit(1)
    result["logged"] = collector.lines
    print(RESULT_PREFIX + json.dumps(result, default=repr), flush=True)
