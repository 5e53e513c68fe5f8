"""The blocked NumPy attention run on several threads: the same bits as on one, every time.

Each thread takes a fixed run of (batch, head) groups and writes only their slices of the
outputs, so neither the thread count nor the threads' timing may change a single bit.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from minivlm.kernels_cpu import flash_attention_backward, flash_attention_forward
from minivlm.kernels_cpu.flash_attention import _Layout, _Visibility


def random_inputs(rng, batch, heads, len_q, len_k, head_dim, dtype):
    shapes = [(batch, heads, n, head_dim) for n in (len_q, len_k, len_k, len_q)]
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]  # q, k, v, d_out


def run(q, k, v, d_out, **options):
    out, lse = flash_attention_forward(q, k, v, **options)
    return (out, lse, *flash_attention_backward(q, k, v, out, lse, d_out, **options))


def assert_bit_identical(got, want, context: str) -> None:
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, f"{name}: dtype or shape ({context})"
        differ = np.count_nonzero(g.view(np.uint8) != w.view(np.uint8))
        assert differ == 0, f"{name}: {differ} bytes differ ({context})"


CASES = {
    # B, H, Lq, Lk, d, causal, key_lengths, blocks
    "heads split, causal": (2, 4, 37, 37, 8, True, None, dict(block_q=8, block_k=16)),
    "batch split, key lengths": (5, 1, 19, 23, 4, False, [23, 0, 7, 16, 1], dict(block_k=8)),
    "more threads than pairs": (1, 3, 9, 30, 4, True, None, dict(block_q=4, block_k=8)),
    "model's cross-attention": (16, 4, 16, 64, 32, False, None, {}),
    "default tiles, many groups": (2, 3, 300, 300, 16, True, [300, 170], {}),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_any_number_of_threads_gives_the_bits_of_one_thread(case, dtype):
    batch, heads, len_q, len_k, head_dim, causal, lengths, blocks = case
    rng = np.random.default_rng(len_q * 1000 + len_k)
    inputs = random_inputs(rng, batch, heads, len_q, len_k, head_dim, dtype)
    key_lengths = None if lengths is None else np.array(lengths)
    options = dict(scale=head_dim**-0.5, causal=causal, key_lengths=key_lengths, **blocks)
    one = run(*inputs, **options, workers=1)
    for workers in (2, 3, 7):
        got = run(*inputs, **options, workers=workers)
        assert_bit_identical(got, one, f"workers={workers} vs workers=1")


def test_repeated_runs_on_the_default_threads_are_bit_identical():
    rng = np.random.default_rng(1)
    inputs = random_inputs(rng, 4, 4, 200, 200, 32, np.float32)
    options = dict(scale=32**-0.5, causal=True, block_q=32, block_k=64)
    first = run(*inputs, **options)
    for attempt in range(5):
        assert_bit_identical(run(*inputs, **options), first, f"run {attempt + 2} vs run 1")


@pytest.mark.parametrize(
    "batch, heads, length, workers",
    [(3, 4, 64, 2), (5, 3, 16, 2), (1, 3, 512, 2), (64, 4, 16, 2), (2, 2, 8, 3), (1, 1, 8, 2)],
)
def test_the_pairs_are_shared_out_evenly_in_disjoint_groups(batch, heads, length, workers):
    q = np.zeros((batch, heads, length, 8), np.float32)
    visibility = _Visibility(length, length, causal=False, key_lengths=None)
    layout = _Layout.of(q, q, visibility, block_q=64, block_k=64, workers=workers)
    assert len(layout.shares) == min(workers, batch * heads), "one share a thread"
    shares = [
        [(b, h) for items, hs in share for b in range(batch)[items] for h in range(heads)[hs]]
        for share in layout.shares
    ]
    every_pair = sorted(pair for share in shares for pair in share)
    assert every_pair == [(b, h) for b in range(batch) for h in range(heads)], (
        f"every (batch, head) pair exactly once, got {shares}"
    )
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1, f"the pairs are shared out evenly, got {sizes}"
    groups = [len(range(batch)[i]) * len(range(heads)[h]) for s in layout.shares for i, h in s]
    assert max(groups) <= layout.group_cells, "no group is larger than the scratch is sized for"


def test_an_error_in_a_worker_thread_reaches_the_caller_with_its_error_state():
    """np.errstate is per thread; the kernel carries the caller's into its workers."""
    rng = np.random.default_rng(2)
    q, k, v, _ = random_inputs(rng, 2, 1, 5, 5, 4, np.float64)
    q[1, 0, 2, 0] = np.inf  # in the second batch item: the second thread's share
    with np.errstate(invalid="raise"), pytest.raises(FloatingPointError):
        flash_attention_forward(q, k, v, scale=1.0, causal=False, workers=2)


def test_the_blas_thread_count_is_restored_after_a_call():
    before = [info["num_threads"] for info in threadpool_info()]
    rng = np.random.default_rng(3)
    run(*random_inputs(rng, 2, 2, 16, 16, 4, np.float32), scale=0.5, causal=True, workers=2)
    after = [info["num_threads"] for info in threadpool_info()]
    assert after == before, f"BLAS threads were {before} before the call, {after} after"


@pytest.mark.slow
def test_extra_memory_at_2048_is_below_a_tenth_of_the_naive_paths():
    """The issue's bound, at N = 2048 on two heads (B*H = 16 would take seconds)."""
    from tests.test_flash_attention_cpu import reference_attention

    rng = np.random.default_rng(4)
    q, k, v, d_out = random_inputs(rng, 1, 2, 2048, 2048, 64, np.float32)
    options = dict(scale=0.125, causal=False)

    def peak(fn) -> int:
        tracemalloc.start()
        try:
            fn()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    outputs = 2 * q.nbytes + q.nbytes // 64 + 3 * q.nbytes  # out, lse, dq, dk, dv ...
    blocked = peak(lambda: run(q, k, v, d_out, **options, workers=2)) - outputs
    naive = peak(lambda: reference_attention(q, k, v, d_out, **options, dtype=np.float32))
    assert blocked < naive / 10, (
        f"blocked extra memory {blocked / 2**20:.1f} MiB is not under a tenth of the naive "
        f"path's {naive / 2**20:.1f} MiB"
    )


@pytest.mark.parametrize(
    "shape_q, shape_k",
    [((0, 2, 5, 4), (0, 2, 5, 4)), ((2, 0, 5, 4), (2, 0, 5, 4)), ((2, 2, 0, 4), (2, 2, 5, 4)),
     ((2, 2, 5, 4), (2, 2, 0, 4))],
    ids=["no batch", "no heads", "no queries", "no keys"],
)  # fmt: skip
def test_empty_batch_heads_or_lengths_give_empty_or_zero_results(shape_q, shape_k):
    q, k = np.ones(shape_q), np.ones(shape_k)
    out, lse, dq, dk, dv = run(q, k, k, np.ones_like(q), scale=1.0, causal=False, workers=2)
    shapes = [a.shape for a in (out, lse, dq, dk, dv)]
    assert shapes == [shape_q, shape_q[:3], shape_q, shape_k, shape_k], f"shapes {shapes}"
    if shape_k[2] == 0:
        assert not out.any() and np.all(lse == -np.inf), "with no key: out = 0, lse = -inf"


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_bad_worker_counts_are_named_in_the_error(workers):
    rng = np.random.default_rng(5)
    q, k, v, _ = random_inputs(rng, 1, 1, 3, 3, 2, np.float64)
    with pytest.raises(ValueError, match="workers must be a positive int or None"):
        flash_attention_forward(q, k, v, scale=1.0, causal=False, workers=workers)
