"""tornado_websocket.static_files: the package's channels.js, found on disk and served over HTTP."""

from __future__ import annotations

import os

import pytest
import tornado.web
from tornado.testing import AsyncHTTPTestCase

from tornado_websocket.static_files import static_path, static_route


def test_static_path_holds_channels_js() -> None:
    path = os.path.join(static_path(), "channels.js")
    with open(path, encoding="utf-8") as f:
        source = f.read()
    assert "class Client" in source and "compareOffsets" in source


@pytest.mark.parametrize("prefix", ["lib/", "/lib", ""])
def test_static_route_refuses_a_prefix_without_slashes(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix must start and end"):
        static_route(prefix)


class CSPHandler(tornado.web.StaticFileHandler):
    def set_extra_headers(self, path: str) -> None:
        self.set_header("Content-Security-Policy", "default-src 'self'")


class StaticRouteTest(AsyncHTTPTestCase):
    def get_app(self) -> tornado.web.Application:
        return tornado.web.Application([static_route(), static_route("/js/", CSPHandler)])

    def test_default_prefix_serves_channels_js(self) -> None:
        response = self.fetch("/tornado_websocket/channels.js")
        assert response.code == 200
        assert "javascript" in response.headers["Content-Type"]
        with open(os.path.join(static_path(), "channels.js"), "rb") as f:
            assert response.body == f.read()

    def test_own_handler_and_prefix(self) -> None:
        response = self.fetch("/js/channels.js")
        assert response.code == 200
        assert response.headers["Content-Security-Policy"] == "default-src 'self'"

    def test_only_js_files_under_the_prefix(self) -> None:
        assert self.fetch("/tornado_websocket/missing.js").code == 404
        assert self.fetch("/tornado_websocket/../static_files.py").code == 404
        assert self.fetch("/tornado_websocket/").code == 404
