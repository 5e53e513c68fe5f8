"""`minivlm bench ops`: single ops on our engine vs the same math in plain NumPy vs PyTorch.

Each op runs three ways on the CPU, at the sizes the reference and demo models use:

    engine   minivlm.F.<op> on Tensors, then backward(): the autograd engine
    numpy    the forward and backward written out below on NumPy arrays, no Tensor and
             no graph: the difference to "engine" is the engine's overhead
    torch    torch.nn.functional.<op> and torch's autograd (when PyTorch is installed)

Every way is checked against the NumPy math run in float64 before it is timed.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np

from . import harness

WAYS = ("engine", "numpy", "torch")
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}
TIMED = ("forward", "forward_backward")
EPS = 1e-5  # layer norm
DEFAULTS = {"repeats": 20, "warmup": 3, "input_sets": 3, "framework": list(WAYS)}
QUICK = {"repeats": 3, "warmup": 1, "input_sets": 2}

# -- the math, forward and backward: (output,) or (output, *input gradients) -------------


def linear_math(x, weight, bias, d_y, backward):
    y = x @ weight.T + bias  # (N, out)
    return (y, d_y @ weight, d_y.T @ x, d_y.sum(axis=0)) if backward else (y,)


def layer_norm_math(x, weight, bias, d_y, backward):
    centred = x - x.mean(axis=-1, keepdims=True)  # (N, C)
    rstd = 1.0 / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + EPS)  # (N, 1)
    x_hat = centred * rstd
    if not backward:
        return (x_hat * weight + bias,)
    d_x_hat = d_y * weight
    # x_hat = (x - mean) rstd: a direct term, one through the mean, one through rstd
    d_x = rstd * (
        d_x_hat
        - d_x_hat.mean(axis=-1, keepdims=True)
        - x_hat * (d_x_hat * x_hat).mean(axis=-1, keepdims=True)
    )
    return x_hat * weight + bias, d_x, (d_y * x_hat).sum(axis=0), d_y.sum(axis=0)


def softmax_math(x, d_y, backward):
    exp = np.exp(x - x.max(axis=-1, keepdims=True))
    probs = exp / exp.sum(axis=-1, keepdims=True)
    if not backward:
        return (probs,)
    return probs, probs * (d_y - (d_y * probs).sum(axis=-1, keepdims=True))  # p (dy - <dy, p>)


def cross_entropy_math(logits, targets, d_loss, backward):
    """loss = mean_i (lse_i - z_i[t_i]);  dz = (softmax(z) - onehot(t)) / N."""
    rows = np.arange(len(targets))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))  # (N, V)
    probs = exp / exp.sum(axis=1, keepdims=True)
    loss = -np.log(probs[rows, targets]).mean()
    if not backward:
        return (loss,)
    probs[rows, targets] -= 1
    return loss, probs * (d_loss / len(targets))


# op: (its math, its gradients' names)
OPS = {
    "linear": (linear_math, ("dx", "dW", "db")),
    "layer_norm": (layer_norm_math, ("dx", "dw", "db")),
    "softmax": (softmax_math, ("dx",)),
    "cross_entropy": (cross_entropy_math, ("dlogits",)),
}


def op_function(way: str, op: str):
    """The op as a function of Tensors (engine) or torch tensors (torch)."""
    if way == "engine":
        from .. import F as functional
    else:
        import torch.nn.functional as functional
    return {
        "linear": functional.linear,
        "layer_norm": lambda x, w, b: functional.layer_norm(x, (x.shape[-1],), w, b, eps=EPS),
        "softmax": lambda x: functional.softmax(x, dim=-1),
        "cross_entropy": functional.cross_entropy,
    }[op]


def make_inputs(op: str, shape: tuple, rng, dtype: str) -> tuple:
    """The op's inputs, the upstream gradient last; integer targets stay integers."""
    normal = rng.standard_normal
    if op == "cross_entropy":
        rows, vocab = shape
        targets = rng.integers(0, vocab, rows)
        return (3 * normal(shape)).astype(dtype), targets, np.asarray(1.0, dtype)
    if op == "linear":
        rows, n_in, n_out = shape
        weight = normal((n_out, n_in)) / np.sqrt(n_in)
        arrays = normal((rows, n_in)), weight, normal(n_out), normal((rows, n_out))
    elif op == "layer_norm":
        features = shape[1]
        arrays = 2 * normal(shape) + 0.5, 1 + 0.1 * normal(features), 0.1 * normal(features)
        arrays += (normal(shape),)
    else:
        arrays = normal(shape), normal(shape)
    return tuple(a.astype(dtype) for a in arrays)


def run(way: str, op: str, arrays: tuple, backward: bool) -> tuple:
    """(output,) or (output, *gradients of the floating inputs), computed `way`."""
    *inputs, d_y = arrays
    if way == "numpy":
        return OPS[op][0](*arrays, backward=backward)
    if way == "engine":
        from .. import Tensor

        leaves = [Tensor(a, requires_grad=backward) if a.dtype.kind == "f" else a for a in inputs]
        y = op_function(way, op)(*leaves)
        if not backward:
            return (y.data,)
        y.backward(d_y)
        return (y.data, *(leaf.grad for leaf in leaves if isinstance(leaf, Tensor)))
    leaves = [a.detach().requires_grad_(backward and a.is_floating_point()) for a in inputs]
    y = op_function(way, op)(*leaves)
    if not backward:
        return (y.detach(),)
    y.backward(d_y)
    return (y.detach(), *(leaf.grad for leaf in leaves if leaf.requires_grad))


def checked_results(way: str, op: str, arrays: tuple, names: tuple) -> dict:
    """{name: array} of the output and gradients, for the check."""
    got = run(way, op, arrays, backward=True)
    return {key: np.asarray(value) for key, value in zip(names, got, strict=True)}


def rotating(way: str, op: str, input_sets: list, backward: bool, index: int) -> tuple:
    """The timed call: input set `index` mod their number."""
    return run(way, op, input_sets[index % len(input_sets)], backward)


def cases(quick: bool) -> list[tuple[str, tuple]]:
    """Two sizes an op: the reference model's (batch 16 x 32 tokens, d 128) and the demo
    model's (batch 64: 64 patches or 24 tokens a sample, d 128)."""
    if quick:
        shapes = (64, 32, 64), (64, 32), (4, 2, 16, 16), (64, 32)
        return list(zip(OPS, shapes, strict=True))
    return [
        ("linear", (16 * 32, 128, 512)),  # reference MLP up-projection
        ("linear", (64 * 64, 128, 384)),  # demo vision q, k, v projection
        ("layer_norm", (16 * 32, 128)),
        ("layer_norm", (64 * 64, 128)),
        ("softmax", (16, 4, 32, 32)),  # reference text self-attention probabilities
        ("softmax", (64, 4, 64, 64)),  # demo vision self-attention probabilities
        ("cross_entropy", (16 * 32, 128)),
        ("cross_entropy", (64 * 24, 512)),
    ]


def run_ops_benchmark(args: argparse.Namespace, log=harness.log) -> dict:
    """Every op at every size, each way checked, then timed: the report."""
    machine = harness.machine_facts()
    unavailable = {"torch": harness.why_no_torch()}
    rng = np.random.default_rng(args.seed)
    results = []
    for op, shape in cases(args.quick):
        input_sets = [make_inputs(op, shape, rng, args.dtype) for _ in range(args.input_sets)]
        wide = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in input_sets[0]]
        names = ("out", *OPS[op][1])
        reference = dict(zip(names, OPS[op][0](*wide, backward=True), strict=True))
        candidates = {}
        for way in (way for way in args.framework if unavailable.get(way) is None):
            loaded = input_sets
            if way == "torch":
                import torch

                loaded = [tuple(map(torch.as_tensor, arrays)) for arrays in input_sets]
            runs = {
                phase: partial(rotating, way, op, loaded, phase != "forward") for phase in TIMED
            }
            checked = partial(checked_results, way, op, loaded[0], names)
            candidates[way] = harness.Candidate(checked, runs, pool=way.replace("engine", "numpy"))
        tolerance = TOLERANCE[args.dtype]
        rows = harness.check_then_time(candidates, reference, tolerance, args.repeats, args.warmup)
        for way in args.framework:
            result = rows.get(way) or harness.row(way, "unavailable", unavailable[way])
            results.append({**dict.fromkeys(TIMED), **result, "op": op, "size": str(shape)})
            log(f"{op} {shape} {way}: {result['status']}")
    ratios = harness.ratios(results, PAIRS, CASE, TIMED)
    return {"benchmark": "ops", "machine": machine, "config": harness.settings(args),
            "results": results, "ratios": ratios}  # fmt: skip


PAIRS = [("engine", "numpy"), ("engine", "torch")]
CASE = ("op", "size")


def format_ops_table(report: dict) -> str:
    config = report["config"]
    columns = {
        "fwd us": lambda r: harness.spread(r["forward"], 1e6, 0),
        "fwd+bwd us": lambda r: harness.spread(r["forward_backward"], 1e6, 0),
        "max rel err": lambda r: f"{max(r['check']['relative_errors'].values()):.1e}",
    }

    def label(r):
        return f"{r['op']} {r['size']} {r['implementation']}"

    return "\n".join([
        harness.describe(report["machine"]),
        f"ops {config['dtype']}; microseconds: median [p10, p90] of {config['repeats']} "
        f"rounds per block (thread pools in 3 alternating blocks), after "
        f"{config['warmup']} warm-up", "",
        harness.results_table(report["results"], ("op size way", label), columns), "",
        "times of the engine over plain NumPy (its overhead) and over PyTorch",
        harness.ratios_table(report["ratios"], CASE, TIMED),
    ])  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--repeats", type=harness.positive, help="timed rounds (20; --quick 3)")
    add("--warmup", type=int, help="untimed rounds first (3; --quick 1)")
    add("--input-sets", type=harness.positive, help="input sets, rotated between rounds (3)")
    add("--dtype", choices=tuple(TOLERANCE), default="float32")
    add("--framework", nargs="+", choices=WAYS, help="only these ways")
    add("--seed", type=int, default=0)
    add("--quick", action="store_true", help="tiny sizes, 3 rounds")
    add("--json", type=Path, default=Path("benchmarks/out/ops.json"), help="the report")
    parser.set_defaults(handler=run_from_args)


def options(argv: list[str]) -> argparse.Namespace:
    return harness.options("ops", add_arguments, argv, DEFAULTS, QUICK)


def run_from_args(args: argparse.Namespace) -> int:
    report = run_ops_benchmark(harness.with_defaults(args, DEFAULTS, QUICK))
    print(format_ops_table(report))
    print(f"\nJSON: {harness.write_report(report, args.json, TIMED)}")
    return 1 if any(r["status"] in ("wrong", "error") for r in report["results"]) else 0
