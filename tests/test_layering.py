"""The Sans-I/O core (frames, protocol, handshake, deflate) keeps its layer: what it imports, no module state.

Both rules read the source with ``ast`` (nothing is imported), and each is
shown to fail on a planted violation in a temporary file.

Imports: only the standard library, ``tornado.httputil`` (a data type),
``tornado_websocket.errors``, the other core modules, and the named extras
in ``ALLOWED_EXTRA`` (each with its reason). Every ``import`` counts, also
inside functions, ``try`` or ``if``. A relative import counts as the module
it names.

Module state: every binding made at module level (also inside a
module-level ``if``/``try``/``with``/``for``) must be built only from
literals of immutable types (numbers, str, bytes, bool, None, tuples and
frozensets of those), names, attribute lookups, subscripts (type aliases
such as ``Union[...]``), operators, lambdas, and calls to the factories in
``IMMUTABLE_FACTORIES``, which return immutable objects. So a module-level
list, dict, set or comprehension, a call to anything else (``deque()``,
``threading.local()``, ``SomeClass()``), an augmented assignment, a
statement that calls something for its effect (``REGISTRY.append(x)``), a
class deriving from ``threading.local``, and a ``global`` statement anywhere
are violations. Names are free: the immutability of the value is the rule,
not its spelling. ``__all__`` may be a list of str (a convention tools read).
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import sys
import textwrap

import pytest


def package_dir() -> pathlib.Path:
    """The package's sources: the checkout's beside tests/, else (tests copied out of the tree and run
    against an installed copy) the installed package's, located without importing it."""
    tree = pathlib.Path(__file__).resolve().parent.parent / "tornado_websocket"
    if tree.is_dir():
        return tree
    spec = importlib.util.find_spec("tornado_websocket")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tornado_websocket is neither beside the tests nor installed", allow_module_level=True)
    return pathlib.Path(list(spec.submodule_search_locations)[0])


PACKAGE = package_dir()
CORE = ("frames", "protocol", "handshake", "deflate")
ALLOWED_PACKAGE = {f"tornado_websocket.{name}" for name in (*CORE, "errors")} | {"tornado.httputil"}
#: Imports outside the rule that the core may make, and why.
ALLOWED_EXTRA = {
    # Our own optional C extension: masking in one pass (no I/O, no state).
    "tornado_websocket._speedups": "the optional C masking function",
    # Tornado's C masking function, used when ours is not built (bytes only; no I/O, no state).
    "tornado.speedups": "Tornado's optional C masking function, the fallback to ours",
    # zlib-ng's binding (the [fast] extra): the zlib API, faster; deflate.py falls back to zlib (no I/O, no state).
    "zlib_ng": "the optional faster zlib of permessage-deflate",
}
#: Calls whose result is immutable, allowed in module-level bindings (dotted names as written).
IMMUTABLE_FACTORIES = frozenset(
    {
        "bool",
        "int",
        "float",
        "str",
        "bytes",
        "tuple",
        "frozenset",
        "os.environ.get",
        "re.compile",
        "struct.Struct",
        "codecs.getincrementaldecoder",
        "typing.TypeVar",
        "TypeVar",
        "typing.NewType",
        "NewType",
        "cast",
        "typing.cast",
    }
)
MUTABLE_DISPLAYS = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def stdlib_modules() -> frozenset[str]:
    names = getattr(sys, "stdlib_module_names", None)
    if names is None:  # pragma: no cover - Python 3.9
        pytest.skip("sys.stdlib_module_names needs Python 3.10")
    return frozenset(names) | {"__future__"}


def dotted(node: ast.AST) -> str:
    """``a.b.c`` for a Name/Attribute chain (a call's function, a base class), else ""."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    if isinstance(node, ast.Call):  # struct.Struct("!H").pack: the call is what is judged
        return dotted(node.func)
    return ""


# -- the import rule -----------------------------------------------------------------------------


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source`` (a module of tornado_websocket)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = "tornado_websocket" if node.level == 1 else ""
                name = f"{base}.{node.module}" if node.module else base
                if node.module is None:
                    found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
                    continue
                found.append((node.lineno, name))
            else:
                found.append((node.lineno, node.module or ""))
    return found


def import_violations(source: str, module: str) -> list[str]:
    stdlib = stdlib_modules()
    bad = []
    for line, name in imported_modules(source, module):
        if name.split(".")[0] in stdlib or name in ALLOWED_PACKAGE or name in ALLOWED_EXTRA:
            continue
        bad.append(f"{module}:{line}: imports {name}")
    return bad


# -- the module-state rule --------------------------------------------------------------------------


def value_violation(value: ast.AST, consumed: bool = False) -> str:
    """Why ``value`` (a module-level binding's expression) may be mutable, or "".

    ``consumed``: ``value`` is an argument of an immutable factory (``frozenset({...})``,
    ``tuple([...])``), so a display there builds nothing that is kept.
    """
    if isinstance(value, ast.Lambda):
        return ""  # its body runs when called, not at import time
    if isinstance(value, MUTABLE_DISPLAYS) and not consumed:
        return f"a mutable {type(value).__name__.lower()}"
    if isinstance(value, ast.Call):
        name = dotted(value.func)
        if name not in IMMUTABLE_FACTORIES:
            return f"a call to {name or ast.unparse(value.func)}()"
        for arg in [*value.args, *(k.value for k in value.keywords)]:
            why = value_violation(arg, consumed=name in ("frozenset", "tuple"))
            if why:
                return why
        return value_violation(value.func)
    for child in ast.iter_child_nodes(value):
        why = value_violation(child)
        if why:
            return why
    return ""


def module_level_statements(body: list[ast.stmt]):
    """Statements run at import time: the module's, and those inside module-level if/try/with/for."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, (ast.If, ast.For, ast.While, ast.With)):
            yield from module_level_statements(stmt.body)
            yield from module_level_statements(getattr(stmt, "orelse", []))
        elif isinstance(stmt, ast.Try):
            yield from module_level_statements(stmt.body)
            for handler in stmt.handlers:
                yield from module_level_statements(handler.body)
            yield from module_level_statements(stmt.orelse)
            yield from module_level_statements(stmt.finalbody)


def state_violations(source: str, module: str) -> list[str]:
    tree = ast.parse(source)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            bad.append(f"{module}:{node.lineno}: global {', '.join(node.names)}")
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                if dotted(base) in ("threading.local", "local", "_thread._local"):
                    bad.append(f"{module}:{node.lineno}: class {node.name} derives from threading.local")
    for stmt in module_level_statements(tree.body):
        where = f"{module}:{stmt.lineno}"
        if isinstance(stmt, ast.AugAssign):
            bad.append(f"{where}: augmented assignment to module state")
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            if stmt.value is None:
                continue  # a bare annotation binds nothing
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names = [dotted(t) for t in targets]
            if names == ["__all__"] and isinstance(stmt.value, (ast.List, ast.Tuple)):
                continue
            if any(not isinstance(t, ast.Name) for t in targets):
                bad.append(f"{where}: assignment into an object at import time")
                continue
            why = value_violation(stmt.value)
            if why:
                bad.append(f"{where}: {', '.join(names)} is {why}")
        elif isinstance(stmt, ast.Expr):
            if not (isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)):
                bad.append(f"{where}: a statement run for its effect at import time")
    return bad


def core_source(name: str) -> str:
    return (PACKAGE / f"{name}.py").read_text(encoding="utf-8")


# -- the core keeps the rules ------------------------------------------------------------------------


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_only_the_standard_library_httputil_errors_and_itself(module):
    assert import_violations(core_source(module), module) == []


@pytest.mark.parametrize("module", CORE)
def test_the_core_has_no_module_level_mutable_state(module):
    assert state_violations(core_source(module), module) == []


def test_the_rule_sees_the_cores_real_imports():
    # Not vacuous: the parser finds what the modules do import.
    names = {name for _, name in imported_modules(core_source("protocol"), "protocol")}
    assert {"tornado_websocket.frames", "tornado_websocket.deflate", "tornado_websocket.errors", "codecs"} <= names
    names = {name for _, name in imported_modules(core_source("handshake"), "handshake")}
    assert "tornado.httputil" in names


# -- and the rules can fail ------------------------------------------------------------------------------


def planted(tmp_path: pathlib.Path, source: str) -> str:
    path = tmp_path / "planted.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import tornado.ioloop\n", "tornado.ioloop"),
        ("from tornado.log import gen_log\n", "tornado.log"),
        ("from tornado_websocket.connection import WebSocketConnection\n", "tornado_websocket.connection"),
        ("from tornado_websocket import buffers\n", "tornado_websocket"),
        ("from .transport import chain\n", "tornado_websocket.transport"),
        ("def f():\n    import websockets\n", "websockets"),
        ("try:\n    import redis\nexcept ImportError:\n    redis = None\n", "redis"),
    ],
)
def test_the_import_rule_fails_on_a_planted_import(tmp_path, source, expected):
    violations = import_violations(planted(tmp_path, source), "planted")
    assert len(violations) == 1 and violations[0].endswith(f"imports {expected}"), violations


def test_the_import_rule_passes_a_clean_planted_module(tmp_path):
    source = """
        import struct, zlib
        from typing import Optional
        from tornado.httputil import HTTPHeaders
        from tornado_websocket.errors import ProtocolError
        from tornado_websocket.frames import encode_frame
        from .deflate import PerMessageDeflate
    """
    assert import_violations(planted(tmp_path, source), "planted") == []


@pytest.mark.parametrize(
    "source, expected",
    [
        ("POOL = []\n", "mutable list"),
        ("_REGISTRY: dict[str, int] = {}\n", "mutable dict"),
        ("SEEN = set()\n", "call to set()"),
        ("SEEN = {1, 2}\n", "mutable set"),
        ("CODES = (1, [2])\n", "mutable list"),
        ("SQUARES = [i * i for i in range(3)]\n", "mutable listcomp"),
        ("import collections\nQUEUE = collections.deque()\n", "call to collections.deque()"),
        ("import threading\n_STATE = threading.local()\n", "call to threading.local()"),
        ("import threading\nclass _T(threading.local):\n    pass\n", "derives from threading.local"),
        ("class Pool:\n    pass\nPOOL = Pool()\n", "call to Pool()"),
        ("COUNT = 0\nCOUNT += 1\n", "augmented assignment"),
        ("COUNT = 0\ndef bump():\n    global COUNT\n    COUNT = 1\n", "global COUNT"),
        ("HANDLERS = ()\nprint(HANDLERS)\n", "run for its effect"),
        ("import os\nif os.name:\n    CACHE = {}\n", "mutable dict"),
        ("try:\n    X = 1\nexcept Exception:\n    X = []\n", "mutable list"),
        ("import types\ntypes.X = 1\n", "assignment into an object"),
        ("BUF = bytearray(16)\n", "call to bytearray()"),
    ],
)
def test_the_state_rule_fails_on_planted_state(tmp_path, source, expected):
    violations = state_violations(planted(tmp_path, source), "planted")
    assert len(violations) == 1 and expected in violations[0], violations


def test_the_state_rule_passes_immutable_module_constants(tmp_path):
    source = '''
        """A docstring."""
        import codecs, enum, os, re, struct
        from typing import Callable, Optional, TypeVar, Union
        MAX = 125
        LIMIT = MAX - 2
        NAME = "permessage-deflate"
        TAIL = b"\\x00\\x00\\xff\\xff"
        PARAMS = ("a", "b")
        KINDS = frozenset({"x", "y"})
        FLAG = bool(os.environ.get("X"))
        _PACK = struct.Struct("!H").pack
        _RE = re.compile("^a+$")
        _DECODER = codecs.getincrementaldecoder("utf-8")
        Alias = Union[bytes, memoryview]
        Params = list[tuple[str, Optional[str]]]
        T = TypeVar("T")
        _hook: Optional[Callable[[], None]] = None
        _later: Optional[int]
        __all__ = ["MAX", "NAME"]
        class Kind(enum.Enum):
            A = 1
        try:
            from zlib import crc32 as _crc
        except ImportError:
            _crc = None
    '''
    assert state_violations(planted(tmp_path, source), "planted") == []
