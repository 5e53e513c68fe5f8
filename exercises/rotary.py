"""Rotary position embedding: each pair (x1, x2) of a position's features is rotated by
the angle theta_p = position * frequency.

Write `backward`: it gets the gradient of the output and returns one gradient per
input of `forward`, from what `forward` saved.

Check it: python exercises/check.py rotary
(the worked solution is exercises/solutions/rotary.py)
"""

import numpy as np

from minivlm import Function


def angles(length: int, dim: int):
    frequencies = 10000.0 ** (-np.arange(0, dim, 2) / dim)   # (dim/2,)
    theta = np.arange(length)[:, None] * frequencies          # (L, dim/2)
    return np.cos(theta), np.sin(theta)


class Rotary(Function):
    def forward(self, x):                                     # x (L, dim), dim even
        cos, sin = angles(*x.shape)
        self.save(cos, sin)
        x1, x2 = x[:, 0::2], x[:, 1::2]
        y = np.empty_like(x)
        y[:, 0::2], y[:, 1::2] = x1 * cos - x2 * sin, x1 * sin + x2 * cos
        return y

    def backward(self, dy):
        raise NotImplementedError(
            "rotary: the forward is a rotation per pair; what undoes a rotation?"
        )


def op(x):
    return Rotary()(x)


def inputs(rng):
    return [rng.standard_normal((5, 6))]
