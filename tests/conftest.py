"""Shared fixtures: the device an op test runs on, random float64 tensors on it, and the
host C++ compiler that the emulated-kernel tests build with.

`device` runs a test once on "cpu" and once on "cuda"; the "cuda" run is marked `gpu`
and skips unless CuPy sees a GPU. It is session-scoped so that Hypothesis tests may
use it too (Hypothesis refuses function-scoped fixtures).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from minivlm import Tensor, tensor
from minivlm.backend import cuda_available


@pytest.fixture(scope="session", params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> str:
    if request.param == "cuda" and not cuda_available():
        pytest.skip("device 'cuda' needs CuPy and a usable NVIDIA GPU")
    return request.param


def random_tensor(
    rng: np.random.Generator,
    *shape: int,
    device: str = "cpu",
    positive: bool = False,
    requires_grad: bool = True,
    dtype=np.float64,
) -> Tensor:
    """Standard-normal values of `shape` (|values| + 0.5 with `positive`) on `device`."""
    data = rng.standard_normal(shape)
    if positive:
        data = np.abs(data) + 0.5
    return tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


@pytest.fixture(scope="session")
def make_tensor():
    """`random_tensor` itself, for tests (Hypothesis ones too) that bring their own rng."""
    return random_tensor


@pytest.fixture
def randn(device):
    """randn(*shape, positive=False, requires_grad=True, dtype=float64): a random tensor on
    `device`, from a generator seeded afresh for every test."""
    rng = np.random.default_rng(0)

    def make(*shape: int, **options) -> Tensor:
        return random_tensor(rng, *shape, device=device, **options)

    return make


# g++ flags of the kernel emulators in tests/cuda_host (C++20 for <barrier>)
CXX_FLAGS = ("-std=c++20", "-O2", "-pthread")


@pytest.fixture(scope="session")
def cxx20(tmp_path_factory) -> list[str]:
    """A g++ command with C++20's <barrier> (its path and CXX_FLAGS); skips the test if
    there is none."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed")
    probe = Path(tmp_path_factory.mktemp("barrier_probe")) / "probe.cpp"
    probe.write_text(
        "#include <barrier>\nint main() { std::barrier<> all(1); all.arrive_and_wait(); }"
    )
    command = [gxx, *CXX_FLAGS, "-o", str(probe.with_suffix("")), str(probe)]
    if subprocess.run(command, capture_output=True, timeout=120).returncode != 0:
        pytest.skip("g++ has no C++20 <barrier>")
    return [gxx, *CXX_FLAGS]
