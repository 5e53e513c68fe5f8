"""Check analytic gradients against central differences, in float64.

The checked quantity is the objective Phi(x) = sum over outputs k of <g_k, f_k(x)>, with
g_k a *random* upstream gradient. A plain sum (g = 1) would be blind to a backward that
ignores its incoming gradient: the true gradient of sum(softmax(x)) or of
sum(layer_norm(x)) is zero, so a broken softmax backward returning zeros would pass.

Small inputs get the full check, one central difference per element, with step h:
    dPhi/dx_i ~ (Phi(x + h e_i) - Phi(x - h e_i)) / (2 h)
Large ones get random-direction checks, <grad, u> ~ (Phi(x + h u) - Phi(x - h u)) / (2 h),
plus central differences on a random sample of elements, so that a failure can still
name an element. An element passes when |analytic - numeric| <= atol + rtol * |numeric|.

`per_function=True` checks every Function that fn records, each on its own saved inputs
with its own random upstream gradient, and names the first whose backward is wrong.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import random
from .autograd import Function, Tensor, _topological_order, no_grad
from .backend import get_array_module, to_numpy

# Relative errors are taken against max(|analytic|, |numeric|, REL_FLOOR), so that a
# gradient that is zero up to rounding does not report a huge relative error.
REL_FLOOR = 1e-3


class GradcheckError(AssertionError):
    """The analytic gradient of some input disagrees with finite differences."""


class GradcheckWarning(UserWarning):
    """The check ran, but may be weaker than it looks (a scalar output, promoted inputs)."""


@dataclass
class InputCheck:
    """How one input's analytic gradient compared with the numeric one.

    `element` is the element (or "direction k") shown: the one with the largest error
    among those outside the tolerance, or the largest error overall when none is.
    `analytic`, `numeric` and `abs_error` are that element's own values.
    """

    index: int
    name: str
    shape: tuple[int, ...]
    mode: str  # "full" or "directions+sample"
    compared: int  # elements (and directions) compared
    outside: int  # how many of them were outside the tolerance
    max_abs_error: float
    max_rel_error: float
    element: tuple[int, ...] | str
    analytic: float
    numeric: float

    @property
    def passed(self) -> bool:
        return self.outside == 0

    @property
    def abs_error(self) -> float:
        return abs(self.analytic - self.numeric)

    def tolerance(self, atol: float, rtol: float) -> float:
        return atol + rtol * abs(self.numeric)


COLUMNS = ("input", "shape", "check", "largest error at", "analytic", "numeric",
           "abs error", "tolerance", "result")  # fmt: skip


@dataclass
class GradcheckReport:
    inputs: list[InputCheck]
    atol: float
    rtol: float
    step: float = 1e-6
    settings: dict = field(default_factory=dict)  # what the case fixed: mask, lengths, scale
    warnings: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)  # why it may have failed
    culprit: FunctionCheck | None = None  # the first Function whose own backward is wrong

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.inputs)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.inputs]

    @property
    def max_abs_error(self) -> float:
        return max((c.max_abs_error for c in self.inputs), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((c.max_rel_error for c in self.inputs), default=0.0)

    def rows(self) -> list[tuple[str, ...]]:
        """One row of COLUMNS per checked input."""
        return [
            (
                c.name,
                str(c.shape),
                f"{c.mode}, {c.compared}",
                str(c.element),
                f"{c.analytic:.10g}",
                f"{c.numeric:.10g}",
                f"{c.abs_error:.1e}",
                f"{c.tolerance(self.atol, self.rtol):.1e}",
                "pass" if c.passed else f"FAIL ({c.outside} outside)",
            )
            for c in self.inputs
        ]

    def verdict(self) -> str:
        rule = (
            f"|analytic - numeric| <= atol {self.atol:g} + rtol {self.rtol:g} * |numeric|; "
            f"central differences with step h = {self.step:g}, in float64"
        )
        if self.passed:
            return f"passed: every compared element within tolerance ({rule})"
        failed = ", ".join(f"{c.name} ({c.outside} of {c.compared})" for c in self.inputs
                           if not c.passed)  # fmt: skip
        return f"FAILED: outside tolerance in {failed} ({rule})"

    def __str__(self) -> str:
        lines = []
        if self.settings:
            lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()))
        lines += format_table(COLUMNS, self.rows())
        lines.append(self.verdict())
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"hint: {h}" for h in self.hints]
        if self.culprit is not None:
            lines.append(f"culprit: {self.culprit.describe()}")
        return "\n".join(lines)


@dataclass
class FunctionCheck:
    """One recorded Function, checked on its own saved inputs."""

    position: int  # in the order the forward recorded the Functions, from 0
    name: str
    backward_at: str  # path:line of its backward
    report: GradcheckReport

    def describe(self) -> str:
        inputs = ", ".join(f"{c.name} {c.shape}" for c in self.report.inputs)
        verdict = "its backward is wrong" if not self.report.passed else "passes"
        return f"#{self.position} {self.name}({inputs}), backward at {self.backward_at}: {verdict}"


@dataclass
class FunctionsReport:
    """Every Function of a graph, each checked on its own saved inputs (forward order)."""

    functions: list[FunctionCheck]

    @property
    def passed(self) -> bool:
        return all(f.report.passed for f in self.functions)

    @property
    def first_failure(self) -> FunctionCheck | None:
        return next((f for f in self.functions if not f.report.passed), None)

    def summary_rows(self) -> list[tuple[str, ...]]:
        """(Function, how many, largest abs error, failed) per Function class, by count."""
        first_seen = list(dict.fromkeys(f.name for f in self.functions))
        names = sorted(first_seen, key=lambda n: -sum(f.name == n for f in self.functions))
        rows = []
        for name in names:
            mine = [f for f in self.functions if f.name == name]
            worst = max(f.report.max_abs_error for f in mine)
            failed = sum(not f.report.passed for f in mine)
            rows.append((name, str(len(mine)), f"{worst:.1e}", str(failed)))
        return rows

    def __str__(self) -> str:
        lines = format_table(("Function", "checked", "max abs err", "failed"),
                             self.summary_rows())  # fmt: skip
        first = self.first_failure
        if first is None:
            lines.append(f"passed: all {len(self.functions)} Functions, each on its own inputs")
        else:
            lines.append(f"first Function whose backward is wrong: {first.describe()}")
            lines.append(str(first.report))
        return "\n".join(lines)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, each as wide as its widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def gradcheck(
    fn: Callable[..., Tensor | Sequence[Tensor]],
    inputs: Sequence,
    *,
    names: Sequence[str] | None = None,
    step: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-4,
    full_limit: int = 256,
    directions: int = 4,
    samples: int = 24,
    seed: int = 0,
    settings: dict | None = None,
    per_function: bool = False,
    raise_on_failure: bool = True,
) -> GradcheckReport | FunctionsReport:
    """Compare fn's analytic gradients with central differences, in float64.

    `inputs` are tensors or arrays; floating ones that require grad are checked (a
    floating array is treated as requiring grad). Each is copied to float64, so the
    caller's tensors are untouched (a GradcheckWarning says when that promoted one).
    Inputs are named by `names`, else by fn's parameters. `fn` must be deterministic
    (no dropout sampling). Inputs with at most `full_limit` elements get the full check.
    `settings` (the mask, lengths, scale a case fixed) are printed with the report.

    A failure names each input and element outside the tolerance; when fn records more
    than one Function, it also names the first Function whose own backward is wrong.
    With `per_function=True`, every recorded Function is checked on its own saved inputs
    and a FunctionsReport is returned.
    """
    names = _input_names(fn, len(inputs)) if names is None else list(names)
    if len(names) != len(inputs):
        raise ValueError(f"gradcheck: names has {len(names)} entries for {len(inputs)} inputs")
    leaves = [_as_float64_leaf(x) for x in inputs]
    checked = [i for i, t in enumerate(leaves) if t.requires_grad]
    if not checked:
        raise ValueError(
            "gradcheck: no input requires grad; pass floating tensors with requires_grad=True"
        )
    options = dict(step=step, atol=atol, rtol=rtol, full_limit=full_limit,
                   directions=directions, samples=samples, seed=seed)  # fmt: skip
    promoted = [n for n, x in zip(names, inputs, strict=True) if _promoted(x)]
    notes = []
    if promoted:
        notes.append(
            f"{', '.join(promoted)} promoted to float64 copies for the check; float32 "
            "central differences would be rounding noise (pass float64 inputs to silence this)"
        )
    if per_function:
        for note in notes:
            warnings.warn(f"gradcheck: {note}", GradcheckWarning, stacklevel=2)
        result = check_functions(_outputs(fn(*leaves)), **options)
        if raise_on_failure and not result.passed:
            raise GradcheckError(f"gradcheck failed:\n{result}")
        return result

    report = _check(fn, leaves, names, checked, **options)
    report.settings = dict(settings or {})
    outputs = _outputs(fn(*leaves))
    functions = _recorded_functions(outputs)
    if all(o.size == 1 for o in outputs) and len(functions) > 1:
        notes.append(
            "every output is a scalar made by several Functions, so the Functions inside "
            "get an upstream gradient that is one number times the reduction's, not a "
            "random one: a backward that ignores its upstream gradient can pass (the true "
            "gradient of sum(softmax(x)) is 0, the same as a broken backward's zeros). "
            "Check the op's own output, or pass per_function=True"
        )
    report.warnings = notes
    for note in notes:
        warnings.warn(f"gradcheck: {note}", GradcheckWarning, stacklevel=2)
    if not report.passed:
        report.hints = _precision_hints(report, functions, step)
        if len(functions) > 1:
            report.culprit = check_functions(outputs, **options).first_failure
    if raise_on_failure and not report.passed:
        raise GradcheckError(f"gradcheck failed:\n{report}")
    return report


def check_functions(outputs: Sequence[Tensor], **options) -> FunctionsReport:
    """Check every Function recorded behind `outputs`, each on its own saved inputs,
    in the order the forward recorded them. Options as for gradcheck."""
    state = random.get_state()
    checks = []
    for position, function in enumerate(_recorded_functions(outputs)):
        tensors = function.inputs
        if not any(t.requires_grad for t in tensors):
            continue

        def replay(*arrays, function=function):
            random.set_state(state)  # a Dropout draws the same mask at every evaluation
            return copy.copy(function)(*arrays)

        inputs = [Tensor(t.data, requires_grad=t.requires_grad) for t in tensors]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GradcheckWarning)  # a Sum to a scalar is the op
            report = _check(replay, [_as_float64_leaf(t) for t in inputs],
                            _input_names(function, len(inputs)),
                            [i for i, t in enumerate(inputs) if t.requires_grad],
                            **options)  # fmt: skip
        backward = type(function).backward
        checks.append(FunctionCheck(position, function.name, _location(backward), report))
    random.set_state(state)
    return FunctionsReport(checks)


def _check(fn, leaves, names, checked, *, step, atol, rtol, full_limit, directions, samples,
           seed) -> GradcheckReport:  # fmt: skip
    rng = np.random.default_rng(seed)
    outputs = _outputs(fn(*leaves))
    upstream = [_random_like(rng, o.data) for o in outputs]

    def objective() -> float:  # Phi(x) = sum_k <g_k, f_k(x)>
        with no_grad():
            outputs_now = _outputs(fn(*leaves))
            pairs = zip(upstream, outputs_now, strict=True)
            return sum(float((g * o.data).sum()) for g, o in pairs)

    for out, g in zip(outputs, upstream, strict=True):
        if out.requires_grad:
            out.backward(g, retain_graph=True)
    checks = []
    for i in checked:
        leaf = leaves[i]
        xp = get_array_module(leaf.data)
        analytic = leaf.grad if leaf.grad is not None else xp.zeros_like(leaf.data)
        leaf.grad = None
        compare = _Comparison(i, names[i], leaf, analytic, objective, step, atol, rtol)
        if leaf.size <= full_limit:
            compare.elements(list(np.ndindex(leaf.shape)))
            checks.append(compare.result("full"))
        else:
            flat = rng.choice(leaf.size, size=min(samples, leaf.size), replace=False)
            compare.elements([np.unravel_index(int(f), leaf.shape) for f in flat])
            compare.directions(rng, directions)
            checks.append(compare.result("directions+sample"))
    return GradcheckReport(checks, atol, rtol, step)


class _Comparison:
    """Analytic against numeric, element by element or along directions, for one input."""

    def __init__(self, index, name, leaf, analytic, objective, step, atol, rtol):
        self.index, self.name, self.leaf, self.objective = index, name, leaf, objective
        self.analytic = analytic
        self.step, self.atol, self.rtol = step, atol, rtol
        self.compared = self.outside = 0
        self.max_abs = self.max_rel = 0.0
        self.shown = None  # (outside?, abs error, where, analytic, numeric)

    def elements(self, elements) -> None:
        analytic = to_numpy(self.analytic)
        xp = get_array_module(self.leaf.data)
        for element in elements:
            element = tuple(int(i) for i in element)
            unit = xp.zeros_like(self.leaf.data)
            unit[element] = 1.0
            self._add(element, float(analytic[element]), self._numeric(unit))

    def directions(self, rng, count: int) -> None:
        xp = get_array_module(self.leaf.data)
        for k in range(count):
            direction = _random_like(rng, self.leaf.data)
            direction /= xp.linalg.norm(direction)
            value = float((self.analytic * direction).sum())
            self._add(f"direction {k}", value, self._numeric(direction))

    def _numeric(self, direction) -> float:
        """(Phi(x + h u) - Phi(x - h u)) / (2 h), restoring x afterwards."""
        data, h = self.leaf.data, self.step
        original = data.copy()
        data += h * direction
        plus = self.objective()
        data[...] = original - h * direction
        minus = self.objective()
        data[...] = original
        return (plus - minus) / (2 * h)

    def _add(self, where, analytic: float, numeric: float) -> None:
        abs_err = abs(analytic - numeric)
        outside = abs_err > self.atol + self.rtol * abs(numeric)
        self.compared += 1
        self.outside += outside
        self.max_abs = max(self.max_abs, abs_err)
        self.max_rel = max(self.max_rel, abs_err / max(abs(numeric), abs(analytic), REL_FLOOR))
        candidate = (outside, abs_err, where, analytic, numeric)
        if self.shown is None or candidate[:2] > self.shown[:2]:
            self.shown = candidate

    def result(self, mode: str) -> InputCheck:
        _, _, where, analytic, numeric = self.shown
        return InputCheck(
            self.index, self.name, tuple(self.leaf.shape), mode, self.compared, self.outside,
            self.max_abs, self.max_rel, where, analytic, numeric,
        )  # fmt: skip


def _precision_hints(report: GradcheckReport, functions, step: float) -> list[str]:
    """Why a correct op may still fail: float32 arithmetic inside fn."""
    low = sorted({f.name for f in functions
                  for _, dtype in f.output_specs if np.dtype(dtype).kind == "f"
                  and np.dtype(dtype) != np.float64})  # fmt: skip
    hints = []
    if low:
        hints.append(
            f"{', '.join(low)} computed below float64 inside fn; its rounding (~6e-8 relative "
            f"in float32) divided by 2 h = {2 * step:g} swamps the differences. Compute in "
            "float64, or check float32 arithmetic with step=1e-3 and atol=rtol=1e-2"
        )
    elif report.max_rel_error < 1e-2:
        hints.append(
            f"the largest relative error is only {report.max_rel_error:.1e}: rounding rather "
            "than a wrong formula? An op that casts to float32 inside fails like this; try "
            "float64 throughout, or a larger step and atol/rtol"
        )
    return hints


def _recorded_functions(outputs: Sequence[Tensor]) -> list[Function]:
    """Every Function behind the outputs, each after the Functions that made its inputs."""
    order, seen = [], set()
    for out in outputs:
        if out.creator is None:
            continue
        for function in _topological_order(out.creator):
            if id(function) not in seen:
                seen.add(id(function))
                order.append(function)
    return order[::-1]


def _input_names(fn, count: int) -> list[str]:
    """fn's positional parameter names (a Function's forward's), or 'input i'."""
    target = fn.forward if isinstance(fn, Function) else fn
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    names = []
    for p in parameters:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            names += [f"{p.name}[{i}]" for i in range(count - len(names))]
    names = names[:count]
    return names if len(names) == count else [f"input {i}" for i in range(count)]


def _location(function: Callable) -> str:
    """'path:line' of a function's def, relative to the working directory when inside it."""
    try:
        path = Path(inspect.getsourcefile(function)).resolve()
        line = inspect.getsourcelines(function)[1]
    except (TypeError, OSError):
        return "<unknown>"
    if path.is_relative_to(Path.cwd()):
        path = path.relative_to(Path.cwd())
    return f"{path}:{line}"


def _promoted(x) -> bool:
    data = x.data if isinstance(x, Tensor) else x
    dtype = getattr(data, "dtype", None)
    wants_grad = x.requires_grad if isinstance(x, Tensor) else True
    return dtype is not None and dtype.kind == "f" and dtype != np.float64 and wants_grad


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
