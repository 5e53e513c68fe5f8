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

How the NumPy code differs from the lines above, each change an exact rewrite:
- Tiles are stored keys x queries, S^T (B, H, bk, bq), and computed as K Q^T: BLAS runs
  these products with d = 64 terms much faster when the tall side is the output's rows
  (bk >= 512) and the short side its columns (bq <= 256). Row-wise softmax steps become
  reductions over axis -2.
- Scores are carried in base 2: S2 = log2(e) S, so exp(S - m) = exp2(S2 - m2), and NumPy's
  exp2 is about twice as fast as its exp. log2(e) and the scale are folded into Q once.
- A column appended to both operands of a matmul adds a rank-one term to the product, so
  the matmul also does a row-wise sum or subtraction that would otherwise be one more pass
  over the tile:
      P [V, 1]                = [P V, rowsum P]     (acc and l in one array, forward)
      [K, 1] [Q_s2, -lse2]^T  = (S2 - lse2)^T       (backward)
      [V, 1] [dO, -D]^T       = (dP - D)^T          (backward)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)
LOG2_E = math.log2(math.e)
LN_2 = math.log(2.0)
# Default tile sizes, tuned on a 2-core AVX-512 CPU for B*H = 16, d = 64
# (see benchmarks/cpu_flash_probe.py).
DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 512


@dataclass(frozen=True)
class _Visibility:
    """Which keys each query may attend to: causal (bottom-right) and/or key lengths."""

    len_q: int
    len_k: int
    causal: bool
    key_lengths: np.ndarray | None  # (B,) int, or None: every key valid

    def key_stop(self, q_stop: int) -> int:
        """One past the last key that any query row < q_stop may see (0 if none)."""
        stop = self.len_k
        if self.causal:  # the block's last row q_stop - 1 sees keys j < q_stop + Lk - Lq
            stop = min(stop, max(q_stop + self.len_k - self.len_q, 0))
        if self.key_lengths is not None:
            stop = min(stop, int(self.key_lengths.max()))
        return stop

    def tile_mask(self, keys: slice, rows: slice) -> np.ndarray | None:
        """Boolean (B or 1, 1, bk, bq), keys x queries, True where a score is masked.

        None when the tile lies wholly below the causal diagonal and short of every key
        length: such a tile needs no mask.
        """
        offset = self.len_k - self.len_q
        crosses_diagonal = self.causal and keys.stop - 1 > rows.start + offset
        crosses_length = self.key_lengths is not None and keys.stop > self.key_lengths.min()
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
    q_scaled = q * q.dtype.type(scale * LOG2_E)  # Q_s2 (B, H, Lq, d), so Q_s2 K^T = S2
    v_ones = _with_column(v, 1)  # [V, 1]                (B, H, Lk, d + 1)
    out = np.zeros_like(q)  # (B, H, Lq, d)  rows with no valid key stay 0 ...
    lse = np.full((batch, heads, len_q), -np.inf, q.dtype)  # (B, H, Lq)  ... and -inf
    rows_max = min(block_q, len_q)
    scores_buffer = np.empty(batch * heads * block_k * rows_max, q.dtype)
    pv_buffer = np.empty(batch * heads * rows_max * (head_dim + 1), q.dtype)

    for q_start in range(0, len_q, block_q):
        rows = slice(q_start, min(q_start + block_q, len_q))
        key_stop = visibility.key_stop(rows.stop)
        if key_stop == 0:
            continue  # no row of this block sees a key
        row_max2, acc = _forward_query_block(
            q_scaled[:, :, rows], k, v_ones, rows, key_stop, block_k, visibility,
            scores_buffer, pv_buffer,
        )  # fmt: skip
        # l > 0 exactly in the rows that saw a valid key (their max adds exp(0) = 1)
        row_sum = acc[..., head_dim]  # l  (B, H, bq)
        seen = row_sum > 0
        np.divide(acc[..., :head_dim], row_sum[..., None], out=out[:, :, rows], where=seen[..., None])
        # lse = m + log l = ln(2) m2 + log l
        np.log(row_sum, out=lse[:, :, rows], where=seen)
        np.add(lse[:, :, rows], LN_2 * row_max2, out=lse[:, :, rows], where=seen)
    return out, lse


def _forward_query_block(
    q_block, k, v_ones, rows, key_stop, block_k, visibility, scores_buffer, pv_buffer
):
    """Online softmax of one block of queries (Q_s2 rows) over the keys [0, key_stop).

    Returns m2 (B, H, bq), the row max in base 2, and acc (B, H, bq, d + 1) =
    [sum_j exp2(s2_j - m2) v_j, l].
    """
    batch, heads, num_rows, _ = q_block.shape
    acc_shape = (batch, heads, num_rows, v_ones.shape[-1])
    acc = np.empty(acc_shape, q_block.dtype)  # [acc, l]  (B, H, bq, d + 1)
    row_max = None  # m2  (B, H, 1, bq), a row of the transposed tile; None: no key yet

    for k_start in range(0, key_stop, block_k):
        keys = slice(k_start, min(k_start + block_k, key_stop))
        tile = (batch, heads, keys.stop - keys.start, num_rows)
        scores = _view(scores_buffer, tile)  # S2^T  (B, H, bk, bq)
        np.matmul(k[:, :, keys], q_block.swapaxes(-1, -2), out=scores)
        masked = visibility.tile_mask(keys, rows)
        if masked is not None:
            np.copyto(scores, -np.inf, where=masked)

        block_max = scores.max(axis=-2, keepdims=True)  # (B, H, 1, bq)
        new_max = block_max if row_max is None else np.maximum(row_max, block_max)  # m2_new
        # A row with no valid key so far has m_new = -inf: shifting it by 0 instead gives
        # exp2(-inf - 0) = 0, where exp2(-inf - (-inf)) would be NaN.
        shift = np.where(new_max == -np.inf, q_block.dtype.type(0), new_max)
        np.subtract(scores, shift, out=scores)
        probs = np.exp2(scores, out=scores)  # P^T = exp2(S2 - m2_new)^T  (B, H, bk, bq)

        v_block = v_ones[:, :, keys]  # [V, 1]  (B, H, bk, d + 1)
        if row_max is None:
            np.matmul(probs.swapaxes(-1, -2), v_block, out=acc)  # [P V, rowsum P]
        else:
            acc *= np.exp2(row_max - shift).swapaxes(-1, -2)  # exp(m - m_new); 0 if m = -inf
            acc += np.matmul(probs.swapaxes(-1, -2), v_block, out=_view(pv_buffer, acc_shape))
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
    lse2 = np.where(lse == -np.inf, dtype.type(0), lse * dtype.type(LOG2_E))  # (B, H, Lq)
    q_lse = _with_column(q * dtype.type(scale * LOG2_E), -lse2)  # [Q_s2, -lse2] (B,H,Lq,d+1)
    d_out_d = _with_column(d_out, -d_dot_o)  # [dO, -D]                          (B,H,Lq,d+1)
    k_ones = _with_column(k, 1)  # [K, 1]                                        (B,H,Lk,d+1)
    v_ones = _with_column(v, 1)  # [V, 1]                                        (B,H,Lk,d+1)

    dq = np.zeros_like(q)  # (B, H, Lq, d)
    dk = np.zeros_like(k)  # (B, H, Lk, d)
    dv = np.zeros_like(v)  # (B, H, Lk, d)
    buffers = _BackwardBuffers(batch * heads, min(block_q, len_q), block_k, head_dim, dtype)

    for q_start in range(0, len_q, block_q):
        rows = slice(q_start, min(q_start + block_q, len_q))
        key_stop = visibility.key_stop(rows.stop)
        if key_stop == 0:
            continue  # no row of this block sees a key: no gradient flows through it
        _backward_query_block(
            q[:, :, rows], q_lse[:, :, rows], d_out[:, :, rows], d_out_d[:, :, rows],
            k, k_ones, v_ones, dq[:, :, rows], dk, dv, rows, key_stop, block_k, visibility,
            buffers,
        )  # fmt: skip
    # S = scale * Q K^T, so dQ = scale * dS K and dK = scale * dS^T Q
    dq *= dtype.type(scale)
    dk *= dtype.type(scale)
    return dq, dk, dv


class _BackwardBuffers:
    """Flat scratch arrays that every tile of the backward reuses (as views of their front)."""

    def __init__(self, heads: int, rows: int, keys: int, head_dim: int, dtype):
        self.probs = np.empty(heads * keys * rows, dtype)  # P^T             (B, H, bk, bq)
        self.d_scores = np.empty(heads * keys * rows, dtype)  # (dP - D)^T, then dS^T
        self.key_grad = np.empty(heads * keys * head_dim, dtype)  # a tile's dK or dV
        self.query_grad = np.empty(heads * rows * head_dim, dtype)  # a tile's dQ


def _backward_query_block(
    q, q_lse, d_out, d_out_d, k, k_ones, v_ones, dq_block, dk, dv, rows, key_stop, block_k,
    visibility, buffers,
):  # fmt: skip
    """Add one query block's terms to dq (its rows), dk and dv (keys < key_stop), unscaled:
    dq and dk get the factor `scale` from the caller."""
    batch, heads, num_rows, head_dim = q.shape
    dq_tile = _view(buffers.query_grad, q.shape)  # (B, H, bq, d)

    for k_start in range(0, key_stop, block_k):
        keys = slice(k_start, min(k_start + block_k, key_stop))
        tile = (batch, heads, keys.stop - keys.start, num_rows)
        key_grad_tile = _view(buffers.key_grad, (batch, heads, tile[2], head_dim))
        # the forward was P = exp2(S2 - lse2), S2 masked to -inf
        probs = _view(buffers.probs, tile)  # P^T  (B, H, bk, bq)
        np.matmul(k_ones[:, :, keys], q_lse.swapaxes(-1, -2), out=probs)  # (S2 - lse2)^T
        masked = visibility.tile_mask(keys, rows)
        if masked is not None:
            np.copyto(probs, -np.inf, where=masked)
        np.exp2(probs, out=probs)

        # O = P V, so dV = P^T dO ...
        dv[:, :, keys] += np.matmul(probs, d_out, out=key_grad_tile)
        # ... and dP = dO V^T; the softmax backward is dS = P * (dP - D)
        d_scores = _view(buffers.d_scores, tile)  # dS^T  (B, H, bk, bq)
        np.matmul(v_ones[:, :, keys], d_out_d.swapaxes(-1, -2), out=d_scores)  # (dP - D)^T
        np.multiply(d_scores, probs, out=d_scores)

        # S = scale * Q K^T, so dK = scale * dS^T Q and dQ = scale * dS K
        dk[:, :, keys] += np.matmul(d_scores, q, out=key_grad_tile)
        dq_block += np.matmul(d_scores.swapaxes(-1, -2), k[:, :, keys], out=dq_tile)


def _with_column(x: np.ndarray, column) -> np.ndarray:
    """[x, column]: x (..., d) with one more last column (a scalar or (...,)), (..., d + 1)."""
    joined = np.empty(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype)
    joined[..., :-1] = x
    joined[..., -1] = column
    return joined


def _view(buffer: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A C-contiguous array of `shape` on the front of a flat scratch buffer."""
    return buffer[: math.prod(shape)].reshape(shape)


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
        if key_lengths.min() < 0 or key_lengths.max() > len_k:
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
