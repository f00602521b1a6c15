"""``HealthHandler``: the health check a load balancer polls; 503 once the process drains."""

from __future__ import annotations

import tornado.web

from tornado_websocket.shutdown import is_draining, retry_after


class HealthHandler(tornado.web.RequestHandler):
    """Answers ``GET`` and ``HEAD`` with ``200 ok``, and with ``503 draining`` while the process drains.

    Draining: while :func:`~tornado_websocket.shutdown.shutdown` runs. The
    503 carries ``Retry-After`` and ``Connection: close``. Map it to the URL
    the load balancer checks, e.g. ``(r"/healthz", HealthHandler)``; see
    docs/deployment.md for nginx and HAProxy.
    """

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        if is_draining():
            self.set_status(503)
            self.set_header("Retry-After", str(retry_after()))
            self.set_header("Connection", "close")
            self.finish("draining\n")
            return
        self.finish("ok\n")

    def head(self) -> None:
        self.get()
