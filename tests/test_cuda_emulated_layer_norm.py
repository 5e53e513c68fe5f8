"""The layer-norm kernels (kernels/layer_norm.cu) give the right answers, checked without a
GPU: the unchanged source runs on the CPU in tests/cuda_host/kernel_emulator.cpp, one
std::thread per CUDA thread, launched by the real wrappers of
minivlm/kernels_cuda/layer_norm.py through a stand-in for CuPy (NumPy arrays, and a
RawKernel that runs the emulator). So the grid, block, argument order and types, the chunked
parameter sums and the GPU branch of F.layer_norm / F.add_layer_norm are all the GPU's.

Every output starts as NaN (the loader's poisoned outputs). What such an emulation cannot
show (races, alignment, the GPU's fused multiply-adds) is listed in tests/cuda_host/cuda_on_host.h.
Needs g++ with C++20 <barrier>; skipped otherwise.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import minivlm
from minivlm import F
from minivlm.functional import normalization
from minivlm.kernels_cuda import layer_norm, loader

REPO = Path(__file__).resolve().parents[1]
EMULATOR_SOURCE = REPO / "tests" / "cuda_host" / "kernel_emulator.cpp"
# what a kernel argument is to kernel_emulator.cpp
ARGUMENT_TYPES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64",
                  np.dtype(np.int32): "int32"}  # fmt: skip


def kernel_names(source: str) -> list[str]:
    """Every kernel a macro-built source defines: each `NAME_##SUFFIX` under each
    `MACRO(SUFFIX, T)` line that expands it."""
    kernel = r"__global__ void (?:__launch_bounds__\([^)]*\)[\s\\]*)?(\w+)_##SUFFIX\("
    bases = re.findall(kernel, source)
    suffixes = re.findall(r"^[A-Z_]+\((\w+), \w+\)$", source, flags=re.MULTILINE)
    assert bases and suffixes, "no kernels found: has the source stopped using its macro?"
    return [f"{base}_{suffix}" for suffix in suffixes for base in bases]


@pytest.fixture(scope="module")
def emulator(cxx20, tmp_path_factory) -> Path:
    """kernel_emulator.cpp built with kernels/layer_norm.cu pasted in (a few seconds)."""
    source = loader.read_source(layer_norm.SOURCE)
    assert not re.search(r"\basm\b", re.sub(r"//[^\n]*", "", source)), "inline PTX"
    build_dir = tmp_path_factory.mktemp("kernel_emulator")
    (build_dir / "kernels_emulated.inc").write_text(source)
    table = "".join(f'    {{"{name}", adapt({name})}},\n' for name in kernel_names(source))
    (build_dir / "kernel_table.inc").write_text(table)
    binary = build_dir / "kernel_emulator"
    command = [*cxx20, f"-I{build_dir}", "-o", str(binary), str(EMULATOR_SOURCE)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, f"g++ failed:\n{' '.join(command)}\n{built.stderr}"
    return binary


class EmulatedKernel:
    """Called as CuPy's RawKernel is, kernel(grid, block, arguments), on NumPy arrays: writes
    the arguments for the emulator, runs it and copies every buffer back."""

    def __init__(self, binary: Path, work: Path, name: str):
        self.binary, self.work, self.name = binary, work, name

    def __call__(self, grid: tuple, block: tuple, arguments: tuple) -> None:
        lines = []
        for index, argument in enumerate(arguments):
            type_name = ARGUMENT_TYPES[np.asarray(argument).dtype]
            if isinstance(argument, np.ndarray):
                # the GPU gets the data pointer only: a strided view would be read wrong there
                assert argument.flags.c_contiguous, f"argument {index} is not contiguous"
                argument.tofile(self.work / f"argument{index}.bin")
                lines.append(f"array {type_name} argument{index}")
            else:
                lines.append(f"scalar {type_name} {argument.item()!r}")
        (self.work / "arguments.txt").write_text("\n".join(lines) + "\n")
        grid, block = (*grid, 1)[:2], (*block, 1)[:2]
        command = [str(self.binary), str(self.work), self.name, *map(str, (*grid, *block))]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (
            f"{self.name} failed in the emulator (exit {done.returncode}):\n"
            f"{' '.join(command)}\n{done.stderr}"
        )
        for index, argument in enumerate(arguments):
            if isinstance(argument, np.ndarray):
                written = np.fromfile(self.work / f"argument{index}.bin", argument.dtype)
                argument[...] = written.reshape(argument.shape)


@pytest.fixture
def emulated_gpu(emulator, tmp_path, monkeypatch):
    """layer_norm.py's kernels run in the emulator on NumPy arrays, its outputs NaN-filled."""
    stand_in = SimpleNamespace(ndarray=np.ndarray, empty=np.empty, full=np.full, zeros=np.zeros)
    monkeypatch.setattr(layer_norm, "require_cuda", lambda: stand_in)
    monkeypatch.setattr(
        layer_norm, "get_kernel", lambda source, name: EmulatedKernel(emulator, tmp_path, name)
    )
    with loader.poisoned_outputs():
        yield


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
    """F.add_layer_norm and F.layer_norm through the kernels (as on CuPy) against NumPy's."""
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(shape).astype(np.float32)
              for shape in ((2, 5, 24), (2, 5, 24), (24,), (24,), (2, 5, 24))]  # fmt: skip
    *inputs, upstream = arrays

    def run(op):
        tensors = [minivlm.tensor(array, requires_grad=True) for array in inputs]
        out = op(*tensors)
        out.backward(upstream)
        return [out.numpy()] + [t.grad for t in tensors]

    def fused(x, r, w, b):
        return F.add_layer_norm(x, r, 24, w, b)

    def unfused(x, r, w, b):
        return F.layer_norm(x + r, 24, w, b)

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
