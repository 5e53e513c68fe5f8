"""`minivlm bench attention`: time every attention implementation, after checking it.

For each query length N (keys: N, or --key-length), every implementation that this
machine has runs the same problem, q (B, H, N, d), k and v (B, H, Lk, d):

    numpy-naive   our engine, impl="naive" (scores and probabilities materialised)
    numpy-fused   our engine, impl="fused" (the blocked CPU kernel, kernels_cpu)
    cupy-naive    our engine on CUDA tensors, impl="naive" (cuBLAS matmuls + softmax)
    cupy-fused    our engine on CUDA tensors, impl="fused" (kernels_cuda)
    torch-cpu     torch.nn.functional.scaled_dot_product_attention on the CPU
    torch-cuda    the same on the GPU

Each one is first checked against a float64 NumPy reference written here (output and
the three gradients, for an upstream gradient dO); a wrong one is reported, not timed.
Then forward and forward+backward are timed over rotating input sets after a warm-up.

FLOPs follow the FlashAttention papers: forward 4 B H Lq Lk d (two matmuls of
2 B H Lq Lk d each), halved when causal; backward 2.5 x forward, so forward+backward
is 3.5 x forward. "% peak" divides the achieved rate by a large matmul's rate on the
same device, in the same dtype, measured in the same run.

    python -m benchmarks.attention [--sizes 256 512 1024 2048] [--quick] [--json PATH] ...
"""

from __future__ import annotations

import argparse
import gc
import importlib
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from . import timing
from .machine import blas_threads, describe, keep_freed_memory, machine_facts
from .plot import Panel, save_figure
from .report import command_line, log_to_stderr, others_share, run_module, status_text, write_json

IMPLEMENTATIONS = (
    "numpy-naive",
    "numpy-fused",
    "cupy-naive",
    "cupy-fused",
    "torch-cpu",
    "torch-cuda",
)
DEFAULT_OUT = Path(__file__).resolve().parent / "out"
# Relative error (max |got - want| / max |want|) above which an implementation is WRONG.
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}
GEMM_SIZE = {"cpu": 2048, "cuda": 8192}


@dataclass
class AttentionConfig:
    """One sweep: the shapes, what to run and how often."""

    sizes: tuple[int, ...] = (256, 512, 1024, 2048)  # query lengths N
    batch: int = 4
    heads: int = 4
    head_dim: int = 64
    causal: bool = True
    key_length: int | None = None  # Lk; None: Lk = N (self-attention)
    dtype: str = "float32"
    devices: tuple[str, ...] = ("cpu", "cuda")
    implementations: tuple[str, ...] = IMPLEMENTATIONS
    repeats: int = 7
    warmup: int = 2
    input_sets: int = 3  # distinct (q, k, v, dO) sets, rotated between repeats
    settle_seconds: float = 0.2  # idle before each timed phase (see timing.measure)
    retries: int = 2  # measure again while other processes took more than ...
    max_others_share: float = 0.1  # ... this share of the machine's CPU time
    # the float64 reference checks at most this many bytes of (heads, Lq, Lk) arrays
    reference_bytes: int = 512 * 2**20
    seed: int = 0

    def __post_init__(self):
        _check_positive(self, ("batch", "heads", "head_dim", "repeats", "input_sets"))
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if not self.sizes or any(n < 1 for n in self.sizes):
            raise ValueError(f"sizes must be positive query lengths, got {self.sizes}")
        if self.key_length is not None and self.key_length < 1:
            raise ValueError(f"key_length must be a positive int or None, got {self.key_length}")
        if self.dtype not in TOLERANCE:
            raise ValueError(f"dtype must be one of {tuple(TOLERANCE)}, got {self.dtype!r}")
        for device in self.devices:
            if device not in ("cpu", "cuda"):
                raise ValueError(f"devices must hold 'cpu' and/or 'cuda', got {self.devices}")
        for name in self.implementations:
            if name not in IMPLEMENTATIONS:
                raise ValueError(f"implementations: {name!r} is not one of {IMPLEMENTATIONS}")


QUICK = {"sizes": (64, 128, 256), "repeats": 3, "warmup": 1, "input_sets": 2}


def _check_positive(config, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class Problem:
    """The shapes of one timed problem."""

    batch: int
    heads: int
    len_q: int
    len_k: int
    head_dim: int
    causal: bool
    dtype: str

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    def forward_flops(self) -> float:
        """4 B H Lq Lk d, halved when causal (the FlashAttention convention)."""
        flops = 4.0 * self.batch * self.heads * self.len_q * self.len_k * self.head_dim
        return flops / 2 if self.causal else flops

    def forward_backward_flops(self) -> float:
        return 3.5 * self.forward_flops()  # backward = 2.5 x forward


# -- the float64 reference -----------------------------------------------------------


def reference_attention(q, k, v, d_out, *, scale: float, causal: bool):
    """out, dq, dk, dv in float64, every score materialised; the oracle for the checks.

    Query i sees key j iff j <= i + (Lk - Lq) when causal (bottom-right alignment); a
    row that sees no key has output 0 and gradient 0.
    """
    q, k, v, d_out = (np.asarray(a, dtype=np.float64) for a in (q, k, v, d_out))
    len_q, len_k = q.shape[2], k.shape[2]
    scores = scale * (q @ k.swapaxes(-1, -2))  # S (B, H, Lq, Lk)
    if causal:
        allowed = np.arange(len_k)[None, :] <= np.arange(len_q)[:, None] + (len_k - len_q)
        scores = np.where(allowed, scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)  # (B, H, Lq, 1)
    exp_scores = np.exp(scores - np.where(np.isfinite(row_max), row_max, 0.0))
    total = exp_scores.sum(axis=-1, keepdims=True)
    probs = exp_scores / np.where(total > 0, total, 1.0)  # P (B, H, Lq, Lk)
    out = probs @ v  # O = P V
    d_v = probs.swapaxes(-1, -2) @ d_out  # dV = P^T dO
    d_probs = d_out @ v.swapaxes(-1, -2)  # dP = dO V^T
    d_scores = probs * (d_probs - (d_probs * probs).sum(axis=-1, keepdims=True))
    d_q = scale * (d_scores @ k)  # S = scale Q K^T
    d_k = scale * (d_scores.swapaxes(-1, -2) @ q)
    return out, d_q, d_k, d_v


def reference_slice(problem: Problem, limit_bytes: int) -> tuple[tuple[slice, slice], str]:
    """The (batch, head) index the float64 reference can afford, and how to say it.

    The reference holds about four (heads, Lq, Lk) float64 arrays at once. Heads are
    independent, so checking a slice of them checks those heads' outputs exactly.
    """
    per_head = 4 * 8 * problem.len_q * problem.len_k
    affordable = max(1, limit_bytes // per_head)
    total = problem.batch * problem.heads
    if affordable >= total:
        return (slice(None), slice(None)), f"all {total} heads"
    if affordable >= problem.heads:
        items = affordable // problem.heads
        which = "batch item 0" if items == 1 else f"batch items 0..{items - 1}"
        text = f"{which} of {problem.batch} ({items * problem.heads} of {total} heads)"
        return (slice(0, items), slice(None)), text
    heads = min(affordable, problem.heads)
    text = f"batch item 0, heads 0..{heads - 1} ({heads} of {total} heads)"
    return (slice(0, 1), slice(0, heads)), text


# -- implementations -----------------------------------------------------------------


class AttentionImplementation:
    """One way to compute attention. Subclasses give it a name, a device and the
    methods below; `why_unavailable` says why it cannot run here (None: it can)."""

    name = "abstract"
    device = "cpu"
    clock: Callable = staticmethod(timing.cpu_clock)

    def why_unavailable(self) -> str | None:
        return None

    def load(self, arrays: Sequence[np.ndarray]):
        """q, k, v, d_out as this implementation's arrays (done once, not timed)."""
        raise NotImplementedError

    def forward(self, problem: Problem, inputs):
        """out, without recording anything for a backward."""
        raise NotImplementedError

    def forward_backward(self, problem: Problem, inputs):
        """(out, dq, dk, dv) for the upstream gradient d_out."""
        raise NotImplementedError

    def to_numpy(self, array) -> np.ndarray:
        return np.asarray(array)

    def peak_memory(self, fn: Callable[[], object]) -> dict:
        return timing.cpu_peak_memory(fn)

    def release(self) -> None:
        """Give cached device memory back between implementations."""


class EngineAttention(AttentionImplementation):
    """minivlm's scaled_dot_product_attention, impl='naive' or 'fused', on NumPy or CuPy."""

    def __init__(self, impl: str, device: str):
        self.impl, self.device = impl, device
        self.name = f"{'numpy' if device == 'cpu' else 'cupy'}-{impl}"
        if device == "cuda":
            self.clock = timing.cupy_clock

    def why_unavailable(self) -> str | None:
        if self.device == "cpu":
            return None
        from minivlm.backend import DeviceError, require_cuda

        try:
            require_cuda()
        except DeviceError as err:
            return str(err)
        if self.impl == "fused":
            try:
                importlib.import_module("minivlm.kernels_cuda.attention")
            except Exception as err:  # a missing module or a kernel that fails to build
                return f"the CUDA attention kernels do not load ({type(err).__name__}: {err})"
        return None

    def load(self, arrays):
        from minivlm.backend import to_device

        return tuple(to_device(a, self.device) for a in arrays)

    def forward(self, problem, inputs):
        from minivlm import F, Tensor, no_grad

        q, k, v, _ = inputs
        with no_grad():
            out = F.scaled_dot_product_attention(
                Tensor(q), Tensor(k), Tensor(v), is_causal=problem.causal, impl=self.impl
            )
        return out.data

    def forward_backward(self, problem, inputs):
        from minivlm import F, Tensor

        q, k, v, d_out = inputs
        leaves = [Tensor(a, requires_grad=True) for a in (q, k, v)]
        out = F.scaled_dot_product_attention(*leaves, is_causal=problem.causal, impl=self.impl)
        out.backward(d_out)
        return (out.data, *(leaf.grad for leaf in leaves))

    def to_numpy(self, array):
        from minivlm.backend import to_numpy

        return to_numpy(array)

    def peak_memory(self, fn):
        if self.device == "cuda":
            return timing.cupy_peak_memory(fn)
        return timing.cpu_peak_memory(fn)

    def release(self):
        if self.device == "cuda":
            import cupy

            cupy.get_default_memory_pool().free_all_blocks()


class TorchAttention(AttentionImplementation):
    """torch.nn.functional.scaled_dot_product_attention, with our bottom-right causal mask."""

    def __init__(self, device: str):
        self.device = device
        self.name = f"torch-{device}"
        if device == "cuda":
            self.clock = timing.torch_cuda_clock

    def why_unavailable(self) -> str | None:
        try:
            import torch
        except ImportError:
            return "PyTorch is not installed"
        if self.device == "cuda" and not torch.cuda.is_available():
            return f"PyTorch {torch.__version__} sees no CUDA GPU"
        return None

    def load(self, arrays):
        import torch

        return tuple(torch.from_numpy(a).to(self.device) for a in arrays)

    def _attend(self, problem, q, k, v):
        import torch.nn.functional as torch_f

        if not problem.causal:
            return torch_f.scaled_dot_product_attention(q, k, v, scale=problem.scale)
        if problem.len_q == problem.len_k:
            return torch_f.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=problem.scale
            )
        # is_causal=True is aligned top-left when Lq != Lk; ours is bottom-right
        from torch.nn.attention.bias import causal_lower_right

        mask = causal_lower_right(problem.len_q, problem.len_k)
        return torch_f.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=problem.scale)

    def forward(self, problem, inputs):
        import torch

        q, k, v, _ = inputs
        with torch.no_grad():
            return self._attend(problem, q, k, v)

    def forward_backward(self, problem, inputs):
        q, k, v, d_out = inputs
        leaves = [a.detach().requires_grad_() for a in (q, k, v)]
        out = self._attend(problem, *leaves)
        out.backward(d_out)
        return (out.detach(), *(leaf.grad for leaf in leaves))

    def to_numpy(self, array):
        return array.detach().cpu().numpy()

    def peak_memory(self, fn):
        if self.device == "cuda":
            return timing.torch_cuda_peak_memory(fn)
        memory = timing.cpu_peak_memory(fn)
        memory["tracemalloc_peak_bytes"] = None  # torch's allocator does not report to it
        return memory

    def release(self):
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()


def default_implementations(config: AttentionConfig) -> list[AttentionImplementation]:
    """Every implementation the config's devices and name filter let through."""
    candidates = [
        EngineAttention("naive", "cpu"),
        EngineAttention("fused", "cpu"),
        EngineAttention("naive", "cuda"),
        EngineAttention("fused", "cuda"),
        TorchAttention("cpu"),
        TorchAttention("cuda"),
    ]
    return [
        impl for impl in candidates
        if impl.device in config.devices and impl.name in config.implementations
    ]  # fmt: skip


# -- one row: check, then time -------------------------------------------------------


def _input_sets(problem: Problem, count: int, seed: int) -> list[tuple[np.ndarray, ...]]:
    """`count` independent (q, k, v, d_out) sets in the problem's dtype."""
    rng = np.random.default_rng(seed)
    q_shape = (problem.batch, problem.heads, problem.len_q, problem.head_dim)
    k_shape = (problem.batch, problem.heads, problem.len_k, problem.head_dim)
    shapes = (q_shape, k_shape, k_shape, q_shape)
    return [
        tuple(rng.standard_normal(shape).astype(problem.dtype) for shape in shapes)
        for _ in range(count)
    ]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|; inf where got has NaN or inf."""
    got = np.asarray(got, dtype=np.float64)
    if got.shape != want.shape:
        raise ValueError(f"result has shape {got.shape}, the reference {want.shape}")
    if not np.isfinite(got).all():
        return math.inf
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def check_implementation(impl, problem, inputs, reference, index) -> dict[str, float]:
    """Relative error of out (forward alone), out, dq, dk, dv against the reference.

    The implementation runs on all of `inputs`; the (batch, head) `index` of its results
    is compared with the reference, which was computed on that slice only.
    """
    forward_only = impl.to_numpy(impl.forward(problem, inputs))
    errors = {"out (forward only)": relative_error(forward_only[index], reference[0])}
    results = impl.forward_backward(problem, inputs)
    for name, got, want in zip(("out", "dq", "dk", "dv"), results, reference, strict=True):
        errors[name] = relative_error(impl.to_numpy(got)[index], want)
    return errors


def _row(impl, problem: Problem, **fields) -> dict:
    row = {
        "implementation": impl.name, "device": impl.device,
        "n_q": problem.len_q, "n_k": problem.len_k,
        "status": "ok", "reason": None, "check": None,
        "forward": None, "forward_backward": None,
        "tflops": None, "fraction_of_gemm_peak": None, "memory": None,
    }  # fmt: skip
    row.update(fields)
    return row


def benchmark_one(impl, problem, input_sets, reference, check, config, gemm_peak) -> dict:
    """One implementation at one size: check it, and time it if it is right."""
    index, checked_on = check
    tolerance = TOLERANCE[problem.dtype]
    try:
        inputs = [impl.load(arrays) for arrays in input_sets]
        errors = check_implementation(impl, problem, inputs[0], reference, index)
        check_record = {"checked_on": checked_on, "tolerance": tolerance, "relative_errors": errors}
        worst = max(errors, key=errors.get)
        if not errors[worst] <= tolerance:
            reason = f"{worst}: relative error {errors[worst]:.2e} > tolerance {tolerance:.0e}"
            return _row(impl, problem, status="wrong", reason=reason, check=check_record)

        def forward(i):
            return impl.forward(problem, inputs[i % len(inputs)])

        def forward_backward(i):
            return impl.forward_backward(problem, inputs[i % len(inputs)])

        forward_stats = timing.measure(forward, clock=impl.clock, **timing.settings(config))
        both_stats = timing.measure(forward_backward, clock=impl.clock, **timing.settings(config))
        memory = dict.fromkeys(("tracemalloc_peak_bytes", "rss_delta_bytes", "device_peak_bytes"))
        memory.update(impl.peak_memory(lambda: forward_backward(0)))
    except Exception as err:  # report a crashing implementation, keep benchmarking the rest
        return _row(impl, problem, status="error", reason=f"{type(err).__name__}: {err}")
    finally:
        inputs = None
        gc.collect()
        impl.release()

    tflops = {
        "forward": problem.forward_flops() / forward_stats.median / 1e12,
        "forward_backward": problem.forward_backward_flops() / both_stats.median / 1e12,
    }
    peak = gemm_peak.get(impl.device)
    fraction = (
        None if peak is None else {key: value / peak["tflops"] for key, value in tflops.items()}
    )
    return _row(
        impl, problem, check=check_record, forward=forward_stats.to_json(),
        forward_backward=both_stats.to_json(), tflops=tflops,
        fraction_of_gemm_peak=fraction, memory=memory,
    )  # fmt: skip


# -- the GEMM peak -------------------------------------------------------------------


def gemm_peak(device: str, dtype: str, size: int, repeats: int = 5) -> dict:
    """TFLOP/s of one (size x size) @ (size x size) matmul on `device` (2 size^3 FLOPs)."""
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((size, size)).astype(dtype) for _ in range(2))
    clock = timing.cpu_clock
    if device == "cuda":
        import cupy

        a, b = cupy.asarray(a), cupy.asarray(b)
        clock = timing.cupy_clock
    stats = timing.measure(lambda _: a @ b, repeats=repeats, warmup=1, clock=clock)
    library = "cupy (cuBLAS)" if device == "cuda" else "numpy (BLAS)"
    return {
        "device": device, "library": library, "dtype": dtype, "size": size,
        "median_s": stats.median, "tflops": 2.0 * size**3 / stats.median / 1e12,
        "others_cpu_share": stats.others_cpu_share,
    }  # fmt: skip


def measure_gemm_peaks(available, dtype: str, quick: bool) -> dict:
    """The GEMM peak of each device that an available implementation runs on.

    On the GPU the matmul runs through CuPy, so it is measured only when CuPy works.
    """
    devices = {impl.device for impl in available}
    if not any(isinstance(impl, EngineAttention) and impl.device == "cuda" for impl in available):
        devices.discard("cuda")
    return {
        device: gemm_peak(device, dtype, GEMM_SIZE[device] // (4 if quick else 1))
        for device in ("cpu", "cuda") if device in devices
    }  # fmt: skip


# -- the sweep -----------------------------------------------------------------------


def set_torch_threads(threads: int) -> int | None:
    """Give PyTorch's CPU ops as many threads as NumPy's BLAS has; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def run_attention_benchmark(
    config: AttentionConfig,
    implementations: Sequence[AttentionImplementation] | None = None,
    *,
    command: str = "(python API)",
    quick: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Check and time every implementation at every size; the report as a JSON-ready dict."""
    machine = machine_facts(command)
    implementations = (
        default_implementations(config) if implementations is None else list(implementations)
    )
    unavailable = {impl.name: impl.why_unavailable() for impl in implementations}
    available = [impl for impl in implementations if unavailable[impl.name] is None]
    threads = {"blas": blas_threads(), "torch": None}
    if any(isinstance(impl, TorchAttention) for impl in available):
        threads["torch"] = set_torch_threads(threads["blas"])
    peaks = measure_gemm_peaks(available, config.dtype, quick)
    for peak in peaks.values():
        log(
            f"GEMM peak on {peak['device']}: {peak['tflops']:.3f} TFLOP/s "
            f"({peak['size']}^3 {peak['dtype']})"
        )
    rows = []
    for n in config.sizes:
        problem = Problem(
            config.batch, config.heads, n, config.key_length or n, config.head_dim,
            config.causal, config.dtype,
        )  # fmt: skip
        input_sets = _input_sets(problem, config.input_sets, config.seed + n)
        index, checked_on = reference_slice(problem, config.reference_bytes)
        q, k, v, d_out = (a[index] for a in input_sets[0])
        reference = reference_attention(q, k, v, d_out, scale=problem.scale, causal=problem.causal)
        for impl in implementations:
            if unavailable[impl.name] is not None:
                reason = f"not available: {unavailable[impl.name]}"
                rows.append(_row(impl, problem, status="unavailable", reason=reason))
                continue
            row = benchmark_one(
                impl, problem, input_sets, reference, (index, checked_on), config, peaks
            )
            rows.append(row)
            log(_progress_line(row))
        reference = input_sets = None
        gc.collect()
    return {
        "benchmark": "attention",
        "schema_version": 1,
        "machine": machine,
        "config": {**asdict(config), "quick": quick},
        "threads": threads,
        "gemm_peak": peaks,
        "results": rows,
        "ratios": attention_ratios(rows),
    }


PAIRS = {  # device: (fused, naive, torch)
    "cpu": ("numpy-fused", "numpy-naive", "torch-cpu"),
    "cuda": ("cupy-fused", "cupy-naive", "torch-cuda"),
}


def _memory_of(row: dict) -> int | None:
    memory = row["memory"] or {}
    return memory.get("device_peak_bytes") or memory.get("tracemalloc_peak_bytes")


def attention_ratios(rows: list[dict]) -> list[dict]:
    """Per device and size: time(fused) / time(torch), time(fused) / time(naive), memory."""
    by_key = {(r["implementation"], r["n_q"]): r for r in rows if r["status"] == "ok"}
    ratios = []
    for device, (fused, naive, torch) in PAIRS.items():
        for n in sorted({r["n_q"] for r in rows}):
            ours = by_key.get((fused, n))
            if ours is None:
                continue
            entry = {"device": device, "n_q": n}
            for label, other in (("fused_over_torch", torch), ("fused_over_naive", naive)):
                row = by_key.get((other, n))
                entry[label] = None if row is None else {
                    phase: ours[phase]["median"] / row[phase]["median"]
                    for phase in ("forward", "forward_backward")
                }  # fmt: skip
            naive_row = by_key.get((naive, n))
            fused_memory = _memory_of(ours)
            naive_memory = None if naive_row is None else _memory_of(naive_row)
            entry["memory_fused_over_naive"] = (
                fused_memory / naive_memory if fused_memory and naive_memory else None
            )
            ratios.append(entry)
    return ratios


# -- output --------------------------------------------------------------------------


def _progress_line(row: dict) -> str:
    head = f"N={row['n_q']:>5} {row['implementation']:<12}"
    if row["status"] != "ok":
        return f"{head} {status_text(row)}"
    return (
        f"{head} fwd {timing.format_ms(row['forward']['median'])} ms, "
        f"fwd+bwd {timing.format_ms(row['forward_backward']['median'])} ms"
    )


def format_attention_table(report: dict) -> str:
    """The terminal table: one line per (size, implementation), then the ratios."""
    config, threads = report["config"], report["threads"]
    lines = [
        describe(report["machine"]),
        f"attention B={config['batch']} H={config['heads']} d={config['head_dim']} "
        f"{config['dtype']} {'causal' if config['causal'] else 'full'}; times in ms: median "
        f"[p10, p90] of {config['repeats']} after {config['warmup']} warm-up; "
        f"BLAS threads {threads['blas']}, torch threads {threads['torch']}",
    ]
    for peak in report["gemm_peak"].values():
        lines.append(
            f"GEMM peak {peak['device']}: {peak['tflops']:.3f} TFLOP/s "
            f"({peak['library']}, {peak['size']}^3)"
        )
    header = (
        f"{'N':>5} {'Lk':>5} {'implementation':<12} {'fwd ms':>8} {'[p10, p90]':>17} "
        f"{'fwd+bwd ms':>10} {'[p10, p90]':>17} {'TFLOP/s':>7} {'% peak':>6} {'mem MiB':>8} "
        f"{'RSS MiB':>8} {'max rel err':>11} {'others%':>7}"
    )
    lines += ["", header, "-" * len(header)]
    unavailable = {}
    for row in report["results"]:
        if row["status"] == "unavailable":
            unavailable[row["implementation"]] = row["reason"]
            continue
        lines.append(_table_line(row))
    for name, reason in unavailable.items():
        lines.append(f"{'all':>5} {'':>5} {name:<12} {reason}")
    if report["ratios"]:
        lines += ["", "ratios (time ours / time theirs: below 1 means ours is faster)"]
        lines.append(
            f"{'device':<6} {'N':>5} {'fused/torch fwd':>15} {'fwd+bwd':>8} "
            f"{'fused/naive fwd':>15} {'fwd+bwd':>8} {'mem fused/naive':>15}"
        )
        for entry in report["ratios"]:
            lines.append(_ratio_line(entry))
    return "\n".join(lines)


def _spread(stats: dict) -> str:
    return f"[{1e3 * stats['p10']:.2f}, {1e3 * stats['p90']:.2f}]"


def _table_line(row: dict) -> str:
    head = f"{row['n_q']:>5} {row['n_k']:>5} {row['implementation']:<12}"
    if row["status"] != "ok":
        return f"{head} {status_text(row)}"
    forward, both, memory = row["forward"], row["forward_backward"], row["memory"]
    fraction = row["fraction_of_gemm_peak"]
    percent = "-" if fraction is None else f"{100 * fraction['forward_backward']:.1f}"
    error = max(row["check"]["relative_errors"].values())
    memory_bytes = memory["device_peak_bytes"] or memory["tracemalloc_peak_bytes"]
    rate = row["tflops"]["forward_backward"]
    return (
        f"{head} {timing.format_ms(forward['median']):>8} {_spread(forward):>17} "
        f"{timing.format_ms(both['median']):>10} {_spread(both):>17} {rate:>7.3f} {percent:>6} "
        f"{timing.format_mib(memory_bytes):>8} {timing.format_mib(memory['rss_delta_bytes']):>8} "
        f"{error:>11.1e} {timing.format_percent(others_share(row)):>7}"
    )


def _ratio_line(entry: dict) -> str:
    def pair(ratio):
        if ratio is None:
            return f"{'-':>15} {'-':>8}"
        return f"{ratio['forward']:>15.2f} {ratio['forward_backward']:>8.2f}"

    memory = entry["memory_fused_over_naive"]
    memory_text = "-" if memory is None else f"{memory:.3f}"
    return (
        f"{entry['device']:<6} {entry['n_q']:>5} {pair(entry['fused_over_torch'])} "
        f"{pair(entry['fused_over_naive'])} {memory_text:>15}"
    )


def plot_attention(report: dict, path: str | Path) -> Path:
    """Forward+backward time and TFLOP/s against N, one line per implementation; the
    TFLOP/s panel also draws each device's GEMM peak as a flat line."""
    times, rates = {}, {}
    for row in report["results"]:
        if row["status"] == "ok":
            name, n = row["implementation"], row["n_q"]
            times.setdefault(name, []).append((n, 1e3 * row["forward_backward"]["median"]))
            rates.setdefault(name, []).append((n, row["tflops"]["forward_backward"]))
    sizes = report["config"]["sizes"]
    for device, peak in report["gemm_peak"].items():
        rates[f"{device} GEMM peak"] = [(min(sizes), peak["tflops"]), (max(sizes), peak["tflops"])]
    config = report["config"]
    title = (
        f"attention fwd+bwd, B={config['batch']} H={config['heads']} d={config['head_dim']} "
        f"{config['dtype']} {'causal' if config['causal'] else 'full'} - "
        f"{report['machine']['cpu_model']}"
    )
    panels = [
        Panel("forward+backward time", "N (query length)", "ms", times),
        Panel("forward+backward TFLOP/s", "N (query length)", "TFLOP/s", rates),
    ]
    return save_figure(panels, path, title)


# -- command line --------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = AttentionConfig()
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help=f"query lengths (default {' '.join(map(str, defaults.sizes))})",
    )
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--heads", type=int, default=defaults.heads)
    parser.add_argument("--head-dim", type=int, default=defaults.head_dim)
    parser.add_argument(
        "--causal",
        action=argparse.BooleanOptionalAction,
        default=defaults.causal,
        help="causal mask, aligned bottom-right (default on)",
    )
    parser.add_argument(
        "--key-length",
        type=int,
        default=None,
        metavar="LK",
        help="key/value length for cross-attention (default: LK = N)",
    )
    parser.add_argument("--dtype", choices=tuple(TOLERANCE), default=defaults.dtype)
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument(
        "--impl",
        nargs="+",
        choices=IMPLEMENTATIONS,
        default=None,
        help="run only these implementations",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"timed runs (default {defaults.repeats})"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help=f"untimed runs first (default {defaults.warmup})"
    )
    parser.add_argument(
        "--input-sets", type=int, default=None, help="input sets rotated between runs"
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, few repeats: under a minute"
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_OUT / "attention.json", help="report file"
    )
    parser.add_argument(
        "--plot", type=Path, default=DEFAULT_OUT / "attention.png", help="PNG plot file"
    )
    parser.set_defaults(handler=run_from_args, command_prefix="python -m benchmarks.attention")


def config_from_args(args: argparse.Namespace) -> AttentionConfig:
    config = replace(AttentionConfig(), **(QUICK if args.quick else {}))
    overrides = {
        "sizes": None if args.sizes is None else tuple(args.sizes),
        "repeats": args.repeats, "warmup": args.warmup, "input_sets": args.input_sets,
    }  # fmt: skip
    return replace(
        config,
        **{name: value for name, value in overrides.items() if value is not None},
        batch=args.batch, heads=args.heads, head_dim=args.head_dim, causal=args.causal,
        key_length=args.key_length, dtype=args.dtype,
        devices=("cpu", "cuda") if args.device == "all" else (args.device,),
        implementations=tuple(args.impl) if args.impl else IMPLEMENTATIONS,
    )  # fmt: skip


def run_from_args(args: argparse.Namespace) -> int:
    keep_freed_memory()  # as `minivlm` does for every command
    config = config_from_args(args)
    report = run_attention_benchmark(
        config, command=command_line(args), quick=args.quick, log=log_to_stderr
    )
    print(format_attention_table(report))
    print(f"\nJSON: {write_json(report, args.json)}")
    print(f"plot: {plot_attention(report, args.plot)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_module("attention", __doc__, add_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
