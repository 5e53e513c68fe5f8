"""Embedding lookup: y = W[ids]. The backward scatter-adds each row of dy into the row
of dW that it was read from (a token used twice gets both gradients)."""

from __future__ import annotations

import numpy as np

from ..autograd import Function, Tensor
from ..backend import get_array_module, needs_value_check, on_device_of


class Embedding(Function):
    def forward(self, ids, weight):                           # ids (...), weight (V, D)
        self.save(ids)
        self.weight_shape = weight.shape
        return weight[ids]                                    # (..., D)

    def backward(self, dy):                                   # dy (..., D)
        (ids,) = self.saved
        xp = get_array_module(dy)
        dweight = xp.zeros(self.weight_shape, dtype=dy.dtype)
        flat_ids, rows = ids.reshape(-1), dy.reshape(-1, dy.shape[-1])  # (N,), (N, D)
        if xp is not np or flat_ids.size == 0:
            xp.add.at(dweight, flat_ids, rows)                # CuPy: an atomic scatter-add
            return None, dweight
        # NumPy's add.at goes row by row; sorting the ids and summing each run of equal
        # ids with add.reduceat gives the same sums about six times faster.
        order = np.argsort(flat_ids, kind="stable")           # (N,)
        sorted_ids = flat_ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])  # runs
        dweight[sorted_ids[starts]] = np.add.reduceat(rows[order], starts, axis=0)
        return None, dweight


def embedding(input: Tensor, weight: Tensor) -> Tensor:  # noqa: A002 - torch's name
    """torch.nn.functional.embedding: rows of `weight` (V, D) picked by integer ids.

    `input` is a Tensor (on the weight's device) or a bare array or list of ids, which is
    moved to the weight's device."""
    ids = input.data if isinstance(input, Tensor) else on_device_of(weight, input)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding: input must hold integer ids, got dtype {ids.dtype}")
    vocab = weight.shape[0]
    if ids.size and needs_value_check(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        bad = int(ids.max()) if int(ids.max()) >= vocab else int(ids.min())
        raise IndexError(
            f"embedding: id {bad} is out of range for {vocab} rows (expected 0..{vocab - 1})"
        )
    return Embedding()(Tensor(ids.astype(np.int64, copy=False)), weight)
