"""FlatAdamW's CUDA kernel (kernels/adamw.cu) gives the NumPy update's bits, checked without
a GPU: the unchanged source runs on the CPU in tests/cuda_host/kernel_emulator.cpp through
the real wrapper, minivlm/kernels_cuda/adamw.py (the `emulated_cuda` fixture of
conftest.py), called by FlatAdamW's own CuPy branch.

The kernel rounds each operation on its own (the *_rn intrinsics), in the order of the NumPy
code; the host build rounds each operation the same way, so equal bits here mean that the
kernel's sequence of operations is NumPy's. A grid of two blocks makes every thread of the
grid-stride loop walk across several parameters, and their factors rows, on each step.
"""

from __future__ import annotations

import numpy as np
import pytest

from minivlm import Tensor
from minivlm.kernels_cuda import adamw
from minivlm.optim import FlatAdamW

# (0,) a parameter without elements; the rest from a few to 700 elements
SHAPES = [(30, 20), (5,), (0,), (3, 3), (700,), (17, 31), (1,)]


def make_params(dtype) -> list[Tensor]:
    rng = np.random.default_rng(0)
    return [Tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in SHAPES]


def train(params: list[Tensor], on_kernel: bool, clip: bool, steps: int = 4) -> FlatAdamW:
    """`steps` FlatAdamW steps (two groups, a changing lr, some gradients missing), through
    the CUDA kernel's branch when `on_kernel`, else the NumPy one."""
    groups = [
        {"params": params[::2], "weight_decay": 0.1},
        {"params": params[1::2], "weight_decay": 0.0},
    ]
    optimizer = FlatAdamW(groups, lr=1e-2)
    if on_kernel:
        for flat in optimizer.groups:
            flat.scratch = None  # what marks a CuPy group: its update is the kernel's
    rng = np.random.default_rng(1)
    for step in range(steps):
        for param in params:
            missing = rng.random() < 0.3
            param.grad = None if missing else rng.standard_normal(param.shape).astype(param.dtype)
        for group in optimizer.param_groups:
            group["lr"] = 1e-2 / (step + 1)
        if clip:
            optimizer.clip_grad_norm_(1.0)  # NumPy either way: the same scale
        optimizer.step()
    return optimizer


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("clip", [False, True], ids=["unclipped", "clipped"])
def test_emulated_kernel_gives_the_numpy_branchs_bits(emulated_cuda, monkeypatch, dtype, clip):
    emulated_cuda(adamw)
    monkeypatch.setattr(adamw, "MAX_BLOCKS", 2)  # 512 threads stride over ~1,700 elements
    numpy_params, kernel_params = make_params(dtype), make_params(dtype)
    numpy_optimizer = train(numpy_params, on_kernel=False, clip=clip)
    kernel_optimizer = train(kernel_params, on_kernel=True, clip=clip)
    for index, (got, want) in enumerate(zip(kernel_params, numpy_params, strict=True)):
        np.testing.assert_array_equal(got.data, want.data, err_msg=f"param {index}")
    want_state = numpy_optimizer.state_dict()["state"]
    got_state = kernel_optimizer.state_dict()["state"]
    assert sorted(got_state) == sorted(want_state)
    for index, state in want_state.items():
        for name in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(got_state[index][name], state[name], err_msg=name)


def test_emulated_kernel_skips_the_whole_update_on_a_nan_scale(emulated_cuda):
    """A non-finite norm makes the scale NaN: the kernel changes no parameter or moment."""
    emulated_cuda(adamw)
    params = make_params(np.float32)
    optimizer = train(params, on_kernel=True, clip=False, steps=2)
    before = [flat.param.copy() for flat in optimizer.groups]
    moments = [(flat.exp_avg.copy(), flat.exp_avg_sq.copy()) for flat in optimizer.groups]
    for param in params:
        param.grad = np.ones(param.shape, np.float32)
    params[0].grad[0, 0] = np.nan
    optimizer.clip_grad_norm_(1.0)
    optimizer.prepare_step()
    optimizer.apply_step()
    for flat, weights, (m, v) in zip(optimizer.groups, before, moments, strict=True):
        np.testing.assert_array_equal(flat.param, weights)
        np.testing.assert_array_equal(flat.exp_avg, m)
        np.testing.assert_array_equal(flat.exp_avg_sq, v)
