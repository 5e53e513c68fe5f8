"""The layer-norm kernels (kernels/layer_norm.cu) give the right answers, checked without a
GPU: the unchanged source runs on the CPU in tests/cuda_host/kernel_emulator.cpp, one
std::thread per CUDA thread, launched by the real wrappers of
minivlm/kernels_cuda/layer_norm.py through a stand-in for CuPy (the `emulated_cuda`
fixture of conftest.py: NumPy arrays, and a RawKernel that runs the emulator). So the
grid, block, argument order and types, the chunked parameter sums and the GPU branch of
F.layer_norm / F.add_layer_norm are all the GPU's.

Every output starts as NaN (the loader's poisoned outputs). What such an emulation cannot
show (races, alignment, the GPU's fused multiply-adds) is listed in
tests/cuda_host/cuda_on_host.h. Needs g++ with C++20 <barrier>; skipped otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest

import minivlm
from minivlm import F
from minivlm.functional import normalization
from minivlm.kernels_cuda import layer_norm


@pytest.fixture
def emulated_gpu(emulated_cuda):
    """layer_norm.py's kernels run in the emulator (conftest.py) on NumPy arrays."""
    emulated_cuda(layer_norm)


def reference(x, residual, weight, bias, dy, eps):
    """Float64 layer norm of x (+ residual): y, xhat, rstd and the gradients dx, dw, db."""
    s = x.astype(np.float64) + (0.0 if residual is None else residual)
    centered = s - s.mean(axis=1, keepdims=True)
    rstd = 1 / np.sqrt((centered**2).mean(axis=1, keepdims=True) + eps)  # (R, 1)
    xhat = centered * rstd
    dxhat = dy * weight
    terms = dxhat - dxhat.mean(axis=1, keepdims=True)
    dx = rstd * (terms - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
    return xhat * weight + bias, xhat, rstd[:, 0], dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


def assert_close(name: str, got, want, tolerance: float) -> None:
    assert not np.isnan(got).any(), f"{name}: NaN (an element never written?)"
    error = np.abs(got - want).max(initial=0.0) / max(1.0, np.abs(want).max(initial=0.0))
    assert error <= tolerance, f"{name}: max error {error:.1e} of the largest value"


# (rows, columns): a single column; fewer columns than a warp; one block of 64 threads;
# 150 rows, three chunks of dweight/dbias sums over two column blocks; 700 columns that
# 512 threads stride over
SHAPES = [(3, 1), (37, 7), (5, 64), (150, 40), (2, 700)]


@pytest.mark.parametrize("rows, columns", SHAPES)
@pytest.mark.parametrize("with_residual", [False, True], ids=["x", "x+residual"])
def test_emulated_layer_norm_kernels_match_float64(emulated_gpu, rows, columns, with_residual):
    rng = np.random.default_rng(rows * columns)
    x, residual, dy = (rng.standard_normal((3, rows, columns)) * 2 + 1).astype(np.float32)
    weight, bias = rng.standard_normal((2, columns)).astype(np.float32)
    residual = residual if with_residual else None
    eps = 1e-5

    y, xhat, rstd = layer_norm.layer_norm_forward(x, weight, bias, eps=eps, residual=residual)
    grads = layer_norm.layer_norm_backward(dy, xhat, weight, rstd)
    want = reference(x, residual, weight, bias, dy, eps)
    names = ("y", "xhat", "rstd", "dx", "dweight", "dbias")
    for name, got, expected in zip(names, (y, xhat, rstd, *grads), want, strict=True):
        assert_close(name, got, expected, 2e-5)


def test_emulated_float64_kernels_match_float64(emulated_gpu):
    rng = np.random.default_rng(1)
    x, residual, dy = rng.standard_normal((3, 70, 33))
    weight, bias = rng.standard_normal((2, 33))
    y, xhat, rstd = layer_norm.layer_norm_forward(x, weight, bias, eps=1e-5, residual=residual)
    grads = layer_norm.layer_norm_backward(dy, xhat, weight, rstd)
    want = reference(x, residual, weight, bias, dy, 1e-5)
    names = ("y", "xhat", "rstd", "dx", "dweight", "dbias")
    for name, got, expected in zip(names, (y, xhat, rstd, *grads), want, strict=True):
        assert_close(name, got, expected, 1e-13)


def test_gpu_branch_of_add_layer_norm_gives_the_cpu_branch_values_and_gradients(
    emulated_gpu, monkeypatch
):
    """F.add_layer_norm and F.layer_norm through the kernels (as on CuPy) against NumPy's;
    x is a slice, whose rows are a stride apart (the branch makes them contiguous)."""
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(shape).astype(np.float32)
              for shape in ((2, 5, 48), (2, 5, 24), (24,), (24,), (2, 5, 24))]  # fmt: skip
    *inputs, upstream = arrays

    def run(op):
        tensors = [minivlm.tensor(array, requires_grad=True) for array in inputs]
        out = op(*tensors)
        out.backward(upstream)
        return [out.numpy()] + [t.grad for t in tensors]

    def fused(x, r, w, b):
        return F.add_layer_norm(x[..., :24], r, 24, w, b)

    def unfused(x, r, w, b):
        return F.layer_norm(x[..., :24] + r, 24, w, b)

    on_cpu = run(fused)
    monkeypatch.setattr(normalization, "is_cupy", lambda xp: True)  # NumPy takes the GPU branch
    names = ("y", "dx", "dresidual", "dweight", "dbias")
    for op in (fused, unfused):
        for name, got, want in zip(names, run(op), on_cpu, strict=True):
            assert_close(f"{op.__name__} {name}", got, want, 1e-5)


def test_emulator_refuses_an_argument_of_the_wrong_type(emulated_gpu):
    """The emulator checks each argument against the kernel's parameter type (CuPy would
    not): float64 rows handed to the float32 kernel fail."""
    x = np.zeros((2, 8))
    weight, bias = np.ones(8, np.float32), np.zeros(8, np.float32)
    kernel = layer_norm.get_kernel(layer_norm.SOURCE, "layer_norm_forward_f32")
    outputs = (np.empty((2, 8), np.float32), np.empty((2, 8), np.float32), np.empty(2, np.float32))
    with pytest.raises(AssertionError, match="argument 0 is a float64 array, the kernel takes"):
        kernel((2,), (32,), (x, weight, bias, *outputs, np.int32(8), np.float32(1e-5)))
