"""GELU, tanh approximation: y = x (1 + tanh u) / 2, u = sqrt(2/pi) (x + 0.044715 x^3).
Solution."""

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
        x, t = self.saved
        # product rule: d/dx [x (1 + t) / 2] = (1 + t) / 2 + x / 2 (1 - t^2) du/dx
        du = C * (1 + 3 * 0.044715 * x**2)
        return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)


def op(x):
    return GELUTanh()(x)


def inputs(rng):
    return [rng.standard_normal((4, 5)) * 2]
