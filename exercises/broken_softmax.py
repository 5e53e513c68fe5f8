"""A softmax whose backward was wrong: find the bug and fix it.

Check it: python exercises/check.py broken_softmax
(the worked solution is exercises/solutions/broken_softmax.py)
"""

from minivlm import Function
from minivlm.backend import get_array_module


class Softmax(Function):
    def forward(self, x):
        xp = get_array_module(x)
        e = xp.exp(x - x.max(-1, keepdims=True))
        y = e / e.sum(-1, keepdims=True)
        self.save(y)
        return y

    def backward(self, dy):
        (y,) = self.saved
        # softmax's derivative is y (1 - y)... isn't it? gradcheck says no: fix it
        return y * (1 - y) * dy


def op(x):
    return Softmax()(x)


def inputs(rng):
    return [rng.standard_normal((3, 5))]
