"""Switch an application from ``tornado.websocket`` to ``tornado_websocket`` process-wide.

This is what a user does who changes ``import tornado.websocket`` to
``import tornado_websocket`` in an application they cannot edit: before the
application is imported, ``tornado_websocket`` takes the place of
``tornado.websocket`` in ``sys.modules`` and as the ``websocket`` attribute of
the ``tornado`` package, so ``import tornado.websocket``,
``from tornado import websocket`` and ``from tornado.websocket import X`` all
give ``tornado_websocket``'s objects. Nothing is added or renamed: a name the
application needs and ``tornado_websocket`` lacks fails with the
``AttributeError``/``ImportError`` the user would see.

Run in a fresh process (each scenario is a subprocess), so the switch is
clean and the application is imported after it.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

import tornado

MODES = ("tornado", "ours")


def install(mode: str) -> ModuleType:
    """Make ``tornado.websocket`` be ``mode``'s module and return it.

    ``"tornado"`` leaves Tornado's own module in place (the reference run);
    ``"ours"`` puts ``tornado_websocket`` there. Raises ``ValueError`` for an
    unknown mode and ``RuntimeError`` if Tornado's module was already imported
    (the application would keep references to it: the switch must come first).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if mode == "tornado":
        import tornado.websocket as stock

        return stock
    loaded = sys.modules.get("tornado.websocket")
    if loaded is not None and loaded.__name__ == "tornado.websocket":
        raise RuntimeError("tornado.websocket was imported before the switch; install() must run first")
    import tornado_websocket

    sys.modules["tornado.websocket"] = tornado_websocket
    tornado.websocket = tornado_websocket  # type: ignore[attr-defined]
    return tornado_websocket


def install_from_argv(argv: list[str] | None = None) -> tuple[ModuleType, argparse.Namespace]:
    """Parse ``--websocket MODE`` (and the scenario's other options) and install that mode."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--websocket", choices=MODES, required=True)
    parser.add_argument("--timeout", type=float, default=30.0, help="bound on the whole scenario, seconds")
    args = parser.parse_args(argv)
    return install(args.websocket), args
