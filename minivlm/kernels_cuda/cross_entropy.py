"""Cross-entropy with ignore_index and label smoothing on the GPU: launches
kernels/cross_entropy.cu. Same signatures as the CPU kernels.

    loss_i = (1 - eps) (lse_i - z_i[t_i]) + eps (lse_i - mean_j z_ij),  0 where t_i == ignore_index
    lse_i = row_max_i + log_sum_i                 (the two parts are kept apart)
    d_logits_ij = d_loss_i (softmax_ij - (1 - eps) [j == t_i] - eps / V)
"""

from __future__ import annotations

import numpy as np

from minivlm.backend import needs_value_check, require_cuda
from minivlm.kernels_cuda.checks import as_int32_vector, check_float_array, check_shape
from minivlm.kernels_cuda.loader import dtype_suffix, get_kernel, new_output, row_block_threads

SOURCE = "cross_entropy.cu"
INT32 = np.iinfo(np.int32)


def _check_logits(cupy, logits) -> tuple[int, int]:
    check_float_array(cupy, "logits", logits, 2)
    rows, vocab = logits.shape
    if vocab < 1:
        raise ValueError(f"logits must have at least one class (axis 1), got shape {logits.shape}")
    return rows, vocab


def _check_options(ignore_index: int, label_smoothing: float) -> None:
    if not INT32.min <= ignore_index <= INT32.max:
        raise ValueError(f"ignore_index must fit in int32, got {ignore_index}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")


def _targets(cupy, targets, rows: int, vocab: int, ignore_index: int):
    """targets as int32 (N,), after checking that each is a class or ignore_index
    (the check reads one flag back from the GPU)."""
    values = cupy.asarray(targets)
    targets_int32 = as_int32_vector(cupy, "targets", values, rows)  # checks dtype and shape
    if not needs_value_check(values):  # checked on the host (values_checked_on_host)
        return targets_int32
    # checked on the original values, before int32 could wrap a large one into range
    out_of_range = (values != ignore_index) & ((values < 0) | (values >= vocab))
    if bool(out_of_range.any()):
        row = int(cupy.flatnonzero(out_of_range)[0])
        raise ValueError(
            f"targets must be class indices in [0, {vocab}) or ignore_index ({ignore_index}), "
            f"got {int(values[row])} at row {row}"
        )
    return targets_int32


def cross_entropy_forward(
    logits, targets, *, ignore_index: int = -100, label_smoothing: float = 0.0
) -> tuple:
    """Per-row loss of logits (N, V) against integer targets (N,), and the row statistics
    the backward needs.

    Returns (loss_per_row (N,), row_max (N,), log_sum (N,)), where the log-sum-exp of row i
    is row_max_i + log_sum_i; kept apart, not added, so that float32 keeps the digits of
    the softmax next to large logits. The statistics are computed for ignored rows too.
    """
    cupy = require_cuda()
    rows, vocab = _check_logits(cupy, logits)
    _check_options(ignore_index, label_smoothing)
    targets = _targets(cupy, targets, rows, vocab, ignore_index)
    loss = new_output(cupy, (rows,), logits.dtype)  # (N,)
    row_max = new_output(cupy, (rows,), logits.dtype)  # (N,)
    log_sum = new_output(cupy, (rows,), logits.dtype)  # (N,)
    if rows:
        kernel = get_kernel(SOURCE, f"cross_entropy_forward_{dtype_suffix(logits.dtype)}")
        kernel(
            (rows,),
            (row_block_threads(vocab),),
            (
                logits,
                targets,
                loss,
                row_max,
                log_sum,
                np.int32(vocab),
                np.int32(ignore_index),
                logits.dtype.type(label_smoothing),
            ),
        )
    return loss, row_max, log_sum


def cross_entropy_backward(
    logits, targets, row_max, log_sum, d_loss, *, ignore_index: int = -100,
    label_smoothing: float = 0.0,
):
    """d_logits (N, V) = d_loss_i (softmax_ij - (1 - eps) [j == t_i] - eps / V), 0 for
    ignored rows, from the forward's row_max and log_sum (N,) and the upstream d_loss (N,)."""
    cupy = require_cuda()
    rows, vocab = _check_logits(cupy, logits)
    _check_options(ignore_index, label_smoothing)
    for name, per_row in (("row_max", row_max), ("log_sum", log_sum), ("d_loss", d_loss)):
        check_float_array(cupy, name, per_row, 1, logits.dtype)
        check_shape(name, per_row, (rows,), "one per row of logits")
    targets = _targets(cupy, targets, rows, vocab, ignore_index)
    d_logits = new_output(cupy, logits.shape, logits.dtype)  # (N, V)
    if rows:
        kernel = get_kernel(SOURCE, f"cross_entropy_backward_{dtype_suffix(logits.dtype)}")
        kernel(
            (rows,),
            (row_block_threads(vocab),),
            (
                logits,
                targets,
                row_max,
                log_sum,
                d_loss,
                d_logits,
                np.int32(vocab),
                np.int32(ignore_index),
                logits.dtype.type(label_smoothing),
            ),
        )
    return d_logits
