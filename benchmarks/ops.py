"""`minivlm bench ops`: single ops on our engine vs the same math in plain NumPy vs PyTorch.

Each op runs three ways on the CPU, at sizes the models use:

    engine   minivlm.F.<op> on Tensors, then backward(): the autograd engine
    numpy    the same forward and backward written inline with NumPy arrays, no Tensor,
             no graph: the difference to "engine" is the engine's overhead
    torch    torch.nn.functional.<op> and torch's autograd (when PyTorch is installed)

Every way is checked against the inline NumPy math run in float64 before it is timed.

    python -m benchmarks.ops [--repeats 20] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from . import timing
from .attention import relative_error, set_torch_threads
from .machine import blas_threads, describe, keep_freed_memory, machine_facts
from .report import command_line, log_to_stderr, others_share, run_module, status_text, write_json

FRAMEWORKS = ("engine", "numpy", "torch")
DEFAULT_OUT = Path(__file__).resolve().parent / "out"
TOLERANCE = 1e-4  # relative error in float32 against the float64 NumPy math


# -- the ops, each written three ways -------------------------------------------------
# A case makes its inputs (the last one is the upstream gradient) and computes
# (output,) with backward=False, or (output, *input gradients) with backward=True.


class LinearCase:
    """y = x W^T + b;  dx = dy W, dW = dy^T x, db = sum_rows dy."""

    op = "linear"

    def __init__(self, rows: int, features_in: int, features_out: int):
        self.rows, self.features_in, self.features_out = rows, features_in, features_out
        self.size = f"x ({rows}, {features_in}) -> ({rows}, {features_out})"

    def inputs(self, rng, dtype):
        x = rng.standard_normal((self.rows, self.features_in))
        weight = rng.standard_normal((self.features_out, self.features_in)) / np.sqrt(
            self.features_in
        )
        bias = rng.standard_normal(self.features_out)
        d_y = rng.standard_normal((self.rows, self.features_out))
        return tuple(a.astype(dtype) for a in (x, weight, bias, d_y))

    def numpy(self, x, weight, bias, d_y, backward):
        y = x @ weight.T + bias  # (N, out)
        if not backward:
            return (y,)
        return y, d_y @ weight, d_y.T @ x, d_y.sum(axis=0)

    def engine(self, x, weight, bias, d_y, backward):
        from minivlm import F

        return _engine_run(lambda x, w, b: F.linear(x, w, b), (x, weight, bias), d_y, backward)

    def torch(self, x, weight, bias, d_y, backward):
        import torch.nn.functional as torch_f

        return _torch_run(torch_f.linear, (x, weight, bias), d_y, backward)


class LayerNormCase:
    """y = xhat w + b, xhat = (x - mean) rstd; dx in three terms (see normalization.py)."""

    op = "layer_norm"
    eps = 1e-5

    def __init__(self, rows: int, features: int):
        self.rows, self.features = rows, features
        self.size = f"x ({rows}, {features})"

    def inputs(self, rng, dtype):
        x = rng.standard_normal((self.rows, self.features)) * 2.0 + 0.5
        weight = 1.0 + 0.1 * rng.standard_normal(self.features)
        bias = 0.1 * rng.standard_normal(self.features)
        d_y = rng.standard_normal((self.rows, self.features))
        return tuple(a.astype(dtype) for a in (x, weight, bias, d_y))

    def numpy(self, x, weight, bias, d_y, backward):
        mean = x.mean(axis=-1, keepdims=True)  # (N, 1)
        centred = x - mean  # (N, C)
        rstd = 1.0 / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + self.eps)
        x_hat = centred * rstd  # (N, C)
        y = x_hat * weight + bias
        if not backward:
            return (y,)
        d_x_hat = d_y * weight
        d_x = rstd * (
            d_x_hat
            - d_x_hat.mean(axis=-1, keepdims=True)
            - x_hat * (d_x_hat * x_hat).mean(axis=-1, keepdims=True)
        )
        return y, d_x, (d_y * x_hat).sum(axis=0), d_y.sum(axis=0)

    def engine(self, x, weight, bias, d_y, backward):
        from minivlm import F

        def layer_norm(x, w, b):
            return F.layer_norm(x, (self.features,), w, b, eps=self.eps)

        return _engine_run(layer_norm, (x, weight, bias), d_y, backward)

    def torch(self, x, weight, bias, d_y, backward):
        import torch.nn.functional as torch_f

        def layer_norm(x, w, b):
            return torch_f.layer_norm(x, (self.features,), w, b, eps=self.eps)

        return _torch_run(layer_norm, (x, weight, bias), d_y, backward)


class SoftmaxCase:
    """p = softmax(x) over the last axis;  dx = p (dy - sum(dy p))."""

    op = "softmax"

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape
        self.size = f"x {shape}"

    def inputs(self, rng, dtype):
        return tuple(rng.standard_normal(self.shape).astype(dtype) for _ in range(2))

    def numpy(self, x, d_y, backward):
        exp = np.exp(x - x.max(axis=-1, keepdims=True))
        probs = exp / exp.sum(axis=-1, keepdims=True)
        if not backward:
            return (probs,)
        return probs, probs * (d_y - (d_y * probs).sum(axis=-1, keepdims=True))

    def engine(self, x, d_y, backward):
        from minivlm import F

        return _engine_run(lambda x: F.softmax(x, dim=-1), (x,), d_y, backward)

    def torch(self, x, d_y, backward):
        import torch

        return _torch_run(lambda x: torch.softmax(x, dim=-1), (x,), d_y, backward)


class CrossEntropyCase:
    """loss = mean_i (lse_i - z_i[t_i]);  dz = (softmax(z) - onehot(t)) / N."""

    op = "cross_entropy"

    def __init__(self, rows: int, vocab: int):
        self.rows, self.vocab = rows, vocab
        self.size = f"logits ({rows}, {vocab})"

    def inputs(self, rng, dtype):
        logits = (3.0 * rng.standard_normal((self.rows, self.vocab))).astype(dtype)
        targets = rng.integers(0, self.vocab, self.rows)
        return logits, targets, np.asarray(1.0, dtype)

    def numpy(self, logits, targets, d_loss, backward):
        row_max = logits.max(axis=1, keepdims=True)
        exp = np.exp(logits - row_max)  # (N, V)
        total = exp.sum(axis=1, keepdims=True)
        lse = np.log(total) + row_max  # (N, 1)
        rows = np.arange(self.rows)
        loss = (lse[:, 0] - logits[rows, targets]).mean()
        if not backward:
            return (loss,)
        d_logits = exp / total  # softmax
        d_logits[rows, targets] -= 1
        d_logits *= d_loss / self.rows
        return loss, d_logits

    def engine(self, logits, targets, d_loss, backward):
        from minivlm import F

        def loss(z):
            return F.cross_entropy(z, targets)

        return _engine_run(loss, (logits,), d_loss, backward)

    def torch(self, logits, targets, d_loss, backward):
        import torch.nn.functional as torch_f

        def loss(z):
            return torch_f.cross_entropy(z, targets)

        return _torch_run(loss, (logits,), d_loss, backward)


def _engine_run(op, arrays, d_y, backward):
    from minivlm import Tensor, no_grad

    if not backward:
        with no_grad():
            return (op(*(Tensor(a) for a in arrays)).data,)
    leaves = [Tensor(a, requires_grad=True) for a in arrays]
    y = op(*leaves)
    y.backward(d_y)
    return (y.data, *(leaf.grad for leaf in leaves))


def _torch_run(op, tensors, d_y, backward):
    import torch

    if not backward:
        with torch.no_grad():
            return (op(*tensors),)
    leaves = [t.detach().requires_grad_() for t in tensors]
    y = op(*leaves)
    y.backward(d_y)
    return (y.detach(), *(leaf.grad for leaf in leaves))


def default_cases(quick: bool = False) -> list:
    """Two sizes per op: the reference model (batch 16 x 32 tokens, d 128) and the demo
    model (batch 64: 64 image patches or 24 text tokens a sample, d 128)."""
    if quick:
        return [
            LinearCase(64, 32, 64),
            LayerNormCase(64, 32),
            SoftmaxCase((4, 2, 16, 16)),
            CrossEntropyCase(64, 32),
        ]
    return [
        LinearCase(16 * 32, 128, 512),  # reference MLP up-projection
        LinearCase(64 * 64, 128, 384),  # demo vision q, k, v projection
        LayerNormCase(16 * 32, 128),
        LayerNormCase(64 * 64, 128),
        SoftmaxCase((16, 4, 32, 32)),  # reference text self-attention probabilities
        SoftmaxCase((64, 4, 64, 64)),  # demo vision self-attention probabilities
        CrossEntropyCase(16 * 32, 128),
        CrossEntropyCase(64 * 24, 512),
    ]


# -- frameworks ----------------------------------------------------------------------


class Framework:
    """Runs a case's method of its own name on arrays it loaded."""

    def __init__(self, name: str):
        self.name = name

    def why_unavailable(self) -> str | None:
        if self.name != "torch":
            return None
        try:
            import torch  # noqa: F401
        except ImportError:
            return "PyTorch is not installed"
        return None

    def load(self, arrays):
        if self.name != "torch":
            return arrays
        import torch

        return tuple(torch.as_tensor(a) for a in arrays)  # shares the NumPy buffers

    def run(self, case, inputs, backward: bool):
        return getattr(case, self.name)(*inputs, backward=backward)

    def to_numpy(self, array) -> np.ndarray:
        return array.detach().numpy() if self.name == "torch" else np.asarray(array)


@dataclass
class OpsConfig:
    repeats: int = 20
    warmup: int = 3
    input_sets: int = 3
    dtype: str = "float32"
    frameworks: tuple[str, ...] = FRAMEWORKS
    settle_seconds: float = 0.2  # idle before each timed phase (see timing.measure)
    retries: int = 2  # measure again while other processes took more than ...
    max_others_share: float = 0.1  # ... this share of the machine's CPU time
    seed: int = 0

    def __post_init__(self):
        for name in ("repeats", "input_sets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        for name in self.frameworks:
            if name not in FRAMEWORKS:
                raise ValueError(f"frameworks: {name!r} is not one of {FRAMEWORKS}")


QUICK = {"repeats": 3, "warmup": 1, "input_sets": 2}


def _row(case, framework: Framework, **fields) -> dict:
    row = {
        "op": case.op, "size": case.size, "framework": framework.name, "status": "ok",
        "reason": None, "check": None, "forward": None, "forward_backward": None,
    }  # fmt: skip
    row.update(fields)
    return row


def benchmark_case(case, framework: Framework, input_sets, reference, config: OpsConfig) -> dict:
    """Check one op on one framework against the float64 math, then time it."""
    tolerance = TOLERANCE if config.dtype == "float32" else 1e-10
    try:
        inputs = [framework.load(arrays) for arrays in input_sets]
        got = framework.run(case, inputs[0], backward=True)
        names = ["out"] + [f"d_input{i}" for i in range(len(got) - 1)]
        errors = {
            name: relative_error(framework.to_numpy(g), np.asarray(want, np.float64))
            for name, g, want in zip(names, got, reference, strict=True)
        }
        check = {"checked_on": "the whole op", "tolerance": tolerance, "relative_errors": errors}
        worst = max(errors, key=errors.get)
        if not errors[worst] <= tolerance:
            reason = f"{worst}: relative error {errors[worst]:.2e} > tolerance {tolerance:.0e}"
            return _row(case, framework, status="wrong", reason=reason, check=check)
        stats = {}
        for phase, backward in (("forward", False), ("forward_backward", True)):

            def run(i, backward=backward):
                return framework.run(case, inputs[i % len(inputs)], backward=backward)

            stats[phase] = timing.measure(run, **timing.settings(config)).to_json()
    except Exception as err:  # report it and go on with the other ops
        return _row(case, framework, status="error", reason=f"{type(err).__name__}: {err}")
    return _row(case, framework, check=check, **stats)


def run_ops_benchmark(
    config: OpsConfig,
    cases: Sequence | None = None,
    frameworks: Sequence[Framework] | None = None,
    *,
    command: str = "(python API)",
    quick: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Every case on every framework; the report as a JSON-ready dict."""
    machine = machine_facts(command)
    cases = default_cases(quick) if cases is None else list(cases)
    frameworks = (
        [Framework(name) for name in config.frameworks] if frameworks is None else list(frameworks)
    )
    threads = {"blas": blas_threads()}
    threads["torch"] = (
        set_torch_threads(threads["blas"]) if any(f.name == "torch" for f in frameworks) else None
    )
    unavailable = {f.name: f.why_unavailable() for f in frameworks}
    rng = np.random.default_rng(config.seed)
    rows = []
    for case in cases:
        input_sets = [case.inputs(rng, config.dtype) for _ in range(config.input_sets)]
        wide = tuple(a.astype(np.float64) if a.dtype.kind == "f" else a for a in input_sets[0])
        reference = case.numpy(*wide, backward=True)
        for framework in frameworks:
            if unavailable[framework.name] is not None:
                reason = f"not available: {unavailable[framework.name]}"
                rows.append(_row(case, framework, status="unavailable", reason=reason))
                continue
            rows.append(benchmark_case(case, framework, input_sets, reference, config))
            log(_progress_line(rows[-1]))
        gc.collect()
    return {
        "benchmark": "ops",
        "schema_version": 1,
        "machine": machine,
        "config": {**asdict(config), "quick": quick},
        "threads": threads,
        "results": rows,
        "ratios": ops_ratios(rows),
    }


def ops_ratios(rows: list[dict]) -> list[dict]:
    """Per op and size: time(engine) / time(numpy) and time(engine) / time(torch)."""
    ok = {(r["op"], r["size"], r["framework"]): r for r in rows if r["status"] == "ok"}
    ratios = []
    for op, size in dict.fromkeys((r["op"], r["size"]) for r in rows):
        engine = ok.get((op, size, "engine"))
        if engine is None:
            continue
        entry = {"op": op, "size": size}
        for other in ("numpy", "torch"):
            row = ok.get((op, size, other))
            entry[f"engine_over_{other}"] = None if row is None else {
                phase: engine[phase]["median"] / row[phase]["median"]
                for phase in ("forward", "forward_backward")
            }  # fmt: skip
        ratios.append(entry)
    return ratios


def _progress_line(row: dict) -> str:
    head = f"{row['op']:<14} {row['size']:<32} {row['framework']:<7}"
    if row["status"] != "ok":
        return f"{head} {status_text(row)}"
    return f"{head} fwd+bwd {_us(row['forward_backward']['median'])} us"


def format_ops_table(report: dict) -> str:
    config = report["config"]
    lines = [
        describe(report["machine"]),
        f"ops {config['dtype']}, times in microseconds: median [p10, p90] of "
        f"{config['repeats']} after {config['warmup']} warm-up; "
        f"BLAS threads {report['threads']['blas']}, torch threads {report['threads']['torch']}",
        "",
    ]
    header = (
        f"{'op':<14} {'size':<32} {'framework':<9} {'fwd us':>8} {'[p10, p90]':>15} "
        f"{'fwd+bwd us':>10} {'[p10, p90]':>15} {'max rel err':>11} {'others%':>7}"
    )
    lines += [header, "-" * len(header)]
    for row in report["results"]:
        head = f"{row['op']:<14} {row['size']:<32} {row['framework']:<9}"
        if row["status"] != "ok":
            lines.append(f"{head} {status_text(row)}")
            continue
        error = max(row["check"]["relative_errors"].values())
        lines.append(
            f"{head} {_us(row['forward']['median']):>8} {_spread(row['forward']):>15} "
            f"{_us(row['forward_backward']['median']):>10} "
            f"{_spread(row['forward_backward']):>15} {error:>11.1e} "
            f"{timing.format_percent(others_share(row)):>7}"
        )
    lines += [
        "",
        "ratios (time engine / time other: the engine's overhead over plain NumPy, and vs torch)",
    ]
    columns = f"{'/numpy fwd':>10} {'fwd+bwd':>8} {'/torch fwd':>10} {'fwd+bwd':>8}"
    lines.append(f"{'op':<14} {'size':<32} {columns}")
    for entry in report["ratios"]:
        cells = []
        for other in ("numpy", "torch"):
            ratio = entry[f"engine_over_{other}"]
            cells.append(
                f"{'-':>10} {'-':>8}" if ratio is None
                else f"{ratio['forward']:>10.2f} {ratio['forward_backward']:>8.2f}"
            )  # fmt: skip
        lines.append(f"{entry['op']:<14} {entry['size']:<32} {' '.join(cells)}")
    return "\n".join(lines)


def _us(seconds: float) -> str:
    return f"{1e6 * seconds:.0f}"


def _spread(stats: dict) -> str:
    return f"[{_us(stats['p10'])}, {_us(stats['p90'])}]"


# -- command line --------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = OpsConfig()
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"timed runs (default {defaults.repeats})"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help=f"untimed runs first (default {defaults.warmup})"
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default=defaults.dtype)
    parser.add_argument(
        "--framework", nargs="+", choices=FRAMEWORKS, default=None, help="run only these"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats")
    parser.add_argument("--json", type=Path, default=DEFAULT_OUT / "ops.json", help="report file")
    parser.set_defaults(handler=run_from_args, command_prefix="python -m benchmarks.ops")


def run_from_args(args: argparse.Namespace) -> int:
    keep_freed_memory()  # as `minivlm` does for every command
    config = replace(OpsConfig(), **(QUICK if args.quick else {}), dtype=args.dtype)
    overrides = {"repeats": args.repeats, "warmup": args.warmup}
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if args.framework:
        config = replace(config, frameworks=tuple(args.framework))
    report = run_ops_benchmark(
        config, command=command_line(args), quick=args.quick, log=log_to_stderr
    )
    print(format_ops_table(report))
    print(f"\nJSON: {write_json(report, args.json)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_module("ops", __doc__, add_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
