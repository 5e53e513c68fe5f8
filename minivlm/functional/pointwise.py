"""Pointwise math: exp, log, sqrt, tanh, relu, gelu. Each y_i depends on x_i alone,
so every backward is dy * f'(x), written with whatever the forward already computed."""

from __future__ import annotations

import math

from ..autograd import Function, Tensor
from ..backend import get_array_module, is_cupy
from ..kernels_cpu.threads import split_rows


class Exp(Function):
    def forward(self, x):
        y = get_array_module(x).exp(x)
        self.save(y)
        return y

    def backward(self, dy):
        (y,) = self.saved
        return dy * y  # d exp(x) = exp(x)


class Log(Function):
    def forward(self, x):
        self.save(x)
        return get_array_module(x).log(x)

    def backward(self, dy):
        (x,) = self.saved
        return dy / x


class Sqrt(Function):
    def forward(self, x):
        y = get_array_module(x).sqrt(x)
        self.save(y)
        return y

    def backward(self, dy):
        (y,) = self.saved
        return dy / (2 * y)  # d sqrt(x) = 1 / (2 sqrt(x))


class Tanh(Function):
    def forward(self, x):
        y = get_array_module(x).tanh(x)
        self.save(y)
        return y

    def backward(self, dy):
        (y,) = self.saved
        return dy * (1 - y * y)


class ReLU(Function):
    """y = x * [x > 0]. Elementwise, so cores may each take a run of rows (split_rows)."""

    def forward(self, x):
        xp = get_array_module(x)
        positive, y = xp.empty(x.shape, bool), xp.empty_like(x)

        def rows(part):
            xp.greater(x[part], 0, out=positive[part])
            xp.multiply(x[part], positive[part], out=y[part])

        split_rows(rows, x, passes=3)
        self.save(positive)
        return y

    def backward(self, dy):
        (positive,) = self.saved
        xp = get_array_module(dy)
        dx = xp.empty_like(dy)

        def rows(part):  # the subgradient at 0 is taken as 0, as PyTorch does
            xp.multiply(dy[part], positive[part], out=dx[part])

        split_rows(rows, dy, passes=2)
        return dx


class GELU(Function):
    """Exact GELU, y = x * Phi(x) with Phi the standard normal CDF (PyTorch's default),
    or the tanh approximation with approximate="tanh"."""

    def __init__(self, approximate: str = "none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        xp = get_array_module(x)
        if self.approximate == "tanh":
            # Phi(x) ~ (1 + tanh(u)) / 2 with u = sqrt(2/pi) (x + 0.044715 x^3)
            u = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
            cdf = 0.5 * (1 + xp.tanh(u))
        else:
            cdf = 0.5 * (1 + _erf(xp, x / math.sqrt(2)))
        self.save(x, cdf)
        return x * cdf

    def backward(self, dy):
        x, cdf = self.saved
        xp = get_array_module(x)
        if self.approximate == "tanh":
            # d/dx [x (1 + tanh u) / 2] = cdf + x/2 (1 - tanh^2 u) du/dx
            tanh_u = 2 * cdf - 1
            du_dx = math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x * x)
            return dy * (cdf + 0.5 * x * (1 - tanh_u * tanh_u) * du_dx)
        # d/dx [x Phi(x)] = Phi(x) + x phi(x), phi the normal density
        pdf = xp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return dy * (cdf + x * pdf)


def _erf(xp, z):
    """erf elementwise: CuPy has it in cupyx.scipy.special; NumPy needs its own."""
    if is_cupy(xp):
        from cupyx.scipy.special import erf

        return erf(z)
    return _erf_numpy(z)


def _erf_numpy(z):
    """erf(z) to ~1e-15: the Taylor series for |z| < 2, a continued fraction beyond.

    NumPy has no erf; math.erf through np.vectorize is slow, so this evaluates both
    pieces with array ops, in the input's dtype.
    """
    import numpy as np

    a = np.abs(z)
    out = np.empty_like(z)
    small = a < 2.0
    zs = z[small]
    # erf(z) = 2/sqrt(pi) sum_n (-1)^n z^(2n+1) / (n! (2n+1))
    term = zs.copy()
    total = zs.copy()
    z2 = zs * zs
    for n in range(1, 40):
        term = term * (-z2) / n
        total += term / (2 * n + 1)
    out[small] = total * (2 / math.sqrt(math.pi))
    zl = a[~small]
    # erfc(z) = exp(-z^2)/sqrt(pi) * 1/(z + 1/2/(z + 1/(z + 3/2/(z + ...)))) for z >= 2
    frac = zl
    for k in range(60, 0, -1):
        frac = zl + (k / 2) / frac
    erfc = np.exp(-zl * zl) / math.sqrt(math.pi) / frac
    out[~small] = np.sign(z[~small]) * (1 - erfc)
    return out


def exp(x: Tensor) -> Tensor:
    return Exp()(x)


def log(x: Tensor) -> Tensor:
    return Log()(x)


def sqrt(x: Tensor) -> Tensor:
    return Sqrt()(x)


def tanh(x: Tensor) -> Tensor:
    return Tanh()(x)


def relu(x: Tensor) -> Tensor:
    return ReLU()(x)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    return GELU(approximate)(x)
