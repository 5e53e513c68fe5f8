"""A tour of minivlm.gradcheck: a correct backward passes, a broken one is caught.

What it teaches: how a finite-difference gradient check works, what its report says,
and why it must use a random upstream gradient.

1. gradcheck on layer_norm: every element of x, w and b is perturbed by +-eps and the
   change of L = <g, y> is compared with the analytic gradient. It passes.
2. A LayerNorm whose backward forgets the path through rstd (term 3 of
   docs/backprop/layer_norm.md, a classic bug): gradcheck fails, and its report names
   the input, the worst element, and the analytic and numeric values there.
3. A Softmax whose backward ignores its incoming gradient and returns zeros. A check of
   sum(softmax(x)) is fooled, because that sum is 1 for every x and its true gradient
   is zero; gradcheck's random upstream gradient is not, and gradcheck warns when you
   hand it a scalar output.
4. The same broken Softmax inside a composite, tanh(linear(softmax(x), w)): the report
   names x, and its culprit line names the Function whose own backward is wrong
   (per_function=True checks every recorded Function on its own saved inputs).

    python examples/gradcheck_tour.py
"""

from __future__ import annotations

import warnings

import numpy as np

import minivlm
from minivlm import F
from minivlm.backend import get_array_module
from minivlm.functional.normalization import LayerNorm
from minivlm.functional.softmax import Softmax

EPS = 1e-5  # layer norm's epsilon


class LayerNormWithoutRstdTerm(LayerNorm):
    """LayerNorm whose backward treats rstd as a constant: term 3 is missing."""

    def backward(self, dy):  # dy (R, C)
        xhat, rstd, weight = self.saved
        dxhat = dy * weight  # (R, C)
        dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True))  # 1 and 2, but no 3
        return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


class SoftmaxIgnoringDy(Softmax):
    """Softmax whose backward returns zeros whatever gradient comes in."""

    def backward(self, dy):
        return get_array_module(dy).zeros_like(dy)


def layer_norm_rows(x, w, b):  # x (R, C) -> (R, C), the correct op
    return F.layer_norm(x, x.shape[-1], w, b, eps=EPS)


def broken_layer_norm_rows(x, w, b):
    return LayerNormWithoutRstdTerm(EPS, has_weight=True, has_bias=True)(x, w, b)


def sum_check(function, x: np.ndarray, eps: float = 1e-6) -> float:
    """The naive check: backward of sum(function(x)) vs central differences of that sum.
    Returns the largest disagreement."""
    leaf = minivlm.tensor(x, requires_grad=True, dtype=np.float64)
    F.sum(function(leaf)).backward()
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        with minivlm.no_grad():
            plus = F.sum(function(minivlm.tensor(x + step, dtype=np.float64))).item()
            minus = F.sum(function(minivlm.tensor(x - step, dtype=np.float64))).item()
        numeric[i] = (plus - minus) / (2 * eps)
    return float(np.abs(leaf.grad - numeric).max())


def main() -> None:
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((4, 6)), rng.standard_normal(6), rng.standard_normal(6)

    print("1. gradcheck(layer_norm, [x (4, 6), w (6,), b (6,)])")
    report = minivlm.gradcheck(layer_norm_rows, [x, w, b])
    print(f"{report}\n-> passed: {report.passed}\n")

    print("2. the same check on a LayerNorm whose backward drops the term through rstd")
    report = minivlm.gradcheck(broken_layer_norm_rows, [x, w, b], raise_on_failure=False)
    print(f"{report}\n-> passed: {report.passed}")
    blamed = [check.name for check in report.inputs if not check.passed]
    print(f"-> blamed: {', '.join(blamed)} (dw and db come from xhat, which is still right)\n")

    print("3. a Softmax whose backward ignores dy and returns zeros")

    def broken_softmax(t):
        return SoftmaxIgnoringDy(-1)(t)

    logits = rng.standard_normal((3, 5))
    fooled = sum_check(broken_softmax, logits)
    print(f"   check of sum(softmax(x)): largest disagreement {fooled:.1e} -> passes (fooled)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        minivlm.gradcheck(lambda t: F.sum(broken_softmax(t)), [logits])
    print(f"   gradcheck of that sum passes too, but warns: {caught[0].message}")
    report = minivlm.gradcheck(broken_softmax, [logits], raise_on_failure=False)
    print(f"   gradcheck of softmax(x) itself, random upstream gradient:\n{report}")
    print(f"-> passed: {report.passed}\n")

    print("4. the broken Softmax inside tanh(linear(softmax(x), w))")

    def composite(x, w):
        return F.tanh(F.linear(broken_softmax(x), w))

    weights = rng.standard_normal((4, 5))
    report = minivlm.gradcheck(composite, [logits, weights], raise_on_failure=False)
    print(f"{report}\n-> culprit: {report.culprit.name}")


if __name__ == "__main__":
    main()
