"""The exercises: every worked solution passes gradcheck, every stub does not yet, and
`python exercises/check.py NAME` says which."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("exercise_check", REPO / "exercises" / "check.py")
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def test_there_are_at_least_six_exercises_each_with_a_stub_and_a_solution():
    assert len(check.EXERCISES) >= 6
    stubs = sorted(p.stem for p in (REPO / "exercises").glob("*.py") if p.stem != "check")
    assert stubs == check.EXERCISES


@pytest.mark.parametrize("name", check.EXERCISES)
def test_worked_solution_passes_gradcheck(name):
    report = check.check(name, solution=True)
    assert report.passed, f"exercises/solutions/{name}.py:\n{report}"


@pytest.mark.parametrize("name", check.EXERCISES)
def test_stub_is_not_a_solution_yet(name):
    try:
        report = check.check(name)
    except NotImplementedError as err:
        assert name in str(err)
    else:
        assert not report.passed, f"exercises/{name}.py already passes: it gives the answer away"


def test_check_command_exit_codes():
    def run(*args):
        return subprocess.run([sys.executable, "exercises/check.py", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    assert run("swiglu", "--solution").returncode == 0
    assert run("broken_softmax").returncode == 1
    stub = run("rmsnorm")
    assert stub.returncode == 2 and "not written yet" in stub.stdout
    assert run("nope").returncode == 2
