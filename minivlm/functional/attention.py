"""Scaled dot-product attention, naive and fused, forward and backward.

Shapes: q (B, H, Lq, d), k and v (B, H, Lk, d), out (B, H, Lq, d).

    S = scale * Q K^T            (B, H, Lq, Lk)   scores; masked entries -inf
    P = softmax(S) over keys     (B, H, Lq, Lk)   probs
    O = P V                      (B, H, Lq, d)

Masks: `is_causal` lets query i see key j iff j <= i + (Lk - Lq), the causal mask
aligned to the bottom-right corner, so the last query sees every key (with Lq == Lk
it is the usual lower triangle; with a KV cache, Lq new queries after Lk - Lq cached
keys see exactly what they should). `key_lengths` (B,) hides keys j >= length[b]
(padding); `attn_mask` is a boolean array broadcastable to (B, H, Lq, Lk), True where
attention is allowed (PyTorch's boolean convention). A query row with no allowed key
gets output 0 and gradient 0, never NaN.

The naive path keeps P for its backward, O(Lq Lk) memory. The fused path (kernels_cpu
for NumPy, kernels/ through CuPy) keeps only O and the log-sum-exp per row and
recomputes P block by block.
"""

from __future__ import annotations

import math

import numpy as np

from ..autograd import Function, Tensor
from ..backend import get_array_module, is_cupy, needs_value_check, usable_cores
from ..kernels_cpu import flash_attention as cpu_kernels
from ..kernels_cuda import attention as cuda_kernels
from ..kernels_cuda import attention_mma as cuda_mma_kernels

# At or above this many scores per (batch, head), "auto" takes the fused path. On the
# CPU much of the NumPy kernel's lead at small sizes is its threads (the naive softmax
# runs on one core): with two cores or more it beats the naive path from 40 x 40 on
# (B=64, H=4, d=32, heads split from (B, L, H d) as the model's are, forward+backward
# through the engine: 0.76-0.80x at 40 x 40, 0.77-0.85x at 32 x 64 to 48 x 48, 0.97-1.01x
# at 24 x 64, 1.16-1.36x at 32 x 32 and 16 x 64), on one core (a rank of `mpiexec -n 2`
# on two cores) only from about 96 x 96 on (B=32: 1.04-1.15x at 64 x 64 and 80 x 80,
# 0.97-1.03x at 96 x 96, 0.72-0.77x at 128 x 128; benchmarks/RESULTS.md). On the GPU
# at every size, for head dims up to the kernels' 128: at 256 x 256, the smallest size
# measured (H200, B=4, H=4, d=64, causal), forward+backward took 0.45 ms fused against 1.54
# naive, and below that both are bound by launches, of which the fused path makes fewer
# (one kernel forward, three backward; the naive path two products and the masked
# softmax's passes each way).
AUTO_FUSED_MIN_SCORES = {"cpu": 40 * 40, "cpu, one core": 96 * 96, "cuda": 1}


def allowed_mask(xp, lq: int, lk: int, *, causal: bool, key_lengths=None, attn_mask=None):
    """Boolean (B|1, H|1, Lq, Lk) array of allowed (query, key) pairs, or None for all."""
    allowed = None
    if causal:
        offset = lk - lq                                      # bottom-right alignment
        allowed = (xp.arange(lk)[None, :] <= xp.arange(lq)[:, None] + offset)[None, None]
    if key_lengths is not None:
        in_length = xp.arange(lk)[None, :] < key_lengths[:, None]   # (B, Lk)
        in_length = in_length[:, None, None, :]                      # (B, 1, 1, Lk)
        allowed = in_length if allowed is None else allowed & in_length
    if attn_mask is not None:
        allowed = attn_mask if allowed is None else allowed & attn_mask
    return allowed


def matmul_heads(a, b, like):
    """a @ b, (B, H, L, d), laid out in memory as `like` (cpu_kernels.laid_out_like): heads
    split from (B, L, H d) activations give results that merge back without a copy."""
    xp = get_array_module(a)
    if is_cupy(xp):
        return a @ b
    out = cpu_kernels.laid_out_like(like, np.empty(like.size, like.dtype))
    return np.matmul(a, b, out=out)


class Attention(Function):
    """The naive path: every score and probability is materialised."""

    def __init__(self, scale: float, allowed, return_weights: bool):
        self.scale, self.allowed, self.return_weights = scale, allowed, return_weights

    def forward(self, q, k, v):
        xp = get_array_module(q)
        scores = q @ k.swapaxes(-1, -2)                       # (B, H, Lq, Lk)
        scores *= q.dtype.type(self.scale)
        if self.allowed is not None:
            scores = xp.where(self.allowed, scores, -xp.inf).astype(q.dtype, copy=False)
        # softmax over keys, in place: scores -> exp(scores - rowmax) -> probs
        row_max = scores.max(axis=-1, keepdims=True)          # (B, H, Lq, 1)
        scores -= xp.where(xp.isfinite(row_max), row_max, 0)  # all-masked row: shift by 0
        probs = xp.exp(scores, out=scores)
        total = probs.sum(axis=-1, keepdims=True)
        probs /= xp.where(total > 0, total, 1)                # all-masked row: P = 0
        out = matmul_heads(probs, v, like=q)                  # (B, H, Lq, d)
        self.save(q, k, v, probs, out)
        return (out, probs) if self.return_weights else out

    def backward(self, d_out, d_weights=None):
        q, k, v, probs, out = self.saved
        # forward was O = P V
        d_v = matmul_heads(probs.swapaxes(-1, -2), d_out, v)  # (B, H, Lk, d)   dV = P^T dO
        d_probs = d_out @ v.swapaxes(-1, -2)                  # (B, H, Lq, Lk)  dP = dO V^T
        # P = softmax(S), so dS = P * (dP - D) with D = rowsum(dP * P)      (B, H, Lq, 1)
        if d_weights is None:
            # rowsum_k P_ik dP_ik = rowsum_k P_ik (dO_i . v_k) = dO_i . O_i: d terms, not Lk
            row_dot = (d_out * out).sum(axis=-1, keepdims=True)
        else:
            d_probs += d_weights                              # P was also an output
            row_dot = (d_probs * probs).sum(axis=-1, keepdims=True)
        d_scores = d_probs                                    # dP's memory, in place:
        d_scores -= row_dot
        d_scores *= probs
        # S = scale * Q K^T, so dQ = scale dS K and dK = scale dS^T Q
        d_scores *= q.dtype.type(self.scale)
        d_q = matmul_heads(d_scores, k, q)                    # (B, H, Lq, d)
        d_k = matmul_heads(d_scores.swapaxes(-1, -2), q, k)   # (B, H, Lk, d)
        return d_q, d_k, d_v


# precision= of the fused path on the GPU: "ieee" float32/float64 arithmetic on CUDA cores
# (kernels_cuda/attention.py), "3xtf32" and "tf32" float32 on tensor cores
# (kernels_cuda/attention_mma.py). The NumPy kernels compute in the arrays' dtype whatever
# is asked: never less precise than any of these.
PRECISIONS = ("ieee", "3xtf32", "tf32")


class FusedAttention(Function):
    """The fused path: blocked online softmax; saves only O and the log-sum-exp L."""

    def __init__(self, scale: float, causal: bool, key_lengths, tiles: dict | None = None,
                 precision: str = "ieee"):  # fmt: skip
        self.scale, self.causal, self.key_lengths = scale, causal, key_lengths
        self.tiles = tiles or {}  # block_q, block_k of the NumPy kernels (gradchecks use small)
        self.precision = precision

    def forward(self, q, k, v):
        xp = get_array_module(q)
        self.kernels, self.options = self._kernels(xp)
        if is_cupy(xp):  # the CUDA kernels read rows of d: the model's heads are views
            q, k, v = (xp.ascontiguousarray(a) for a in (q, k, v))
        out, lse = self.kernels.flash_attention_forward(
            q, k, v, scale=self.scale, causal=self.causal, key_lengths=self.key_lengths,
            **self.options,
        )
        self.save(q, k, v, out, lse)
        return out

    def _kernels(self, xp) -> tuple:
        """(kernel module, its options): kernels_cuda for CuPy arrays (the tensor-core ones
        for precision "3xtf32" or "tf32"), the blocked NumPy kernels otherwise."""
        if not is_cupy(xp):
            return cpu_kernels, self.tiles
        if self.precision == "ieee":
            return cuda_kernels, self.tiles
        return cuda_mma_kernels, {"precision": self.precision}

    def backward(self, d_out):
        q, k, v, out, lse = self.saved
        if is_cupy(get_array_module(d_out)):
            d_out = get_array_module(d_out).ascontiguousarray(d_out)
        return self.kernels.flash_attention_backward(
            q, k, v, out, lse, d_out,
            scale=self.scale, causal=self.causal, key_lengths=self.key_lengths, **self.options,
        )


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask=None,
    is_causal: bool = False,
    scale: float | None = None,
    key_lengths=None,
    return_weights: bool = False,
    impl: str = "auto",
    precision: str = "ieee",
):
    """softmax(scale * Q K^T, masked) V; also returns P when `return_weights`.

    impl: "naive" materialises the scores; "fused" never does (no `attn_mask`, no
    weights); "auto" takes "fused" when it can and it is the faster: on the GPU always
    (head dims up to 128), on the CPU from AUTO_FUSED_MIN_SCORES scores a head on.
    precision: how the fused path multiplies on the GPU (PRECISIONS): "ieee" (default),
    "3xtf32" or "tf32" on tensor cores, float32 only.
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"scaled_dot_product_attention: precision must be one of {', '.join(PRECISIONS)}, "
            f"got {precision!r}"
        )
    _check_qkv(query, key, value)
    xp = get_array_module(query.data)
    batch, _, lq, head_dim = query.shape
    lk = key.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    lengths = _key_lengths(xp, key_lengths, batch, lk)
    mask = _attn_mask(attn_mask, query.shape, lk)
    # the CUDA kernels take float32 and float64 heads of up to MAX_HEAD_DIM; "auto" takes
    # naive for others
    fits = not is_cupy(xp) or (
        head_dim <= cuda_kernels.MAX_HEAD_DIM and query.dtype in (np.float32, np.float64)
    )
    worth_fusing = fits and lq * lk >= _fused_min_scores(xp)
    impl = _choose_impl(impl, mask is not None, return_weights, worth_fusing)
    if impl == "fused":
        return FusedAttention(scale, is_causal, lengths, precision=precision)(query, key, value)
    allowed = allowed_mask(xp, lq, lk, causal=is_causal, key_lengths=lengths, attn_mask=mask)
    return Attention(scale, allowed, return_weights)(query, key, value)


def _fused_min_scores(xp) -> int:
    if is_cupy(xp):
        return AUTO_FUSED_MIN_SCORES["cuda"]
    return AUTO_FUSED_MIN_SCORES["cpu" if usable_cores() > 1 else "cpu, one core"]


def _choose_impl(impl: str, has_mask: bool, return_weights: bool, worth_fusing: bool) -> str:
    if impl not in ("auto", "naive", "fused"):
        raise ValueError(
            f"scaled_dot_product_attention: impl must be 'auto', 'naive' or 'fused', got {impl!r}"
        )
    if impl == "fused" and (has_mask or return_weights):
        raise ValueError(
            "scaled_dot_product_attention: impl='fused' supports is_causal and key_lengths, "
            "not attn_mask or return_weights=True; use impl='naive' (or 'auto')"
        )
    if impl == "auto":
        fusable = not has_mask and not return_weights
        return "fused" if fusable and worth_fusing else "naive"
    return impl


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("query", q), ("key", k), ("value", v)):
        if t.ndim != 4:
            raise ValueError(
                f"scaled_dot_product_attention: {name} must be 4-D (B, H, L, d), "
                f"got shape {t.shape}"
            )
    if k.shape != v.shape:
        raise ValueError(
            f"scaled_dot_product_attention: key {k.shape} and value {v.shape} must have one shape"
        )
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"scaled_dot_product_attention: query {q.shape} and key {k.shape} "
            f"must agree in B, H and d"
        )


def _key_lengths(xp, key_lengths, batch: int, lk: int):
    if key_lengths is None:
        return None
    lengths = key_lengths.data if isinstance(key_lengths, Tensor) else key_lengths
    lengths = xp.asarray(lengths)
    if lengths.dtype.kind not in "iu" or lengths.shape != (batch,):
        raise ValueError(
            f"scaled_dot_product_attention: key_lengths must be integers of shape ({batch},), "
            f"got dtype {lengths.dtype} shape {lengths.shape}"
        )
    # the range check reads back from a GPU: skipped under values_checked_on_host
    if needs_value_check(lengths) and bool(((lengths < 0) | (lengths > lk)).any()):
        raise ValueError(
            f"scaled_dot_product_attention: key_lengths must lie in 0..{lk}, got {lengths.tolist()}"
        )
    return lengths.astype(xp.int32)


def _attn_mask(attn_mask, q_shape, lk: int):
    if attn_mask is None:
        return None
    mask = attn_mask.data if isinstance(attn_mask, Tensor) else attn_mask
    if mask.dtype != bool:
        raise TypeError(
            f"scaled_dot_product_attention: attn_mask must be boolean (True = may attend), "
            f"got dtype {mask.dtype}"
        )
    target = (*q_shape[:3], lk)
    try:
        fits = np.broadcast_shapes(mask.shape, target) == target
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"scaled_dot_product_attention: attn_mask of shape {mask.shape} "
            f"does not broadcast to {target}"
        )
    return mask
