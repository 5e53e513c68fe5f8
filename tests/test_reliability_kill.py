"""Issue 18's kill harness: SIGKILL a tiny `minivlm train` at random moments and during
checkpoint writes, resume, and compare bit for bit with an uninterrupted run.

A few trials of benchmarks/kill_soak.py (which runs many): one kill at a random time,
two at random file-system calls of a checkpoint write (seeded, so the test is repeatable).
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "kill_soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("kill_soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def uninterrupted(soak, tmp_path_factory):
    return soak.reference(tmp_path_factory.mktemp("reference"))


@pytest.mark.parametrize("mode, seed", [("time", 3), ("write", 1), ("write", 5)])
def test_a_run_killed_at_random_resumes_to_the_same_bits(soak, uninterrupted, tmp_path, mode, seed):
    expected, duration = uninterrupted
    result = soak.trial(tmp_path, f"{mode}_{seed}", random.Random(seed), expected, mode, duration)
    if mode == "write":  # the process died inside a checkpoint write, and it did not matter
        assert result["killed"] and result["mid_write"], result
