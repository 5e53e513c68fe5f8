"""Time the blocked NumPy attention against PyTorch's CPU SDPA and a naive NumPy path.

Forward + backward, causal, float32, (B, H, N, d) = (4, 4, N, 64) by default. Each size is
checked for agreement with PyTorch first, then timed (median of --repeats runs); the peak
memory beyond the inputs is measured with tracemalloc (NumPy reports its buffers to it).

    python benchmarks/cpu_flash_probe.py [--sizes 256 512 1024 2048] [--block-q 256] ...
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minivlm.kernels_cpu import flash_attention_backward, flash_attention_forward  # noqa: E402


def blocked(q, k, v, d_out, scale, block_q, block_k):
    out, lse = flash_attention_forward(
        q, k, v, scale=scale, causal=True, block_q=block_q, block_k=block_k
    )
    grads = flash_attention_backward(
        q, k, v, out, lse, d_out, scale=scale, causal=True, block_q=block_q, block_k=block_k
    )
    return (out, *grads)


def naive(q, k, v, d_out, scale):
    """Materialise the (B, H, N, N) scores and probabilities, as a textbook would."""
    n = q.shape[2]
    scores = scale * (q @ k.swapaxes(-1, -2))  # (B, H, N, N)
    scores[..., np.triu(np.ones((n, n), dtype=bool), 1)] = -np.inf
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = probs @ v
    d_v = probs.swapaxes(-1, -2) @ d_out
    d_probs = d_out @ v.swapaxes(-1, -2)
    d_scores = probs * (d_probs - (d_probs * probs).sum(-1, keepdims=True))
    return out, scale * (d_scores @ k), scale * (d_scores.swapaxes(-1, -2) @ q), d_v


def torch_sdpa(torch, q, k, v, d_out):
    q, k, v = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.backward(torch.from_numpy(d_out))
    return out.detach().numpy(), q.grad.numpy(), k.grad.numpy(), v.grad.numpy()


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `repeats` runs after a pause and one warm-up run.

    Each contender runs all its repeats in a row, after a pause: the worker threads of one
    library (OpenBLAS for NumPy, OpenMP for PyTorch) spin for a while after its last call
    and would slow the other down.
    """
    time.sleep(1.0)
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(fn) -> int:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def measure(n: int, args, torch) -> str:
    """One row of the table for sequence length n (checks against torch before timing)."""
    rng = np.random.default_rng(n)
    shape = (args.batch, args.heads, n, args.head_dim)
    q, k, v, d_out = (rng.standard_normal(shape, dtype=np.float32) for _ in range(4))
    scale = 1.0 / math.sqrt(args.head_dim)  # a Python float: no float64 upcast

    def ours():
        return blocked(q, k, v, d_out, scale, args.block_q, args.block_k)

    if torch is not None:
        expected = torch_sdpa(torch, q, k, v, d_out)
        for name, got, want in zip(("out", "dq", "dk", "dv"), ours(), expected, strict=True):
            error = float(np.abs(got - want).max())
            assert error < 1e-3, f"N={n}: {name} differs from torch by {error:.2e}"
    t_ours = median_seconds(ours, args.repeats)
    t_torch = t_naive = mem_naive = float("nan")
    if torch is not None:
        t_torch = median_seconds(lambda: torch_sdpa(torch, q, k, v, d_out), args.repeats)
    if not args.no_naive:
        t_naive = median_seconds(lambda: naive(q, k, v, d_out, scale), args.repeats)
        mem_naive = peak_bytes(lambda: naive(q, k, v, d_out, scale)) / 2**20
    mem_ours = peak_bytes(ours) / 2**20
    return (
        f"{n:>5} {1e3 * t_ours:>9.1f} {1e3 * t_torch:>9.1f} {1e3 * t_naive:>9.1f} "
        f"{t_torch / t_ours:>10.2f} {t_naive / t_ours:>10.2f} {mem_ours:>9.1f} "
        f"{mem_naive:>9.1f} {mem_ours / mem_naive:>9.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block-q", type=int, default=None)
    parser.add_argument("--block-k", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive path")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None

    print(f"B={args.batch} H={args.heads} d={args.head_dim} float32 causal fwd+bwd, median ms")
    print(
        f"{'N':>5} {'ours ms':>9} {'torch ms':>9} {'naive ms':>9} {'torch/ours':>10} "
        f"{'naive/ours':>10} {'ours MiB':>9} {'naive MiB':>9} {'mem ratio':>9}"
    )
    for n in args.sizes:
        print(measure(n, args, torch), flush=True)


if __name__ == "__main__":
    main()
