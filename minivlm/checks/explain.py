"""`minivlm explain OP`: an op's forward and backward formulas, where its code is, and its
gradient check with analytic and numeric gradients side by side.

OP is a case of `minivlm gradcheck` (the table in op_cases.py: `attention`, `layer_norm`,
`cross_entropy_smooth_sum`, ...) or a minivlm.F function (`scaled_dot_product_attention`:
its first case). The check runs that case's small float64 inputs on the CPU. Its
objective is Phi(x) = sum_k <g_k, f_k(x)> with a random upstream gradient g, as in
`minivlm.gradcheck`; the numeric gradient of an element is the central difference
(Phi(x + h e_i) - Phi(x - h e_i)) / (2 h).

`--trace` prints one tiny case's forward and backward with every intermediate named as
in docs/backprop (checks/trace.py); `--graph FILE` draws the Function graph of the case's
forward (checks/graph.py).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..autograd import Function, Tensor, no_grad
from ..gradcheck import _input_names, format_table
from .graph import write_graph
from .op_cases import CASES, OpCase, calls
from .trace import TRACES

REPO_ROOT = Path(__file__).resolve().parents[2]
STEP = 1e-6  # h, the finite-difference step


@dataclass(frozen=True)
class Formulas:
    """What one Function computes, forward and backward, in the code's names."""

    title: str
    forward: tuple[str, ...]
    backward: tuple[str, ...]
    page: str | None = None  # its derivation, a file in docs/backprop/


def _unbroadcast_note(*lines: str) -> tuple[str, ...]:
    return (*lines, "each summed over the axes its input was broadcast along (unbroadcast)")


FORMULAS: dict[str, Formulas] = {
    "Add": Formulas("elementwise a + b", ("y = a + b",), _unbroadcast_note("da = dy,  db = dy")),
    "Sub": Formulas("elementwise a - b", ("y = a - b",), _unbroadcast_note("da = dy,  db = -dy")),
    "Mul": Formulas(
        "elementwise a * b", ("y = a * b",), _unbroadcast_note("da = dy * b,  db = dy * a")
    ),
    "Div": Formulas(
        "elementwise a / b", ("y = a / b",), _unbroadcast_note("da = dy / b,  db = -dy * a / b^2")
    ),
    "Neg": Formulas("negation", ("y = -a",), ("da = -dy",)),
    "Pow": Formulas("power by a constant", ("y = a^p, p a number",), ("da = dy * p * a^(p - 1)",)),
    "Exp": Formulas("exponential", ("y = e^x",), ("dx = dy * y",)),
    "Log": Formulas("natural logarithm", ("y = log x",), ("dx = dy / x",)),
    "Sqrt": Formulas("square root", ("y = sqrt(x)",), ("dx = dy / (2 y)",)),
    "Tanh": Formulas("hyperbolic tangent", ("y = tanh x",), ("dx = dy * (1 - y^2)",)),
    "ReLU": Formulas("rectifier", ("y = x * [x > 0]",), ("dx = dy * [x > 0]",)),
    "GELU": Formulas(
        "Gaussian error linear unit",
        (
            "y = x * cdf,  cdf = Phi(x) (exact)",
            "     or cdf = (1 + tanh u) / 2,  u = sqrt(2/pi) (x + 0.044715 x^3)",
        ),
        (
            "dx = dy * (cdf + x * phi(x)),  phi the normal density (exact)",
            "dx = dy * (cdf + x/2 (1 - tanh^2 u) du/dx) (tanh)",
        ),
    ),
    "Sum": Formulas(
        "sum over axes", ("y = sum_i x_i over the axes",), ("dx = dy, broadcast back over them",)
    ),
    "Mean": Formulas(
        "mean over axes",
        ("y = (1/n) sum_i x_i over the axes",),
        ("dx = dy / n, broadcast back over them",),
    ),
    "Max": Formulas(
        "maximum over axes",
        ("y = max_i x_i over the axes",),
        ("dx = dy where x equals the max (shared equally among ties), 0 elsewhere",),
    ),
    "Reshape": Formulas(
        "reshape", ("y = x viewed with a new shape",), ("dx = dy reshaped to x's shape",)
    ),
    "Permute": Formulas(
        "axis permutation", ("y = x with its axes permuted",), ("dx = dy, inverse permutation",)
    ),
    "GetItem": Formulas(
        "indexing",
        ("y = x[index]",),
        ("dx = zeros, dy scatter-added at index (repeated indices add up)",),
    ),
    "Concat": Formulas(
        "concatenation",
        ("y = [x_1, ..., x_n] along an axis",),
        ("dx_i = the slice of dy where x_i went",),
    ),
    "Stack": Formulas(
        "stacking",
        ("y = x_1, ..., x_n stacked along a new axis",),
        ("dx_i = dy at position i of that axis",),
    ),
    "MatMul": Formulas(
        "matrix product",
        ("y = a @ b    a (..., n, k), b (..., k, m), y (..., n, m)",),
        _unbroadcast_note("da = dy @ b^T,  db = a^T @ dy"),
        "linear_and_matmul.md",
    ),
    "Linear": Formulas(
        "affine map",
        ("y = x W^T + b    x2 (N, in), weight (out, in), b (out,)",),
        ("dx = dy2 @ weight,  dweight = dy2^T @ x2,  db = sum_n dy2",),
        "linear_and_matmul.md",
    ),
    "Embedding": Formulas(
        "embedding lookup",
        ("y[n] = weight[ids[n]]    weight (V, D)",),
        ("dweight[v] = sum of dy[n] over the n with ids[n] = v (scatter-add); ids: none",),
        "embedding.md",
    ),
    "Dropout": Formulas(
        "inverted dropout",
        ("y = x * scaled_mask,  scaled_mask = keep / (1 - p),  keep ~ Bernoulli(1 - p)",),
        ("dx = dy * scaled_mask (the saved one)",),
    ),
    "LayerNorm": Formulas(
        "layer normalisation over the last axis",
        (
            "mean = (1/C) sum_k x_k,  xc = x - mean,  var = (1/C) sum_k xc_k^2",
            "rstd = 1 / sqrt(var + eps),  xhat = xc * rstd,  y = xhat * w + b",
        ),
        (
            "dxhat = dy * w",
            "dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))",
            "     1: direct   2: through mean   3: through rstd",
            "dw = sum_rows dy * xhat,  db = sum_rows dy",
        ),
        "layer_norm.md",
    ),
    "Softmax": Formulas(
        "softmax along one axis",
        ("y_j = e^{x_j} / sum_k e^{x_k}  (shifted by the max first)",),
        ("dx = y * (dy - sum_j dy_j y_j)",),
        "softmax.md",
    ),
    "LogSoftmax": Formulas(
        "log-softmax along one axis",
        ("y_j = x_j - log sum_k e^{x_k}",),
        ("dx = dy - e^y * sum_j dy_j    (e^y = softmax(x))",),
        "softmax.md",
    ),
    "Attention": Formulas(
        "scaled dot-product attention, naive path (keeps probs)",
        (
            "scores = scale * q k^T    (B, H, Lq, Lk), masked entries -inf",
            "probs = softmax(scores) over keys (a fully-masked row gives 0)",
            "out = probs v    (B, H, Lq, d)",
        ),
        (
            "d_v = probs^T d_out,  d_probs = d_out v^T",
            "d_scores = probs * (d_probs - rowsum(d_probs * probs))",
            "d_q = scale * d_scores k,  d_k = scale * d_scores^T q",
        ),
        "attention.md",
    ),
    "FusedAttention": Formulas(
        "scaled dot-product attention, blocked online softmax (keeps out and lse)",
        (
            "each row starts from m = -inf, l = 0, acc = 0",
            "per key block: m' = max(m, rowmax S),  l = l e^{m - m'} + rowsum e^{S - m'}",
            "               acc = acc e^{m - m'} + e^{S - m'} v",
            "out = acc / l,  lse = m + log l    (a row with no key: out 0, lse -inf)",
        ),
        (
            "D = d_dot_o = rowsum(d_out * out)    (= rowsum(P * dP); one per query row)",
            "per tile: P = exp(scale q k^T - lse), 0 where masked;  dv += P^T d_out",
            "          dS = P * (d_out v^T - d_dot_o)",
            "          dq += scale dS k,  dk += scale dS^T q",
        ),
        "attention.md",
    ),
    "CrossEntropy": Formulas(
        "softmax cross-entropy with label smoothing alpha",
        (
            "loss_i = (1 - alpha)(lse_i - z_i[t_i]) + alpha (lse_i - mean_j z_ij)",
            "lse_i = log sum_j e^{z_ij};  ignored rows: 0;  mean over the counted rows",
        ),
        (
            "d_logits = d_rows * (softmax(z) - (1 - alpha) onehot(t) - alpha / V),",
            "    0 on ignored rows",
        ),
        "cross_entropy.md",
    ),
}


@dataclass(frozen=True)
class ElementComparison:
    """One element of one input: its value and both gradients of the objective."""

    input_name: str
    element: tuple[int, ...]
    value: float
    analytic: float
    numeric: float


def find_case(op_name: str) -> OpCase:
    """The gradcheck case called `op_name`, else the first case of the minivlm.F function
    `op_name`, or a LookupError listing the known names."""
    for case in CASES:
        if case.name == op_name:
            return case
    for case in CASES:
        if calls(case, op_name):
            return case
    known = ", ".join(sorted({case.name for case in CASES} | {case.op for case in CASES}))
    raise LookupError(f"unknown op {op_name!r}; expected one of: {known}")


def function_class(name: str) -> type[Function]:
    """The Function subclass of minivlm.functional whose class name is `name`."""
    pending = list(Function.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls.__name__ == name and cls.__module__.startswith("minivlm.functional."):
            return cls
        pending.extend(cls.__subclasses__())
    raise LookupError(f"no Function named {name!r} in minivlm.functional")


def source_location(function: Callable) -> str:
    """'path:line' of a function's `def`, the path relative to the repository."""
    path = Path(inspect.getsourcefile(function)).resolve()
    line = inspect.getsourcelines(function)[1]
    if path.is_relative_to(REPO_ROOT):
        path = path.relative_to(REPO_ROOT)
    return f"{path}:{line}"


def compare_elements(case: OpCase, per_input: int, seed: int = 0) -> list[ElementComparison]:
    """Analytic vs central-difference gradients on `per_input` random elements of each input."""
    rng = np.random.default_rng(seed)
    fn, inputs, _ = case.build(rng, "cpu")
    names = _input_names(fn, len(inputs))
    outputs = _as_list(fn(*inputs))
    upstream = [rng.standard_normal(out.shape) for out in outputs]  # g_k

    def objective() -> float:  # Phi(x) = sum_k <g_k, f_k(x)>
        with no_grad():
            return sum(
                float((g * out.data).sum())
                for g, out in zip(upstream, _as_list(fn(*inputs)), strict=True)
            )

    for out, g in zip(outputs, upstream, strict=True):
        if out.requires_grad:
            out.backward(g, retain_graph=True)
    rows = []
    for index, leaf in enumerate(inputs):
        if not (isinstance(leaf, Tensor) and leaf.requires_grad):
            continue
        grad = leaf.grad if leaf.grad is not None else np.zeros_like(leaf.data)
        for flat in sorted(rng.choice(leaf.size, size=min(per_input, leaf.size), replace=False)):
            element = tuple(int(i) for i in np.unravel_index(flat, leaf.shape))
            numeric = _central_difference(leaf, element, objective)
            rows.append(
                ElementComparison(
                    names[index], element, float(leaf.data[element]), float(grad[element]), numeric
                )
            )
    return rows


def _as_list(result) -> list[Tensor]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _central_difference(leaf: Tensor, element: tuple[int, ...], objective) -> float:
    """(Phi(x + h e_i) - Phi(x - h e_i)) / (2 h), leaving x as it was."""
    original = float(leaf.data[element])
    leaf.data[element] = original + STEP
    plus = objective()
    leaf.data[element] = original - STEP
    minus = objective()
    leaf.data[element] = original
    return (plus - minus) / (2 * STEP)


def explain(
    op_name: str, elements: int = 4, trace: bool = False, graph: str | Path | None = None
) -> int:
    """Print the op's formulas, code locations and gradient check (with `trace`, one tiny
    case traced step by step instead; with `graph`, also draw its forward's Function
    graph there); 0 if the check passes, 1 if it fails, 2 for an unknown op, an op
    without a trace, or a bad `elements`."""
    try:
        case = find_case(op_name)
    except LookupError as err:
        print(f"minivlm explain: {err}", file=sys.stderr)
        return 2
    if isinstance(elements, bool) or not isinstance(elements, int) or elements < 1:
        print(
            f"minivlm explain: elements must be a positive integer, got {elements!r}",
            file=sys.stderr,
        )
        return 2
    traced = next((TRACES[name] for name in case.covers if name in TRACES), None)
    if trace and traced is None:
        have = sorted({c.op for c in CASES if set(c.covers) & set(TRACES)})
        print(f"minivlm explain: no --trace for {op_name!r}; traced ops: {', '.join(have)}",
              file=sys.stderr)  # fmt: skip
        return 2
    if case.name != op_name:
        print(f"{op_name}: explaining its case {case.name!r}\n")
    for name in case.covers:
        _print_function(name)
    if graph is not None:
        print(f"\nFunction graph of the forward: {draw_case_graph(case, graph)}")
    if trace:
        print()
        return 0 if traced() else 1
    _print_comparison(compare_elements(case, elements))
    report = case.run("cpu")
    print(f"\nevery element (minivlm.gradcheck of case {case.name!r}):")
    print("\n".join(f"  {line}" for line in str(report).splitlines()))
    print(f"result: {'pass' if report.passed else 'FAIL'}")
    related = [c.name for c in CASES if c is not case and set(c.covers) & set(case.covers)]
    if related:
        print(f"the same Function in other cases: {', '.join(related)}")
    return 0 if report.passed else 1


def draw_case_graph(case: OpCase, path: str | Path) -> Path:
    """Draw the Function graph of the case's forward (PNG, or dot text for .dot) at path."""
    fn, inputs, _ = case.build(np.random.default_rng(0), "cpu")
    names = _input_names(fn, len(inputs))
    outputs = fn(*inputs)
    outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
    leaf_names = {id(t): n for t, n in zip(inputs, names, strict=True) if isinstance(t, Tensor)}
    return write_graph(outputs, leaf_names, path)


def _print_function(name: str) -> None:
    formulas = FORMULAS[name]
    cls = function_class(name)
    print(f"{name}: {formulas.title}\n\nforward")
    print("\n".join(f"  {line}" for line in formulas.forward))
    print("backward")
    print("\n".join(f"  {line}" for line in formulas.backward))
    print("code")
    for method in ("forward", "backward"):
        print(f"  {name}.{method:<9} {source_location(getattr(cls, method))}")
    if formulas.page is not None:
        print(f"derivation\n  docs/backprop/{formulas.page}")


def _print_comparison(rows: list[ElementComparison]) -> None:
    print(
        "\nanalytic vs numeric: Phi = sum <g, f(x)> with a random upstream gradient g, "
        f"central differences with step h = {STEP:g}"
    )
    header = ("input", "element", "x", "analytic", "numeric", "abs error")
    cells = [
        (
            row.input_name,
            str(row.element),
            f"{row.value:.5g}",
            f"{row.analytic:.12g}",
            f"{row.numeric:.12g}",
            f"{abs(row.analytic - row.numeric):.1e}",
        )
        for row in rows
    ]
    print("\n".join(f"  {line}" for line in format_table(header, cells)))


def add_explain_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `explain` on the `minivlm` sub-parsers; its handler returns explain()'s code."""
    parser = subparsers.add_parser(
        "explain", help="an op's formulas, its code, and analytic vs numeric gradients"
    )
    parser.add_argument(
        "op",
        help="a case of `minivlm gradcheck` (attention, layer_norm, ...) or a minivlm.F "
        "function (scaled_dot_product_attention)",
    )
    parser.add_argument("--elements", type=int, default=4, help="elements shown per input")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="one tiny case's forward and backward, every intermediate named as in the docs "
        "(attention, layer_norm, softmax, cross_entropy)",
    )
    parser.add_argument(
        "--graph",
        type=Path,
        metavar="FILE",
        help="also draw the Function graph of the case's forward: a PNG, or dot text for .dot",
    )
    parser.set_defaults(
        handler=lambda args: explain(args.op, args.elements, args.trace, args.graph)
    )
