"""GELU, tanh approximation: y = x (1 + tanh u) / 2, u = sqrt(2/pi) (x + 0.044715 x^3).
Solution.

Write `backward`: it gets the gradient of the output and returns one gradient per
input of `forward`, from what `forward` saved.

Check it: python exercises/check.py gelu
(the worked solution is exercises/solutions/gelu.py)
"""

import math

from minivlm import Function
from minivlm.backend import get_array_module

C = math.sqrt(2 / math.pi)


class GELUTanh(Function):
    def forward(self, x):
        xp = get_array_module(x)
        t = xp.tanh(C * (x + 0.044715 * x**3))
        self.save(x, t)
        return 0.5 * x * (1 + t)

    def backward(self, dy):
        raise NotImplementedError(
            "gelu: the product rule on x * (1 + tanh u) / 2, and the chain rule through u"
        )


def op(x):
    return GELUTanh()(x)


def inputs(rng):
    return [rng.standard_normal((4, 5)) * 2]
