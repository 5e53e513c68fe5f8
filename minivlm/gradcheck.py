"""Check analytic gradients against central finite differences, in float64.

The checked quantity is L(x) = sum over outputs of <g, f(x)>, with g a *random*
upstream gradient. A plain sum (g = 1) would be blind to a backward that ignores its
incoming gradient: the true gradient of sum(softmax(x)) or of sum(layer_norm(x)) is
zero, so a broken softmax backward returning zeros would pass.

Small inputs get the full check, one central difference per element:
    dL/dx_i ~ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)
Large ones get random-direction checks, <grad, u> ~ (L(x + eps u) - L(x - eps u)) / (2 eps),
plus central differences on a random sample of elements, so that a failure can still
name an element.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .autograd import Tensor, no_grad
from .backend import get_array_module, to_numpy

# Relative errors are taken against max(|analytic|, |numeric|, REL_FLOOR), so that a
# gradient that is zero up to rounding does not report a huge relative error.
REL_FLOOR = 1e-3


class GradcheckError(AssertionError):
    """The analytic gradient of some input disagrees with finite differences."""


@dataclass
class InputCheck:
    """How one input's analytic gradient compared with the numeric one."""

    index: int
    shape: tuple[int, ...]
    mode: str  # "full" or "directions+sample"
    max_abs_error: float
    max_rel_error: float
    worst_element: tuple[int, ...] | str
    analytic: float
    numeric: float
    passed: bool

    def describe(self, atol: float, rtol: float) -> str:
        return (
            f"input {self.index} (shape {self.shape}, {self.mode} check): worst at "
            f"{self.worst_element}: analytic {self.analytic:.10g}, numeric {self.numeric:.10g}, "
            f"abs error {self.max_abs_error:.3e}, rel error {self.max_rel_error:.3e} "
            f"(tolerance atol {atol:g} + rtol {rtol:g} * |numeric|)"
        )


@dataclass
class GradcheckReport:
    inputs: list[InputCheck]
    atol: float
    rtol: float

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.inputs)

    @property
    def max_abs_error(self) -> float:
        return max((c.max_abs_error for c in self.inputs), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((c.max_rel_error for c in self.inputs), default=0.0)

    def __str__(self) -> str:
        return "\n".join(c.describe(self.atol, self.rtol) for c in self.inputs)


def gradcheck(
    fn: Callable[..., Tensor | Sequence[Tensor]],
    inputs: Sequence,
    *,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-4,
    full_limit: int = 256,
    directions: int = 4,
    samples: int = 24,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> GradcheckReport:
    """Compare fn's analytic gradients with central differences, in float64.

    `inputs` are tensors or arrays; floating ones that require grad are checked (a
    floating array is treated as requiring grad). Each is copied to float64, so the
    caller's tensors are untouched. `fn` must be deterministic (no dropout sampling).
    Inputs with at most `full_limit` elements get the full check.
    """
    rng = np.random.default_rng(seed)
    leaves = [_as_float64_leaf(x) for x in inputs]
    checked = [i for i, t in enumerate(leaves) if t.requires_grad]
    if not checked:
        raise ValueError(
            "gradcheck: no input requires grad; pass floating tensors with requires_grad=True"
        )

    outputs = _outputs(fn(*leaves))
    upstream = [_random_like(rng, o.data) for o in outputs]

    def objective() -> float:  # L(x) = sum_k <g_k, f_k(x)>
        with no_grad():
            outputs_now = _outputs(fn(*leaves))
            pairs = zip(upstream, outputs_now, strict=False)
            return sum(float((g * o.data).sum()) for g, o in pairs)

    for out, g in zip(outputs, upstream, strict=False):
        if out.requires_grad:
            out.backward(g, retain_graph=True)
    checks = []
    for i in checked:
        leaf = leaves[i]
        analytic = (
            leaf.grad
            if leaf.grad is not None
            else get_array_module(leaf.data).zeros_like(leaf.data)
        )
        if leaf.size <= full_limit:
            elements = list(np.ndindex(leaf.shape))
            checks.append(
                _compare_elements(i, leaf, analytic, elements, objective, eps, atol, rtol, "full")
            )
        else:
            checks.append(
                _compare_large(
                    i, leaf, analytic, objective, rng, eps, atol, rtol, directions, samples
                )
            )
    report = GradcheckReport(checks, atol, rtol)
    if raise_on_failure and not report.passed:
        failed = "\n".join(c.describe(atol, rtol) for c in checks if not c.passed)
        raise GradcheckError(f"gradcheck failed:\n{failed}")
    return report


def _as_float64_leaf(x) -> Tensor:
    data = x.data if isinstance(x, Tensor) else x
    xp = get_array_module(data)
    data = xp.asarray(data)
    if data.dtype.kind != "f":
        return Tensor(data)
    wants_grad = x.requires_grad if isinstance(x, Tensor) else True
    return Tensor(data.astype(np.float64, copy=True), requires_grad=wants_grad)


def _outputs(result) -> list[Tensor]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _random_like(rng, array):
    xp = get_array_module(array)
    return xp.asarray(rng.standard_normal(array.shape))


def _central_difference(leaf: Tensor, direction, objective, eps: float) -> float:
    """(L(x + eps u) - L(x - eps u)) / (2 eps), restoring x afterwards."""
    original = leaf.data.copy()
    leaf.data += eps * direction
    plus = objective()
    leaf.data[...] = original - eps * direction
    minus = objective()
    leaf.data[...] = original
    return (plus - minus) / (2 * eps)


def _compare_elements(
    index, leaf, analytic, elements, objective, eps, atol, rtol, mode
) -> InputCheck:
    analytic_host = to_numpy(analytic)
    xp = get_array_module(leaf.data)
    worst = None  # (excess over tolerance, element, analytic, numeric)
    max_abs = max_rel = 0.0
    for element in elements:
        unit = xp.zeros_like(leaf.data)
        unit[element] = 1.0
        numeric = _central_difference(leaf, unit, objective, eps)
        value = float(analytic_host[element])
        abs_err = abs(value - numeric)
        rel_err = abs_err / max(abs(numeric), abs(value), REL_FLOOR)
        max_abs, max_rel = max(max_abs, abs_err), max(max_rel, rel_err)
        excess = abs_err - (atol + rtol * abs(numeric))
        if worst is None or excess > worst[0]:
            worst = (excess, element, value, numeric)
    excess, element, value, numeric = worst
    return InputCheck(
        index, leaf.shape, mode, max_abs, max_rel, element, value, numeric, excess <= 0
    )


def _compare_large(
    index, leaf, analytic, objective, rng, eps, atol, rtol, directions, samples
) -> InputCheck:
    xp = get_array_module(leaf.data)
    # A sample of single elements names a culprit; directions cover every element at once.
    flat = rng.choice(leaf.size, size=min(samples, leaf.size), replace=False)
    elements = [np.unravel_index(int(i), leaf.shape) for i in flat]
    check = _compare_elements(
        index, leaf, analytic, elements, objective, eps, atol, rtol, "directions+sample"
    )
    for k in range(directions):
        direction = _random_like(rng, leaf.data)
        direction /= xp.linalg.norm(direction)
        numeric = _central_difference(leaf, direction, objective, eps)
        value = float((analytic * direction).sum())
        abs_err = abs(value - numeric)
        rel_err = abs_err / max(abs(numeric), abs(value), REL_FLOOR)
        check.max_abs_error = max(check.max_abs_error, abs_err)
        check.max_rel_error = max(check.max_rel_error, rel_err)
        if abs_err > atol + rtol * abs(numeric) and check.passed:
            check.passed = False
            check.worst_element = f"random direction {k}"
            check.analytic, check.numeric = value, numeric
    return check
