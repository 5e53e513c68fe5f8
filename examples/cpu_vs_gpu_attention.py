"""Naive vs fused attention, on NumPy and (when there is a GPU) CuPy: checked, then timed.

What it teaches: the two attention paths compute the same function with different
costs. The naive path (functional.attention.Attention) materialises the probabilities,
B*H*N*N numbers kept for the backward; the fused path (FusedAttention: the blocked
NumPy kernel of kernels_cpu, or the CUDA kernels of kernels/ through CuPy) keeps only
the output and one log-sum-exp per row, B*H*N*(d + 1) numbers. Every run is first
checked against a float64 reference (output and the three gradients) and timed only
if it is right. This is the smallest form of `minivlm bench attention`
(minivlm/bench/attention.py), which adds PyTorch, impl="auto", FLOP rates and plots.

    python examples/cpu_vs_gpu_attention.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import numpy as np

import minivlm
from minivlm import F, Tensor
from minivlm.backend import DeviceError, cuda_available, get_array_module, require_cuda, to_numpy

BATCH, HEADS, HEAD_DIM = 1, 4, 64
TOLERANCE = 1e-4  # float32 against the float64 reference: max |error| / max |reference|


def on_device(arrays: list[np.ndarray], device: str, dtype) -> list:
    """The arrays in `dtype` on `device` (NumPy or CuPy arrays), copied there once."""
    return [minivlm.tensor(a, dtype=dtype, device=device).data for a in arrays]


def forward_backward(q, k, v, d_out, impl: str) -> list:
    """out, dq, dk, dv of causal attention, as arrays on the inputs' device."""
    leaves = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*leaves, is_causal=True, impl=impl)
    out.backward(d_out)
    synchronize(out.data)
    return [out.data] + [leaf.grad for leaf in leaves]


def synchronize(array) -> None:
    """Wait for the GPU (CuPy runs asynchronously); nothing to wait for on NumPy."""
    xp = get_array_module(array)
    if xp is not np:
        xp.cuda.Device().synchronize()


def relative_error(got: list, want: list[np.ndarray]) -> float:
    return max(
        float(np.abs(to_numpy(g) - w).max() / np.abs(w).max())
        for g, w in zip(got, want, strict=True)
    )


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up: kernel compilation, caches, allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def kept_megabytes(impl: str, length: int) -> float:
    """What the backward keeps beyond q, k, v: probs (naive) or out and lse (fused), float32."""
    per_head = length * length if impl == "naive" else length * (HEAD_DIM + 1)
    return BATCH * HEADS * per_head * 4 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short sequences, fewer repeats")
    args = parser.parse_args()
    lengths, repeats = ((64, 128), 2) if args.quick else ((256, 512, 1024), 5)

    devices = ["cpu"]
    if cuda_available():
        devices.append("cuda")
        print("a GPU is here: timing CuPy too")
    else:
        try:
            require_cuda()
        except DeviceError as err:
            print(f"no GPU here, so NumPy only: {err}")

    print(f"causal attention, B={BATCH}, H={HEADS}, d={HEAD_DIM}, float32, forward + backward")
    header = ("N", "implementation", "max rel error", "ms", "kept for backward")
    print(f"{header[0]:>5}  {header[1]:<14}  {header[2]:>13}  {header[3]:>8}  {header[4]:>17}")
    rng = np.random.default_rng(0)
    for length in lengths:
        arrays = [rng.standard_normal((BATCH, HEADS, length, HEAD_DIM)) for _ in range(4)]
        reference = forward_backward(*arrays, impl="naive")  # float64 NumPy
        for device in devices:
            inputs = on_device(arrays, device, np.float32)
            for impl in ("naive", "fused"):
                name = f"{'numpy' if device == 'cpu' else 'cupy'}-{impl}"
                error = relative_error(forward_backward(*inputs, impl=impl), reference)
                if error > TOLERANCE:
                    row = f"{length:>5}  {name:<14}  {error:>13.1e}"
                    print(f"{row}  WRONG (tolerance {TOLERANCE:g}), not timed")
                    continue
                seconds = median_seconds(partial(forward_backward, *inputs, impl=impl), repeats)
                print(
                    f"{length:>5}  {name:<14}  {error:>13.1e}  {seconds * 1e3:>8.1f}  "
                    f"{kept_megabytes(impl, length):>14.2f} MB"
                )


if __name__ == "__main__":
    main()
