"""Inverted dropout: y = x * mask / (1 - p), mask_i ~ Bernoulli(1 - p); identity in eval."""

from __future__ import annotations

from .. import random
from ..autograd import Function, Tensor


class Dropout(Function):
    def __init__(self, p: float):
        self.p = p

    def forward(self, x):
        keep = random.uniform_like(x) >= self.p
        scaled_mask = keep * x.dtype.type(1.0 / (1.0 - self.p))    # 0 or 1/(1-p)
        self.save(scaled_mask)
        return x * scaled_mask

    def backward(self, dy):
        (scaled_mask,) = self.saved
        return dy * scaled_mask


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    return Dropout(p)(x)
