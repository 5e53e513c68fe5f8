"""Reductions over axes: sum, mean, max. The backward spreads dy back over the
reduced axes: evenly for sum and mean, onto the arg-max (split among ties) for max."""

from __future__ import annotations

import builtins

from ..autograd import Function, Tensor
from ..backend import get_array_module


def normalize_axes(axis, ndim: int, op: str) -> tuple[int, ...]:
    """`axis` (None, int or tuple) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < builtins.max(ndim, 1):
            raise ValueError(f"{op}: axis {a} is out of range for a tensor with {ndim} dimensions")
    return tuple(sorted(a % builtins.max(ndim, 1) for a in axes))


def _expand_reduced(dy, axes, keepdims: bool, ndim: int):
    """dy with size-1 axes put back where the forward reduced them (so it broadcasts)."""
    if keepdims or ndim == 0:
        return dy
    shape = list(dy.shape)
    for a in axes:
        shape.insert(a, 1)
    return dy.reshape(shape)


class Sum(Function):
    def __init__(self, axis=None, keepdims: bool = False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.axes = normalize_axes(self.axis, x.ndim, "sum")
        self.in_shape = x.shape
        return x.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, dy):
        xp = get_array_module(dy)
        # y = sum_i x_i over the axes: every x_i gets dy
        dy = _expand_reduced(dy, self.axes, self.keepdims, len(self.in_shape))
        return xp.broadcast_to(dy, self.in_shape).copy()


class Mean(Function):
    def __init__(self, axis=None, keepdims: bool = False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.axes = normalize_axes(self.axis, x.ndim, "mean")
        self.in_shape = x.shape
        return x.mean(axis=self.axes, keepdims=self.keepdims)

    def backward(self, dy):
        xp = get_array_module(dy)
        count = 1
        for a in self.axes:
            count *= self.in_shape[a]
        # y = (1/n) sum_i x_i: every x_i gets dy / n
        dy = _expand_reduced(dy, self.axes, self.keepdims, len(self.in_shape))
        return xp.broadcast_to(dy / count, self.in_shape).copy()


class Max(Function):
    def __init__(self, axis=None, keepdims: bool = False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.axes = normalize_axes(self.axis, x.ndim, "max")
        y = x.max(axis=self.axes, keepdims=True)
        self.save(x, y)
        if self.keepdims:
            return y
        return y.reshape([n for i, n in enumerate(y.shape) if i not in self.axes])

    def backward(self, dy):
        x, y = self.saved
        # dy goes to the positions equal to the max, shared equally among ties
        winners = (x == y).astype(x.dtype)
        share = winners / winners.sum(axis=self.axes, keepdims=True)
        return _expand_reduced(dy, self.axes, self.keepdims, x.ndim) * share


def sum(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001 - torch's name
    return Sum(axis, keepdims)(x)


def mean(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    return Mean(axis, keepdims)(x)


def max(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001 - torch's name
    return Max(axis, keepdims)(x)
