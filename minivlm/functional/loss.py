"""Cross-entropy of logits against integer targets, softmax and loss in one op.

For row i with logits z (V,), lse = log sum_j e^{z_j} and target t:
    loss_i = (1 - eps) (lse - z_t) + eps (lse - mean_j z_j)     (label smoothing eps)
    dloss_i / dz = softmax(z) - (1 - eps) onehot(t) - eps / V
Rows whose target is ignore_index contribute neither loss nor gradient; "mean"
divides by the number of counted rows.
"""

from __future__ import annotations

import numpy as np

from ..autograd import Function, Tensor
from ..backend import (
    get_array_module,
    is_cupy,
    needs_value_check,
    on_device_of,
    values_checked_on_host,
)
from ..kernels_cuda import cross_entropy as cuda_kernels


def _cross_entropy_rows(logits, targets, *, ignore_index: int, label_smoothing: float):
    """(loss per row, row max m, log_sum = lse - m), each (N,): what
    kernels_cuda.cross_entropy_forward returns, in NumPy.

    Computed from logits shifted by the row max m, lse - z_t = log sum_j e^{z_j - m} - (z_t - m):
    lse itself, rounded near a logit of 1e4, would lose the loss's digits in float32.
    """
    xp = get_array_module(logits)
    counted = targets != ignore_index
    safe_targets = xp.where(counted, targets, 0)
    row_max = logits.max(axis=1)                             # (N,)   m
    shifted = logits - row_max[:, None]                      # (N, V) z - m
    log_sum = xp.log(xp.exp(shifted).sum(axis=1))            # (N,)   lse - m
    target_shifted = xp.take_along_axis(shifted, safe_targets[:, None], axis=1)[:, 0]
    loss = (1 - label_smoothing) * (log_sum - target_shifted)
    if label_smoothing:
        loss += label_smoothing * (log_sum - shifted.mean(axis=1))
    return loss * counted, row_max, log_sum


def _cross_entropy_rows_backward(
    logits, targets, row_max, log_sum, d_rows, *, ignore_index: int, label_smoothing: float
):
    """d_logits (N, V) = d_rows_i * (softmax - (1-eps) onehot - eps/V), 0 for ignored rows,
    from the forward's row_max and log_sum (N,): kernels_cuda.cross_entropy_backward in NumPy.

    softmax_ij = e^{(z_ij - m_i) - log_sum_i}: the two parts of lse are taken off one at a
    time, so that float32 keeps the softmax's digits next to large logits.
    """
    xp = get_array_module(logits)
    counted = targets != ignore_index
    d_logits = logits - row_max[:, None]                      # (N, V) z - m
    d_logits -= log_sum[:, None]                              # (N, V) z - lse
    xp.exp(d_logits, out=d_logits)                            # softmax (N, V)
    rows = xp.arange(len(targets))
    d_logits[rows, xp.where(counted, targets, 0)] -= 1 - label_smoothing
    if label_smoothing:
        d_logits -= label_smoothing / logits.shape[1]
    d_logits *= (d_rows * counted)[:, None]
    return d_logits


class CrossEntropy(Function):
    def __init__(self, ignore_index: int, reduction: str, smoothing: float):
        self.ignore_index, self.reduction, self.smoothing = ignore_index, reduction, smoothing

    def forward(self, logits, targets):                       # logits (N, V), targets (N,)
        # the two functions above, or the same two as the kernels of kernels/cross_entropy.cu
        if is_cupy(get_array_module(logits)):
            rows_forward, self.rows_backward = (
                cuda_kernels.cross_entropy_forward, cuda_kernels.cross_entropy_backward
            )
            logits = get_array_module(logits).ascontiguousarray(logits)  # whole rows
        else:
            rows_forward, self.rows_backward = _cross_entropy_rows, _cross_entropy_rows_backward
        rows, row_max, log_sum = rows_forward(
            logits, targets, ignore_index=self.ignore_index, label_smoothing=self.smoothing
        )                                                     # (N,) each; lse = row_max + log_sum
        self.save(logits, targets, row_max, log_sum)
        if self.reduction == "none":
            return rows
        total = rows.sum()
        if self.reduction == "sum":
            return total
        # mean over counted rows; with none counted the loss is 0 and so is its gradient
        self.count = max(int((targets != self.ignore_index).sum()), 1)
        return total / logits.dtype.type(self.count)

    def backward(self, dy):
        logits, targets, row_max, log_sum = self.saved
        xp = get_array_module(logits)
        if self.reduction == "none":
            d_rows = dy                                       # (N,)
        else:
            scale = dy / self.count if self.reduction == "mean" else dy
            d_rows = xp.broadcast_to(scale, targets.shape)
        with values_checked_on_host():                       # the forward checked targets
            d_logits = self.rows_backward(
                logits, targets, row_max, log_sum, xp.ascontiguousarray(d_rows),
                ignore_index=self.ignore_index, label_smoothing=self.smoothing,
            )                                                 # (N, V)
        return d_logits, None


def cross_entropy(
    input: Tensor,  # noqa: A002 - torch's name
    target,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """torch.nn.functional.cross_entropy for logits (N, V) and integer targets (N,).

    `target` is a Tensor (on the logits' device) or a bare array or list of class ids,
    which is moved to the logits' device."""
    targets = target.data if isinstance(target, Tensor) else on_device_of(input, target)
    if input.ndim != 2:
        raise ValueError(f"cross_entropy: input must be logits of shape (N, V), got {input.shape}")
    if targets.dtype.kind not in "iu":
        raise TypeError(
            f"cross_entropy: target must hold integer class ids, got dtype {targets.dtype}"
        )
    if targets.shape != (input.shape[0],):
        raise ValueError(
            f"cross_entropy: target must have shape ({input.shape[0]},), got {targets.shape}"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(
            f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    vocab = input.shape[1]
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if needs_value_check(targets) and bool(bad.any()):
        value = int(targets[get_array_module(targets).argmax(bad)])
        raise IndexError(
            f"cross_entropy: target {value} is out of range for {vocab} classes "
            f"(expected 0..{vocab - 1} or ignore_index={ignore_index})"
        )
    targets = Tensor(targets.astype(np.int64, copy=False))
    return CrossEntropy(ignore_index, reduction, float(label_smoothing))(input, targets)
