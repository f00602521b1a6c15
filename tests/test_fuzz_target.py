"""The atheris fuzz target runs and holds its own assertions on its seeds and on random inputs.

CI fuzzes for a minute (``scripts/test.sh``); this pins the target itself,
so a broken target cannot pass silently. Inputs that fuzzing finds to break
an invariant are added to fuzz/seeds/ (none so far), so they run here for good.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

atheris = pytest.importorskip("atheris")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("fuzz_protocol", ROOT / "fuzz" / "fuzz_protocol.py")
assert SPEC is not None and SPEC.loader is not None
fuzz_protocol = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(fuzz_protocol)

SEEDS = sorted((ROOT / "fuzz" / "seeds").iterdir())



@pytest.mark.parametrize("seed", SEEDS, ids=[p.name for p in SEEDS])
def test_seed_inputs_pass_the_target(seed: pathlib.Path) -> None:
    fuzz_protocol.test_one_input(seed.read_bytes())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_inputs_pass_the_target(data: bytes) -> None:
    fuzz_protocol.test_one_input(data)


def test_target_assertions_can_fail() -> None:
    """The frame check rejects a violation with a code the protocol must never use."""
    with pytest.raises(AssertionError):
        fuzz_protocol.ALLOWED_CODES.discard(1002)
        try:
            # An unmasked client frame: the protocol answers 1002, now disallowed.
            fuzz_protocol.check_frames(b"\x81\x02hi", False, [])
        finally:
            fuzz_protocol.ALLOWED_CODES.add(1002)
