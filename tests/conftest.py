"""Shared fixtures: the device an op test runs on, and random float64 tensors on it.

`device` runs a test once on "cpu" and once on "cuda"; the "cuda" run is marked `gpu`
and skips unless CuPy sees a GPU. It is session-scoped so that Hypothesis tests may
use it too (Hypothesis refuses function-scoped fixtures).
"""

from __future__ import annotations

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
