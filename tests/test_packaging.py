"""The wheel's package list stays complete, and the CUDA sources ship inside it."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_and_the_kernel_sources():
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "minivlm").rglob("__init__.py")
    }
    listed = set(settings["packages"])
    assert on_disk | {"minivlm.cuda_sources"} == listed
    assert settings["package-dir"]["minivlm.cuda_sources"] == "kernels"
    assert list((ROOT / "kernels").glob("*.cu")), "kernels/ holds no .cu sources"
