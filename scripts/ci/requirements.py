#!/usr/bin/env python3
"""Print the requirements of pyproject.toml's extras, one a line, for ``pip install`` (issue 15).

    python3 scripts/ci/requirements.py docs          # the docs extra
    python3 scripts/ci/requirements.py test --only pytest pytest-timeout

``--only NAME...`` keeps the requirements of those distributions (the pieces of
an extra that a run needs). The CI scripts install an extra this way instead of
``pip install -e '.[extra]'``, so they never replace the checkout's editable
install. Needs Python 3.11+ (tomllib).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def extra(name: str) -> list[str]:
    """The requirement strings of the optional dependency group ``name``; KeyError if there is none."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    requirements: list[str] = project["optional-dependencies"][name]
    return requirements


def distribution(requirement: str) -> str:
    """The normalised distribution name a requirement string starts with."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="+")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME")
    args = parser.parse_args()
    wanted = None if args.only is None else {distribution(name) for name in args.only}
    for name in args.extras:
        for requirement in extra(name):
            if wanted is None or distribution(requirement) in wanted:
                print(requirement)


if __name__ == "__main__":
    main()
