"""Layer norm over the last axis on the GPU, of x or of a residual sum x + residual:
launches kernels/layer_norm.cu.

    y = xhat * weight + bias,  xhat = (s - mean) * rstd,  rstd = 1 / sqrt(var + eps)
        with s = x (or x + residual, never stored); two-pass, biased var
    ds = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)),  dxhat = dy * weight

The forward returns xhat and rstd, all the backward needs: one launch forward, two and a
sum backward.
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


def _check_columns(cupy, columns: int, dtype, **vectors) -> None:
    for name, array in vectors.items():
        check_float_array(cupy, name, array, 1, dtype)
        check_shape(name, array, (columns,), "one per column of x")


def layer_norm_forward(x, weight, bias, *, eps: float, residual=None) -> tuple:
    """Normalise each row of x (R, C), or of x + residual (R, C) when given; returns
    (y (R, C), xhat (R, C), rstd (R,))."""
    cupy = require_cuda()
    rows, columns = _check_rows(cupy, "x", x)
    _check_columns(cupy, columns, x.dtype, weight=weight, bias=bias)
    inputs = (x,)
    if residual is not None:
        check_float_array(cupy, "residual", residual, 2, x.dtype)
        check_shape("residual", residual, x.shape, "the shape of x")
        inputs = (x, residual)
    y = new_output(cupy, x.shape, x.dtype)  # (R, C)
    xhat = new_output(cupy, x.shape, x.dtype)  # (R, C)
    rstd = new_output(cupy, (rows,), x.dtype)  # (R,)
    if rows:
        name = "layer_norm_forward" if residual is None else "add_layer_norm_forward"
        kernel = get_kernel(SOURCE, f"{name}_{dtype_suffix(x.dtype)}")
        arguments = (*inputs, weight, bias, y, xhat, rstd, np.int32(columns), x.dtype.type(eps))
        kernel((rows,), (row_block_threads(columns),), arguments)
    return y, xhat, rstd


def layer_norm_backward(dy, xhat, weight, rstd) -> tuple:
    """Gradients (dx (R, C), dweight (C,), dbias (C,)) from dy (R, C) and the forward's
    xhat (R, C), weight (C,) and rstd (R,). With a residual, dx is its gradient too."""
    cupy = require_cuda()
    rows, columns = _check_rows(cupy, "xhat", xhat)
    check_float_array(cupy, "dy", dy, 2, xhat.dtype)
    check_shape("dy", dy, xhat.shape, "the shape of xhat")
    _check_columns(cupy, columns, xhat.dtype, weight=weight)
    check_float_array(cupy, "rstd", rstd, 1, xhat.dtype)
    check_shape("rstd", rstd, (rows,), "one per row of xhat")
    suffix = dtype_suffix(xhat.dtype)

    dx = new_output(cupy, xhat.shape, xhat.dtype)  # (R, C)
    if rows == 0:
        return dx, cupy.zeros(columns, xhat.dtype), cupy.zeros(columns, xhat.dtype)
    input_kernel = get_kernel(SOURCE, f"layer_norm_backward_input_{suffix}")
    input_kernel(
        (rows,), (row_block_threads(columns),), (dy, xhat, weight, rstd, dx, np.int32(columns))
    )

    # dweight = sum_r dy xhat, dbias = sum_r dy: partial sums per chunk of rows, then added
    rows_per_chunk = max(MIN_CHUNK_ROWS, math.ceil(rows / MAX_CHUNKS))
    chunks = math.ceil(rows / rows_per_chunk)
    partial = new_output(cupy, (2, chunks, columns), xhat.dtype)  # dw, db of each chunk
    params_kernel = get_kernel(SOURCE, f"layer_norm_backward_params_{suffix}")
    sizes = (np.int32(rows), np.int32(columns), np.int32(rows_per_chunk))
    grid = (math.ceil(columns / PARAM_BLOCK[0]), chunks)
    params_kernel(grid, PARAM_BLOCK, (dy, xhat, partial[0], partial[1], *sizes))
    dw, db = partial[:, 0] if chunks == 1 else partial.sum(axis=1)  # (C,) each
    return dx, dw, db
