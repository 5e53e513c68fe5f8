"""SwiGLU's gate: y = silu(a) * b, silu(a) = a * sigmoid(a).

Write `backward`: it gets the gradient of the output and returns one gradient per
input of `forward`, from what `forward` saved.

Check it: python exercises/check.py swiglu
(the worked solution is exercises/solutions/swiglu.py)
"""

from minivlm import Function
from minivlm.backend import get_array_module


class SwiGLU(Function):
    def forward(self, a, b):
        xp = get_array_module(a)
        sig = 1 / (1 + xp.exp(-a))
        self.save(a, b, sig)
        return a * sig * b

    def backward(self, dy):
        raise NotImplementedError(
            "swiglu: one gradient per input: da through silu(a) = a * sigmoid(a), "
            "db = dy * silu(a)"
        )


def op(a, b):
    return SwiGLU()(a, b)


def inputs(rng):
    return [rng.standard_normal((3, 6)), rng.standard_normal((3, 6))]
