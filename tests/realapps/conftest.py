"""The ``realapps`` marker: tests that run real PyPI applications (scripts/ci/realapps.sh installs them)."""

from __future__ import annotations

from typing import Any


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers", "realapps: runs a real application from PyPI (dask, jupyter_server, bokeh) on both WebSocket modules"
    )
