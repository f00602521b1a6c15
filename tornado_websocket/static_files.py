"""Where the package's browser files are, and a route that serves them.

``tornado_websocket/static/channels.js`` is the browser client of
:class:`~tornado_websocket.channels.ChannelsHandler` (see docs/channels.md).
Serve it from your application with :func:`static_route`::

    Application([(r"/channels", ChannelsHandler), static_route()])  # GET /tornado_websocket/channels.js

or point your own static handler (or your web server) at :func:`static_path`.
"""

from __future__ import annotations

import os
import re
from typing import Any

import tornado.web

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


def static_path() -> str:
    """The directory holding ``channels.js`` (inside the installed package)."""
    return STATIC_DIR


def static_route(
    prefix: str = "/tornado_websocket/", handler: type[tornado.web.StaticFileHandler] = tornado.web.StaticFileHandler
) -> tuple[str, type[tornado.web.StaticFileHandler], dict[str, Any]]:
    """A URL rule serving the package's files under ``prefix`` (``/tornado_websocket/channels.js`` by default).

    ``handler`` may be your :class:`tornado.web.StaticFileHandler` subclass
    (to add headers such as a Content-Security-Policy). Raises
    ``ValueError`` if ``prefix`` does not start and end with ``/``.
    """
    if not (prefix.startswith("/") and prefix.endswith("/")):
        raise ValueError(f"prefix must start and end with '/', not {prefix!r}")
    return (re.escape(prefix) + r"(.*\.js)", handler, {"path": STATIC_DIR})
