"""The CUDA kernels agree with naive NumPy float64 references written here.

Every output starts as NaN (loader.poisoned_outputs), so an element a kernel never writes
fails the comparison. Random inputs and random upstream gradients; float32 is held to
1e-4 and float64 to 1e-10, relative to the largest reference value.
Needs CuPy and a GPU; skipped otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest

from minivlm.backend import cuda_available

cupy = pytest.importorskip("cupy")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason="CuPy sees no usable GPU"),
]

from minivlm.kernels_cuda import (  # noqa: E402  (after the skip: these need no GPU, but the tests do)
    attention_mma,
    cross_entropy_backward,
    cross_entropy_forward,
    flash_attention_backward,
    flash_attention_forward,
    layer_norm_backward,
    layer_norm_forward,
    loader,
)
from minivlm.kernels_cuda.loader import poisoned_outputs  # noqa: E402

DTYPES = (np.float32, np.float64)
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


@pytest.fixture(autouse=True)
def nan_filled_outputs():
    with poisoned_outputs():
        yield


def random_array(rng, shape, dtype, spread=1.0):
    """Normal values rounded to `dtype`, so the float64 reference sees the same inputs."""
    return (spread * rng.standard_normal(shape)).astype(dtype)


def assert_close(name: str, got, expected: np.ndarray, dtype) -> None:
    """got (CuPy) matches the float64 reference to the dtype's tolerance, infinities included;
    a NaN anywhere (an unwritten element) fails."""
    got = cupy.asnumpy(got).astype(np.float64)
    assert got.shape == expected.shape, f"{name}: shape {got.shape}, expected {expected.shape}"
    nan_at = np.argwhere(np.isnan(got))
    assert nan_at.size == 0, (
        f"{name}: {len(nan_at)} NaN elements (unwritten?), first at {nan_at[0]}"
    )
    tolerance = TOLERANCE[np.dtype(dtype)]
    finite = np.isfinite(expected)
    magnitude = max(1.0, float(np.abs(expected[finite]).max())) if finite.any() else 1.0
    np.testing.assert_allclose(
        got, expected, rtol=tolerance, atol=tolerance * magnitude, err_msg=f"{name} ({dtype})"
    )


# ---- attention ------------------------------------------------------------------------


def attention_mask(batch, q_len, key_len, causal, key_lengths) -> np.ndarray:
    """(B, 1, Lq, Lk) True where query i may see key j."""
    lengths = np.full(batch, key_len) if key_lengths is None else np.asarray(key_lengths)
    i = np.arange(q_len)[:, None]  # (Lq, 1)
    j = np.arange(key_len)[None, :]  # (1, Lk)
    valid = j[None] < lengths[:, None, None]  # (B, 1, Lk)
    visible = j <= i + (key_len - q_len) if causal else np.ones((q_len, key_len), bool)
    return (valid & visible[None])[:, None]  # (B, 1, Lq, Lk)


def reference_attention(q, k, v, d_out, scale, causal, key_lengths):
    """Naive float64 attention on the full score matrix: (out, lse, dq, dk, dv)."""
    q, k, v, d_out = (array.astype(np.float64) for array in (q, k, v, d_out))
    batch, _, q_len, _ = q.shape
    mask = attention_mask(batch, q_len, k.shape[2], causal, key_lengths)
    scores = np.where(mask, scale * q @ k.swapaxes(-1, -2), -np.inf)  # (B, H, Lq, Lk)
    row_max = scores.max(-1, keepdims=True, initial=-np.inf)  # (B, H, Lq, 1)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)  # rows with no valid key
    weights = np.where(mask, np.exp(scores - row_max), 0.0)
    row_sum = weights.sum(-1, keepdims=True)
    has_keys = row_sum > 0
    probs = np.divide(weights, row_sum, out=np.zeros_like(weights), where=has_keys)
    out = probs @ v  # (B, H, Lq, d)
    lse = np.full(row_sum.shape, -np.inf)
    np.log(row_sum, out=lse, where=has_keys)
    lse = (lse + row_max)[..., 0]  # (B, H, Lq)
    # softmax backward through the full Jacobian-vector product:
    # d_scores = P * (dP - sum_j P dP)
    d_probs = d_out @ v.swapaxes(-1, -2)  # (B, H, Lq, Lk)
    d_scores = probs * (d_probs - (probs * d_probs).sum(-1, keepdims=True))
    dq = scale * d_scores @ k
    dk = scale * d_scores.swapaxes(-1, -2) @ q
    dv = probs.swapaxes(-1, -2) @ d_out
    return out, lse, dq, dk, dv


ATTENTION_SHAPES = [  # (B, H, Lq, Lk, d)
    (2, 2, 17, 17, 16),
    (2, 1, 1, 67, 32),
    (2, 2, 67, 130, 64),
    (2, 1, 130, 67, 128),
    (2, 3, 130, 130, 64),
    (2, 1, 65, 33, 100),
]


def attention_case(dtype, shape, masked, seed=0):
    rng = np.random.default_rng(seed)
    batch, heads, q_len, key_len, head_dim = shape
    q = random_array(rng, (batch, heads, q_len, head_dim), dtype)
    k = random_array(rng, (batch, heads, key_len, head_dim), dtype)
    v = random_array(rng, (batch, heads, key_len, head_dim), dtype)
    d_out = random_array(rng, (batch, heads, q_len, head_dim), dtype)
    # item 0 has no valid key at all; the others a random prefix
    key_lengths = None
    if masked:
        key_lengths = np.concatenate([[0], rng.integers(1, key_len + 1, batch - 1)])
    return q, k, v, d_out, key_lengths


def to_gpu(*arrays):
    return [None if array is None else cupy.asarray(array) for array in arrays]


@pytest.mark.parametrize("masked", [False, True], ids=["all_keys", "key_lengths"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_flash_attention_matches_naive_attention(dtype, shape, causal, masked):
    q, k, v, d_out, key_lengths = attention_case(dtype, shape, masked)
    scale = 1.0 / np.sqrt(shape[-1])
    expected = reference_attention(q, k, v, d_out, scale, causal, key_lengths)

    q_gpu, k_gpu, v_gpu, d_out_gpu, lengths_gpu = to_gpu(q, k, v, d_out, key_lengths)
    options = dict(scale=scale, causal=causal, key_lengths=lengths_gpu)
    out, lse = flash_attention_forward(q_gpu, k_gpu, v_gpu, **options)
    grads = flash_attention_backward(q_gpu, k_gpu, v_gpu, out, lse, d_out_gpu, **options)

    for name, got, want in zip(
        ("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), expected, strict=True
    ):
        assert_close(name, got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_rows_without_valid_keys_give_zero_output_minus_inf_lse_and_zero_gradients(dtype):
    q, k, v, d_out, _ = attention_case(dtype, (2, 2, 33, 40, 32), masked=False, seed=1)
    q, k, v, d_out = to_gpu(q, k, v, d_out)
    options = dict(scale=0.3, causal=True, key_lengths=cupy.zeros(2, dtype=cupy.int32))
    out, lse = flash_attention_forward(q, k, v, **options)
    dq, dk, dv = flash_attention_backward(q, k, v, out, lse, d_out, **options)
    assert bool((out == 0).all()), "out must be 0 where no key is valid"
    assert bool((lse == -np.inf).all()), "lse must be -inf where no key is valid"
    for name, grad in (("dq", dq), ("dk", dk), ("dv", dv)):
        assert bool((grad == 0).all()), f"{name} must be 0 when every key is masked"


def test_causal_rows_before_the_first_key_are_fully_masked():
    """Bottom-right alignment with Lq > Lk: query i sees key j iff j <= i - (Lq - Lk),
    so the first Lq - Lk queries see nothing."""
    q, k, v, _, _ = attention_case(np.float64, (1, 1, 20, 5, 16), masked=False, seed=2)
    out, lse = flash_attention_forward(*to_gpu(q, k, v), scale=0.25, causal=True)
    lse = cupy.asnumpy(lse)[0, 0]
    assert np.all(lse[:15] == -np.inf) and np.all(np.isfinite(lse[15:])), lse
    assert bool((out[0, 0, :15] == 0).all())


def test_flash_attention_backward_is_deterministic():
    q, k, v, d_out, key_lengths = attention_case(np.float32, (2, 2, 130, 130, 64), True, seed=3)
    q, k, v, d_out, key_lengths = to_gpu(q, k, v, d_out, key_lengths)
    options = dict(scale=0.125, causal=True, key_lengths=key_lengths)
    out, lse = flash_attention_forward(q, k, v, **options)
    first = flash_attention_backward(q, k, v, out, lse, d_out, **options)
    second = flash_attention_backward(q, k, v, out, lse, d_out, **options)
    for name, a, b in zip(("dq", "dk", "dv"), first, second, strict=True):
        assert bool((a == b).all()), f"{name} differs between two identical backward calls"


def test_flash_attention_rejects_bad_inputs_by_name():
    q = cupy.zeros((1, 2, 8, 16), cupy.float32)
    options = dict(scale=0.25, causal=False)
    with pytest.raises(TypeError, match="k must have the dtype of the other inputs"):
        flash_attention_forward(q, q.astype(cupy.float64), q, **options)
    with pytest.raises(TypeError, match="q must be a CuPy array"):
        flash_attention_forward(cupy.asnumpy(q), q, q, **options)
    with pytest.raises(ValueError, match="v must have shape"):
        flash_attention_forward(q, q, cupy.zeros((1, 2, 4, 16), cupy.float32), **options)
    with pytest.raises(ValueError, match="q must be C-contiguous"):
        flash_attention_forward(q.swapaxes(2, 3), q.swapaxes(2, 3), q.swapaxes(2, 3), **options)
    with pytest.raises(ValueError, match="head dim .* must be in 1..128, got 129"):
        big = cupy.zeros((1, 1, 4, 129), cupy.float32)
        flash_attention_forward(big, big, big, **options)
    with pytest.raises(ValueError, match=r"key_lengths must have shape \(1,\)"):
        flash_attention_forward(q, q, q, key_lengths=cupy.array([3, 4]), **options)
    with pytest.raises(TypeError, match="q must be float32 or float64"):
        half = q.astype(cupy.float16)
        flash_attention_forward(half, half, half, **options)


# ---- attention on tensor cores (kernels_cuda/attention_mma.py) ---------------------------

# max error relative to the largest reference value: 3xTF32 is held to float32's 1e-4;
# one TF32 MMA rounds its inputs to 11 significant bits (2^-11 = 5e-4 a product)
MMA_TOLERANCE = {"3xtf32": 1e-4, "tf32": 1e-2}
MMA_SHAPES = [*ATTENTION_SHAPES, (1, 2, 200, 200, 32), (1, 1, 1, 1, 8)]


def mma_attention(q, k, v, d_out, precision, **options):
    out, lse = attention_mma.flash_attention_forward(q, k, v, precision=precision, **options)
    grads = attention_mma.flash_attention_backward(
        q, k, v, out, lse, d_out, precision=precision, **options
    )
    return out, lse, *grads


@pytest.mark.parametrize("masked", [False, True], ids=["all_keys", "key_lengths"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", MMA_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("precision", list(MMA_TOLERANCE))
def test_mma_flash_attention_matches_naive_attention(precision, shape, causal, masked):
    q, k, v, d_out, key_lengths = attention_case(np.float32, shape, masked)
    scale = 1.0 / np.sqrt(shape[-1])
    expected = reference_attention(q, k, v, d_out, scale, causal, key_lengths)
    q_gpu, k_gpu, v_gpu, d_out_gpu, lengths_gpu = to_gpu(q, k, v, d_out, key_lengths)
    options = dict(scale=scale, causal=causal, key_lengths=lengths_gpu)
    got = mma_attention(q_gpu, k_gpu, v_gpu, d_out_gpu, precision, **options)

    tolerance = MMA_TOLERANCE[precision]
    for name, result, want in zip(("out", "lse", "dq", "dk", "dv"), got, expected, strict=True):
        result = cupy.asnumpy(result).astype(np.float64)
        assert not np.isnan(result).any(), f"{name}: NaN elements (unwritten?)"
        finite = np.isfinite(want)
        assert np.array_equal(np.isfinite(result), finite), f"{name}: infinities differ"
        magnitude = max(1.0, float(np.abs(want[finite]).max())) if finite.any() else 1.0
        error = float(np.abs(result[finite] - want[finite]).max(initial=0.0)) / magnitude
        print(f"{precision} {shape} causal={causal} masked={masked} {name}: {error:.1e}")
        assert error <= tolerance, f"{name}: max error {error:.2e} of the largest value"


@pytest.mark.parametrize("precision", list(MMA_TOLERANCE))
def test_mma_rows_without_valid_keys_give_zero_output_and_gradients(precision):
    q, k, v, d_out, _ = attention_case(np.float32, (2, 2, 33, 40, 32), masked=False, seed=1)
    q, k, v, d_out = to_gpu(q, k, v, d_out)
    options = dict(scale=0.3, causal=True, key_lengths=cupy.zeros(2, dtype=cupy.int32))
    out, lse, dq, dk, dv = mma_attention(q, k, v, d_out, precision, **options)
    assert bool((out == 0).all()) and bool((lse == -np.inf).all())
    for name, grad in (("dq", dq), ("dk", dk), ("dv", dv)):
        assert bool((grad == 0).all()), f"{name} must be 0 when every key is masked"


def test_mma_flash_attention_backward_is_deterministic():
    q, k, v, d_out, key_lengths = attention_case(np.float32, (2, 2, 130, 130, 64), True, seed=3)
    q, k, v, d_out, key_lengths = to_gpu(q, k, v, d_out, key_lengths)
    options = dict(scale=0.125, causal=True, key_lengths=key_lengths)
    first = mma_attention(q, k, v, d_out, "3xtf32", **options)
    second = mma_attention(q, k, v, d_out, "3xtf32", **options)
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), first, second, strict=True):
        assert bool((a == b).all()), f"{name} differs between two identical calls"


def test_mma_flash_attention_takes_float32_only():
    q = cupy.zeros((1, 2, 8, 16), cupy.float64)
    with pytest.raises(TypeError, match="q must have the dtype of the other inputs \\(float32\\)"):
        attention_mma.flash_attention_forward(q, q, q, scale=0.25, causal=False)


def test_mma_kernels_do_not_spill_with_cupys_own_compiler():
    """tests/test_cuda_compile.py checks nvcc's build; CuPy compiles with its NVRTC, whose
    register allocation may differ: no kernel may need local memory (spills) there either."""
    spilling = {}
    for family, by_passes in attention_mma.MMA_TILINGS.items():
        source = (attention_mma.FORWARD_SOURCE if family.endswith("forward")
                  else attention_mma.BACKWARD_SOURCE)  # fmt: skip
        for suffix, tilings in by_passes.items():
            for tiling in tilings:
                name = attention_mma.kernel_name(family, tiling, suffix)
                attributes = loader.get_kernel(source, name).attributes
                print(f"{name}: {attributes['num_regs']} registers")
                if attributes["local_size_bytes"]:
                    spilling[name] = attributes["local_size_bytes"]
    assert not spilling, f"local memory (bytes) a thread: {spilling}"


@pytest.mark.parametrize("precision", ["ieee", "3xtf32"])
def test_the_fused_path_takes_heads_split_from_a_model_as_views(precision):
    """The model's heads are strided views of (B, L, H d); the kernels read rows of d."""
    from minivlm import F, Tensor

    rng = np.random.default_rng(4)
    batch, length, heads, head_dim = 2, 40, 2, 32
    x = random_array(rng, (3, batch, length, heads * head_dim), np.float32)
    d_out = random_array(rng, (batch, heads, length, head_dim), np.float32)
    results = {}
    for device in ("cpu", "cuda"):
        leaves = [Tensor(a if device == "cpu" else cupy.asarray(a), requires_grad=True) for a in x]
        q, k, v = (t.reshape(batch, length, heads, head_dim).permute(0, 2, 1, 3) for t in leaves)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, impl="fused",
                                             precision=precision)  # fmt: skip
        out.backward(d_out if device == "cpu" else cupy.asarray(d_out))
        results[device] = [out.data, *(leaf.grad for leaf in leaves)]
    for name, got, want in zip(("out", "dq", "dk", "dv"), results["cuda"], results["cpu"],
                               strict=True):  # fmt: skip
        assert_close(name, got, want.astype(np.float64), np.float32)


# ---- cross-entropy ---------------------------------------------------------------------

IGNORE = -100


def reference_cross_entropy(logits, targets, d_loss, label_smoothing):
    """(loss (N,), row_max (N,), log_sum (N,), d_logits (N, V)) in float64."""
    logits, d_loss = logits.astype(np.float64), d_loss.astype(np.float64)
    rows, vocab = logits.shape
    row_max = logits.max(1)
    log_sum = np.log(np.exp(logits - row_max[:, None]).sum(1))
    lse = row_max + log_sum
    ignored = targets == IGNORE
    target = np.where(ignored, 0, targets)
    on_target = logits[np.arange(rows), target]
    eps = label_smoothing
    loss = (1 - eps) * (lse - on_target) + eps * (lse - logits.mean(1))
    loss[ignored] = 0.0
    one_hot = np.zeros_like(logits)
    one_hot[np.arange(rows), target] = 1.0
    softmax = np.exp(logits - lse[:, None])
    d_logits = d_loss[:, None] * (softmax - (1 - eps) * one_hot - eps / vocab)
    d_logits[ignored] = 0.0
    return loss, row_max, log_sum, d_logits


# logits near 100: exp(100) overflows float32, so this fails without the max shift;
# near 1e4: lse rounded in float32 loses the loss's digits, so this fails unless the loss
# and the softmax are formed from the shifted logits
@pytest.mark.parametrize("offset", [100.0, 1e4])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("rows, vocab", [(37, 1), (37, 5), (19, 1000), (7, 3001)])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_cross_entropy_matches_reference(dtype, rows, vocab, label_smoothing, offset):
    rng = np.random.default_rng(rows * vocab)
    logits = random_array(rng, (rows, vocab), dtype, spread=4.0) + dtype(offset)
    targets = rng.integers(0, vocab, rows)
    targets[rng.random(rows) < 0.25] = IGNORE
    d_loss = random_array(rng, (rows,), dtype)
    expected = reference_cross_entropy(logits, targets, d_loss, label_smoothing)

    options = dict(ignore_index=IGNORE, label_smoothing=label_smoothing)
    logits_gpu, targets_gpu, d_loss_gpu = to_gpu(logits, targets, d_loss)
    loss, row_max, log_sum = cross_entropy_forward(logits_gpu, targets_gpu, **options)
    d_logits = cross_entropy_backward(
        logits_gpu, targets_gpu, row_max, log_sum, d_loss_gpu, **options
    )
    for name, got, want in zip(
        ("loss", "row_max", "log_sum", "d_logits"),
        (loss, row_max, log_sum, d_logits),
        expected,
        strict=True,
    ):
        assert_close(name, got, want, dtype)


def test_cross_entropy_rejects_targets_outside_the_classes():
    logits = cupy.zeros((3, 4), cupy.float32)
    with pytest.raises(
        ValueError, match=r"targets must be class indices in \[0, 4\).*got 4 at row 1"
    ):
        cross_entropy_forward(logits, cupy.array([0, 4, IGNORE]), ignore_index=IGNORE)
    with pytest.raises(ValueError, match=r"targets must have shape \(3,\)"):
        cross_entropy_forward(logits, cupy.array([0, 1]))


# ---- layer norm ------------------------------------------------------------------------


def reference_layer_norm(x, residual, weight, bias, dy, eps):
    """(y, xhat, rstd, dx, dweight, dbias) in float64, of x + residual when given."""
    x, weight, bias, dy = (array.astype(np.float64) for array in (x, weight, bias, dy))
    if residual is not None:
        x = x + residual
    centered = x - x.mean(1)[:, None]
    rstd = 1.0 / np.sqrt((centered**2).mean(1) + eps)
    xhat = centered * rstd[:, None]
    y = xhat * weight + bias
    dxhat = dy * weight
    dx = rstd[:, None] * (
        dxhat - dxhat.mean(1, keepdims=True) - xhat * (dxhat * xhat).mean(1, keepdims=True)
    )
    return y, xhat, rstd, dx, (dy * xhat).sum(0), dy.sum(0)


@pytest.mark.parametrize(
    "rows, columns", [(37, 1), (37, 7), (5, 64), (300, 100), (1000, 33), (9, 3000)]
)
@pytest.mark.parametrize("with_residual", [False, True], ids=["x", "x+residual"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_layer_norm_matches_reference(dtype, with_residual, rows, columns):
    rng = np.random.default_rng(rows + columns)
    x = random_array(rng, (rows, columns), dtype, spread=3.0) + dtype(2.0)
    residual = random_array(rng, (rows, columns), dtype) if with_residual else None
    weight = random_array(rng, (columns,), dtype)
    bias = random_array(rng, (columns,), dtype)
    dy = random_array(rng, (rows, columns), dtype)
    eps = 1e-5
    expected = reference_layer_norm(x, residual, weight, bias, dy, eps)

    x_gpu, residual_gpu, weight_gpu, bias_gpu, dy_gpu = to_gpu(x, residual, weight, bias, dy)
    y, xhat, rstd = layer_norm_forward(x_gpu, weight_gpu, bias_gpu, eps=eps, residual=residual_gpu)
    grads = layer_norm_backward(dy_gpu, xhat, weight_gpu, rstd)
    names = ("y", "xhat", "rstd", "dx", "dweight", "dbias")
    for name, got, want in zip(names, (y, xhat, rstd, *grads), expected, strict=True):
        assert_close(name, got, want, dtype)


def test_layer_norm_rejects_a_weight_or_residual_of_the_wrong_shape():
    x = cupy.zeros((4, 8), cupy.float64)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        layer_norm_forward(x, cupy.ones(7), cupy.zeros(8), eps=1e-5)
    with pytest.raises(ValueError, match=r"residual must have shape \(4, 8\)"):
        layer_norm_forward(x, cupy.ones(8), cupy.zeros(8), eps=1e-5, residual=cupy.zeros((4, 7)))
