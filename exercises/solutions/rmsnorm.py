"""RMSNorm over the last axis: y = x * r * w, r = 1 / sqrt(mean(x^2) + eps). Solution."""

from minivlm import Function
from minivlm.backend import get_array_module


class RMSNorm(Function):
    def __init__(self, eps: float = 1e-5):
        self.eps = eps

    def forward(self, x, w):                                  # x (R, C), w (C,)
        xp = get_array_module(x)
        rstd = 1.0 / xp.sqrt((x * x).mean(-1, keepdims=True) + self.eps)  # (R, 1)
        xhat = x * rstd                                       # (R, C)
        self.save(xhat, rstd, w)
        return xhat * w

    def backward(self, dy):
        xhat, rstd, w = self.saved
        # y = xhat * w, so dw sums over rows and dxhat = dy * w
        dw = (dy * xhat).sum(0)
        dxhat = dy * w
        # xhat = x * rstd: direct term, and the term through rstd (no mean to subtract)
        dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(-1, keepdims=True))
        return dx, dw


def op(x, w):
    return RMSNorm()(x, w)


def inputs(rng):
    return [rng.standard_normal((3, 5)), rng.standard_normal(5)]
