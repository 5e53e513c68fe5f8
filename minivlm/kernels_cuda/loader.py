"""Find the CUDA sources in kernels/, compile them with CuPy once, hand out their kernels.

The .cu files live in ``<repo>/kernels/`` in a checkout; an installed wheel carries the
same folder as the package ``minivlm.cuda_sources``. A source's local headers
(``#include "x.cuh"``) are pasted into its text before compiling, so the code CuPy
hashes for its compile cache is the whole program: editing a header recompiles.

Also here, shared by the wrappers: the block size of the one-block-per-row kernels, and
the output allocator, which can fill every output with NaN (``poisoned_outputs``) so
that elements a kernel forgets to write show up.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from minivlm.backend import require_cuda

SOURCE_PACKAGE = "minivlm.cuda_sources"
CHECKOUT_KERNELS = Path(__file__).resolve().parents[2] / "kernels"
# NVRTC options. No fast math: the float64 kernels must stay IEEE, and the float32 ones
# are checked against float64 at 1e-4.
COMPILE_OPTIONS = ("--std=c++17",)

_LOCAL_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_.]+)"[ \t]*$', re.MULTILINE)


def read_kernel_file(name: str) -> str:
    """Text of one file of kernels/, from the checkout if there is one, else from the wheel."""
    checkout_file = CHECKOUT_KERNELS / name
    if checkout_file.is_file():
        return checkout_file.read_text()
    try:
        packaged_file = importlib.resources.files(SOURCE_PACKAGE) / name
    except ModuleNotFoundError:
        packaged_file = None
    if packaged_file is None or not packaged_file.is_file():
        raise FileNotFoundError(
            f"CUDA source {name!r} is in neither {CHECKOUT_KERNELS} nor the installed "
            f"package {SOURCE_PACKAGE}"
        )
    return packaged_file.read_text()


def read_source(name: str) -> str:
    """The source of kernels/<name> with its local headers pasted in (recursively).

    Each header guards itself with #ifndef, so one pasted twice compiles once.
    """
    return _LOCAL_INCLUDE.sub(lambda match: read_source(match.group(1)), read_kernel_file(name))


@functools.cache
def get_module(name: str):
    """The cupy.RawModule of kernels/<name>, built on first use and kept.

    The kernels are ``extern "C"``, so their names need no name_expressions.
    """
    cupy = require_cuda()
    return cupy.RawModule(code=read_source(name), options=COMPILE_OPTIONS)


def get_kernel(source_name: str, kernel_name: str):
    """One kernel of kernels/<source_name>; the first call compiles the file (seconds)."""
    return get_module(source_name).get_function(kernel_name)


def dtype_suffix(dtype) -> str:
    """The suffix of a kernel's float type: "f32" or "f64"."""
    return {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}[np.dtype(dtype)]


def row_block_threads(row_length: int, most: int = 512) -> int:
    """Threads for a kernel that gives each row one block and strides over its columns:
    a power of two (whole warps, as the block reductions need), 32 to `most`."""
    return min(most, max(32, 1 << max(row_length - 1, 0).bit_length()))


# ---- outputs ---------------------------------------------------------------------------

_poison_outputs = False


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    """Within this block every kernel output starts as NaN instead of uninitialised memory,
    so an element that a kernel fails to write shows up as NaN in a test."""
    global _poison_outputs
    previous, _poison_outputs = _poison_outputs, True
    try:
        yield
    finally:
        _poison_outputs = previous


def new_output(xp, shape: tuple[int, ...], dtype):
    """An output buffer for a kernel to fill completely (NaN-filled under poisoned_outputs)."""
    if _poison_outputs:
        return xp.full(shape, np.nan, dtype=dtype)
    return xp.empty(shape, dtype=dtype)
