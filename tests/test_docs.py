"""docs/conf.py: the API reference it generates covers every public module, and every public function,
class and method of the package has a docstring (what the Sphinx build, scripts/ci/docs.sh, fails on)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

import tornado_websocket

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "docs" / "conf.py"

pytestmark = pytest.mark.skipif(not CONF.is_file(), reason="docs/ is not beside the tests (an installed copy)")


@pytest.fixture(scope="module")
def conf() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_conf", CONF)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_page_for_every_public_module(conf: ModuleType) -> None:
    package = Path(tornado_websocket.__file__).parent
    on_disk = {f"tornado_websocket.{p.stem}" for p in package.glob("*.py") if not p.stem.startswith("_")}
    modules = conf.package_modules()
    assert modules[0] == "tornado_websocket"
    assert set(modules[1:]) == on_disk
    assert "tornado_websocket._speedups" not in modules


def test_the_package_page_links_each_export_to_its_module(conf: ModuleType) -> None:
    page = conf.module_page("tornado_websocket")
    assert ".. automodule:: tornado_websocket\n   :no-members:" in page
    assert ":py:obj:`WebSocketHandler <tornado_websocket.handler.WebSocketHandler>`" in page
    assert ":py:obj:`websocket_connect <tornado_websocket.client.websocket_connect>`" in page
    for name in tornado_websocket.__all__:
        assert f"{name}" in page


def test_every_public_name_has_a_docstring(conf: ModuleType) -> None:
    missing = [name for module in conf.package_modules() for name in conf.undocumented(module)]
    assert missing == [], "public names without a docstring (the docs build fails on them): " + ", ".join(missing)


def test_the_check_sees_an_undocumented_function(conf: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    def undocumented_probe() -> None:
        pass

    undocumented_probe.__module__ = "tornado_websocket.inbox"
    monkeypatch.setattr("tornado_websocket.inbox.undocumented_probe", undocumented_probe, raising=False)
    assert conf.undocumented("tornado_websocket.inbox") == ["tornado_websocket.inbox.undocumented_probe"]
