"""Sphinx configuration for tornado_websocket's documentation.

Build (what ``scripts/ci/docs.sh`` runs; no warning is allowed)::

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html
    python -m sphinx -W --keep-going -n -b doctest docs docs/_build/doctest

The guides are the Markdown files of ``docs/`` (read by myst-parser). The API
reference is generated on every build: :func:`write_api_pages` writes one page
per module of the package into ``docs/api/`` (not committed), so a module
added to ``tornado_websocket/`` gets its page without an edit here, and a
public name without a docstring is a warning (so ``-W`` fails the build).

Cross-references to Python's and Tornado's documentation go through
intersphinx, from inventories read on this machine: Debian's ``python3-doc``
and ``python-tornado-doc`` packages ship them (``scripts/ci/docs.sh`` installs
both). The links point at the published sites. Where an inventory is missing,
names of that project are left as plain text (``nitpick_ignore_regex``), so the
build does not depend on the network.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the package of this checkout (PYTHONPATH wins if set)

import tornado_websocket  # noqa: E402

project = "tornado_websocket"
author = "tornado_websocket contributors"
copyright = "the tornado_websocket contributors; Apache License 2.0"
release = tornado_websocket.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md"]

html_theme = "alabaster"
html_title = f"tornado_websocket {release}"
html_static_path: list[str] = []

# -- MyST (the Markdown guides) ----------------------------------------------------

myst_heading_anchors = 3  # [text](page.md#a-heading) links resolve
myst_enable_extensions = ["deflist"]
# Markdown files outside docs/ that are pages of the site too (included by a page of docs/): a guide's
# link to the file is turned into a link to that page when the guide is read (see outside_links).
OUTSIDE_PAGES = {"../bench/README.md": "bench.md", "../CHANGELOG.md": "changelog.md"}

# -- autodoc --------------------------------------------------------------------------

# undoc-members: attributes and enum members without a docstring of their own are shown too (with their
# types); functions, classes and methods without one fail the build instead (see undocumented()).
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autoclass_content = "both"

# -- intersphinx, from local inventories only -------------------------------------------

INVENTORIES = {
    # name: (published site, inventory on this machine, a regex of the names it covers)
    "python": (
        "https://docs.python.org/3/",
        os.environ.get("PYTHON_OBJECTS_INV", "/usr/share/doc/python3/html/objects.inv"),
        r"(asyncio|collections|concurrent|contextlib|enum|ipaddress|logging|os|socket|ssl|threading|types|typing|"
        r"urllib|zlib|builtins)(\..*)?|[A-Za-z]*(Error|Exception)|bytes|bytearray|memoryview|str|int|float|bool|"
        r"dict|list|tuple|set|frozenset|object|type|callable|Ellipsis|None",
    ),
    "tornado": (
        "https://www.tornadoweb.org/en/stable/",
        os.environ.get("TORNADO_OBJECTS_INV", "/usr/share/doc/python-tornado-doc/html/objects.inv"),
        r"tornado(\..*)?",
    ),
}
intersphinx_mapping: dict[str, tuple[str, Any]] = {}
intersphinx_disabled_reftypes = ["std:doc"]
intersphinx_timeout = 5
nitpicky = True
nitpick_ignore_regex: list[tuple[str, str]] = [
    # Private helper types that signatures show (a sentinel's class, a private union): no page by design.
    (r"py:class", r"(tornado_websocket\.[a-z_]+\.)?_[A-Za-z]+"),
    # Optional peers documented by their own projects, without an inventory here.
    (r"py:.*", r"(redis|prometheus_client|python_socks|uvloop)(\..*)?"),
]
# Short names the docstrings use for other projects' classes, and where they live.
ALIASES = {
    "IOLoop": "tornado.ioloop.IOLoop",
    "IOStream": "tornado.iostream.IOStream",
    "HTTPHeaders": "tornado.httputil.HTTPHeaders",
    "HTTPRequest": "tornado.httpclient.HTTPRequest",
    "HTTPServer": "tornado.httpserver.HTTPServer",
    "RequestHandler": "tornado.web.RequestHandler",
    "Application": "tornado.web.Application",
    "Resolver": "tornado.netutil.Resolver",
    # How the type hints spell standard-library classes that Python documents under another name.
    "asyncio.events.AbstractEventLoop": "asyncio.AbstractEventLoop",
    "_asyncio.Future": "asyncio.Future",
    "concurrent.futures._base.Future": "concurrent.futures.Future",
}

for _name, (_site, _inventory, _names) in INVENTORIES.items():
    if os.path.isfile(_inventory):
        intersphinx_mapping[_name] = (_site, _inventory)
    else:  # no inventory: its names stay plain text
        print(f"conf.py: no {_name} inventory at {_inventory}; its names are not linked", file=sys.stderr)
        nitpick_ignore_regex.append((r"py:.*", _names))
        nitpick_ignore_regex += [
            (r"py:.*", re.escape(short)) for short, full in ALIASES.items() if re.fullmatch(_names, full)
        ]

# Module data that autodoc does not document (an alias of a builtin), named in a docstring.
nitpick_ignore = [("py:data", "clock")]

# Public methods without a docstring yet, in modules that other work in progress is changing; each
# entry is a known gap, shown here instead of failing the build. Remove an entry with its docstring:
# anything not listed fails the build (-W).
DOCSTRING_PENDING: dict[str, tuple[str, ...]] = {}

# -- doctest -----------------------------------------------------------------------------

doctest_global_setup = """
import asyncio
import tornado_websocket
"""


# -- the API reference, generated on every build -------------------------------------------------

API_DIR = HERE / "api"
API_HEADER = ".. This page is generated by docs/conf.py (write_api_pages) on every build; do not edit.\n\n"


def package_modules() -> list[str]:
    """Every public module of the package, by name, the package first (private ``_`` modules left out)."""
    names = [tornado_websocket.__name__]
    for info in pkgutil.walk_packages(tornado_websocket.__path__, tornado_websocket.__name__ + "."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            names.append(info.name)
    return sorted(names[:1]) + sorted(names[1:])


def first_line(module: Any) -> str:
    doc = inspect.getdoc(module) or ""
    return doc.strip().splitlines()[0].rstrip(".") if doc.strip() else ""


def module_page(name: str) -> str:
    title = f"``{name}``"
    lines = [API_HEADER + title, "=" * len(title), ""]
    if name == tornado_websocket.__name__:
        lines += [f".. automodule:: {name}", "   :no-members:", ""]
        lines += ["The names the package exports, each documented in its module:", ""]
        for export in sorted(tornado_websocket.__all__, key=str.lower):
            target = getattr(tornado_websocket, export)
            where = getattr(target, "__module__", None)
            if export == "__version__":
                lines.append(f"- ``__version__``: ``{tornado_websocket.__version__!r}``, the package's one version")
            elif where and where.startswith(tornado_websocket.__name__ + "."):
                lines.append(f"- :py:obj:`{export} <{where}.{getattr(target, '__qualname__', export)}>`")
            else:
                lines.append(f"- ``{export}``")
        lines.append("")
    else:
        lines += [f".. automodule:: {name}", ""]
    return "\n".join(lines)


def undocumented(name: str) -> list[str]:
    """The public functions and classes defined in module ``name`` (and public methods of those classes)
    that have no docstring of their own."""
    module = importlib.import_module(name)
    public = getattr(module, "__all__", None)
    missing = []
    for attr, value in vars(module).items():
        if attr.startswith("_") or (public is not None and attr not in public):
            continue
        if not (inspect.isclass(value) or inspect.isfunction(value)) or value.__module__ != name:
            continue
        if not (value.__doc__ or "").strip():
            missing.append(f"{name}.{attr}")
        if inspect.isclass(value):
            for member, item in vars(value).items():
                function = getattr(item, "__func__", item)
                if member.startswith("_") or not inspect.isfunction(function):
                    continue
                if member in DOCSTRING_PENDING.get(f"{name}.{attr}", ()):
                    continue
                if not (function.__doc__ or "").strip() and not _inherits_doc(value, member):
                    missing.append(f"{name}.{attr}.{member}")
    return missing


def _inherits_doc(cls: type, member: str) -> bool:
    """Whether ``member`` overrides a method that a base class documents (autodoc shows that docstring),
    or a hook of a base class from another project (``RequestHandler.get``: that project's API)."""
    for base in cls.__mro__[1:]:
        if member not in vars(base):
            continue
        if (getattr(vars(base)[member], "__doc__", None) or "").strip():
            return True
        if not base.__module__.startswith(tornado_websocket.__name__):
            return True
    return False


def write_api_pages(app: Any) -> None:
    """Write ``docs/api/index.rst`` and one page per module; warn for each public name without a docstring."""
    from sphinx.util import logging

    log = logging.getLogger(__name__)
    API_DIR.mkdir(exist_ok=True)
    modules = package_modules()
    pages = {"index": _index_page(modules)}
    for name in modules:
        pages[name] = module_page(name)
        for missing in undocumented(name):
            log.warning(f"{missing} is public and has no docstring", type="tornado_websocket", subtype="docstring")
    for stale in API_DIR.glob("*.rst"):
        if stale.stem not in pages:
            stale.unlink()
    for stem, text in pages.items():
        path = API_DIR / f"{stem}.rst"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:  # unchanged pages stay fresh
            path.write_text(text, encoding="utf-8")


def _index_page(modules: list[str]) -> str:
    lines = [API_HEADER + "API reference", "=============", ""]
    lines += [
        "One page per module, generated from the docstrings. The layers and what",
        "may import what are in :doc:`../architecture`.",
        "",
        ".. toctree::",
        "   :hidden:",
        "",
    ]
    lines += [f"   {name}" for name in modules]
    lines.append("")
    lines += [f"- :py:mod:`{name}`: {first_line(importlib.import_module(name))}" for name in modules]
    lines.append("")
    return "\n".join(lines)


def outside_links(app: Any, docname: str, source: list[str]) -> None:
    """In a guide, ``[text](../bench/README.md)`` becomes ``[text](bench.md)``: see OUTSIDE_PAGES."""
    for outside, page in OUTSIDE_PAGES.items():
        source[0] = source[0].replace(f"]({outside})", f"]({page})").replace(f"]({outside}#", f"]({page}#")


def resolve_short_names(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve what the docstrings write briefly, where Sphinx looks only in the current module.

    - a name of the package written without its module (``WebSocketHandshakeError`` in proxy.py,
      ``state`` in protocol.py): found wherever the package documents it, if in one place only;
    - a package-level re-export (``tornado_websocket.websocket_connect``): its module's entry;
    - a short Tornado name (``IOLoop``): Tornado's entry, through intersphinx.
    """
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    target = node["reftarget"]
    package = tornado_websocket.__name__ + "."
    if target.startswith(package) and target[len(package) :].split(".")[0] in tornado_websocket.__all__:
        export = getattr(tornado_websocket, target[len(package) :].split(".")[0])
        rest = target[len(package) :].split(".")[1:]
        target = ".".join([export.__module__, export.__qualname__, *rest])
    elif target in ALIASES:
        from sphinx.ext import intersphinx

        node["reftarget"] = ALIASES[target]
        return intersphinx.missing_reference(app, env, node, contnode)
    matches = domain.find_obj(env, None, None, target, node["reftype"], 1)
    if not matches:  # a type alias written as a class (``Data``), an attribute as a method...
        matches = domain.find_obj(env, None, None, target, None, 1)
    matches = [m for m in matches if m[0].startswith(package)]
    if len(matches) > 1 and node.get("py:class"):  # a method inherited by the class the docstring is on
        owner = _lookup(f"{node.get('py:module')}.{node.get('py:class')}")
        matches = [m for m in matches if owner is not None and _same(getattr(owner, target, None), _lookup(m[0]))]
    if len(matches) != 1:
        return None
    from sphinx.util.nodes import make_refnode

    full, entry = matches[0]
    return make_refnode(app.builder, node.get("refdoc", ""), entry.docname, entry.node_id, contnode, full)


def _lookup(dotted: str) -> Any:
    """The object a dotted name of the package names, or None."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            value = getattr(value, attr, None)
        return value
    return None


def _same(a: Any, b: Any) -> bool:
    return a is not None and getattr(a, "__func__", a) is getattr(b, "__func__", b)


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", write_api_pages)
    app.connect("missing-reference", resolve_short_names)
    app.connect("source-read", outside_links)
    from pygments.lexers.special import TextLexer

    app.add_lexer("haproxy", TextLexer)  # docs/deployment.md's haproxy.cfg: Pygments has no such lexer
    return {"parallel_read_safe": True}
