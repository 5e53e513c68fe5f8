"""The gate of gated cross-attention (Flamingo): y = x + tanh(gate) * h, gate a scalar
parameter (shape (1,)).

Write `backward`: it gets the gradient of the output and returns one gradient per
input of `forward`, from what `forward` saved.

Check it: python exercises/check.py tanh_gate
(the worked solution is exercises/solutions/tanh_gate.py)
"""

import numpy as np

from minivlm import Function


class TanhGate(Function):
    def forward(self, x, h, gate):                            # x, h (B, T, C); gate (1,)
        t = np.tanh(gate)
        self.save(h, t)
        return x + t * h

    def backward(self, dy):
        raise NotImplementedError(
            "tanh_gate: three gradients: x, h, and the scalar gate, summed over every "
            "element it scales"
        )


def op(x, h, gate):
    return TanhGate()(x, h, gate)


def inputs(rng):
    return [rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4)), np.array([0.4])]
