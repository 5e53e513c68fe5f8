"""The wheel carries the benchmarks: built from a copy of the sources and installed into
a fresh virtual environment, `minivlm bench attention --quick` runs there, from the
installed package and not from this checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOADED_FILES = """
import sys
import minivlm.bench.attention, minivlm.bench.ops, minivlm.bench.train, minivlm.cli.main
for name, module in sys.modules.items():
    if name.startswith("minivlm") and getattr(module, "__file__", None):
        print(module.__file__)
"""


def _run(command: list, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} exited {result.returncode}\n"
        f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    )
    return result


@pytest.mark.slow
def test_the_installed_wheel_runs_minivlm_bench_attention_quick(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside it
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("minivlm", "kernels"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source],
         tmp_path, 300)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("minivlm-*.whl")

    venv = tmp_path / "venv"  # numpy, Pillow, torch come from this Python's site-packages
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv],
         tmp_path, 120)  # fmt: skip
    python = venv / "bin" / "python"
    # --force-reinstall: this Python may hold minivlm already (an editable install of the
    # checkout); pip leaves that one alone and installs the wheel into the venv
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall",
          "--disable-pip-version-check", wheel], tmp_path, 300)  # fmt: skip

    work = tmp_path / "work"
    work.mkdir()
    # an editable install of the checkout would fill in modules the wheel lacks: every
    # minivlm module the command imports must come from the venv
    files = _run([python, "-c", LOADED_FILES], work, 60).stdout.split()
    outside = [file for file in files if not Path(file).is_relative_to(venv)]
    assert files and not outside, f"imported from outside the venv: {outside}"

    result = _run([venv / "bin" / "minivlm", "bench", "attention", "--quick"], work, 600)
    assert "numpy-fused" in result.stdout and "numpy-fused/numpy-naive" in result.stdout
    assert (work / "benchmarks" / "out" / "attention.json").is_file()
    assert (work / "benchmarks" / "out" / "attention.png").is_file()
