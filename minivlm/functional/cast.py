"""Changing a tensor's floating dtype; the gradient goes back in the input's dtype."""

from __future__ import annotations

import numpy as np

from ..autograd import Function, Tensor


class AsType(Function):
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def forward(self, x):
        self.in_dtype = x.dtype
        return x.astype(self.dtype)

    def backward(self, dy):
        return dy.astype(self.in_dtype)


def astype(x: Tensor, dtype) -> Tensor:
    if np.dtype(dtype) == x.dtype:
        return x
    if x.requires_grad and np.dtype(dtype).kind != "f":
        raise TypeError(
            f"astype: a tensor that requires grad can only become floating, not {np.dtype(dtype)}"
        )
    return AsType(dtype)(x)
