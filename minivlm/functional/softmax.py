"""softmax and log_softmax over one axis, shifted by the row max so that logits of
+-1e4 neither overflow nor underflow."""

from __future__ import annotations

from ..autograd import Function, Tensor
from ..backend import get_array_module


def _shifted(x, axis: int):
    """x - max(x) along axis; a row that is all -inf is shifted by 0, not by -inf."""
    xp = get_array_module(x)
    row_max = x.max(axis=axis, keepdims=True)
    return x - xp.where(xp.isfinite(row_max), row_max, 0)


class Softmax(Function):
    def __init__(self, axis: int):
        self.axis = axis

    def forward(self, x):
        xp = get_array_module(x)
        e = xp.exp(_shifted(x, self.axis))
        total = e.sum(axis=self.axis, keepdims=True)
        e /= xp.where(total > 0, total, 1)                    # an all -inf row gives zeros
        self.save(e)
        return e

    def backward(self, dy):
        (y,) = self.saved
        # y_i = e^{x_i} / sum_j e^{x_j}, so dx_i = y_i (dy_i - sum_j dy_j y_j)
        return y * (dy - (dy * y).sum(axis=self.axis, keepdims=True))


class LogSoftmax(Function):
    def __init__(self, axis: int):
        self.axis = axis

    def forward(self, x):
        xp = get_array_module(x)
        shifted = _shifted(x, self.axis)
        y = shifted - xp.log(xp.exp(shifted).sum(axis=self.axis, keepdims=True))
        self.save(y)
        return y

    def backward(self, dy):
        (y,) = self.saved
        # y_i = x_i - log sum_j e^{x_j}, so dx_i = dy_i - softmax_i sum_j dy_j
        xp = get_array_module(y)
        return dy - xp.exp(y) * dy.sum(axis=self.axis, keepdims=True)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    _check_dim(x, dim, "softmax")
    return Softmax(dim)(x)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    _check_dim(x, dim, "log_softmax")
    return LogSoftmax(dim)(x)


def _check_dim(x: Tensor, dim: int, op: str) -> None:
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"{op}: dim {dim} is out of range for a tensor of shape {x.shape}")
