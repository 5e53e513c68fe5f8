"""Layer norm over the last axis on the GPU: launches kernels/layer_norm.cu.
Same signatures as the CPU kernels.

    y = (x - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var + eps)  (two-pass, biased var)
    dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)),  dxhat = dy * weight
"""

from __future__ import annotations

import math

import numpy as np

from minivlm.backend import require_cuda
from minivlm.kernels_cuda.checks import check_float_array, check_shape
from minivlm.kernels_cuda.loader import dtype_suffix, get_kernel, new_output, row_block_threads

SOURCE = "layer_norm.cu"
# = PARAM_COLS, PARAM_ROWS in layer_norm.cu: block (32, 8) of layer_norm_backward_params
PARAM_BLOCK = (32, 8)
# dweight and dbias are summed over chunks of at least MIN_CHUNK_ROWS rows, into at most
# MAX_CHUNKS partial rows that are then added up (deterministic, no atomics)
MIN_CHUNK_ROWS, MAX_CHUNKS = 64, 256


def _check_rows(cupy, name: str, array, dtype=None) -> tuple[int, int]:
    check_float_array(cupy, name, array, 2, dtype)
    rows, columns = array.shape
    if columns < 1:
        raise ValueError(f"{name} must have at least one column to normalise, got {array.shape}")
    return rows, columns


def layer_norm_forward(x, weight, bias, *, eps: float) -> tuple:
    """Normalise each row of x (R, C); returns (y (R, C), mean (R,), rstd (R,))."""
    cupy = require_cuda()
    rows, columns = _check_rows(cupy, "x", x)
    for name, array in (("weight", weight), ("bias", bias)):
        check_float_array(cupy, name, array, 1, x.dtype)
        check_shape(name, array, (columns,), "one per column of x")
    y = new_output(cupy, x.shape, x.dtype)  # (R, C)
    mean = new_output(cupy, (rows,), x.dtype)  # (R,)
    rstd = new_output(cupy, (rows,), x.dtype)  # (R,)
    if rows:
        kernel = get_kernel(SOURCE, f"layer_norm_forward_{dtype_suffix(x.dtype)}")
        kernel(
            (rows,),
            (row_block_threads(columns),),
            (x, weight, bias, y, mean, rstd, np.int32(columns), x.dtype.type(eps)),
        )
    return y, mean, rstd


def layer_norm_backward(dy, x, weight, mean, rstd) -> tuple:
    """Gradients (dx (R, C), dweight (C,), dbias (C,)) from dy (R, C) and the forward's
    x, weight, mean (R,) and rstd (R,)."""
    cupy = require_cuda()
    rows, columns = _check_rows(cupy, "x", x)
    check_float_array(cupy, "dy", dy, 2, x.dtype)
    check_shape("dy", dy, x.shape, "the shape of x")
    check_float_array(cupy, "weight", weight, 1, x.dtype)
    check_shape("weight", weight, (columns,), "one per column of x")
    for name, array in (("mean", mean), ("rstd", rstd)):
        check_float_array(cupy, name, array, 1, x.dtype)
        check_shape(name, array, (rows,), "one per row of x")
    suffix = dtype_suffix(x.dtype)

    dx = new_output(cupy, x.shape, x.dtype)  # (R, C)
    if rows == 0:
        return dx, cupy.zeros(columns, x.dtype), cupy.zeros(columns, x.dtype)
    input_kernel = get_kernel(SOURCE, f"layer_norm_backward_input_{suffix}")
    input_kernel(
        (rows,), (row_block_threads(columns),), (dy, x, weight, mean, rstd, dx, np.int32(columns))
    )

    # dweight = sum_r dy xhat, dbias = sum_r dy: partial sums per chunk of rows, then added
    rows_per_chunk = max(MIN_CHUNK_ROWS, math.ceil(rows / MAX_CHUNKS))
    chunks = math.ceil(rows / rows_per_chunk)
    partial_dw = new_output(cupy, (chunks, columns), x.dtype)  # (chunks, C)
    partial_db = new_output(cupy, (chunks, columns), x.dtype)  # (chunks, C)
    params_kernel = get_kernel(SOURCE, f"layer_norm_backward_params_{suffix}")
    sizes = (np.int32(rows), np.int32(columns), np.int32(rows_per_chunk))
    grid = (math.ceil(columns / PARAM_BLOCK[0]), chunks)
    params_kernel(grid, PARAM_BLOCK, (dy, x, mean, rstd, partial_dw, partial_db, *sizes))
    return dx, partial_dw.sum(axis=0), partial_db.sum(axis=0)
