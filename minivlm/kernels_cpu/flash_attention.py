"""Blocked ("flash") attention on the CPU, in NumPy: O = softmax(scale * Q K^T + mask) V.

The naive path materialises the scores S = scale * Q K^T, (B, H, Lq, Lk), and the
probabilities P = softmax(S), keeps P for the backward and pays O(Lq Lk) memory. Here the
queries are cut into blocks of `block_q` rows and the keys into blocks of `block_k`; one
tile of scores exists at a time, for all B*H heads at once (4-D matmuls), so the memory
beyond inputs and outputs is O(B * H * block_q * block_k) plus a few (B, H, L, d) arrays.

Forward: the softmax is computed online. Per query row the loop keeps the running max m,
the running sum l = sum_j exp(s_j - m) and the running output acc = sum_j exp(s_j - m) v_j.
A new key block with scores S moves the max to m_new = max(m, rowmax S); what was summed
so far was relative to the old max, so l and acc are rescaled by exp(m - m_new) before the
block's P = exp(S - m_new) is added:

    l   <- l   * exp(m - m_new) + rowsum P
    acc <- acc * exp(m - m_new) + P V

At the end O = acc / l and lse = m + log l, the log-sum-exp of the row's scores. Only O and
lse are kept: the backward rebuilds any tile of P from them as P = exp(S - lse).

Backward: with dO the gradient of O and D = rowsum(dO * O), per tile

    P  = exp(scale * Q K^T - lse)      the forward's probabilities, recomputed
    dV += P^T dO                       O = P V
    dP = dO V^T
    dS = P * (dP - D)                  softmax: dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik)
    dQ += scale * dS K                 S = scale * Q K^T
    dK += scale * dS^T Q

D is the same for every tile of a row: sum_k P_ik dP_ik = sum_k P_ik (dO_i . v_k)
= dO_i . (sum_k P_ik v_k) = dO_i . O_i, so it is computed once from O, not from P.

Masks. Key j of batch item b is valid iff j < key_lengths[b], and with `causal` query i
sees key j iff j <= i + (Lk - Lq) (bottom-right alignment: the last query sees every key).
Keys past the last one that some row of a query block may see are never visited (key
blocks above the causal diagonal are skipped, the diagonal one is cut short); a tile gets
an explicit mask only when it crosses the diagonal or a key length. A row with no valid key
gets O = 0 and lse = -inf; every -inf - (-inf) on the way is avoided, not silenced.

How the NumPy code differs from the lines above, each change an exact rewrite made for
speed (float32 inputs stay float32 throughout):
- Tiles are stored keys x queries, S^T (B, H, bk, bq), and computed as K Q^T: OpenBLAS runs
  a product with only d = 64 terms per entry about 1.4x faster when the output is tall
  (bk = 512 rows) and narrow (bq = 128 columns) than the other way round. The softmax's
  row-wise steps become reductions over axis -2.
- The scale is folded into Q once: Q_s = scale * Q, so S = Q_s K^T; dQ and dK are summed
  without it and scaled once at the end.
- A column appended to both operands of a matmul adds a rank-one term to the product, so
  the matmul also does a row-wise sum or subtraction that would otherwise be one more pass
  over the tile:
      P [V, 1]                = [P V, rowsum P]     (acc and l in one array, forward)
      [K, 1] [Q_s, -lse]^T    = (S - lse)^T         (backward)
      [V, 1] [dO, -D]^T       = (dP - D)^T          (backward)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)
# Default tile sizes: queries per tile (the tile's columns) and keys per tile (its rows).
# Tuned with benchmarks/cpu_flash_probe.py on a 2-core AVX-512 CPU, B*H = 16, d = 64.
DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 512


@dataclass(frozen=True)
class _Visibility:
    """Which keys each query may attend to: causal (bottom-right) and/or key lengths."""

    len_q: int
    len_k: int
    causal: bool
    key_lengths: np.ndarray | None  # (B,) int, or None: every key valid

    @cached_property
    def longest(self) -> int:
        """Keys at or past this index are padding in every batch item."""
        if self.key_lengths is None or self.key_lengths.size == 0:
            return self.len_k
        return int(self.key_lengths.max())

    @cached_property
    def shortest(self) -> int:
        """Keys before this index are valid in every batch item."""
        if self.key_lengths is None or self.key_lengths.size == 0:
            return self.len_k
        return int(self.key_lengths.min())

    def key_stop(self, q_stop: int) -> int:
        """One past the last key that any query row < q_stop may see (0 if none)."""
        stop = self.longest
        if self.causal:  # the block's last row q_stop - 1 sees keys j < q_stop + Lk - Lq
            stop = min(stop, max(q_stop + self.len_k - self.len_q, 0))
        return stop

    def tile_mask(self, keys: slice, rows: slice) -> np.ndarray | None:
        """Boolean (B or 1, 1, bk, bq), keys x queries, True where a score is masked.

        None when the tile lies wholly below the causal diagonal and short of every key
        length: such a tile needs no mask.
        """
        offset = self.len_k - self.len_q
        crosses_diagonal = self.causal and keys.stop - 1 > rows.start + offset
        crosses_length = keys.stop > self.shortest
        if not (crosses_diagonal or crosses_length):
            return None
        key_index = np.arange(keys.start, keys.stop)[:, None]  # (bk, 1)
        masked = np.zeros((1, 1, key_index.size, rows.stop - rows.start), dtype=bool)
        if crosses_diagonal:
            masked |= key_index > np.arange(rows.start, rows.stop) + offset  # (bk, bq)
        if crosses_length:
            masked = masked | (key_index >= self.key_lengths[:, None, None, None])  # (B,1,bk,bq)
        return masked


def flash_attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    scale: float,
    causal: bool,
    key_lengths: np.ndarray | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """O = softmax(scale * Q K^T + mask) V and lse = logsumexp of the masked scores per row.

    q (B, H, Lq, d), k and v (B, H, Lk, d), float32 or float64, one dtype for all.
    key_lengths: None or an int array (B,); key j of item b is valid iff j < key_lengths[b].
    causal: query i sees key j iff j <= i + (Lk - Lq).
    Returns out (B, H, Lq, d) and lse (B, H, Lq), in the inputs' dtype. A row with no valid
    key gets out = 0 and lse = -inf.
    """
    visibility = _check_inputs(q, k, v, causal=causal, key_lengths=key_lengths)
    block_q, block_k = _check_blocks(block_q, block_k)
    batch, heads, len_q, head_dim = q.shape
    len_k = k.shape[2]
    rows_max, keys_max = min(block_q, len_q), min(block_k, visibility.key_stop(len_q))
    scratch = _Scratch(
        q.dtype,
        q_scaled=batch * heads * len_q * head_dim,
        v_ones=batch * heads * len_k * (head_dim + 1),
        scores=batch * heads * keys_max * rows_max,
        acc=batch * heads * rows_max * (head_dim + 1),
        pv=batch * heads * rows_max * (head_dim + 1),
    )
    q_scaled = np.multiply(q, q.dtype.type(scale), out=scratch.take("q_scaled", q.shape))  # Q_s
    v_ones = _with_column(v, 1, out=scratch.take("v_ones", (batch, heads, len_k, head_dim + 1)))
    out = np.zeros_like(q)  # (B, H, Lq, d)  rows with no valid key stay 0 ...
    lse = np.full((batch, heads, len_q), -np.inf, q.dtype)  # (B, H, Lq)  ... and -inf

    for q_start in range(0, len_q, block_q):
        rows = slice(q_start, min(q_start + block_q, len_q))
        key_stop = visibility.key_stop(rows.stop)
        if key_stop == 0:
            continue  # no row of this block sees a key
        row_max, acc = _forward_query_block(
            q_scaled[:, :, rows], k, v_ones, rows, key_stop, block_k, visibility, scratch
        )
        # l > 0 exactly in the rows that saw a valid key (their max adds exp(0) = 1)
        row_sum = acc[..., head_dim]  # l  (B, H, bq)
        seen = row_sum > 0
        np.divide(
            acc[..., :head_dim], row_sum[..., None], out=out[:, :, rows], where=seen[..., None]
        )
        np.log(row_sum, out=lse[:, :, rows], where=seen)  # lse = m + log l
        np.add(lse[:, :, rows], row_max, out=lse[:, :, rows], where=seen)
    return out, lse


def _forward_query_block(q_block, k, v_ones, rows, key_stop, block_k, visibility, scratch):
    """Online softmax of one block of queries (Q_s rows) over the keys [0, key_stop).

    Returns the row max m (B, H, bq) and acc (B, H, bq, d + 1) = [sum_j exp(s_j - m) v_j, l].
    """
    batch, heads, num_rows, _ = q_block.shape
    acc_shape = (batch, heads, num_rows, v_ones.shape[-1])
    acc = scratch.take("acc", acc_shape)  # [acc, l]  (B, H, bq, d + 1)
    row_max = None  # m  (B, H, 1, bq), a row of the transposed tile; None: no key yet

    for k_start in range(0, key_stop, block_k):
        keys = slice(k_start, min(k_start + block_k, key_stop))
        tile = (batch, heads, keys.stop - keys.start, num_rows)
        scores = scratch.take("scores", tile)  # S^T  (B, H, bk, bq)
        np.matmul(k[:, :, keys], q_block.swapaxes(-1, -2), out=scores)
        masked = visibility.tile_mask(keys, rows)
        if masked is not None:
            np.copyto(scores, -np.inf, where=masked)

        block_max = scores.max(axis=-2, keepdims=True)  # (B, H, 1, bq)
        new_max = block_max if row_max is None else np.maximum(row_max, block_max)  # m_new
        # A row with no valid key so far has m_new = -inf: shifting it by 0 instead gives
        # exp(-inf - 0) = 0, where exp(-inf - (-inf)) would be NaN.
        shift = np.where(new_max == -np.inf, q_block.dtype.type(0), new_max)
        np.subtract(scores, shift, out=scores)
        probs = np.exp(scores, out=scores)  # P^T = exp(S - m_new)^T  (B, H, bk, bq)

        v_block = v_ones[:, :, keys]  # [V, 1]  (B, H, bk, d + 1)
        if row_max is None:
            np.matmul(probs.swapaxes(-1, -2), v_block, out=acc)  # [P V, rowsum P]
        else:
            acc *= np.exp(row_max - shift).swapaxes(-1, -2)  # exp(m - m_new); 0 if m = -inf
            acc += np.matmul(probs.swapaxes(-1, -2), v_block, out=scratch.take("pv", acc_shape))
        row_max = new_max
    return row_max[:, :, 0], acc


def flash_attention_backward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    out: np.ndarray,
    lse: np.ndarray,
    d_out: np.ndarray,
    *,
    scale: float,
    causal: bool,
    key_lengths: np.ndarray | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients (dq, dk, dv) of the forward, given its out, lse and the gradient d_out.

    Shapes as in `flash_attention_forward`; out and d_out (B, H, Lq, d), lse (B, H, Lq).
    """
    visibility = _check_inputs(q, k, v, causal=causal, key_lengths=key_lengths)
    _check_saved(q, out=out, lse=lse, d_out=d_out)
    block_q, block_k = _check_blocks(block_q, block_k)
    batch, heads, len_q, head_dim = q.shape
    dtype = q.dtype
    # D_i = dO_i . O_i = sum_j P_ij dP_ij, the softmax backward's row term
    d_dot_o = np.einsum("bhqd,bhqd->bhq", d_out, out)  # (B, H, Lq)
    # A row with no valid key has lse = -inf, but all its scores are masked to -inf before
    # the exp, so any finite stand-in gives P = 0 there without forming -inf - (-inf).
    lse_finite = np.where(lse == -np.inf, dtype.type(0), lse)  # (B, H, Lq)
    len_k = k.shape[2]
    rows_max, keys_max = min(block_q, len_q), min(block_k, visibility.key_stop(len_q))
    query_side, key_side = (batch, heads, len_q, head_dim + 1), (batch, heads, len_k, head_dim + 1)
    scratch = _Scratch(
        dtype,
        q_lse=math.prod(query_side),
        d_out_d=math.prod(query_side),
        k_ones=math.prod(key_side),
        v_ones=math.prod(key_side),
        probs=batch * heads * keys_max * rows_max,  # P^T               (B, H, bk, bq)
        d_scores=batch * heads * keys_max * rows_max,  # (dP - D)^T, then dS^T
        key_grad=batch * heads * keys_max * head_dim,  # a tile's dK or dV  (B, H, bk, d)
        query_grad=batch * heads * rows_max * head_dim,  # a tile's dQ      (B, H, bq, d)
    )
    q_lse = scratch.take("q_lse", query_side)  # [Q_s, -lse]
    np.multiply(q, dtype.type(scale), out=q_lse[..., :head_dim])
    q_lse[..., head_dim] = -lse_finite
    d_out_d = _with_column(d_out, -d_dot_o, out=scratch.take("d_out_d", query_side))  # [dO, -D]
    k_ones = _with_column(k, 1, out=scratch.take("k_ones", key_side))  # [K, 1]
    v_ones = _with_column(v, 1, out=scratch.take("v_ones", key_side))  # [V, 1]

    # dq, dk, dv: views of one zeroed allocation (one allocation, few page faults)
    grads = np.zeros(batch * heads * (len_q + 2 * len_k) * head_dim, dtype)
    dq = grads[: q.size].reshape(q.shape)  # (B, H, Lq, d)
    dk = grads[q.size : q.size + k.size].reshape(k.shape)  # (B, H, Lk, d)
    dv = grads[q.size + k.size :].reshape(v.shape)  # (B, H, Lk, d)

    for q_start in range(0, len_q, block_q):
        rows = slice(q_start, min(q_start + block_q, len_q))
        key_stop = visibility.key_stop(rows.stop)
        if key_stop == 0:
            continue  # no row of this block sees a key: no gradient flows through it
        _backward_query_block(
            q[:, :, rows], q_lse[:, :, rows], d_out[:, :, rows], d_out_d[:, :, rows],
            k, k_ones, v_ones, dq[:, :, rows], dk, dv, rows, key_stop, block_k, visibility,
            scratch,
        )  # fmt: skip
    # S = scale * Q K^T, so dQ = scale * dS K and dK = scale * dS^T Q
    dq *= dtype.type(scale)
    dk *= dtype.type(scale)
    return dq, dk, dv


def _backward_query_block(
    q, q_lse, d_out, d_out_d, k, k_ones, v_ones, dq_block, dk, dv, rows, key_stop, block_k,
    visibility, scratch,
):  # fmt: skip
    """Add one query block's terms to dq (its rows), dk and dv (keys < key_stop), unscaled:
    dq and dk get the factor `scale` from the caller."""
    batch, heads, num_rows, head_dim = q.shape
    dq_tile = scratch.take("query_grad", q.shape)  # (B, H, bq, d)

    for k_start in range(0, key_stop, block_k):
        keys = slice(k_start, min(k_start + block_k, key_stop))
        tile = (batch, heads, keys.stop - keys.start, num_rows)
        key_grad_tile = scratch.take("key_grad", (batch, heads, tile[2], head_dim))
        # the forward was P = exp(S - lse), S masked to -inf
        probs = scratch.take("probs", tile)  # P^T  (B, H, bk, bq)
        np.matmul(k_ones[:, :, keys], q_lse.swapaxes(-1, -2), out=probs)  # (S - lse)^T
        masked = visibility.tile_mask(keys, rows)
        if masked is not None:
            np.copyto(probs, -np.inf, where=masked)
        np.exp(probs, out=probs)

        # O = P V, so dV = P^T dO ...
        dv[:, :, keys] += np.matmul(probs, d_out, out=key_grad_tile)
        # ... and dP = dO V^T; the softmax backward is dS = P * (dP - D)
        d_scores = scratch.take("d_scores", tile)  # dS^T  (B, H, bk, bq)
        np.matmul(v_ones[:, :, keys], d_out_d.swapaxes(-1, -2), out=d_scores)  # (dP - D)^T
        np.multiply(d_scores, probs, out=d_scores)

        # S = scale * Q K^T, so dK = scale * dS^T Q and dQ = scale * dS K
        dk[:, :, keys] += np.matmul(d_scores, q, out=key_grad_tile)
        dq_block += np.matmul(d_scores.swapaxes(-1, -2), k[:, :, keys], out=dq_tile)


class _Scratch:
    """Named scratch buffers carved out of one allocation.

    Fresh memory costs a page fault per 4 KiB page when first written; at L = 256 a dozen
    separate one-megabyte buffers cost as much time as the arithmetic. One large allocation
    is backed by 2 MiB huge pages where the OS allows it (NumPy asks for them from 4 MiB).
    """

    def __init__(self, dtype, **sizes: int):
        starts, total = {}, 0
        for name, size in sizes.items():
            starts[name] = total
            total += -(-size // 16) * 16  # each buffer starts 64-byte aligned to the first
        memory = np.empty(total, dtype)
        self._buffers = {name: memory[starts[name] : starts[name] + n] for name, n in sizes.items()}

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous array of `shape` on the front of the named buffer: a buffer sized
        for the largest tile also serves the smaller last ones."""
        return self._buffers[name][: math.prod(shape)].reshape(shape)


def _with_column(x: np.ndarray, column, *, out: np.ndarray) -> np.ndarray:
    """out = [x, column]: x (..., d) and one more last column (a scalar or (...,))."""
    out[..., :-1] = x
    out[..., -1] = column
    return out


def _check_inputs(q, k, v, *, causal, key_lengths) -> _Visibility:
    """Validate q, k, v and key_lengths; return which keys each query sees."""
    for name, array in (("q", q), ("k", k), ("v", v)):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(array).__name__}")
        if array.ndim != 4:
            raise ValueError(f"{name} must have shape (B, H, L, d), got shape {array.shape}")
        if array.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32 or float64, got dtype {array.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {k.shape} and {v.shape}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q (B, H, Lq, d) and k (B, H, Lk, d) must agree on B, H and d, "
            f"got {q.shape} and {k.shape}"
        )
    batch, len_k = k.shape[0], k.shape[2]
    if key_lengths is not None:
        if not isinstance(key_lengths, np.ndarray) or key_lengths.dtype.kind not in "iu":
            raise TypeError(f"key_lengths must be an integer numpy array, got {key_lengths!r}")
        if key_lengths.shape != (batch,):
            raise ValueError(f"key_lengths must have shape ({batch},), got {key_lengths.shape}")
        if key_lengths.size and (key_lengths.min() < 0 or key_lengths.max() > len_k):
            raise ValueError(f"key_lengths must lie in [0, {len_k}], got {key_lengths}")
    return _Visibility(q.shape[2], len_k, bool(causal), key_lengths)


def _check_saved(q, *, out, lse, d_out) -> None:
    for name, array, shape in (
        ("out", out, q.shape),
        ("d_out", d_out, q.shape),
        ("lse", lse, q.shape[:3]),
    ):
        if not isinstance(array, np.ndarray) or array.shape != shape or array.dtype != q.dtype:
            got = f"{type(array).__name__} {getattr(array, 'shape', '')} "
            got += f"{getattr(array, 'dtype', '')}"
            raise ValueError(f"{name} must be a {q.dtype} array of shape {shape}, got {got}")


def _check_blocks(block_q, block_k) -> tuple[int, int]:
    block_q = DEFAULT_BLOCK_Q if block_q is None else block_q
    block_k = DEFAULT_BLOCK_K if block_k is None else block_k
    for name, size in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"{name} must be a positive int, got {size!r}")
    return int(block_q), int(block_k)
