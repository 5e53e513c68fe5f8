"""SwiGLU's gate: y = silu(a) * b, silu(a) = a * sigmoid(a). Solution."""

from minivlm import Function
from minivlm.backend import get_array_module


class SwiGLU(Function):
    def forward(self, a, b):
        xp = get_array_module(a)
        sig = 1 / (1 + xp.exp(-a))
        self.save(a, b, sig)
        return a * sig * b

    def backward(self, dy):
        a, b, sig = self.saved
        # y = silu(a) b: db = dy silu(a); da = dy b silu'(a), silu' = sig (1 + a (1 - sig))
        return dy * b * sig * (1 + a * (1 - sig)), dy * a * sig


def op(a, b):
    return SwiGLU()(a, b)


def inputs(rng):
    return [rng.standard_normal((3, 6)), rng.standard_normal((3, 6))]
