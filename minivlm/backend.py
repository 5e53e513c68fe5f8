"""NumPy or CuPy: the whole device switch.

Every op asks the arrays it got which module to use (``xp = get_array_module(x)``),
so one piece of code runs on both. CuPy is imported only when a CUDA array or the
"cuda" device is asked for.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

import numpy as np

DEVICES = ("cpu", "cuda")
DEFAULT_FLOAT = np.float32


class DeviceError(RuntimeError):
    """A device that cannot be used here, or arrays from two devices in one op."""


_cupy = None


def cupy_or_none():
    """The cupy module if it imports, else None (imports it at most once)."""
    global _cupy
    if _cupy is None:
        try:
            import cupy
        except ImportError:
            _cupy = False
        else:
            _cupy = cupy
    return _cupy or None


def require_cuda():
    """The cupy module, after checking that it and a GPU are both there."""
    cupy = cupy_or_none()
    if cupy is None:
        raise DeviceError(
            "device 'cuda' needs CuPy, which is not installed: "
            "pip install 'minivlm[cuda12]' (or [cuda13])"
        )
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CuPy raises its own CUDARuntimeError without a driver
        raise DeviceError(f"device 'cuda': CuPy is installed but no GPU is usable ({err})") from err
    if count == 0:
        raise DeviceError("device 'cuda': CuPy is installed but it sees no GPU")
    return cupy


def cuda_available() -> bool:
    try:
        require_cuda()
    except DeviceError:
        return False
    return True


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return device


def is_cupy_array(array) -> bool:
    cupy = _cupy or None  # never import cupy just to ask: a NumPy array cannot be CuPy's
    return cupy is not None and isinstance(array, cupy.ndarray)


def device_of(array) -> str:
    return "cuda" if is_cupy_array(array) else "cpu"


def get_array_module(*arrays):
    """numpy, or cupy if any argument is a CuPy array."""
    for array in arrays:
        if is_cupy_array(array):
            return _cupy
    return np


def is_cupy(xp) -> bool:
    """Whether `xp` (from get_array_module) is CuPy: the one device test an op makes,
    once in its forward, to choose a hand-written CUDA kernel over its NumPy code."""
    return bool(_cupy) and xp is _cupy


_values_checked_on_host = False


@contextlib.contextmanager
def values_checked_on_host() -> Iterator[None]:
    """Within the block, the checks of token ids and targets that would read a CuPy
    array's values back to the host are skipped: the caller checked those values on the
    host before they were copied (a step captured as a CUDA graph cannot read device
    values). NumPy arrays are always checked: it costs nothing."""
    global _values_checked_on_host
    previous, _values_checked_on_host = _values_checked_on_host, True
    try:
        yield
    finally:
        _values_checked_on_host = previous


def needs_value_check(array) -> bool:
    """Whether an op should check `array`'s values (see values_checked_on_host)."""
    return not (_values_checked_on_host and is_cupy_array(array))


def to_device(array, device: str):
    """The array on `device` (no copy when it is already there)."""
    check_device(device)
    if device == device_of(array):
        return array
    if device == "cuda":
        return require_cuda().asarray(array)
    return array.get()


def on_device_of(tensor, values):
    """`values` (an array or a list) as an array on the device of `tensor` (a Tensor)."""
    return to_device(get_array_module(values).asarray(values), tensor.device)


def to_numpy(array) -> np.ndarray:
    return to_device(array, "cpu")


# Allocator settings, used by the CLI and the benchmarks.
#
# glibc returns every freed block above 128 KiB-32 MiB (its adaptive mmap threshold)
# to the operating system, so each training step maps its large temporaries afresh and
# pays a page fault per 4 KiB page on first touch: about a quarter of a step's CPU time
# for the reference model here. Raising the mmap and trim thresholds keeps those pages
# mapped between steps. This only changes where memory comes from, never a result; on a
# C library without mallopt it does nothing.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds; True when the C library took both."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)
    )


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
