"""The CUDA kernels build, without a GPU: every source in kernels/ compiles with nvcc for
sm_80 and sm_90 with no register spills, and the Python side agrees with the sources
(where they are found, how headers are pasted in, which tile shapes were compiled).

nvcc compiles the text the loader hands to CuPy (headers pasted in), so what passes here
is what NVRTC gets on the GPU machine. Run with -s to see the register table.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from minivlm.backend import DeviceError, cuda_available
from minivlm.kernels_cuda import attention, attention_mma, loader

REPO = Path(__file__).resolve().parents[1]
KERNEL_DIR = REPO / "kernels"
SOURCES = sorted(path.name for path in KERNEL_DIR.glob("*.cu"))
ARCHS = ("sm_80", "sm_90")
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")


@dataclass
class KernelReport:
    registers: int = -1
    spill_stores: int = 0
    spill_loads: int = 0


@dataclass
class CompileResult:
    command: list[str]
    returncode: int
    log: str
    kernels: dict[str, KernelReport] = field(default_factory=dict)


def parse_ptxas_report(log: str) -> dict[str, KernelReport]:
    """Registers and spills per kernel from `-Xptxas -v` output, which reads
    Compiling entry function 'NAME' for 'sm_90'
        0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
    Used 80 registers, used 1 barriers, 33024 bytes smem"""
    kernels: dict[str, KernelReport] = {}
    current = None
    for line in log.splitlines():
        if entry := re.search(r"Compiling entry function '(\w+)'", line):
            current = kernels.setdefault(entry.group(1), KernelReport())
        elif current is None:
            continue
        elif spills := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            current.spill_stores, current.spill_loads = map(int, spills.groups())
        elif used := re.search(r"Used (\d+) registers", line):
            current.registers = int(used.group(1))
    return kernels


def compile_cubin(source: str, arch: str, work_dir: Path) -> CompileResult:
    assembled = work_dir / f"{arch}_{source}"
    assembled.write_text(loader.read_source(source))
    command = [NVCC, "-cubin", f"-arch={arch}", *loader.COMPILE_OPTIONS, "-Xptxas", "-v"]
    command += ["-o", str(assembled.with_suffix(".cubin")), str(assembled)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    return CompileResult(command, done.returncode, log, parse_ptxas_report(log))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[tuple[str, str], CompileResult]:
    """Every (source, arch) compiled once, in parallel (nvcc is single-threaded)."""
    work_dir = tmp_path_factory.mktemp("cubin")
    jobs = [(source, arch) for source in SOURCES for arch in ARCHS]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = pool.map(lambda job: compile_cubin(*job, work_dir), jobs)
        return dict(zip(jobs, results, strict=True))


def test_kernel_sources_are_found():
    assert set(SOURCES) >= {
        "flash_attn_forward.cu",
        "flash_attn_backward.cu",
        "cross_entropy.cu",
        "layer_norm.cu",
    }


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES)
def test_kernels_compile_without_register_spills(compiled, source, arch):
    result = compiled[(source, arch)]
    assert result.returncode == 0, f"nvcc failed:\n{' '.join(result.command)}\n{result.log}"
    assert result.kernels, f"ptxas reported no kernels for {source}:\n{result.log}"
    print(f"\n{source} for {arch}:")
    for name, report in sorted(result.kernels.items()):
        print(f"  {name:45s} {report.registers:4d} registers")
    spilling = {
        name: f"{report.spill_stores} bytes spill stores, {report.spill_loads} bytes spill loads"
        for name, report in result.kernels.items()
        if report.spill_stores or report.spill_loads
    }
    assert not spilling, f"{source} spills registers on {arch}: {spilling}"


# FLASH_ATTN_FORWARD(flash_attn_forward_d64_f32, float, 64, 64, 32, 4) and friends
INSTANTIATION = re.compile(
    r"^FLASH_ATTN_(FORWARD|BACKWARD_DK_DV|BACKWARD_DQ)\((\w+), (float|double), "
    r"(\d+), (\d+), (\d+), (\d+)\)$",
    re.MULTILINE,
)


def compiled_tilings() -> dict[str, tuple[int, int, int, int, str]]:
    """kernel name -> (D, BQ, BK, G, C type) from the instantiation lines of the .cu files."""
    found = {}
    for source in ("flash_attn_forward.cu", "flash_attn_backward.cu"):
        for match in INSTANTIATION.finditer((KERNEL_DIR / source).read_text()):
            _, name, ctype, *numbers = match.groups()
            found[name] = (*map(int, numbers), ctype)
    return found


def test_attention_launch_table_matches_compiled_tiles():
    """The Python side launches each kernel with the block size it was compiled for:
    block_rows is BQ for the forward and dQ kernels, BK for the dK/dV kernel."""
    compiled = compiled_tilings()
    expected_names = set()
    for family, by_dtype in attention.TILINGS.items():
        for suffix, tilings in by_dtype.items():
            for tiling in tilings:
                name = attention.kernel_name(family, tiling, suffix)
                expected_names.add(name)
                assert name in compiled, f"{name} is launched but never instantiated"
                head_dim, bq, bk, lanes, ctype = compiled[name]
                rows = bk if family == "flash_attn_backward_dk_dv" else bq
                assert (head_dim, rows, lanes) == (
                    tiling.head_dim,
                    tiling.block_rows,
                    tiling.lanes_per_row,
                ), f"{name}: compiled with D={head_dim} BQ={bq} BK={bk} G={lanes}, table {tiling}"
                assert ctype == {"f32": "float", "f64": "double"}[suffix], name
    assert set(compiled) == expected_names, "instantiated kernels missing from the launch table"


def test_attention_picks_the_smallest_head_dim_bucket():
    picks = {
        d: attention.pick_tiling("flash_attn_forward", np.float32, d).head_dim
        for d in (1, 16, 32, 33, 64, 100, 128)
    }
    assert picks == {1: 32, 16: 32, 32: 32, 33: 64, 64: 64, 100: 128, 128: 128}
    with pytest.raises(ValueError, match="head dim must be at most 128, got 129"):
        attention.pick_tiling("flash_attn_forward", np.float64, 129)


def test_loader_pastes_local_headers_into_each_source():
    for source in SOURCES:
        text = loader.read_source(source)
        assert not re.search(r'^#include "', text, re.MULTILINE), f"{source} includes a header"
        assert "MINIVLM_COMMON_CUH" in text, f"{source} lacks common.cuh"


def test_loader_names_both_places_it_looked_for_a_missing_source():
    with pytest.raises(FileNotFoundError, match="no_such_kernel.cu.*minivlm.cuda_sources"):
        loader.read_source("no_such_kernel.cu")


def test_importing_the_cuda_kernels_does_not_import_cupy():
    code = "import sys, minivlm.kernels_cuda; assert 'cupy' not in sys.modules, 'cupy imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(cuda_available(), reason="a GPU is usable here")
def test_cuda_kernels_without_a_gpu_raise_device_error():
    from minivlm.kernels_cuda import flash_attention_forward

    q = np.zeros((1, 1, 2, 4), np.float32)
    with pytest.raises(DeviceError, match="cuda"):
        flash_attention_forward(q, q, q, scale=0.5, causal=False)


# ---- the tensor-core attention kernels --------------------------------------------------

# FLASH_ATTN_MMA_FORWARD(flash_attn_mma_forward_d64_x3, 64, 64, 4, 3) and friends
MMA_INSTANTIATION = re.compile(
    r"^FLASH_ATTN_MMA_(?:FORWARD|BACKWARD_DQ|BACKWARD_DK_DV)\((\w+), (\d+), (\d+), (\d+), (\d+)\)$",
    re.MULTILINE,
)
# the smallest opt-in shared memory a block may have on sm_80 and later (sm_86, sm_89)
SMALLEST_SHARED_LIMIT = 99 * 1024


def compiled_mma_tilings() -> dict[str, tuple[int, int, int, int]]:
    """kernel name -> (D, tile, warps, passes) from the instantiation lines."""
    found = {}
    for source in (attention_mma.FORWARD_SOURCE, attention_mma.BACKWARD_SOURCE):
        for match in MMA_INSTANTIATION.finditer((KERNEL_DIR / source).read_text()):
            name, *numbers = match.groups()
            found[name] = tuple(map(int, numbers))
    return found


def test_mma_attention_launch_table_matches_compiled_tiles():
    compiled = compiled_mma_tilings()
    expected_names = set()
    for family, by_passes in attention_mma.MMA_TILINGS.items():
        for suffix, tilings in by_passes.items():
            for tiling in tilings:
                name = attention_mma.kernel_name(family, tiling, suffix)
                expected_names.add(name)
                assert name in compiled, f"{name} is launched but never instantiated"
                passes = {"x3": 3, "x1": 1}[suffix]
                table = (tiling.head_dim, tiling.tile, tiling.warps, passes)
                assert compiled[name] == table, f"{name}: compiled {compiled[name]}, table {table}"
    assert set(compiled) == expected_names, "instantiated kernels missing from the launch table"


def test_mma_attention_shared_memory_fits_every_tensor_core_gpu():
    """The dynamic shared memory each launch asks for, the kernels' *Tiles::BYTES."""
    for family, by_passes in attention_mma.MMA_TILINGS.items():
        for tilings in by_passes.values():
            for tiling in tilings:
                shared = attention_mma._shared_bytes(family, tiling)
                assert shared <= SMALLEST_SHARED_LIMIT, (family, tiling, shared)
    d64_forward = attention_mma.MmaTiling(64, 64, 4)  # Q 64 x 68, K 64 x 68, V 64 x 72 floats
    assert attention_mma._shared_bytes("flash_attn_mma_forward", d64_forward) == 4 * (
        64 * 68 + 64 * 68 + 64 * 72
    )


def test_mma_attention_refuses_a_precision_it_does_not_have():
    with pytest.raises(ValueError, match="precision must be one of 3xtf32, tf32, got 'fp16'"):
        attention_mma.passes_suffix("fp16")


@needs_nvcc
def test_mma_fragment_maps_on_the_host(tmp_path):
    """tests/cuda_host/mma_maps_test.cu: the warp products' index maps, bank conflicts and
    the 3xTF32 split, checked by emulating mma.sync from the PTX table (no GPU needed)."""
    binary = tmp_path / "mma_maps_test"
    source = REPO / "tests" / "cuda_host" / "mma_maps_test.cu"
    command = [NVCC, "-std=c++17", f"-I{KERNEL_DIR}", "-o", str(binary), str(source)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, f"nvcc failed:\n{built.stdout}{built.stderr}"
    done = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok ") == 6, done.stdout
