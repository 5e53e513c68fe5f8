"""Fused (flash) attention on the GPU: launches kernels/flash_attn_forward.cu and
kernels/flash_attn_backward.cu.

Same signatures and conventions as minivlm/kernels_cpu/flash_attention.py:
    q (B, H, Lq, d), k, v (B, H, Lk, d), contiguous float32 or float64 CuPy arrays
    key_lengths: None or integers (B,); key j of item b is valid iff j < key_lengths[b]
    causal: query i may see key j iff j <= i + (Lk - Lq)  (bottom-right aligned)
    lse (B, H, Lq): log-sum-exp of each row's scaled, masked scores
A row with no valid key has out = 0, lse = -inf and zero gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from minivlm.backend import require_cuda
from minivlm.kernels_cuda.checks import (
    as_int32_vector,
    check_float_array,
    check_grid_rows,
    check_shape,
)
from minivlm.kernels_cuda.loader import dtype_suffix, get_kernel, new_output

FORWARD_SOURCE = "flash_attn_forward.cu"
BACKWARD_SOURCE = "flash_attn_backward.cu"
DELTA_THREADS = 128  # = __launch_bounds__ of flash_attn_backward_delta_*: one warp per row


@dataclass(frozen=True)
class Tiling:
    """The tile shape one attention kernel was compiled with."""

    head_dim: int  # D: the kernel takes any head dim d <= D, padded with zeros
    block_rows: int  # rows a block owns: BQ queries (forward, dQ) or BK keys (dK, dV)
    lanes_per_row: int  # G: threads that share each owned row

    @property
    def threads(self) -> int:
        return self.block_rows * self.lanes_per_row


# kernel family -> dtype suffix -> tilings by head-dim bucket. The same numbers are in the
# instantiation lines at the end of the .cu files; tests/test_cuda_compile.py checks that
# the two agree.
TILINGS: dict[str, dict[str, tuple[Tiling, ...]]] = {
    "flash_attn_forward": {
        "f32": (Tiling(32, 64, 4), Tiling(64, 64, 4), Tiling(128, 32, 4)),
        "f64": (Tiling(32, 64, 4), Tiling(64, 32, 4), Tiling(128, 16, 8)),
    },
    "flash_attn_backward_dk_dv": {
        "f32": (Tiling(32, 64, 4), Tiling(64, 32, 4), Tiling(128, 16, 8)),
        "f64": (Tiling(32, 32, 4), Tiling(64, 16, 8), Tiling(128, 8, 8)),
    },
    "flash_attn_backward_dq": {
        "f32": (Tiling(32, 64, 4), Tiling(64, 32, 4), Tiling(128, 16, 8)),
        "f64": (Tiling(32, 32, 4), Tiling(64, 16, 8), Tiling(128, 8, 8)),
    },
}
MAX_HEAD_DIM = 128


def kernel_name(family: str, tiling, suffix: str) -> str:
    """The extern "C" name of `family` compiled for `tiling`'s head-dim bucket."""
    return f"{family}_d{tiling.head_dim}_{suffix}"


def smallest_bucket(tilings: tuple, head_dim: int):
    """The first of `tilings` (by growing head-dim bucket) that holds `head_dim`."""
    for tiling in tilings:
        if head_dim <= tiling.head_dim:
            return tiling
    raise ValueError(f"head dim must be at most {MAX_HEAD_DIM}, got {head_dim}")


def pick_tiling(family: str, dtype, head_dim: int) -> Tiling:
    """The smallest head-dim bucket of `family` that holds `head_dim`."""
    return smallest_bucket(TILINGS[family][dtype_suffix(dtype)], head_dim)


def _launch_attention_kernel(
    family: str, source: str, dtype, head_dim: int, heads: int, rows: int, args: tuple
) -> None:
    """Launch `family` with one block per (head, tile of `rows`): grid (heads, row tiles)."""
    tiling = pick_tiling(family, dtype, head_dim)
    row_blocks = math.ceil(rows / tiling.block_rows)
    check_grid_rows(family, row_blocks)
    kernel = get_kernel(source, kernel_name(family, tiling, dtype_suffix(dtype)))
    kernel((heads, row_blocks), (tiling.threads,), args)


def check_qkv(cupy, q, k, v) -> tuple[int, int, int, int, int]:
    """B, H, Lq, Lk, d of valid q (B, H, Lq, d), k, v (B, H, Lk, d)."""
    check_float_array(cupy, "q", q, 4)
    check_float_array(cupy, "k", k, 4, q.dtype)
    check_float_array(cupy, "v", v, 4, q.dtype)
    batch, heads, q_len, head_dim = q.shape
    key_len = k.shape[2]
    check_shape("k", k, (batch, heads, key_len, head_dim), "batch, heads and head dim of q")
    check_shape("v", v, k.shape, "the shape of k")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim (last axis of q) must be in 1..{MAX_HEAD_DIM}, got {head_dim}")
    return batch, heads, q_len, key_len, head_dim


def scalar_args(
    heads: int, q_len: int, key_len: int, head_dim: int, scale: float, causal: bool, dtype
) -> tuple:
    """The trailing (int H, int Lq, int Lk, int d, T scale, int causal) of every tile kernel."""
    sizes = (np.int32(heads), np.int32(q_len), np.int32(key_len), np.int32(head_dim))
    return (*sizes, np.dtype(dtype).type(scale), np.int32(bool(causal)))


def key_lengths_array(cupy, key_lengths, batch: int, key_len: int):
    """key_lengths as int32 (B,); None means every key is valid."""
    if key_lengths is None:
        return cupy.full((batch,), key_len, dtype=np.int32)
    return as_int32_vector(cupy, "key_lengths", key_lengths, batch)


def flash_attention_forward(q, k, v, *, scale: float, causal: bool, key_lengths=None) -> tuple:
    """out = softmax(scale q k^T + mask) v, and the per-row lse the backward needs.

    Returns (out (B, H, Lq, d), lse (B, H, Lq)).
    """
    cupy = require_cuda()
    batch, heads, q_len, key_len, head_dim = check_qkv(cupy, q, k, v)
    lengths = key_lengths_array(cupy, key_lengths, batch, key_len)
    out = new_output(cupy, q.shape, q.dtype)  # (B, H, Lq, d)
    lse = new_output(cupy, (batch, heads, q_len), q.dtype)  # (B, H, Lq)
    if batch * heads * q_len == 0:
        return out, lse
    sizes = scalar_args(heads, q_len, key_len, head_dim, scale, causal, q.dtype)
    args = (q, k, v, lengths, out, lse, *sizes)
    _launch_attention_kernel(
        "flash_attn_forward", FORWARD_SOURCE, q.dtype, head_dim, batch * heads, q_len, args
    )
    return out, lse


def row_dot(cupy, out, d_out):
    """delta = rowsum(d_out * out) (B, H, Lq) of out, d_out (B, H, Lq, d): one warp a row."""
    batch, heads, q_len, head_dim = out.shape
    rows = batch * heads * q_len
    delta = cupy.empty((batch, heads, q_len), dtype=out.dtype)
    if rows:
        kernel = get_kernel(BACKWARD_SOURCE, f"flash_attn_backward_delta_{dtype_suffix(out.dtype)}")
        blocks = math.ceil(rows / (DELTA_THREADS // 32))
        kernel((blocks,), (DELTA_THREADS,), (out, d_out, delta, np.int32(rows), np.int32(head_dim)))
    return delta


def flash_attention_backward(
    q, k, v, out, lse, d_out, *, scale: float, causal: bool, key_lengths=None
) -> tuple:
    """Gradients of the forward's out with respect to q, k and v, given d_out = dL/d out.

    The forward was S = scale q k^T (+ mask), P = exp(S - lse), out = P v; the kernels
    recompute P tile by tile from lse. Deterministic: no atomics.
    Returns (dq (B, H, Lq, d), dk (B, H, Lk, d), dv (B, H, Lk, d)).
    """
    cupy = require_cuda()
    batch, heads, q_len, key_len, head_dim = check_qkv(cupy, q, k, v)
    check_float_array(cupy, "out", out, 4, q.dtype)
    check_float_array(cupy, "d_out", d_out, 4, q.dtype)
    check_float_array(cupy, "lse", lse, 3, q.dtype)
    check_shape("out", out, q.shape, "the shape of q")
    check_shape("d_out", d_out, q.shape, "the shape of q")
    check_shape("lse", lse, (batch, heads, q_len), "B, H, Lq of q")
    lengths = key_lengths_array(cupy, key_lengths, batch, key_len)

    dq = new_output(cupy, q.shape, q.dtype)  # (B, H, Lq, d)
    dk = new_output(cupy, k.shape, q.dtype)  # (B, H, Lk, d)
    dv = new_output(cupy, v.shape, q.dtype)  # (B, H, Lk, d)
    heads_total = batch * heads
    query_rows = heads_total * q_len

    delta = row_dot(cupy, out, d_out)  # 1. delta = rowsum(d_out * out)  (B, H, Lq)
    sizes = scalar_args(heads, q_len, key_len, head_dim, scale, causal, q.dtype)
    inputs = (q, k, v, d_out, lse, delta, lengths)
    # 2. dK, dV: one block per key tile, looping over query tiles
    if heads_total * key_len:
        family = "flash_attn_backward_dk_dv"
        args = (*inputs, dk, dv, *sizes)
        _launch_attention_kernel(
            family, BACKWARD_SOURCE, q.dtype, head_dim, heads_total, key_len, args
        )
    # 3. dQ: one block per query tile, looping over key tiles
    if query_rows:
        family = "flash_attn_backward_dq"
        args = (*inputs, dq, *sizes)
        _launch_attention_kernel(
            family, BACKWARD_SOURCE, q.dtype, head_dim, heads_total, q_len, args
        )
    return dq, dk, dv
