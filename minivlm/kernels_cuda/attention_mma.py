"""Fused (flash) attention on tensor cores: launches kernels/flash_attn_mma_forward.cu and
kernels/flash_attn_mma_backward.cu (float32 only, compute capability 8.0 or newer).

Same arguments, masks and results as minivlm/kernels_cuda/attention.py, plus `precision`:
    "3xtf32"  each product as three TF32 MMAs on a split of each operand: float32-grade
    "tf32"    one TF32 MMA a product: inputs rounded to 10 mantissa bits (about 1e-3
              relative per product), faster
The backward's delta = rowsum(d_out * out) is attention.py's kernel.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from minivlm.backend import require_cuda
from minivlm.kernels_cuda import attention
from minivlm.kernels_cuda.checks import check_float_array, check_grid_rows, check_shape
from minivlm.kernels_cuda.loader import get_kernel, new_output

FORWARD_SOURCE = "flash_attn_mma_forward.cu"
BACKWARD_SOURCE = "flash_attn_mma_backward.cu"
PRECISIONS = {"3xtf32": "x3", "tf32": "x1"}  # precision -> kernel name suffix
ROWS_PAD, COLUMNS_PAD = 4, 8  # the SharedPad values of kernels/flash_attn_mma_common.cuh
STATIC_SHARED_LIMIT = 48 * 1024  # above this a kernel must be allowed more dynamic shared memory
MIN_COMPUTE_CAPABILITY = 80  # mma.sync with TF32 operands


@dataclass(frozen=True)
class MmaTiling:
    """The tile shape one tensor-core attention kernel was compiled with."""

    head_dim: int  # D: any head dim d <= D, padded with zeros
    tile: int  # BK keys a step (forward, dQ) or BQ queries a step (dK, dV)
    warps: int  # the block owns 16 rows a warp: queries (forward, dQ) or keys (dK, dV)

    @property
    def block_rows(self) -> int:
        return 16 * self.warps

    @property
    def threads(self) -> int:
        return 32 * self.warps


def _shared_bytes(family: str, tiling: MmaTiling) -> int:
    """Dynamic shared memory of one block: ForwardTiles / DqTiles / DkDvTiles ::BYTES."""
    rows_stride, columns_stride = tiling.head_dim + ROWS_PAD, tiling.head_dim + COLUMNS_PAD
    owned, stepped = tiling.block_rows, tiling.tile
    floats = {
        "flash_attn_mma_forward": owned * rows_stride + stepped * (rows_stride + columns_stride),
        "flash_attn_mma_backward_dq": 2 * (owned + stepped) * rows_stride,
        "flash_attn_mma_backward_dk_dv": 2 * (owned + stepped) * rows_stride + 2 * stepped,
    }[family]
    return 4 * floats


# kernel family -> passes suffix -> tilings by head-dim bucket. The same numbers are in
# the instantiation lines at the end of the .cu files; tests/test_cuda_compile.py checks
# that the two agree.
MMA_TILINGS: dict[str, dict[str, tuple[MmaTiling, ...]]] = {
    "flash_attn_mma_forward": {
        "x3": (MmaTiling(32, 64, 4), MmaTiling(64, 64, 4), MmaTiling(128, 32, 4)),
        "x1": (MmaTiling(32, 64, 4), MmaTiling(64, 64, 4), MmaTiling(128, 32, 4)),
    },
    "flash_attn_mma_backward_dq": {
        "x3": (MmaTiling(32, 32, 4), MmaTiling(64, 64, 4), MmaTiling(128, 16, 4)),
        "x1": (MmaTiling(32, 32, 4), MmaTiling(64, 64, 4), MmaTiling(128, 16, 4)),
    },
    "flash_attn_mma_backward_dk_dv": {  # d 128: the 16 x 128 dK and dV leave room for 8
        "x3": (MmaTiling(32, 64, 4), MmaTiling(64, 32, 4), MmaTiling(128, 8, 4)),
        "x1": (MmaTiling(32, 64, 4), MmaTiling(64, 64, 4), MmaTiling(128, 8, 4)),
    },
}
kernel_name = attention.kernel_name


def pick_tiling(family: str, suffix: str, head_dim: int) -> MmaTiling:
    """The smallest head-dim bucket of `family` that holds `head_dim`."""
    return attention.smallest_bucket(MMA_TILINGS[family][suffix], head_dim)


def passes_suffix(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def check_tensor_cores(cupy) -> None:
    """The current GPU has TF32 MMA (compute capability 8.0 or newer)."""
    capability = int(cupy.cuda.Device().compute_capability)
    if capability < MIN_COMPUTE_CAPABILITY:
        raise RuntimeError(
            f"the tensor-core attention kernels need compute capability 8.0 or newer, this "
            f"GPU has {capability // 10}.{capability % 10}; use precision='ieee'"
        )


def _launch(family: str, source: str, suffix: str, head_dim: int, heads: int, rows: int,
            args: tuple) -> None:  # fmt: skip
    """Launch `family` with one block per (head, tile of owned rows): grid (heads, tiles)."""
    tiling = pick_tiling(family, suffix, head_dim)
    row_blocks = math.ceil(rows / tiling.block_rows)
    check_grid_rows(family, row_blocks)
    shared = _shared_bytes(family, tiling)
    kernel = _kernel(source, kernel_name(family, tiling, suffix), shared)
    kernel((heads, row_blocks), (tiling.threads,), args, shared_mem=shared)


@functools.cache
def _kernel(source: str, name: str, shared: int):
    """The kernel, allowed `shared` bytes of dynamic shared memory (an opt-in above 48 KiB)."""
    kernel = get_kernel(source, name)
    if shared > STATIC_SHARED_LIMIT:
        kernel.max_dynamic_shared_size_bytes = shared
    return kernel


def _check_float32_qkv(cupy, q, k, v) -> tuple[int, int, int, int, int]:
    """B, H, Lq, Lk, d of valid float32 q (B, H, Lq, d), k, v (B, H, Lk, d)."""
    check_float_array(cupy, "q", q, 4, np.dtype(np.float32))
    check_tensor_cores(cupy)
    return attention.check_qkv(cupy, q, k, v)


def flash_attention_forward(
    q, k, v, *, scale: float, causal: bool, key_lengths=None, precision: str = "3xtf32"
) -> tuple:
    """out = softmax(scale q k^T + mask) v on tensor cores, and the per-row lse.

    Returns (out (B, H, Lq, d), lse (B, H, Lq)), float32.
    """
    cupy = require_cuda()
    suffix = passes_suffix(precision)
    batch, heads, q_len, key_len, head_dim = _check_float32_qkv(cupy, q, k, v)
    lengths = attention.key_lengths_array(cupy, key_lengths, batch, key_len)
    out = new_output(cupy, q.shape, q.dtype)  # (B, H, Lq, d)
    lse = new_output(cupy, (batch, heads, q_len), q.dtype)  # (B, H, Lq)
    if batch * heads * q_len == 0:
        return out, lse
    sizes = attention.scalar_args(heads, q_len, key_len, head_dim, scale, causal, q.dtype)
    args = (q, k, v, lengths, out, lse, *sizes)
    family = "flash_attn_mma_forward"
    _launch(family, FORWARD_SOURCE, suffix, head_dim, batch * heads, q_len, args)
    return out, lse


def flash_attention_backward(
    q, k, v, out, lse, d_out, *, scale: float, causal: bool, key_lengths=None,
    precision: str = "3xtf32",
) -> tuple:  # fmt: skip
    """Gradients of the forward's out with respect to q, k and v on tensor cores.

    Deterministic: no atomics. Returns (dq (B, H, Lq, d), dk (B, H, Lk, d), dv (B, H, Lk, d)).
    """
    cupy = require_cuda()
    suffix = passes_suffix(precision)
    batch, heads, q_len, key_len, head_dim = _check_float32_qkv(cupy, q, k, v)
    check_float_array(cupy, "out", out, 4, q.dtype)
    check_float_array(cupy, "d_out", d_out, 4, q.dtype)
    check_float_array(cupy, "lse", lse, 3, q.dtype)
    check_shape("out", out, q.shape, "the shape of q")
    check_shape("d_out", d_out, q.shape, "the shape of q")
    check_shape("lse", lse, (batch, heads, q_len), "B, H, Lq of q")
    lengths = attention.key_lengths_array(cupy, key_lengths, batch, key_len)

    dq = new_output(cupy, q.shape, q.dtype)  # (B, H, Lq, d)
    dk = new_output(cupy, k.shape, q.dtype)  # (B, H, Lk, d)
    dv = new_output(cupy, v.shape, q.dtype)  # (B, H, Lk, d)
    heads_total = batch * heads
    delta = attention.row_dot(cupy, out, d_out)  # (B, H, Lq) rowsum(d_out * out)
    sizes = attention.scalar_args(heads, q_len, key_len, head_dim, scale, causal, q.dtype)
    if heads_total * key_len:  # with Lq = 0 the kernel writes zeros
        args = (q, k, v, d_out, lse, delta, lengths, dk, dv, *sizes)
        family = "flash_attn_mma_backward_dk_dv"
        _launch(family, BACKWARD_SOURCE, suffix, head_dim, heads_total, key_len, args)
    if heads_total * q_len:
        args = (q, k, v, d_out, lse, delta, lengths, dq, *sizes)
        family = "flash_attn_mma_backward_dq"
        _launch(family, BACKWARD_SOURCE, suffix, head_dim, heads_total, q_len, args)
    return dq, dk, dv
