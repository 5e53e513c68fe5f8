"""RMSNorm over the last axis: y = x * r * w, r = 1 / sqrt(mean(x^2) + eps).

Write `backward`: it gets the gradient of the output and returns one gradient per
input of `forward`, from what `forward` saved.

Check it: python exercises/check.py rmsnorm
(the worked solution is exercises/solutions/rmsnorm.py)
"""

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
        raise NotImplementedError(
            "rmsnorm: like layer_norm's, without the term through the mean "
            "(docs/backprop/layer_norm.md)"
        )


def op(x, w):
    return RMSNorm()(x, w)


def inputs(rng):
    return [rng.standard_normal((3, 5)), rng.standard_normal(5)]
