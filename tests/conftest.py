"""Shared fixtures: the device an op test runs on, random float64 tensors on it, and the
CUDA kernels emulated on the CPU (`emulated_cuda`) for the tests that check them without a GPU.

`device` runs a test once on "cpu" and once on "cuda"; the "cuda" run is marked `gpu`
and skips unless CuPy sees a GPU. It is session-scoped so that Hypothesis tests may
use it too (Hypothesis refuses function-scoped fixtures).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from minivlm import Tensor, tensor
from minivlm.backend import cuda_available
from minivlm.kernels_cuda import loader


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


# ---- CUDA kernels emulated on the CPU ------------------------------------------------------
# tests/cuda_host/kernel_emulator.cpp runs a kernel source, unchanged, one std::thread per CUDA
# thread. `emulated_cuda(module)` routes a minivlm.kernels_cuda module's kernels there: its
# wrappers run as on the GPU (grid, block, argument order and types) on NumPy arrays.

REPO = Path(__file__).resolve().parents[1]
KERNEL_EMULATOR = REPO / "tests" / "cuda_host" / "kernel_emulator.cpp"
# what an argument is to kernel_emulator.cpp
ARGUMENT_TYPES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64",
                  np.dtype(np.int32): "int32", np.dtype(np.int64): "int64"}  # fmt: skip
# the parts of CuPy the wrappers call, as NumPy
CUPY_STAND_IN = SimpleNamespace(
    ndarray=np.ndarray, empty=np.empty, full=np.full, zeros=np.zeros, asarray=np.asarray,
    ascontiguousarray=np.ascontiguousarray, flatnonzero=np.flatnonzero,
)  # fmt: skip


def kernel_names(cxx20: list[str], source: str) -> list[str]:
    """Every extern "C" kernel of `source`, found after the preprocessor has expanded the
    macros that instantiate them."""
    command = [cxx20[0], "-E", "-P", "-x", "c++", "-D__launch_bounds__(threads)=", "-"]
    expanded = subprocess.run(command, input=source, capture_output=True, text=True, timeout=120)
    assert expanded.returncode == 0, f"the preprocessor failed:\n{expanded.stderr}"
    names = re.findall(r'extern "C" __global__ void\s+(\w+)\s*\(', expanded.stdout)
    assert names, "no extern \"C\" __global__ kernels in the source"
    return names


# a static __shared__ array's declaration: its name is group 2
SHARED_ARRAY = re.compile(r"(__shared__\s+\w+\s+(\w+)\s*(?:\[[^\]]*\]\s*)+;)")


def with_stale_shared_memory(source: str) -> str:
    """`source` with each __shared__ array filled with stale bytes as its block starts
    (emulated_stale_shared in cuda_on_host.h), so a kernel that reads a slot it never
    wrote reads NaN, not a zero or another block's value."""
    code = re.sub(r"//[^\n]*", "", source)
    declared = len(re.findall(r"__shared__", code)) - len(re.findall(r"extern __shared__", code))
    source, count = SHARED_ARRAY.subn(r"\1 emulated_stale_shared(\2);", source)
    assert count == declared, f"{declared} __shared__ arrays, {count} of them recognised"
    return source


def build_kernel_emulator(cxx20: list[str], build_dir: Path, source_name: str) -> Path:
    """kernel_emulator.cpp with kernels/<source_name> pasted in (as NVRTC gets it), its
    shared arrays stale at each block's start."""
    source = loader.read_source(source_name)
    assert not re.search(r"\basm\b", re.sub(r"//[^\n]*", "", source)), "inline PTX"
    source = with_stale_shared_memory(source)
    (build_dir / "kernels_emulated.inc").write_text(source)
    names = kernel_names(cxx20, source)
    table = "".join(f'    {{"{name}", adapt({name})}},\n' for name in names)
    (build_dir / "kernel_table.inc").write_text(table)
    binary = build_dir / "kernel_emulator"
    command = [*cxx20, f"-I{build_dir}", "-o", str(binary), str(KERNEL_EMULATOR)]
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


@pytest.fixture(scope="session")
def kernel_emulators(cxx20, tmp_path_factory):
    """source name -> its emulator binary, built on first use (a few seconds each)."""
    built: dict[str, Path] = {}

    def binary(source_name: str) -> Path:
        if source_name not in built:
            build_dir = tmp_path_factory.mktemp(Path(source_name).stem)
            built[source_name] = build_kernel_emulator(cxx20, build_dir, source_name)
        return built[source_name]

    return binary


@pytest.fixture
def emulated_cuda(kernel_emulators, tmp_path, monkeypatch):
    """emulated_cuda(module): the kernels_cuda `module` (with its SOURCE, or the sources
    given) runs its kernels in the emulator on NumPy arrays, outputs NaN-filled first."""

    def route(module, *source_names: str) -> None:
        binaries = {name: kernel_emulators(name) for name in source_names or (module.SOURCE,)}

        def get_kernel(source_name: str, kernel_name: str) -> EmulatedKernel:
            return EmulatedKernel(binaries[source_name], tmp_path, kernel_name)

        monkeypatch.setattr(module, "require_cuda", lambda: CUPY_STAND_IN)
        monkeypatch.setattr(module, "get_kernel", get_kernel)

    with loader.poisoned_outputs():
        yield route
