"""AdamW over one param group's flat buffers on the GPU: launches kernels/adamw.cu once.

    for each parameter k whose factors row is active, over its slice of the buffers:
    g = grad * scale;  p = p * decay
    v = beta2 v + (1 - beta2) g^2;  m = beta1 m + (1 - beta1) g
    p = p - step_size m / (sqrt(v) / bias2_sqrt + eps)

The step's numbers come from `factors` and `grad_scale`, device arrays the caller rewrites
before each step; the launch itself has only pointers and sizes as arguments.
"""

from __future__ import annotations

import math

import numpy as np

from minivlm.backend import require_cuda
from minivlm.kernels_cuda.checks import check_float_array, check_shape
from minivlm.kernels_cuda.loader import dtype_suffix, get_kernel

SOURCE = "adamw.cu"
FACTOR_COLUMNS = 9  # = FACTORS in adamw.cu
THREADS = 256  # = __launch_bounds__ of adamw_step_*
# a grid of at most this many blocks strides over larger buffers
MAX_BLOCKS = 4096


def adamw_step(param, grad, exp_avg, exp_avg_sq, factors, ends, grad_scale) -> None:
    """Update param, exp_avg and exp_avg_sq (N,) in place from grad (N,).

    factors (P, FACTOR_COLUMNS) float64: one row per parameter of the group (the columns
    of adamw.cu's AdamWFactor); ends (P,) int64: where each parameter's slice ends, the
    last equal to N; grad_scale (1,) float64.
    """
    cupy = require_cuda()
    check_float_array(cupy, "param", param, 1)
    size = param.shape[0]
    for name, array in (("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        check_float_array(cupy, name, array, 1, param.dtype)
        check_shape(name, array, (size,), "the size of param")
    check_float_array(cupy, "factors", factors, 2, np.dtype(np.float64))
    count = factors.shape[0]
    check_shape("factors", factors, (count, FACTOR_COLUMNS), "a row per parameter")
    check_float_array(cupy, "grad_scale", grad_scale, 1, np.dtype(np.float64))
    check_shape("grad_scale", grad_scale, (1,), "one scale")
    if not (
        isinstance(ends, cupy.ndarray)
        and ends.dtype == np.int64
        and ends.shape == (count,)
        and ends.flags.c_contiguous
    ):
        raise ValueError(
            f"ends must be a C-contiguous CuPy int64 array of shape ({count},) (one end per "
            f"row of factors), got {type(ends).__name__} {getattr(ends, 'dtype', '')} "
            f"{getattr(ends, 'shape', '')}"
        )
    if size == 0:
        return
    kernel = get_kernel(SOURCE, f"adamw_step_{dtype_suffix(param.dtype)}")
    blocks = min(MAX_BLOCKS, math.ceil(size / THREADS))
    arguments = (param, grad, exp_avg, exp_avg_sq, factors, ends, np.int32(count), grad_scale)
    kernel((blocks,), (THREADS,), (*arguments, np.int64(size)))
