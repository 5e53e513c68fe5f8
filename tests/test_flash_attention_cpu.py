"""The blocked NumPy attention kernel against a naive float64 reference with explicit masks.

The reference materialises the full (B, H, Lq, Lk) scores; the kernel under test never does.
Small block sizes (block_q=4, block_k=8 and odd lengths) push every case through many
tiles: partial last blocks, tiles crossing the causal diagonal or a key length, tiles
skipped above the diagonal, rows with no valid key at all.
"""

from __future__ import annotations

import tracemalloc
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivlm.kernels_cpu import flash_attention_backward, flash_attention_forward
from minivlm.kernels_cpu.flash_attention import _Visibility

F64_TOL = dict(rtol=1e-10, atol=1e-12)
F32_TOL = dict(rtol=1e-4, atol=2e-5)


def reference_attention(q, k, v, d_out, *, scale, causal, key_lengths=None, dtype=np.float64):
    """out, lse, dq, dk, dv by materialising every score (float64 unless told), explicit masks."""
    q, k, v, d_out = (np.asarray(x, dtype=dtype) for x in (q, k, v, d_out))
    batch, _, len_q, _ = q.shape
    len_k = k.shape[2]
    query_index = np.arange(len_q)[:, None]  # (Lq, 1)
    key_index = np.arange(len_k)[None, :]  # (1, Lk)
    allowed = np.ones((batch, 1, len_q, len_k), dtype=bool)
    if causal:
        allowed &= key_index <= query_index + (len_k - len_q)  # bottom-right alignment
    if key_lengths is not None:
        allowed &= key_index < np.asarray(key_lengths)[:, None, None, None]
    has_key = allowed.any(axis=-1, keepdims=True)  # (B, 1, Lq, 1)

    scores = np.where(allowed, scale * (q @ k.swapaxes(-1, -2)), -np.inf)  # (B, H, Lq, Lk)
    row_max = np.where(has_key, scores.max(axis=-1, keepdims=True), 0.0)
    weights = np.where(allowed, np.exp(scores - row_max), 0.0)
    total = weights.sum(axis=-1, keepdims=True)
    probs = np.divide(weights, total, out=np.zeros_like(weights), where=has_key)
    out = probs @ v
    log_total = np.log(total, out=np.full_like(total, -np.inf), where=has_key)
    lse = (row_max + log_total)[..., 0]

    d_probs = d_out @ v.swapaxes(-1, -2)
    d_scores = probs * (d_probs - (probs * d_probs).sum(axis=-1, keepdims=True))
    dq = scale * (d_scores @ k)
    dk = scale * (d_scores.swapaxes(-1, -2) @ q)
    dv = probs.swapaxes(-1, -2) @ d_out
    return out, lse, dq, dk, dv


def random_inputs(rng, batch, heads, len_q, len_k, head_dim, dtype=np.float64):
    q = rng.standard_normal((batch, heads, len_q, head_dim)).astype(dtype)
    k = rng.standard_normal((batch, heads, len_k, head_dim)).astype(dtype)
    v = rng.standard_normal((batch, heads, len_k, head_dim)).astype(dtype)
    d_out = rng.standard_normal((batch, heads, len_q, head_dim)).astype(dtype)
    return q, k, v, d_out


@contextmanager
def no_float_trouble():
    """Fail on any NaN-making or overflowing operation and on every warning.

    Underflow stays allowed: exp of a very negative score rounding to 0 is intended.
    """
    with np.errstate(all="raise", under="ignore"), warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def blocked_attention(q, k, v, d_out, **options):
    with no_float_trouble():
        out, lse = flash_attention_forward(q, k, v, **options)
        grads = flash_attention_backward(q, k, v, out, lse, d_out, **options)
    return (out, lse, *grads)


def assert_matches_reference(got, want, tol, context: str) -> None:
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want, strict=True):
        np.testing.assert_allclose(g, w, **tol, err_msg=f"{name} differs ({context})")


# -- the reference itself ---------------------------------------------------------------


def test_reference_gradients_match_finite_differences():
    """The reference's dq, dk, dv are the derivatives of <out, d_out> (random d_out)."""
    rng = np.random.default_rng(0)
    q, k, v, d_out = random_inputs(rng, 1, 2, 5, 7, 3)
    options = dict(scale=0.7, causal=True, key_lengths=np.array([6]))
    grads = reference_attention(q, k, v, d_out, **options)[2:]
    inputs = [q, k, v]
    eps = 1e-6
    for index, (name, grad) in enumerate(zip(("q", "k", "v"), grads, strict=True)):
        direction = rng.standard_normal(inputs[index].shape)
        shifted = []
        for sign in (1, -1):
            moved = list(inputs)
            moved[index] = inputs[index] + sign * eps * direction
            shifted.append(np.sum(reference_attention(*moved, d_out, **options)[0] * d_out))
        numeric = (shifted[0] - shifted[1]) / (2 * eps)
        analytic = np.sum(grad * direction)
        assert abs(numeric - analytic) < 1e-6 * max(1.0, abs(analytic)), (
            f"reference d{name}: finite difference {numeric:.10g}, formula {analytic:.10g}"
        )


# -- the kernel against the reference ---------------------------------------------------

SHAPES = {
    "square": (13, 13),
    "fewer queries than keys": (7, 19),  # causal: every query sees the first Lk - Lq keys
    "more queries than keys": (19, 7),  # causal: the first Lq - Lk rows see no key
    "one query": (1, 11),
    "one key": (9, 1),
}


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("lengths", list(SHAPES.values()), ids=list(SHAPES))
def test_matches_reference_across_many_small_blocks(lengths, causal):
    len_q, len_k = lengths
    rng = np.random.default_rng(len_q * 100 + len_k)
    q, k, v, d_out = random_inputs(rng, 2, 3, len_q, len_k, 5)
    options = dict(scale=0.4, causal=causal)
    got = blocked_attention(q, k, v, d_out, **options, block_q=4, block_k=8)
    want = reference_attention(q, k, v, d_out, **options)
    assert_matches_reference(got, want, F64_TOL, f"Lq={len_q} Lk={len_k} causal={causal}")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_key_lengths_hide_padding_keys_including_length_zero(causal):
    rng = np.random.default_rng(1)
    q, k, v, d_out = random_inputs(rng, 4, 2, 11, 17, 4)
    key_lengths = np.array([17, 0, 5, 9])  # full, nothing, shorter than Lk - Lq, mid-block
    options = dict(scale=0.5, causal=causal, key_lengths=key_lengths)
    got = blocked_attention(q, k, v, d_out, **options, block_q=4, block_k=8)
    want = reference_attention(q, k, v, d_out, **options)
    assert_matches_reference(got, want, F64_TOL, f"key_lengths={key_lengths} causal={causal}")


def test_rows_without_a_valid_key_give_zero_output_minus_inf_lse_and_no_warning():
    rng = np.random.default_rng(2)
    q, k, v, d_out = random_inputs(rng, 2, 2, 10, 4, 3)
    # causal with Lq - Lk = 6: rows 0..5 see no key; item 1 has no valid key at all
    options = dict(scale=1.0, causal=True, key_lengths=np.array([4, 0]))
    out, lse, dq, dk, dv = blocked_attention(q, k, v, d_out, **options, block_q=4, block_k=2)
    no_key = np.zeros((2, 2, 10), dtype=bool)
    no_key[:, :, :6] = True
    no_key[1] = True
    assert np.all(out[no_key] == 0), "a row with no valid key must output exactly 0"
    assert np.all(lse[no_key] == -np.inf), "a row with no valid key must have lse = -inf"
    assert np.all(np.isfinite(lse[~no_key])), "rows with a valid key must have a finite lse"
    assert np.all(dq[no_key] == 0), "no gradient may reach the queries of such a row"
    assert np.all(dk[1] == 0) and np.all(dv[1] == 0), "keys nobody sees get no gradient"
    for name, array in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert not np.isnan(array).any(), f"{name} has NaN"


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_float32_agrees_with_float64_and_stays_float32(causal):
    rng = np.random.default_rng(3)
    inputs64 = random_inputs(rng, 2, 2, 37, 45, 8)
    inputs32 = [x.astype(np.float32) for x in inputs64]
    options = dict(scale=8**-0.5, causal=causal, key_lengths=np.array([45, 20]))
    got32 = blocked_attention(*inputs32, **options, block_q=16, block_k=8)
    got64 = blocked_attention(*inputs64, **options, block_q=16, block_k=8)
    for name, array in zip(("out", "lse", "dq", "dk", "dv"), got32, strict=True):
        assert array.dtype == np.float32, f"{name} is {array.dtype} for float32 inputs"
    assert_matches_reference(got32, got64, F32_TOL, f"float32 vs float64, causal={causal}")


def test_scores_far_apart_neither_overflow_nor_lose_the_row_max():
    """Scores spread over hundreds of units: exp(S) alone would overflow or vanish; the
    online max must keep every tile in range, in float32 as in float64."""
    rng = np.random.default_rng(8)
    q, k, v, d_out = random_inputs(rng, 2, 2, 23, 29, 4)
    q, k = 8 * q, 8 * k  # scores ~ N(0, 128^2)
    options = dict(scale=1.0, causal=True, key_lengths=np.array([29, 11]))
    want = reference_attention(q, k, v, d_out, **options)
    got64 = blocked_attention(q, k, v, d_out, **options, block_q=4, block_k=8)
    assert_matches_reference(got64, want, F64_TOL, "large scores, float64")
    inputs32 = [x.astype(np.float32) for x in (q, k, v, d_out)]
    got32 = blocked_attention(*inputs32, **options, block_q=4, block_k=8)
    for name, array in zip(("out", "lse", "dq", "dk", "dv"), got32, strict=True):
        assert np.isfinite(array).all(), f"float32 {name} is not finite"  # every row sees a key
    np.testing.assert_allclose(got32[0], want[0], rtol=1e-3, atol=1e-3, err_msg="float32 out")


def test_strided_views_give_the_same_result_as_contiguous_arrays():
    """q, k, v as (B, L, H, d) arrays seen as (B, H, L, d), as a model's reshape gives them."""
    rng = np.random.default_rng(9)
    q, k, v, d_out = random_inputs(rng, 2, 3, 17, 21, 8)
    strided = [
        np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3) for x in (q, k, v)
    ]
    assert not strided[0].flags.c_contiguous
    options = dict(scale=0.3, causal=True, block_q=8, block_k=16)
    got = blocked_attention(*strided, d_out, **options)
    want = blocked_attention(q, k, v, d_out, **options)
    assert_matches_reference(got, want, F64_TOL, "strided vs contiguous inputs")


def test_default_blocks_and_one_big_block_match_small_blocks():
    rng = np.random.default_rng(4)
    q, k, v, d_out = random_inputs(rng, 1, 2, 300, 700, 4)
    options = dict(scale=0.5, causal=True, key_lengths=np.array([650]))
    small = blocked_attention(q, k, v, d_out, **options, block_q=64, block_k=96)
    default = blocked_attention(q, k, v, d_out, **options)
    one_block = blocked_attention(q, k, v, d_out, **options, block_q=300, block_k=700)
    assert_matches_reference(default, small, F64_TOL, "default blocks vs 64 x 96")
    assert_matches_reference(one_block, small, F64_TOL, "one block vs 64 x 96")


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 2),
    len_q=st.integers(1, 12),
    len_k=st.integers(1, 12),
    head_dim=st.integers(1, 4),
    causal=st.booleans(),
    lengths_seed=st.one_of(st.none(), st.integers(0, 2**16)),
    block_q=st.integers(1, 8),
    block_k=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_any_shape_mask_and_block_size_matches_reference(
    batch, heads, len_q, len_k, head_dim, causal, lengths_seed, block_q, block_k, seed
):
    rng = np.random.default_rng(seed)
    q, k, v, d_out = random_inputs(rng, batch, heads, len_q, len_k, head_dim)
    key_lengths = None
    if lengths_seed is not None:
        key_lengths = np.random.default_rng(lengths_seed).integers(0, len_k + 1, size=batch)
    options = dict(scale=0.6, causal=causal, key_lengths=key_lengths)
    got = blocked_attention(q, k, v, d_out, **options, block_q=block_q, block_k=block_k)
    want = reference_attention(q, k, v, d_out, **options)
    context = (
        f"Lq={len_q} Lk={len_k} causal={causal} lengths={key_lengths} blocks={block_q},{block_k}"
    )
    assert_matches_reference(got, want, F64_TOL, context)


def test_matches_torch_sdpa_in_float32():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    q, k, v, d_out = random_inputs(rng, 2, 2, 70, 70, 16, dtype=np.float32)
    got = blocked_attention(q, k, v, d_out, scale=0.25, causal=True, block_q=16, block_k=32)
    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
    t_out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True, scale=0.25)
    t_out.backward(torch.from_numpy(d_out))
    want = [t_out.detach().numpy(), tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy()]
    for name, g, w in zip(("out", "dq", "dk", "dv"), [got[0], *got[2:]], want, strict=True):
        np.testing.assert_allclose(g, w, **F32_TOL, err_msg=f"{name} differs from torch")


# -- what the blocking buys ---------------------------------------------------------------


def test_causal_tiles_above_the_diagonal_are_never_visited_and_below_it_need_no_mask():
    visibility = _Visibility(len_q=16, len_k=16, causal=True, key_lengths=None)
    assert visibility.key_stop(8) == 8, "queries 0..7 see no key past 7"
    assert visibility.tile_mask(slice(0, 8), slice(8, 12)) is None, "below the diagonal"
    assert visibility.tile_mask(slice(8, 12), slice(8, 12)) is not None, "on the diagonal"
    shifted = _Visibility(len_q=4, len_k=10, causal=True, key_lengths=None)
    assert shifted.key_stop(2) == 8, "bottom-right: query 1 sees keys 0..7"
    lengths = _Visibility(len_q=16, len_k=16, causal=False, key_lengths=np.array([5, 9]))
    assert lengths.key_stop(16) == 9, "no key past the longest length is visited"
    assert lengths.tile_mask(slice(0, 4), slice(0, 16)) is None, "short of every length"


def _peak_traced_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_extra_memory_is_far_below_the_naive_path():
    """At N = 1024 the naive path holds several (N, N) arrays; the blocked one tiles."""
    rng = np.random.default_rng(6)
    q, k, v, d_out = random_inputs(rng, 1, 1, 1024, 1024, 64, dtype=np.float32)
    options = dict(scale=0.125, causal=True)
    blocked_peak = _peak_traced_bytes(lambda: blocked_attention(q, k, v, d_out, **options))
    naive_peak = _peak_traced_bytes(
        lambda: reference_attention(q, k, v, d_out, **options, dtype=np.float32)
    )
    assert blocked_peak < naive_peak / 4, (
        f"blocked peak {blocked_peak / 2**20:.1f} MiB is not under a quarter of the naive "
        f"path's {naive_peak / 2**20:.1f} MiB"
    )


# -- bad input ------------------------------------------------------------------------------


def _good_inputs():
    return random_inputs(np.random.default_rng(7), 2, 1, 3, 5, 4)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda q, k, v: (q[0], k, v), "q must have shape"),
        (lambda q, k, v: (q, k.astype(np.float32), v), "share one dtype"),
        (lambda q, k, v: (q.astype(np.int64), k, v), "q must be float32 or float64"),
        (lambda q, k, v: (q, k, v[:, :, :4]), "k and v must have the same shape"),
        (lambda q, k, v: (q[..., :3], k, v), "must agree on B, H and d"),
        (lambda q, k, v: (q.tolist(), k, v), "q must be a numpy array"),
    ],
)
def test_bad_arrays_are_named_in_the_error(change, message):
    q, k, v, _ = _good_inputs()
    with pytest.raises((TypeError, ValueError), match=message):
        flash_attention_forward(*change(q, k, v), scale=1.0, causal=False)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(key_lengths=np.array([1, 6])), r"key_lengths must lie in \[0, 5\]"),
        (dict(key_lengths=np.array([1])), r"key_lengths must have shape \(2,\)"),
        (dict(key_lengths=np.array([1.0, 2.0])), "key_lengths must be an integer"),
        (dict(block_q=0), "block_q must be a positive int"),
        (dict(block_k=2.5), "block_k must be a positive int"),
    ],
)
def test_bad_options_are_named_in_the_error(options, message):
    q, k, v, _ = _good_inputs()
    with pytest.raises((TypeError, ValueError), match=message):
        flash_attention_forward(q, k, v, scale=1.0, causal=False, **options)


def test_backward_rejects_saved_arrays_of_the_wrong_shape():
    q, k, v, d_out = _good_inputs()
    out, lse = flash_attention_forward(q, k, v, scale=1.0, causal=False)
    with pytest.raises(ValueError, match=r"lse must be a float64 array of shape \(2, 1, 3\)"):
        flash_attention_backward(q, k, v, out, lse[..., :2], d_out, scale=1.0, causal=False)


@pytest.mark.parametrize("cores, smallest", [(2, 40), (1, 96)])
def test_auto_takes_the_fused_path_on_the_cpu_from_40_by_40_scores_or_96_on_one_core(
    monkeypatch, cores, smallest
):
    from minivlm import F, tensor
    from minivlm.functional import attention
    from minivlm.functional.attention import Attention, FusedAttention

    monkeypatch.setattr(attention, "usable_cores", lambda: cores)
    rng = np.random.default_rng(0)
    for length, kind in ((smallest - 1, Attention), (smallest, FusedAttention)):
        shape = (1, 2, length, 8)
        q, k, v = (tensor(rng.standard_normal(shape), requires_grad=True) for _ in "qkv")
        out = F.scaled_dot_product_attention(q, k, v, impl="auto")
        assert type(out.creator) is kind, f"{length} x {length}: expected {kind.__name__}"
    q = tensor(rng.standard_normal((1, 2, 64, 8)), requires_grad=True)
    weights = F.scaled_dot_product_attention(q, q, q, return_weights=True)[1]
    assert type(weights.creator) is Attention, "weights asked for: the naive path"


@pytest.mark.parametrize("impl", ["naive", "fused"])
@pytest.mark.parametrize("split", [True, False])
def test_outputs_and_gradients_are_laid_out_as_their_inputs(impl, split):
    """Heads split from (B, L, H d) activations give an output and gradients that merge
    back without a copy; C-contiguous heads give C-contiguous ones."""
    from minivlm.functional.attention import Attention, FusedAttention

    rng = np.random.default_rng(0)
    shape = (2, 5, 3, 4)  # (B, L, H, d)
    heads = [rng.standard_normal(shape).astype(np.float32).transpose(0, 2, 1, 3) for _ in "qkv"]
    if not split:
        heads = [np.ascontiguousarray(h) for h in heads]
    fn = Attention(0.5, None, False) if impl == "naive" else FusedAttention(0.5, False, None)
    out = fn.forward(*heads)
    grads = fn.backward(np.ones(out.shape, np.float32))
    for array in (out, *grads):
        merged = array.transpose(0, 2, 1, 3) if split else array
        assert merged.flags.c_contiguous
    plain = Attention(0.5, None, False)
    np.testing.assert_allclose(out, plain.forward(*map(np.ascontiguousarray, heads)), atol=1e-6)
