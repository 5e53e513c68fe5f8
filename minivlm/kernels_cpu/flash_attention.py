"""Blocked ("flash") attention on the CPU, in NumPy: O = softmax(scale * Q K^T + mask) V.

The naive path materialises the scores S = scale * Q K^T, (B, H, Lq, Lk), and the
probabilities P = softmax(S), keeps P for the backward and pays O(Lq Lk) memory. Here the
queries are cut into blocks of `block_q` rows and the keys into blocks of `block_k`. The
(batch, head) pairs are cut into groups that go through the tiles together (4-D matmuls),
and the groups are shared out among one thread per core; each thread holds one tile of
scores at a time, so the memory beyond inputs and outputs is
O(threads * group * (block_q * block_k + L * d)).

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

Threads. NumPy releases the GIL inside ufuncs and matmuls, so threads run side by side.
Each thread takes a fixed run of groups and writes only their slices of out, lse, dq, dk
and dv: no two threads add into the same array, and every (batch, head) pair is computed
by the same sequence of operations whatever the number of threads, so the results are
bit-identical run to run and for any `workers`. BLAS is held to one thread inside (see
`threads.run_shares`).

How the NumPy code differs from the lines above, each change an exact rewrite made for
speed (float32 inputs stay float32 throughout):
- Tiles are stored keys x queries, S^T (B, H, bk, bq), and computed as K Q^T: OpenBLAS runs
  a product with only d = 64 terms per entry about 1.4x faster when the output is tall
  (bk = 512 rows) and narrow (bq = 128 columns) than the other way round. The softmax's
  row-wise steps become reductions over axis -2.
- The query-side operand of every tile product is stored transposed, (d, Lq) per head:
  Q_s^T, [Q_s, -lse]^T, [dO, -D]^T. Then K Q^T is a product of two row-major matrices,
  which single-threaded OpenBLAS runs 1.1x (bq = 128) to 2x (L = 16) faster than the same
  product with its second operand passed transposed.
- The scale is folded into Q once: Q_s = scale * Q, so S = Q_s K^T; dQ and dK are summed
  without it and scaled once at the end.
- A column appended to both operands of a matmul adds a rank-one term to the product, so
  the matmul also does a row-wise sum or subtraction that would otherwise be one more pass
  over the tile:
      P [V, 1]                = [P V, rowsum P]     (acc and l in one array, forward)
      [K, 1] [Q_s, -lse]^T    = (S - lse)^T         (backward)
      [V, 1] [dO, -D]^T       = (dP - D)^T          (backward)
- A tile is masked by adding 0 or -inf (s + 0 = s, s - inf = -inf), and on the causal
  diagonal only in its last keys, those that its first row may not see (bq of its bk
  keys); the rest is visible to every row.
- O = acc / l is computed as acc * (1 / l): one reciprocal per row, then a multiply.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..backend import usable_cores
from .threads import run_shares

FLOAT_DTYPES = (np.float32, np.float64)
# Default tile sizes: queries per tile (the tile's columns) and keys per tile (its rows);
# causal tiles take half as many queries, which wastes less work on the diagonal. Tuned by
# single-thread CPU time on AMD EPYC (Zen 4), B*H = 16, d = 64, L = 512 to 2048: 256
# queries beat 128 by 5% without a mask, 128 beat 256 by 6% with the causal one.
DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 512
# Scores in a group's tile (see _Layout). At the model's L = 16 to 196, more heads per
# NumPy call pay (256 Ki beat 64 Ki by 5-10% in CPU time); at L >= 512 a tile alone holds
# 64 Ki to 128 Ki scores and the size hardly matters.
GROUP_SCORES = 256 * 1024


@dataclass(frozen=True)
class _Visibility:
    """Which keys each query may attend to: causal (bottom-right) and/or key lengths."""

    len_q: int
    len_k: int
    causal: bool
    key_lengths: np.ndarray | None  # (B,) int, or None: every key valid
    # (shortest, longest) key length of the whole batch when key_lengths is a part of it
    batch_bounds: tuple[int, int] | None = None

    @cached_property
    def longest(self) -> int:
        """Keys at or past this index are padding in every batch item."""
        if self.batch_bounds is not None:
            return self.batch_bounds[1]
        if self.key_lengths is None or self.key_lengths.size == 0:
            return self.len_k
        return int(self.key_lengths.max())

    @cached_property
    def shortest(self) -> int:
        """Keys before this index are valid in every batch item."""
        if self.batch_bounds is not None:
            return self.batch_bounds[0]
        if self.key_lengths is None or self.key_lengths.size == 0:
            return self.len_k
        return int(self.key_lengths.min())

    def key_stop(self, q_stop: int) -> int:
        """One past the last key that any query row < q_stop may see (0 if none)."""
        stop = self.longest
        if self.causal:  # the block's last row q_stop - 1 sees keys j < q_stop + Lk - Lq
            stop = min(stop, max(q_stop + self.len_k - self.len_q, 0))
        return stop

    def tile_mask(self, keys: slice, rows: slice, dtype=np.float32) -> tuple | None:
        """What to add to a tile's scores (keys x queries) to mask them, as (first, bias).

        The tile's first `first` keys are visible to every row. bias, in `dtype`, of shape
        (B or 1, 1, bk - first, bq or 1), is 0 where a score of the keys after them is
        visible and -inf where it is masked: adding it is an exact mask for finite scores
        (s + 0 = s, s - inf = -inf) and runs 3x faster than np.copyto(where=). Only that part
        is built and added: on the causal diagonal, bq keys of the tile's bk. None when the
        tile lies wholly below the causal diagonal and short of every key length: such a
        tile needs no mask.
        """
        offset = self.len_k - self.len_q
        first_hidden = self.shortest  # the first key that some batch item hides ...
        if self.causal:  # ... or that the block's first row may not see
            first_hidden = min(first_hidden, rows.start + offset + 1)
        if keys.stop <= first_hidden:
            return None
        start = max(keys.start, first_hidden)
        dtype = np.dtype(dtype)
        bias = None
        if self.causal:  # key start + i is hidden from row rows.start + j iff i - j > shift
            shape = (keys.stop - start, rows.stop - rows.start)
            bias = _past_diagonal(*shape, rows.start + offset - start, dtype)[None, None]
        if keys.stop > self.shortest:
            key_index = np.arange(start, keys.stop)[:, None]  # (bk - first, 1)
            padding = key_index >= self.key_lengths[:, None, None, None]  # (B, 1, bk - first, 1)
            hidden = np.where(padding, dtype.type(-np.inf), dtype.type(0))
            bias = hidden if bias is None else np.minimum(bias, hidden)  # -inf if either
        return start - keys.start, bias

    def of_batch(self, items: slice) -> _Visibility:
        """The same rules for the batch items `items` alone. Their tiles end where the whole
        batch's do: a tile cut at another key would sum its zeros in another order, and an
        item's bits would depend on which items share its group."""
        if self.key_lengths is None:
            return self
        bounds = (self.shortest, self.longest)
        return _Visibility(self.len_q, self.len_k, self.causal, self.key_lengths[items], bounds)


@functools.lru_cache(maxsize=64)
def _past_diagonal(num_keys: int, num_rows: int, shift: int, dtype: np.dtype) -> np.ndarray:
    """(num_keys, num_rows) in dtype: -inf where i - j > shift, else 0. Read-only, as it is
    cached: with Lq = Lk every diagonal tile has the same shift, so it is built once."""
    past = np.subtract.outer(np.arange(num_keys), np.arange(num_rows)) > shift
    bias = np.where(past, dtype.type(-np.inf), dtype.type(0))
    bias.flags.writeable = False
    return bias


@dataclass(frozen=True)
class _Layout:
    """The (batch, head) pairs cut into groups, and the groups shared out among threads.

    A group's heads go through the tiles together (4-D matmuls, one NumPy call for all of
    them): as many heads as keep a group's score tile within GROUP_SCORES entries, so
    that the per-call cost of NumPy does not dominate at small L. Thread i takes the
    i-th of equal runs of (batch, head) pairs, cut into groups.
    """

    visibility: _Visibility
    shares: list[list[tuple[slice, slice]]]  # per thread: groups as (batch items, heads)
    group_cells: int  # (batch, head) pairs in the largest group
    len_q: int
    len_k: int
    head_dim: int
    rows_max: int  # queries in the largest tile
    keys_max: int  # keys in the largest tile

    @classmethod
    def of(cls, q, k, visibility, block_q, block_k, workers) -> _Layout:
        batch, heads, len_q, head_dim = q.shape
        rows_max, keys_max = min(block_q, len_q), min(block_k, visibility.key_stop(len_q))
        cells = batch * heads
        count = max(1, min(workers, cells))  # B * H = 0: one empty share
        per_group = max(1, min(GROUP_SCORES // max(rows_max * keys_max, 1), -(-cells // count)))
        # thread i takes the pairs [i * cells // count, (i + 1) * cells // count) in (b, h) order
        shares = [
            _groups(i * cells // count, (i + 1) * cells // count, heads, per_group)
            for i in range(count)
        ]
        return cls(visibility, shares, per_group, len_q, k.shape[2], head_dim, rows_max, keys_max)

    def visibility_of(self, cells: tuple[slice, slice]) -> _Visibility:
        return self.visibility.of_batch(cells[0])

    def forward_scratch(self, dtype) -> _Scratch:
        n, d, rows, keys = self.group_cells, self.head_dim, self.rows_max, self.keys_max
        return _Scratch(
            dtype,
            q_scaled_t=n * d * self.len_q,  # Q_s^T          (n, d, Lq)
            v_ones=n * self.len_k * (d + 1),  # [V, 1]       (n, Lk, d + 1)
            scores=n * keys * rows,  # S^T                   (n, bk, bq)
            acc=n * rows * (d + 1),  # [acc, l]              (n, bq, d + 1)
            pv=n * rows * (d + 1),  # a tile's [P V, rowsum P]
        )

    def backward_scratch(self, dtype) -> _Scratch:
        n, d, rows, keys = self.group_cells, self.head_dim, self.rows_max, self.keys_max
        return _Scratch(
            dtype,
            q_lse_t=n * (d + 1) * self.len_q,  # [Q_s, -lse]^T  (n, d + 1, Lq)
            d_out_d_t=n * (d + 1) * self.len_q,  # [dO, -D]^T   (n, d + 1, Lq)
            k_ones=n * self.len_k * (d + 1),  # [K, 1]          (n, Lk, d + 1)
            v_ones=n * self.len_k * (d + 1),  # [V, 1]          (n, Lk, d + 1)
            probs=n * keys * rows,  # P^T                       (n, bk, bq)
            d_scores=n * keys * rows,  # (dP - D)^T, then dS^T  (n, bk, bq)
            key_grad=n * keys * d,  # a tile's dK or dV         (n, bk, d)
            query_grad=n * rows * d,  # a tile's dQ             (n, bq, d)
        )


def _groups(start: int, stop: int, heads: int, size: int) -> list[tuple[slice, slice]]:
    """The (batch, head) pairs start..stop-1, counted in (b, h) order, as groups of at most
    `size` pairs, each a (batch items, heads) box: whole items where `size` holds a whole
    item's heads, else runs of one item's heads."""
    groups = []
    while start < stop:
        item, head = divmod(start, heads)
        if head == 0 and size >= heads and stop - start >= heads:  # whole items
            items = min(size // heads, (stop - start) // heads)
            groups.append((slice(item, item + items), slice(0, heads)))
            start += items * heads
        else:  # heads of one item
            head_stop = min(heads, head + size, stop - item * heads)
            groups.append((slice(item, item + 1), slice(head, head_stop)))
            start += head_stop - head
    return groups


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
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """O = softmax(scale * Q K^T + mask) V and lse = logsumexp of the masked scores per row.

    q (B, H, Lq, d), k and v (B, H, Lk, d), float32 or float64, one dtype for all.
    key_lengths: None or an int array (B,); key j of item b is valid iff j < key_lengths[b].
    causal: query i sees key j iff j <= i + (Lk - Lq).
    workers: threads sharing the (batch, head) pairs; None: one per CPU core.
    Returns out (B, H, Lq, d) and lse (B, H, Lq), in the inputs' dtype. A row with no valid
    key gets out = 0 and lse = -inf. out is laid out as q is (see laid_out_like).
    """
    visibility = _check_inputs(q, k, v, causal=causal, key_lengths=key_lengths)
    block_q, block_k = _check_blocks(block_q, block_k, causal)
    layout = _Layout.of(q, k, visibility, block_q, block_k, _check_workers(workers))
    out = laid_out_like(q, np.zeros(q.size, q.dtype))  # rows with no valid key stay 0 ...
    lse = np.full(q.shape[:3], -np.inf, q.dtype)  # (B, H, Lq)  ... and -inf

    def forward_share(share: list[tuple[slice, slice]]) -> None:
        scratch = layout.forward_scratch(q.dtype)
        for cells in share:
            _forward_heads(
                q[cells], k[cells], v[cells], out[cells], lse[cells],
                layout.visibility_of(cells), scale, block_q, block_k, scratch,
            )  # fmt: skip

    run_shares(forward_share, layout.shares)
    return out, lse


def _forward_heads(q, k, v, out, lse, visibility, scale, block_q, block_k, scratch):
    """The forward of one group of (batch, head) pairs: fills its views out and lse."""
    batch, heads, len_q, head_dim = q.shape
    len_k = k.shape[2]
    q_scaled_t = scratch.take("q_scaled_t", (batch, heads, head_dim, len_q))  # Q_s^T
    np.multiply(q.swapaxes(-1, -2), q.dtype.type(scale), out=q_scaled_t)
    v_ones = _with_column(v, 1, out=scratch.take("v_ones", (batch, heads, len_k, head_dim + 1)))

    for q_start in range(0, len_q, block_q):
        rows = slice(q_start, min(q_start + block_q, len_q))
        key_stop = visibility.key_stop(rows.stop)
        if key_stop == 0:
            continue  # no row of this block sees a key
        row_max, acc = _forward_query_block(
            q_scaled_t[..., rows], k, v_ones, rows, key_stop, block_k, visibility, scratch
        )
        # l > 0 exactly in the rows that saw a valid key (their max adds exp(0) = 1)
        row_sum = acc[..., head_dim]  # l  (B, H, bq)
        seen = row_sum > 0
        # O = acc / l as acc * (1 / l), with 1 / l set to 0 where no key was seen: such a
        # row's acc is 0 (each of its P was exp(-inf) = 0), so its O stays 0
        inv_sum = np.divide(1, row_sum, out=np.zeros_like(row_sum), where=seen)  # (B, H, bq)
        np.multiply(acc[..., :head_dim], inv_sum[..., None], out=out[:, :, rows])
        np.log(row_sum, out=lse[:, :, rows], where=seen)  # lse = m + log l
        np.add(lse[:, :, rows], row_max, out=lse[:, :, rows], where=seen)


def _forward_query_block(q_block_t, k, v_ones, rows, key_stop, block_k, visibility, scratch):
    """Online softmax of one block of queries (Q_s^T columns) over the keys [0, key_stop).

    Returns the row max m (B, H, bq) and acc (B, H, bq, d + 1) = [sum_j exp(s_j - m) v_j, l].
    """
    batch, heads, _, num_rows = q_block_t.shape
    acc_shape = (batch, heads, num_rows, v_ones.shape[-1])
    acc = scratch.take("acc", acc_shape)  # [acc, l]  (B, H, bq, d + 1)
    row_max = None  # m  (B, H, 1, bq), a row of the transposed tile; None: no key yet

    for k_start in range(0, key_stop, block_k):
        keys = slice(k_start, min(k_start + block_k, key_stop))
        tile = (batch, heads, keys.stop - keys.start, num_rows)
        scores = scratch.take("scores", tile)  # S^T  (B, H, bk, bq)
        np.matmul(k[:, :, keys], q_block_t, out=scores)
        mask = visibility.tile_mask(keys, rows, scores.dtype)
        if mask is not None:
            first, bias = mask
            np.add(scores[:, :, first:], bias, out=scores[:, :, first:])

        block_max = scores.max(axis=-2, keepdims=True)  # (B, H, 1, bq)
        new_max = block_max if row_max is None else np.maximum(row_max, block_max)  # m_new
        # A row with no valid key so far has m_new = -inf: shifting it by 0 instead gives
        # exp(-inf - 0) = 0, where exp(-inf - (-inf)) would be NaN.
        shift = np.where(new_max == -np.inf, k.dtype.type(0), new_max)
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
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients (dq, dk, dv) of the forward, given its out, lse and the gradient d_out.

    Shapes as in `flash_attention_forward`; out and d_out (B, H, Lq, d), lse (B, H, Lq).
    """
    visibility = _check_inputs(q, k, v, causal=causal, key_lengths=key_lengths)
    _check_saved(q, out=out, lse=lse, d_out=d_out)
    block_q, block_k = _check_blocks(block_q, block_k, causal)
    layout = _Layout.of(q, k, visibility, block_q, block_k, _check_workers(workers))
    # dq, dk, dv: views of one zeroed allocation (one allocation, few page faults), each
    # laid out as its input (see laid_out_like)
    grads = np.zeros(q.size + k.size + v.size, q.dtype)
    dq = laid_out_like(q, grads[: q.size])  # (B, H, Lq, d)
    dk = laid_out_like(k, grads[q.size : q.size + k.size])  # (B, H, Lk, d)
    dv = laid_out_like(v, grads[q.size + k.size :])  # (B, H, Lk, d)

    def backward_share(share: list[tuple[slice, slice]]) -> None:
        scratch = layout.backward_scratch(q.dtype)
        for cells in share:
            _backward_heads(
                q[cells], k[cells], v[cells], out[cells], lse[cells], d_out[cells],
                dq[cells], dk[cells], dv[cells], layout.visibility_of(cells),
                scale, block_q, block_k, scratch,
            )  # fmt: skip

    run_shares(backward_share, layout.shares)
    return dq, dk, dv


def _backward_heads(
    q, k, v, out, lse, d_out, dq, dk, dv, visibility, scale, block_q, block_k, scratch
):  # fmt: skip
    """The backward of one group of (batch, head) pairs: fills its views dq, dk and dv."""
    head_dim = q.shape[-1]
    dtype = q.dtype
    query_side_t = (*q.shape[:2], head_dim + 1, q.shape[2])
    key_side = (*k.shape[:3], head_dim + 1)
    # D_i = dO_i . O_i = sum_j P_ij dP_ij, the softmax backward's row term
    d_dot_o = np.einsum("bhqd,bhqd->bhq", d_out, out)  # (B, H, Lq)
    # A row with no valid key has lse = -inf, but all its scores are masked to -inf before
    # the exp, so any finite stand-in gives P = 0 there without forming -inf - (-inf).
    q_lse_t = scratch.take("q_lse_t", query_side_t)  # [Q_s, -lse]^T  (B, H, d + 1, Lq)
    np.multiply(q.swapaxes(-1, -2), dtype.type(scale), out=q_lse_t[..., :head_dim, :])
    np.negative(lse, out=q_lse_t[..., head_dim, :])
    q_lse_t[..., head_dim, :][lse == -np.inf] = 0
    d_out_d_t = scratch.take("d_out_d_t", query_side_t)  # [dO, -D]^T  (B, H, d + 1, Lq)
    d_out_d_t[..., :head_dim, :] = d_out.swapaxes(-1, -2)
    np.negative(d_dot_o, out=d_out_d_t[..., head_dim, :])
    k_ones = _with_column(k, 1, out=scratch.take("k_ones", key_side))  # [K, 1]
    v_ones = _with_column(v, 1, out=scratch.take("v_ones", key_side))  # [V, 1]

    for q_start in range(0, q.shape[2], block_q):
        rows = slice(q_start, min(q_start + block_q, q.shape[2]))
        key_stop = visibility.key_stop(rows.stop)
        if key_stop == 0:
            continue  # no row of this block sees a key: no gradient flows through it
        _backward_query_block(
            q[:, :, rows], q_lse_t[..., rows], d_out[:, :, rows], d_out_d_t[..., rows],
            k, k_ones, v_ones, dq[:, :, rows], dk, dv, rows, key_stop, block_k, visibility,
            scratch,
        )  # fmt: skip
    # S = scale * Q K^T, so dQ = scale * dS K and dK = scale * dS^T Q
    dq *= dtype.type(scale)
    dk *= dtype.type(scale)


def _backward_query_block(
    q, q_lse_t, d_out, d_out_d_t, k, k_ones, v_ones, dq_block, dk, dv, rows, key_stop, block_k,
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
        np.matmul(k_ones[:, :, keys], q_lse_t, out=probs)  # (S - lse)^T
        mask = visibility.tile_mask(keys, rows, probs.dtype)
        if mask is not None:
            first, bias = mask
            np.add(probs[:, :, first:], bias, out=probs[:, :, first:])
        np.exp(probs, out=probs)

        # O = P V, so dV = P^T dO ...
        dv[:, :, keys] += np.matmul(probs, d_out, out=key_grad_tile)
        # ... and dP = dO V^T; the softmax backward is dS = P * (dP - D)
        d_scores = scratch.take("d_scores", tile)  # dS^T  (B, H, bk, bq)
        np.matmul(v_ones[:, :, keys], d_out_d_t, out=d_scores)  # (dP - D)^T
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


def laid_out_like(x: np.ndarray, memory: np.ndarray) -> np.ndarray:
    """An array of x's shape (B, H, L, d) on the 1-D `memory`, laid out as x: C-contiguous,
    or (B, L, H, d) in memory when x's heads were split from (B, L, H d) activations (a
    reshape and a transpose, no copy: its head stride is the smaller).

    Outputs and gradients laid out so go back to (B, L, H d) as a view too: merging the
    heads of out, and the split's backward of dq, dk and dv, copy nothing. The kernels
    read and write any strides; each layout is the faster one for its own callers (the
    heads of tokens cost the kernel 5-8% at N = 1024, and save the model two copies).
    """
    batch, heads, length, head_dim = x.shape
    if heads > 1 and length > 1 and x.strides[1] < x.strides[2]:
        return memory.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)
    return memory.reshape(x.shape)


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


def _check_blocks(block_q, block_k, causal: bool) -> tuple[int, int]:
    if block_q is None:
        block_q = max(DEFAULT_BLOCK_Q // 2, 1) if causal else DEFAULT_BLOCK_Q
    block_k = DEFAULT_BLOCK_K if block_k is None else block_k
    for name, size in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"{name} must be a positive int, got {size!r}")
    return int(block_q), int(block_k)


def _check_workers(workers) -> int:
    if workers is None:
        return usable_cores()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be a positive int or None, got {workers!r}")
    return int(workers)
