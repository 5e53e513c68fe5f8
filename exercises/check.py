"""Check an exercise's backward against finite differences with minivlm.gradcheck.

    python exercises/check.py rmsnorm              # your version, exercises/rmsnorm.py
    python exercises/check.py rmsnorm --solution   # the worked one, exercises/solutions/
    python exercises/check.py --list

Each exercise file defines `op(*inputs)` (built on a Function whose backward you write)
and `inputs(rng)` (float64 arrays, named by op's parameters). Exit status 0 when the
check passes, 1 when it fails, 2 for an unknown exercise or a backward not written yet.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

import minivlm

HERE = Path(__file__).resolve().parent
EXERCISES = sorted(p.stem for p in (HERE / "solutions").glob("*.py"))


def load(name: str, solution: bool = False):
    """The module of exercise `name` (the worked solution with `solution`)."""
    path = HERE / "solutions" / f"{name}.py" if solution else HERE / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"exercise_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(name: str, solution: bool = False):
    module = load(name, solution)
    return minivlm.gradcheck(module.op, module.inputs(np.random.default_rng(0)),
                             raise_on_failure=False)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="check an exercise's backward")
    parser.add_argument("name", nargs="?", help=f"one of: {', '.join(EXERCISES)}")
    parser.add_argument("--solution", action="store_true", help="check the worked solution")
    parser.add_argument("--list", action="store_true", help="list the exercises")
    args = parser.parse_args(argv)
    if args.list or args.name is None:
        print("\n".join(EXERCISES))
        return 0
    if args.name not in EXERCISES:
        print(f"check.py: unknown exercise {args.name!r}; expected one of: {', '.join(EXERCISES)}")
        return 2
    try:
        report = check(args.name, args.solution)
    except NotImplementedError as err:
        print(f"{args.name}: the backward is not written yet ({err})")
        return 2
    print(report)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
