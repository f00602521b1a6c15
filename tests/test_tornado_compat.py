"""Run Tornado's own WebSocket test suite against tornado_websocket.

tornado_websocket promises to be a drop-in replacement for
``tornado.websocket``: an application switches by changing only its import.
This module holds it to that promise with Tornado's own tests. At import time
it reads the source of ``tornado/test/websocket_test.py`` from the installed
Tornado, rewrites the import of ``tornado.websocket`` to import the same names
from ``tornado_websocket``, executes the result as a module and exposes its
``unittest.TestCase`` classes here, so pytest collects them.

The lists below are explicit and checked: ``DESELECTED`` names the tests
that exercise Tornado-private internals we deliberately do not have (they are
not run), ``XFAIL`` the tests that fail against this package, each with its
diagnosis (``BUG:`` to fix, ``DIFFERENCE:`` a deliberate, documented change).
Every other test of Tornado's file must pass. An entry that names no test, a
test that starts passing while listed in ``XFAIL`` (strict xfail), and a
change of Tornado's file that defeats the import rewrite all fail loudly.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
import types
import unittest
from pathlib import Path
from typing import Any

import pytest

import tornado_websocket

_TORNADO_TEST_MODULE = "tornado.test.websocket_test"

# The names Tornado's test file imports from tornado.websocket; all must come
# from tornado_websocket.
_IMPORTED_NAMES = ("WebSocketClosedError", "WebSocketError", "WebSocketHandler", "websocket_connect")

# (old, new): each ``old`` must occur exactly once. Replacements keep the
# line count, so tracebacks point at the right lines of Tornado's file.
_REWRITES = (("from tornado.websocket import (\n", "from tornado_websocket import (\n"),)

# References to tornado.websocket that may remain after the rewrite. The first
# only checks that Tornado imports (the file's own guard against misleading
# ImportErrors); the second is inside a deselected test (PingCalculationTest).
_ALLOWED_LEFTOVERS = (
    "    import tornado.websocket  # noqa: F401\n",
    "        from tornado.websocket import WebSocketProtocol13\n",
)

# ---------------------------------------------------------------------------
# Tests not run: they exercise Tornado-private internals that
# tornado_websocket intentionally does not have (or test Tornado's own code,
# not ours). Keys are "Class::test_method".
# ---------------------------------------------------------------------------
DESELECTED: dict[str, str] = {
    # tornado.util._websocket_mask_python is Tornado's pure-Python masking
    # helper; run here it would test Tornado, not us (our masking is
    # tornado_websocket.frames.apply_mask, exercised by every client frame).
    "PythonMaskFunctionTest::test_mask": "tests tornado.util._websocket_mask_python",
    "PythonMaskFunctionTest::test_length_validation": "tests tornado.util._websocket_mask_python",
    # Same for Tornado's C extension tornado.speedups.websocket_mask.
    "CythonMaskFunctionTest::test_mask": "tests tornado.speedups.websocket_mask",
    "CythonMaskFunctionTest::test_length_validation": "tests tornado.speedups.websocket_mask",
    # Imports tornado.websocket.WebSocketProtocol13 and calls its private
    # ping_sleep_time() static method; our keepalive is a call_later timer in
    # tornado_websocket.connection.WebSocketConnection._keepalive.
    "PingCalculationTest::test_ping_sleep_time": "WebSocketProtocol13.ping_sleep_time is Tornado-private",
    # Wraps ws.protocol._handle_message (WebSocketProtocol13's private frame
    # dispatcher) to drop pongs, and reads ws.protocol.close_code.
    "ServerPingTimeoutTest::test_client_ping_timeout": "hooks WebSocketProtocol13._handle_message",
    # Replaces handler.ws_connection._write_frame (WebSocketProtocol13's
    # private frame writer) to hold pong writes back.
    "FloodTest::test_pong_most_recent_ping": "hooks WebSocketProtocol13._write_frame",
}

# ---------------------------------------------------------------------------
# Tests that fail against tornado_websocket: strict xfail, so each starts
# failing the run once fixed (then remove its entry). Keys are
# "Class::test_method"; reasons start with "BUG:" or "DIFFERENCE:".
# ---------------------------------------------------------------------------

# Causes shared by several tests (diagnosed against Tornado 6.6.1), without
# their "BUG:" prefix so that they can be combined.
_NO_LOOP = (
    "connection.py WebSocketConnection._send/_write/ping, _closed_future() and "
    "inbox.py MessageInbox.get/put create futures with asyncio.get_running_loop(), so "
    "close(), write_message() and read_message() raise RuntimeError('no running event "
    "loop') when called while the IOLoop is not running (here conn.close() in "
    "WebSocketBaseTestCase.tearDown), where Tornado's work; create them on the "
    "IOLoop's asyncio_loop captured at construction"
)
_DICT_HEADERS = (
    "client.py _connect() iterates request.headers.get_all(), but "
    "HTTPRequest(url, headers={...}) keeps a plain dict -> AttributeError; Tornado's "
    "websocket_connect does request.headers = HTTPHeaders(request.headers) first"
)
_CANCELLED = (
    "connection.py WebSocketConnection._read_loop catches only Exception around "
    "on_message; a CancelledError raised by it (a BaseException) escapes and ends the "
    "read task silently. Tornado (WebSocketProtocol._run_callback) catches "
    "(Exception, CancelledError), logs 'Uncaught exception' to app_log and aborts"
)
_INFO_LOG = (
    "DIFFERENCE: connection.py WebSocketConnection._on_violation logs each peer "
    "protocol violation (here 1009, message too big) at INFO on gen_log, as "
    "docs/migration.md documents; Tornado logs nothing and its TestCase fails on any "
    "unexpected log (assertNoLogs). Everything else in the test passes"
)

XFAIL: dict[str, str] = {
    "WebSocketTest::test_websocket_http_redirect": (
        "DIFFERENCE: websocket_connect follows a redirect of the upgrade (at most 5, "
        "follow_redirects=False refuses it, docs/migration.md); Tornado's raises on any redirect"
    ),
    "DefaultCompressionTest::test_message_sizes": (
        "DIFFERENCE: messages under 32 bytes are sent uncompressed by default (deflate.py "
        "DeflateOptions.threshold, docs/migration.md), so the test's 28-byte message takes "
        "3 x (28 + 6) wire bytes where Tornado, compressing it, takes fewer"
    ),
}


def _load_tornado_tests() -> types.ModuleType:
    """Load tornado/test/websocket_test.py with its imports pointed at tornado_websocket."""
    spec = importlib.util.find_spec(_TORNADO_TEST_MODULE)
    if spec is None or spec.origin is None:
        raise ImportError(f"cannot find {_TORNADO_TEST_MODULE}; is Tornado's test suite installed?")
    path = spec.origin
    source = Path(path).read_text(encoding="utf-8")
    for old, new in _REWRITES:
        count = source.count(old)
        if count != 1:
            raise RuntimeError(f"{path}: expected {old!r} once, found it {count} times; update _REWRITES")
        source = source.replace(old, new)
    leftovers = [line for line in source.splitlines(keepends=True) if re.search(r"\btornado\.websocket\b", line)]
    unexpected = [line for line in leftovers if line not in _ALLOWED_LEFTOVERS]
    if unexpected:
        raise RuntimeError(f"{path} still uses tornado.websocket after the rewrite: {unexpected}")

    module = types.ModuleType(__name__ + "_tornado_websocket_test")
    module.__file__ = path
    sys.modules[module.__name__] = module
    exec(compile(source, path, "exec"), module.__dict__)

    for name in _IMPORTED_NAMES:
        if module.__dict__[name] is not getattr(tornado_websocket, name):
            raise RuntimeError(f"{name} in the rewritten tests is not tornado_websocket.{name}")
    return module


_tornado_tests = _load_tornado_tests()

# Expose the TestCase classes defined by Tornado's file (not the ones it
# imports, nor the wrappers of @abstract_base_test, which live in
# tornado.test.util and would only be skipped).
_EXPOSED: dict[str, type] = {
    name: obj
    for name, obj in vars(_tornado_tests).items()
    if isinstance(obj, type) and issubclass(obj, unittest.TestCase) and obj.__module__ == _tornado_tests.__name__
}
globals().update(_EXPOSED)


def _check_lists() -> None:
    """Every DESELECTED/XFAIL entry must name a test that exists; no test may be in both."""
    for table in (DESELECTED, XFAIL):
        for key in table:
            cls_name, _, method = key.partition("::")
            cls = _EXPOSED.get(cls_name)
            if cls is None or not callable(getattr(cls, method, None)) or not method.startswith("test"):
                raise RuntimeError(f"{key!r} names no test of {_TORNADO_TEST_MODULE}")
    both = set(DESELECTED) & set(XFAIL)
    if both:
        raise RuntimeError(f"listed as both deselected and xfail: {sorted(both)}")
    for key, reason in XFAIL.items():
        if not reason.startswith(("BUG:", "DIFFERENCE:")):
            raise RuntimeError(f"XFAIL reason of {key!r} must start with 'BUG:' or 'DIFFERENCE:'")


_check_lists()


@pytest.fixture(autouse=True, scope="module")
def _tornado_test_runner_logging() -> Any:
    """Configure logging as Tornado's runner (tornado/test/runtests.py) does.

    Tornado's TestCase fails a test that logs anything unexpected at INFO or
    above (``assertNoLogs``); its runner silences the access log, which logs
    every request (the 101 of each upgrade included) at INFO.
    """
    access_log = logging.getLogger("tornado.access")
    level = access_log.level
    access_log.setLevel(logging.CRITICAL)
    yield
    access_log.setLevel(level)


# A tiny pytest plugin, registered through ``pytest_plugins`` below, applies
# the lists to the items collected from this file: deselected tests are
# reported as "deselected", the others get a strict xfail mark.
def _apply_lists(config: Any, items: list[Any]) -> None:
    this_file = Path(__file__).resolve()
    kept: list[Any] = []
    deselected: list[Any] = []
    for item in items:
        cls = getattr(item, "cls", None)
        if cls is None or Path(str(item.path)).resolve() != this_file:
            kept.append(item)
            continue
        key = f"{cls.__name__}::{item.name}"
        if key in DESELECTED:
            deselected.append(item)
            continue
        if key in XFAIL:
            item.add_marker(pytest.mark.xfail(reason=XFAIL[key], strict=True))
        kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


_plugin = types.ModuleType(__name__ + "_compat_plugin", "Applies DESELECTED and XFAIL (PYTEST_DONT_REWRITE).")
_plugin.pytest_collection_modifyitems = _apply_lists  # type: ignore[attr-defined]
sys.modules[_plugin.__name__] = _plugin
pytest_plugins = [_plugin.__name__]
