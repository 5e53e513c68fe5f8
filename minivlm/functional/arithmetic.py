"""Elementwise arithmetic with NumPy broadcasting: add, sub, mul, div, neg, pow.

Broadcasting copies an input along new or size-1 axes, so the input's gradient is the
sum of the output's gradient over those axes: `unbroadcast` does that sum.
"""

from __future__ import annotations

import numpy as np

from ..autograd import Function, Tensor


def unbroadcast(grad, shape: tuple[int, ...]):
    """Sum `grad` (broadcast shape) down to `shape`, the input's shape before broadcasting."""
    if grad.shape == shape:
        return grad
    leading = grad.ndim - len(shape)  # axes that broadcasting added in front
    stretched = tuple(
        i + leading for i, n in enumerate(shape) if n == 1 and grad.shape[i + leading] != 1
    )
    grad = grad.sum(axis=tuple(range(leading)) + stretched, keepdims=True)
    return grad.reshape(shape)


def check_broadcast(op: str, a, b) -> None:
    """A ValueError naming both shapes if `a` and `b` do not broadcast together."""
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(
            f"{op}: shapes {a.shape} and {b.shape} do not broadcast "
            "(expected every axis, counted from the last, to be equal or 1 in one of them)"
        ) from None


class Add(Function):
    def forward(self, a, b):
        check_broadcast("add", a, b)
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, dy):
        # y = a + b: dy flows to both, summed over broadcast axes
        return unbroadcast(dy, self.shapes[0]), unbroadcast(dy, self.shapes[1])


class Sub(Function):
    def forward(self, a, b):
        check_broadcast("sub", a, b)
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, dy):
        return unbroadcast(dy, self.shapes[0]), unbroadcast(-dy, self.shapes[1])


class Mul(Function):
    def forward(self, a, b):
        check_broadcast("mul", a, b)
        self.save(a, b)
        return a * b

    def backward(self, dy):
        a, b = self.saved
        # y = a * b: da = dy * b, db = dy * a
        return unbroadcast(dy * b, a.shape), unbroadcast(dy * a, b.shape)


class Div(Function):
    def forward(self, a, b):
        check_broadcast("div", a, b)
        self.save(a, b)
        return a / b

    def backward(self, dy):
        a, b = self.saved
        # y = a / b: da = dy / b, db = -dy * a / b^2
        da = dy / b
        return unbroadcast(da, a.shape), unbroadcast(-da * a / b, b.shape)


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, dy):
        return -dy


class Pow(Function):
    """y = a ** exponent for a constant exponent."""

    def __init__(self, exponent: float):
        self.exponent = exponent

    def forward(self, a):
        self.save(a)
        return a**self.exponent

    def backward(self, dy):
        (a,) = self.saved
        # dy/da = exponent * a^(exponent - 1)
        return dy * self.exponent * a ** (self.exponent - 1)


def add(a, b) -> Tensor:
    return Add()(a, b)


def sub(a, b) -> Tensor:
    return Sub()(a, b)


def mul(a, b) -> Tensor:
    return Mul()(a, b)


def div(a, b) -> Tensor:
    return Div()(a, b)


def neg(a: Tensor) -> Tensor:
    return Neg()(a)


def pow(a: Tensor, exponent: float) -> Tensor:  # noqa: A001 - torch's name
    if isinstance(exponent, Tensor):
        raise TypeError("pow: exponent must be a Python number, got a Tensor")
    return Pow(float(exponent))(a)
