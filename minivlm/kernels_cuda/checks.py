"""Argument checks shared by the CUDA wrappers: each error names the argument, what it got
and what was expected, before any kernel sees a bad pointer or shape."""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# gridDim.y and gridDim.z are at most 65535 (gridDim.x may reach 2**31 - 1)
MAX_GRID_Y = 65535


def check_float_array(cupy, name: str, array, ndim: int, dtype=None) -> None:
    """`array` is a C-contiguous CuPy float32/float64 array of `ndim` dimensions (and of
    `dtype` when given)."""
    if not isinstance(array, cupy.ndarray):
        raise TypeError(f"{name} must be a CuPy array on the GPU, got {type(array).__name__}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    if dtype is None and array.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {array.dtype}")
    if dtype is not None and array.dtype != dtype:
        raise TypeError(
            f"{name} must have the dtype of the other inputs ({dtype}), got {array.dtype}"
        )
    if not array.flags.c_contiguous:
        raise ValueError(
            f"{name} must be C-contiguous (call cupy.ascontiguousarray), got strides "
            f"{array.strides} for shape {array.shape}"
        )


def check_shape(name: str, array, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(array.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({meaning}), got {array.shape}")


def as_int32_vector(cupy, name: str, values, length: int):
    """`values` (CuPy or NumPy integers, or a list) as a contiguous int32 CuPy vector of
    `length` elements."""
    array = cupy.asarray(values)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {array.shape}")
    return cupy.ascontiguousarray(array, dtype=np.int32)


def check_grid_rows(name: str, blocks: int) -> None:
    """The number of row blocks goes in gridDim.y."""
    if blocks > MAX_GRID_Y:
        raise ValueError(
            f"{name} needs {blocks} blocks along grid y, more than CUDA's {MAX_GRID_Y}"
        )
