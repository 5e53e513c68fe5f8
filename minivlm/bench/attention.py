"""`minivlm bench attention`: every attention implementation, checked, then timed, over N.

For each query length N, causal and not, every implementation this machine has runs
the same problem, q (B, H, N, d), k and v (B, H, Lk, d) (Lk = N unless --key-length):

    numpy-naive  numpy-fused  numpy-auto   our engine, impl="naive" / "fused" / "auto"
    cupy-naive   cupy-fused   cupy-auto    the same on CUDA tensors
    cupy-fused-3xtf32  cupy-fused-tf32     the fused path on tensor cores (precision=)
    torch-cpu    torch-cuda                torch.nn.functional.scaled_dot_product_attention

Each is first checked against a float64 NumPy reference (the forward's output, and the
output and three gradients of forward+backward for an upstream gradient dO); a wrong
one is reported, not timed. Then forward and forward+backward are timed, interleaved.

FLOPs follow the FlashAttention papers: forward 4 B H Lq Lk d, halved when causal;
forward+backward 3.5 x forward. "% peak" is against a large matmul on the same device,
timed in the same run (on the GPU also with TF32 tensor cores, the rate the tensor-core
kernels compare with). Memory: the peak one forward+backward allocates (tracemalloc
for NumPy, the pool or allocator on the GPU; PyTorch's CPU allocator reports to neither).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import tracemalloc
from functools import partial
from pathlib import Path

import numpy as np

from . import harness

# name: (device, library, impl)
IMPLEMENTATIONS = {
    "numpy-naive": ("cpu", "minivlm", "naive"),
    "numpy-fused": ("cpu", "minivlm", "fused"),
    "numpy-auto": ("cpu", "minivlm", "auto"),
    "cupy-naive": ("cuda", "minivlm", "naive"),
    "cupy-fused": ("cuda", "minivlm", "fused"),
    "cupy-auto": ("cuda", "minivlm", "auto"),
    "cupy-fused-3xtf32": ("cuda", "minivlm", "fused"),
    "cupy-fused-tf32": ("cuda", "minivlm", "fused"),
    "torch-cpu": ("cpu", "torch", None),
    "torch-cuda": ("cuda", "torch", None),
}
PRECISION = {"cupy-fused-3xtf32": "3xtf32", "cupy-fused-tf32": "tf32"}  # others: "ieee"
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}  # max |got - want| / max |want|
TF32_TOLERANCE = 1e-2  # one TF32 MMA a product: inputs rounded to 11 significant bits
TIMED = ("forward", "forward_backward")
DEFAULTS = {"sizes": [256, 512, 1024, 2048], "repeats": 7, "warmup": 2, "input_sets": 3,
            "gemm_size": 2048, "impl": list(IMPLEMENTATIONS)}  # fmt: skip
QUICK = {"sizes": [64, 128, 256], "repeats": 3, "warmup": 1, "input_sets": 2, "gemm_size": 512}


def reference_attention(q, k, v, d_out, causal: bool) -> dict[str, np.ndarray]:
    """out, dq, dk, dv in float64, every score materialised: the oracle of the check.

    q (..., Lq, d), k and v (..., Lk, d). Query i sees key j iff j <= i + (Lk - Lq) when
    causal (bottom-right); a row that sees no key has output 0 and gradient 0.
    """
    q, k, v, d_out = (np.asarray(a, dtype=np.float64) for a in (q, k, v, d_out))
    len_q, len_k, scale = q.shape[-2], k.shape[-2], 1.0 / np.sqrt(q.shape[-1])
    scores = scale * (q @ k.swapaxes(-1, -2))  # S (..., Lq, Lk)
    if causal:
        allowed = np.arange(len_k)[None, :] <= np.arange(len_q)[:, None] + (len_k - len_q)
        scores = np.where(allowed, scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)
    exp_scores = np.exp(scores - np.where(np.isfinite(row_max), row_max, 0.0))
    total = exp_scores.sum(axis=-1, keepdims=True)
    probs = exp_scores / np.where(total > 0, total, 1.0)  # P (..., Lq, Lk)
    d_probs = d_out @ v.swapaxes(-1, -2)  # dP = dO V^T
    d_scores = probs * (d_probs - (d_probs * probs).sum(axis=-1, keepdims=True))
    return {
        "out": probs @ v,  # O = P V
        "dq": scale * (d_scores @ k),  # S = scale Q K^T
        "dk": scale * (d_scores.swapaxes(-1, -2) @ q),
        "dv": probs.swapaxes(-1, -2) @ d_out,  # dV = P^T dO
    }


# -- the implementations: (forward, forward_backward) of (q, k, v, dO) ------------------


def engine_functions(impl: str, causal: bool, precision: str = "ieee"):
    from .. import F, Tensor, no_grad

    options = dict(is_causal=causal, impl=impl, precision=precision)

    def forward(q, k, v, d_out):
        with no_grad():
            tensors = (Tensor(q), Tensor(k), Tensor(v))
            return F.scaled_dot_product_attention(*tensors, **options).data

    def forward_backward(q, k, v, d_out):
        leaves = [Tensor(a, requires_grad=True) for a in (q, k, v)]
        out = F.scaled_dot_product_attention(*leaves, **options)
        out.backward(d_out)
        return (out.data, *(leaf.grad for leaf in leaves))

    return forward, forward_backward


def torch_functions(causal: bool):
    import torch
    import torch.nn.functional as tf

    def attend(q, k, v):
        len_q, len_k = q.shape[2], k.shape[2]
        if causal and len_q != len_k:  # torch's is_causal aligns top-left, ours bottom-right
            from torch.nn.attention.bias import causal_lower_right

            mask = causal_lower_right(len_q, len_k)
            return tf.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return tf.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def forward(q, k, v, d_out):
        with torch.no_grad():
            return attend(q, k, v)

    def forward_backward(q, k, v, d_out):
        leaves = [a.detach().requires_grad_() for a in (q, k, v)]
        out = attend(*leaves)
        out.backward(d_out)
        return (out.detach(), *(leaf.grad for leaf in leaves))

    return forward, forward_backward


def load(name: str, arrays) -> tuple:
    """The NumPy arrays as the implementation's arrays, on its device."""
    device, library, _ = IMPLEMENTATIONS[name]
    if library == "torch":
        import torch

        return tuple(torch.from_numpy(a).to(device) for a in arrays)
    from ..backend import to_device

    return tuple(to_device(a, device) for a in arrays)


def to_numpy(array) -> np.ndarray:
    from ..backend import to_numpy as engine_to_numpy

    return array.detach().cpu().numpy() if hasattr(array, "detach") else engine_to_numpy(array)


def why_unavailable(name: str) -> str | None:
    device, library, impl = IMPLEMENTATIONS[name]
    if library == "torch":
        return harness.why_no_torch(device)
    why = harness.why_no_cuda() if device == "cuda" else None
    if why is None and device == "cuda" and impl != "naive":
        try:
            import minivlm.kernels_cuda.attention  # noqa: F401
        except Exception as err:  # a missing module or a kernel that does not build
            why = f"the CUDA attention kernels do not load ({type(err).__name__}: {err})"
    if why is None and name in PRECISION:
        why = why_no_tensor_cores()
    return why


def why_no_tensor_cores() -> str | None:
    import cupy

    capability = int(cupy.cuda.Device().compute_capability)
    if capability < 80:
        return f"TF32 tensor cores need compute capability 8.0, this GPU has {capability}"
    return None


def clock(name: str) -> harness.Clock:
    device, library, _ = IMPLEMENTATIONS[name]
    if device == "cpu":
        return harness.cpu_clock
    return harness.torch_cuda_clock if library == "torch" else harness.cupy_clock


def peak_memory(name: str, call) -> int | None:
    """Bytes one call allocates at its peak beyond what was in use before it."""
    device, library, _ = IMPLEMENTATIONS[name]
    if device == "cuda" and library == "torch":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    if device == "cuda":
        import cupy

        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()  # the pool grows to the peak, and keeps it
        before = pool.used_bytes()
        call()
        cupy.cuda.Device().synchronize()
        return pool.total_bytes() - before
    if library == "torch":
        return None
    tracemalloc.start()  # NumPy reports every buffer it allocates to tracemalloc
    call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def gemm_peak(device: str, dtype: str, size: int, tf32: bool = False) -> dict:
    """TFLOP/s of a (size x size) @ (size x size) matmul, 2 size^3 FLOPs; with `tf32`
    (float32 on the GPU), cuBLAS may use TF32 tensor cores."""
    a, b = np.random.default_rng(1).standard_normal((2, size, size)).astype(dtype)
    if device == "cuda":
        import cupy

        a, b = cupy.asarray(a), cupy.asarray(b)
    timer = harness.cupy_clock if device == "cuda" else harness.cpu_clock
    with cublas_tf32(tf32):
        timings, _ = harness.time_interleaved({"gemm": (lambda i: a @ b, timer)}, 5, 1)
    seconds = float(np.median(timings["gemm"]))
    name = f"{device} tf32" if tf32 else device
    return {"device": name, "size": size, "seconds": seconds, "tflops": 2e-12 * size**3 / seconds}


@contextlib.contextmanager
def cublas_tf32(enabled: bool):
    """CuPy's cuBLAS handle in TF32 tensor-op math within the block (when enabled)."""
    if not enabled:
        yield
        return
    import cupy
    from cupy.cuda import cublas

    handle = cupy.cuda.device.get_cublas_handle()
    previous = cublas.getMathMode(handle)
    cublas.setMathMode(handle, CUBLAS_TF32_TENSOR_OP_MATH)
    try:
        yield
    finally:
        cublas.setMathMode(handle, previous)


CUBLAS_TF32_TENSOR_OP_MATH = 3  # cublasMath_t


# -- the sweep -------------------------------------------------------------------------


def benchmark_problem(args, names: list[str], len_q: int, causal: bool, peaks: dict) -> list:
    """Check every implementation at one (N, mask), then time the right ones."""
    batch, heads, head_dim, len_k = args.batch, args.heads, args.head_dim, args.key_length or len_q
    rng = np.random.default_rng(args.seed + len_q)
    shapes = [(batch, heads, length, head_dim) for length in (len_q, len_k, len_k, len_q)]
    input_sets = [[rng.standard_normal(s).astype(args.dtype) for s in shapes]
                  for _ in range(args.input_sets)]  # fmt: skip
    # the reference holds ~4 (Lq, Lk) float64 arrays a head: it checks the heads that fit
    checked = max(1, min(batch * heads, args.reference_mib * 2**20 // (32 * len_q * len_k)))

    def first_heads(array):
        return array.reshape(-1, *array.shape[2:])[:checked]

    reference = reference_attention(*map(first_heads, input_sets[0]), causal=causal)
    reference["out (forward only)"] = reference["out"]
    inputs, functions, candidates = {}, {}, {}
    for name in names:
        library, impl = IMPLEMENTATIONS[name][1:]
        functions[name] = (
            torch_functions(causal)
            if library == "torch"
            else engine_functions(impl, causal, PRECISION.get(name, "ieee"))
        )

        def results(name=name):
            inputs[name] = [load(name, arrays) for arrays in input_sets]
            forward, forward_backward = functions[name]
            got = dict(
                zip(("out", "dq", "dk", "dv"), forward_backward(*inputs[name][0]), strict=True)
            )
            got["out (forward only)"] = forward(*inputs[name][0])
            return {key: first_heads(to_numpy(value)) for key, value in got.items()}

        def runs(which, name=name):
            return lambda i: functions[name][which](*inputs[name][i % len(inputs[name])])

        phases = {"forward": runs(0), "forward_backward": runs(1)}
        own_tolerance = TF32_TOLERANCE if PRECISION.get(name) == "tf32" else None
        candidates[name] = harness.Candidate(results, phases, clock(name), library, own_tolerance)
    tolerance = TOLERANCE[args.dtype]
    rows = harness.check_then_time(candidates, reference, tolerance, args.repeats, args.warmup)
    flops = 4.0 * batch * heads * len_q * len_k * head_dim / (2 if causal else 1)
    for name, result in rows.items():
        result.update(device=IMPLEMENTATIONS[name][0], n_q=len_q, n_k=len_k, causal=causal)
        result.update(tflops=None, fraction_of_gemm_peak=None, memory_bytes=None)
        result.update(fraction_of_tf32_gemm_peak=None)
        if result["check"]:
            result["check"]["checked_on"] = f"{checked} of {batch * heads} heads"
        if result["status"] == "ok":
            rates = {
                phase: factor * flops / result[phase]["median"] / 1e12
                for phase, factor in (("forward", 1.0), ("forward_backward", 3.5))
            }
            peak = peaks.get(result["device"])
            result["tflops"] = rates
            result["fraction_of_gemm_peak"] = peak and {
                phase: rate / peak["tflops"] for phase, rate in rates.items()
            }
            tf32_peak = peaks.get("cuda tf32") if name in PRECISION else None
            result["fraction_of_tf32_gemm_peak"] = tf32_peak and {
                phase: rate / tf32_peak["tflops"] for phase, rate in rates.items()
            }
            result["memory_bytes"] = peak_memory(name, partial(runs(1, name), 0))
    inputs.clear()
    gc.collect()
    return list(rows.values())


def run_attention_benchmark(args: argparse.Namespace, log=harness.log) -> dict:
    """Check and time every available implementation at every (N, mask): the report."""
    machine = harness.machine_facts()
    devices = ("cpu", "cuda") if args.device == "all" else (args.device,)
    wanted = [name for name in args.impl if IMPLEMENTATIONS[name][0] in devices]
    unavailable = {name: why_unavailable(name) for name in wanted}
    names = [name for name in wanted if unavailable[name] is None]
    peaks = {}
    for device in devices:
        if any(IMPLEMENTATIONS[name][:2] == (device, "minivlm") for name in names):
            size = args.gemm_size * (4 if device == "cuda" else 1)
            peaks[device] = gemm_peak(device, args.dtype, size)
            log(f"GEMM peak {device}: {peaks[device]['tflops']:.3f} TFLOP/s")
    if args.dtype == "float32" and any(name in PRECISION for name in names):
        peaks["cuda tf32"] = gemm_peak("cuda", args.dtype, 4 * args.gemm_size, tf32=True)
        log(f"GEMM peak cuda, TF32: {peaks['cuda tf32']['tflops']:.3f} TFLOP/s")
    masks = [True, False] if args.causal is None else [args.causal]
    results = []
    for causal, len_q in ((causal, n) for causal in masks for n in args.sizes):
        results += benchmark_problem(args, names, len_q, causal, peaks)
        log(f"N={len_q} {'causal' if causal else 'full'}: checked and timed {', '.join(names)}")
        results += [
            harness.row(name, "unavailable", unavailable[name], device=IMPLEMENTATIONS[name][0],
                        n_q=len_q, n_k=args.key_length or len_q, causal=causal, forward=None,
                        forward_backward=None, tflops=None, fraction_of_gemm_peak=None,
                        memory_bytes=None)
            for name in wanted if name not in names
        ]  # fmt: skip
    return {
        "benchmark": "attention", "machine": machine, "config": harness.settings(args),
        "gemm_peak": peaks, "results": results,
        "ratios": harness.ratios(results, PAIRS, CASE, TIMED + ("memory_bytes",)),
    }  # fmt: skip


PAIRS = [(f"{ours}-{variant}", theirs)
         for ours, device in (("numpy", "cpu"), ("cupy", "cuda"))
         for theirs in (f"torch-{device}", f"{ours}-naive")
         for variant in ("naive", "fused", "auto") if not theirs.endswith(variant)]  # fmt: skip
PAIRS += [(f"cupy-fused-{precision}", theirs) for precision in ("3xtf32", "tf32")
          for theirs in ("torch-cuda", "cupy-fused")]  # fmt: skip
CASE = ("causal", "n_q")


def format_attention_table(report: dict) -> str:
    """The machine; a line per (mask, N, implementation); the ratios."""
    config = report["config"]
    lines = [
        harness.describe(report["machine"]),
        f"attention B={config['batch']} H={config['heads']} d={config['head_dim']} "
        f"{config['dtype']}; ms: median [p10, p90] of {config['repeats']} rounds per "
        f"block (NumPy's and PyTorch's in 3 alternating blocks), after {config['warmup']} warm-up",
    ]
    lines += [f"GEMM peak {p['device']}: {p['tflops']:.3f} TFLOP/s ({p['size']}^3)"
              for p in report["gemm_peak"].values()]  # fmt: skip
    columns = {
        "N": lambda r: r["n_q"],
        "Lk": lambda r: r["n_k"],
        "fwd ms": lambda r: harness.spread(r["forward"]),
        "fwd+bwd ms": lambda r: harness.spread(r["forward_backward"]),
        "TFLOP/s": lambda r: f"{r['tflops']['forward_backward']:.3f}",
        "% peak": lambda r: harness.cell(
            r["fraction_of_gemm_peak"] and 100 * r["fraction_of_gemm_peak"]["forward_backward"], 1
        ),
        "% tf32": lambda r: harness.cell(
            r.get("fraction_of_tf32_gemm_peak")
            and 100 * r["fraction_of_tf32_gemm_peak"]["forward_backward"], 1
        ),
        "mem MiB": lambda r: harness.cell(r["memory_bytes"] and r["memory_bytes"] / 2**20, 1),
        "max rel err": lambda r: f"{max(r['check']['relative_errors'].values()):.1e}",
    }

    def label(r):
        return f"{r['implementation']} {'causal' if r['causal'] else 'full'}"

    lines += ["", harness.results_table(report["results"], ("implementation", label), columns)]
    if report["ratios"]:
        lines += ["", "ratios of times and of peak memory (below 1: ours is faster, smaller)"]
        lines.append(harness.ratios_table(report["ratios"], CASE, TIMED + ("memory_bytes",)))
    return "\n".join(lines)


def plot_attention(report: dict, path: str | Path) -> Path:
    """Forward+backward time against N, log-log, a line per implementation and mask."""
    from ..viz import line_chart

    series = {}
    for r in (r for r in report["results"] if r["status"] == "ok"):
        label = f"{r['implementation']} {'causal' if r['causal'] else 'full'}"
        xs, ys = series.setdefault(label, ([], []))
        xs.append(r["n_q"])
        ys.append(1e3 * r["forward_backward"]["median"])
    config = report["config"]
    title = (
        f"attention forward+backward, B={config['batch']} H={config['heads']} "
        f"d={config['head_dim']} {config['dtype']}; {report['machine']['cpu_model']}"
    )
    return line_chart(series, path, title, "N", "ms", size=(900, 520), log_x=True, log_y=True)


# -- command line ----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    positive = harness.positive
    add = parser.add_argument
    add("--sizes", type=positive, nargs="+", metavar="N", help="query lengths (256 ... 2048)")
    add("--batch", type=positive, default=4)
    add("--heads", type=positive, default=4)
    add("--head-dim", type=positive, default=64)
    add("--causal", action=argparse.BooleanOptionalAction, help="only causal / only full (both)")
    add("--key-length", type=positive, metavar="LK", help="keys and values (default: N)")
    add("--dtype", choices=tuple(TOLERANCE), default="float32")
    add("--device", choices=("cpu", "cuda", "all"), default="all")
    add("--impl", nargs="+", choices=tuple(IMPLEMENTATIONS), help="only these implementations")
    add("--repeats", type=positive, help="timed rounds (7; --quick 3)")
    add("--warmup", type=int, help="untimed rounds first (2; --quick 1)")
    add("--input-sets", type=positive, help="input sets, rotated between rounds (3)")
    add("--gemm-size", type=positive, help="the matmul of the peak (2048, x4 on the GPU)")
    add("--reference-mib", type=positive, default=512, help="memory of the float64 check")
    add("--seed", type=int, default=0)
    add("--quick", action="store_true", help="N = 64, 128, 256; 3 rounds")
    add("--json", type=Path, default=Path("benchmarks/out/attention.json"), help="the report")
    add("--plot", type=Path, default=Path("benchmarks/out/attention.png"), help="the PNG plot")
    parser.set_defaults(handler=run_from_args)


def options(argv: list[str]) -> argparse.Namespace:
    return harness.options("attention", add_arguments, argv, DEFAULTS, QUICK)


def run_from_args(args: argparse.Namespace) -> int:
    report = run_attention_benchmark(harness.with_defaults(args, DEFAULTS, QUICK))
    print(format_attention_table(report))
    print(f"\nJSON: {harness.write_report(report, args.json, TIMED)}")
    if any(r["status"] == "ok" for r in report["results"]):
        print(f"plot: {plot_attention(report, args.plot)}")
    return 1 if any(r["status"] in ("wrong", "error") for r in report["results"]) else 0
