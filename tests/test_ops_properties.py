"""Properties over random shapes, broadcasts, axes and masks (Hypothesis), attention
checked against a build from primitives and across its two paths, and float32 forwards
against float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes

import minivlm
from minivlm import F, gradcheck, tensor
from minivlm.backend import get_array_module, to_numpy
from minivlm.kernels_cpu import flash_attention

FEW = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**32 - 1)


def _backward_grads(fn, inputs, upstream) -> list[np.ndarray]:
    """d<upstream, fn(inputs)>/d input for every input, as host arrays."""
    for t in inputs:
        t.zero_grad()
    out = fn(*inputs)
    out.backward(upstream)
    return [to_numpy(t.grad) for t in inputs]


# -- binary ops under broadcasting -----------------------------------------------------

BINARY_OPS = {
    "add": (F.add, np.add),
    "sub": (F.sub, np.subtract),
    "mul": (F.mul, np.multiply),
    "div": (F.div, np.divide),
}


@pytest.mark.parametrize("name", BINARY_OPS)
@FEW
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3), seed=seeds)
def test_binary_op_broadcasts_like_numpy_and_sums_gradients_back(
    name, shapes, seed, device, make_tensor
):
    op, reference = BINARY_OPS[name]
    rng = np.random.default_rng(seed)
    a_shape, b_shape = shapes.input_shapes
    a = make_tensor(rng, *a_shape, device=device)
    b = make_tensor(rng, *b_shape, device=device, positive=name == "div")
    out = op(a, b)
    assert out.shape == shapes.result_shape
    np.testing.assert_allclose(out.numpy(), reference(a.numpy(), b.numpy()), rtol=1e-13)
    gradcheck(op, [a, b], seed=seed)


# -- reductions, softmax, permutations over random axes ---------------------------------


@st.composite
def shape_and_axes(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=4, max_side=3))
    axes = draw(st.none() | st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True))
    if axes is not None and draw(st.booleans()):
        axes = [a - len(shape) for a in axes]  # the same axes, counted from the end
    return shape, None if axes is None else tuple(axes)


REDUCTIONS = {"sum": (F.sum, np.sum), "mean": (F.mean, np.mean), "max": (F.max, np.max)}


@pytest.mark.parametrize("name", REDUCTIONS)
@FEW
@given(shape_axes=shape_and_axes(), keepdims=st.booleans(), seed=seeds)
def test_reduction_over_any_axes_matches_numpy_and_finite_differences(
    name, shape_axes, keepdims, seed, device, make_tensor
):
    op, reference = REDUCTIONS[name]
    shape, axes = shape_axes
    x = make_tensor(np.random.default_rng(seed), *shape, device=device)
    out = op(x, axis=axes, keepdims=keepdims)
    np.testing.assert_allclose(
        out.numpy(), reference(x.numpy(), axis=axes, keepdims=keepdims), rtol=1e-13
    )
    gradcheck(lambda t: op(t, axis=axes, keepdims=keepdims), [x], seed=seed)


@st.composite
def shape_and_dim(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=3, max_side=4))
    return shape, draw(st.integers(-len(shape), len(shape) - 1))


@FEW
@given(shape_dim=shape_and_dim(), seed=seeds)
def test_softmax_over_any_dim_is_a_distribution_and_log_softmax_is_its_log(
    shape_dim, seed, device, make_tensor
):
    shape, dim = shape_dim
    x = make_tensor(np.random.default_rng(seed), *shape, device=device)
    host = x.numpy()
    exps = np.exp(host - host.max(axis=dim, keepdims=True))
    expected = exps / exps.sum(axis=dim, keepdims=True)
    probs = F.softmax(x, dim=dim).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(probs.sum(axis=dim), 1.0, rtol=1e-12)
    np.testing.assert_allclose(
        F.log_softmax(x, dim=dim).numpy(), np.log(expected), rtol=1e-12, atol=1e-12
    )
    gradcheck(lambda t: F.softmax(t, dim=dim), [x], seed=seed)
    gradcheck(lambda t: F.log_softmax(t, dim=dim), [x], seed=seed)


@st.composite
def norm_shapes(draw):
    """A shape of x and the trailing axes (1 or 2 of them) that layer norm normalises."""
    shape = draw(array_shapes(min_dims=1, max_dims=4, max_side=4))
    return shape, shape[len(shape) - draw(st.integers(1, min(2, len(shape)))):]


@FEW
@given(shapes=norm_shapes(), affine=st.booleans(), seed=seeds)
def test_add_layer_norm_is_layer_norm_of_the_sum_in_values_and_gradients(
    shapes, affine, seed, device, make_tensor
):
    shape, normalized = shapes
    rng = np.random.default_rng(seed)
    x, residual = make_tensor(rng, *shape, device=device), make_tensor(rng, *shape, device=device)
    affine_inputs = [make_tensor(rng, *normalized, device=device) for _ in range(2 * affine)]
    inputs = [x, residual, *affine_inputs]

    def fused(x, residual, *weight_bias):
        return F.add_layer_norm(x, residual, normalized, *weight_bias)

    def unfused(x, residual, *weight_bias):
        return F.layer_norm(x + residual, normalized, *weight_bias)

    np.testing.assert_allclose(
        fused(*inputs).numpy(), unfused(*inputs).numpy(), rtol=1e-12, atol=1e-12
    )
    upstream = rng.standard_normal(shape)
    for got, want in zip(
        _backward_grads(fused, inputs, upstream),
        _backward_grads(unfused, inputs, upstream),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    gradcheck(fused, inputs, seed=seed)


@st.composite
def shape_and_permutation(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=4, max_side=3))
    return shape, tuple(draw(st.permutations(range(len(shape)))))


@FEW
@given(shape_axes=shape_and_permutation(), seed=seeds)
def test_permute_moves_axes_like_numpy_and_its_gradient_moves_them_home(
    shape_axes, seed, device, make_tensor
):
    shape, axes = shape_axes
    x = make_tensor(np.random.default_rng(seed), *shape, device=device)
    np.testing.assert_array_equal(F.permute(x, axes).numpy(), np.transpose(x.numpy(), axes))
    gradcheck(lambda t: F.permute(t, axes), [x], seed=seed)


@FEW
@given(
    ids_shape=array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5),
    vocab=st.integers(1, 6),
    seed=seeds,
)
def test_embedding_gradient_sums_every_use_of_a_row(ids_shape, vocab, seed, device, make_tensor):
    """dW[v] = sum of dy over the positions holding id v (np.add.at as the reference),
    for repeated, unused and no ids at all."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, ids_shape)
    weight = make_tensor(rng, vocab, 3, device=device)  # float64
    upstream = rng.standard_normal((*ids_shape, 3))
    (got,) = _backward_grads(
        lambda w: F.embedding(ids, w), [weight], tensor(upstream, dtype=np.float64, device=device)
    )
    expected = np.zeros((vocab, 3))
    np.add.at(expected, ids.reshape(-1), upstream.reshape(-1, 3))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


# -- attention: masks, primitives, naive vs fused ------------------------------------------


def _allowed(lq, lk, causal, key_lengths, attn_mask):
    """Boolean (B|1, H|1, Lq, Lk) of allowed pairs from the masks' definitions, or None."""
    allowed = np.ones((1, 1, lq, lk), dtype=bool)
    if causal:  # bottom-right aligned: query i sees key j iff j <= i + (Lk - Lq)
        allowed = allowed & (np.arange(lk)[None, :] <= np.arange(lq)[:, None] + lk - lq)
    if key_lengths is not None:
        allowed = allowed & (np.arange(lk) < key_lengths[:, None, None, None])
    if attn_mask is not None:
        allowed = allowed & attn_mask
    return allowed


def attention_from_primitives(q, k, v, allowed):
    """matmul, softmax over scores pushed to -inf by adding a constant, matmul."""
    xp = get_array_module(q.data)
    scores = F.matmul(q, F.transpose(k)) * (1.0 / math.sqrt(q.shape[-1]))
    scores = scores + xp.asarray(np.where(allowed, 0.0, -np.inf))
    return F.matmul(F.softmax(scores, dim=-1), v)


@st.composite
def attention_problems(draw):
    batch, heads = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    lq, lk, dim = draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    key_lengths = draw(st.none() | st.lists(st.integers(0, lk), min_size=batch, max_size=batch))
    mask_shape = (draw(st.sampled_from([1, batch])), draw(st.sampled_from([1, heads])), lq, lk)
    use_mask = draw(st.booleans())
    return {
        "shapes": ((batch, heads, lq, dim), (batch, heads, lk, dim)),
        "is_causal": draw(st.booleans()),
        "key_lengths": None if key_lengths is None else np.array(key_lengths),
        "mask_seed": draw(seeds) if use_mask else None,
        "mask_shape": mask_shape,
    }


def _attention_with(**options):
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **options)


def _qkv(make_tensor, rng, device, q_shape, kv_shape):
    return [make_tensor(rng, *s, device=device) for s in (q_shape, kv_shape, kv_shape)]


@FEW
@given(problem=attention_problems(), seed=seeds)
def test_attention_matches_primitives_and_finite_differences_under_random_masks(
    problem, seed, device, make_tensor
):
    rng = np.random.default_rng(seed)
    q_shape, kv_shape = problem["shapes"]
    q, k, v = _qkv(make_tensor, rng, device, q_shape, kv_shape)
    attn_mask = None
    if problem["mask_seed"] is not None:
        attn_mask = np.random.default_rng(problem["mask_seed"]).random(problem["mask_shape"]) > 0.3
    lengths = problem["key_lengths"]
    allowed = _allowed(q_shape[2], kv_shape[2], problem["is_causal"], lengths, attn_mask)
    xp = get_array_module(q.data)

    def explicit(q, k, v):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if attn_mask is None else xp.asarray(attn_mask),
            is_causal=problem["is_causal"], key_lengths=lengths, impl="naive",
        )  # fmt: skip

    out = explicit(q, k, v).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(
        out, attention_from_primitives(q, k, v, allowed).numpy(), rtol=1e-12, atol=1e-14
    )
    np.testing.assert_array_equal(out[np.broadcast_to(~allowed.any(-1), out.shape[:3])], 0.0)

    upstream = xp.asarray(rng.standard_normal(q_shape))
    grads = _backward_grads(explicit, [q, k, v], upstream)
    reference = _backward_grads(
        lambda *t: attention_from_primitives(*t, allowed), [q, k, v], upstream
    )
    for name, got, want in zip("qkv", grads, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13, err_msg=f"d{name}")
    gradcheck(explicit, [q, k, v], seed=seed)


@FEW
@given(
    problem=attention_problems(),
    blocks=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    seed=seeds,
)
def test_fused_attention_agrees_with_naive_for_any_tiling(
    problem, blocks, seed, device, make_tensor
):
    rng = np.random.default_rng(seed)
    q_shape, kv_shape = problem["shapes"]
    q, k, v = _qkv(make_tensor, rng, device, q_shape, kv_shape)
    upstream = get_array_module(q.data).asarray(rng.standard_normal(q_shape))
    options = {"is_causal": problem["is_causal"], "key_lengths": problem["key_lengths"]}

    def run(impl):
        fn = _attention_with(impl=impl, **options)
        return fn(q, k, v).numpy(), _backward_grads(fn, [q, k, v], upstream)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flash_attention, "DEFAULT_BLOCK_Q", blocks[0])
        patch.setattr(flash_attention, "DEFAULT_BLOCK_K", blocks[1])
        fused_out, fused_grads = run("fused")
    naive_out, naive_grads = run("naive")
    np.testing.assert_allclose(fused_out, naive_out, rtol=1e-12, atol=1e-14)
    for name, fused, naive in zip("qkv", fused_grads, naive_grads, strict=True):
        np.testing.assert_allclose(fused, naive, rtol=1e-11, atol=1e-13, err_msg=f"d{name}")


@pytest.mark.parametrize("lq, lk", [(64, 64), (40, 100), (100, 40)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_fused_attention_agrees_with_naive_across_many_tiles_with_padding(
    lq, lk, is_causal, randn, monkeypatch
):
    monkeypatch.setattr(flash_attention, "DEFAULT_BLOCK_Q", 16)
    monkeypatch.setattr(flash_attention, "DEFAULT_BLOCK_K", 32)
    q, k, v = randn(2, 2, lq, 8), randn(2, 2, lk, 8), randn(2, 2, lk, 8)
    lengths = np.array([lk, lk // 2 + 1])
    upstream = get_array_module(q.data).asarray(np.random.default_rng(1).standard_normal(q.shape))
    results = {}
    for impl in ("naive", "fused"):
        fn = _attention_with(impl=impl, is_causal=is_causal, key_lengths=lengths)
        results[impl] = [fn(q, k, v).numpy(), *_backward_grads(fn, [q, k, v], upstream)]
    for name, fused, naive in zip(
        ("out", "dq", "dk", "dv"), results["fused"], results["naive"], strict=True
    ):
        np.testing.assert_allclose(fused, naive, rtol=1e-10, atol=1e-12, err_msg=name)


# -- forward values against NumPy references ----------------------------------------------


def _np_log_softmax(z):
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _np_layer_norm(x, w, b, eps=1e-5):
    centred = x - x.mean(axis=-1, keepdims=True)
    return centred / np.sqrt((centred**2).mean(axis=-1, keepdims=True) + eps) * w + b


def _np_cross_entropy(z, t, ignore_index, smoothing):
    log_probs = _np_log_softmax(z)
    counted = t != ignore_index
    picked = log_probs[np.arange(len(t)), np.where(counted, t, 0)]
    rows = -(1 - smoothing) * picked - smoothing * log_probs.mean(axis=-1)
    return rows[counted].mean()


_erf = np.vectorize(math.erf)
IDS = np.array([[3, 0, 3], [1, 4, 0]])
TARGETS = np.array([2, -1, 0, 4])

VALUE_CASES = {
    "exp_log_sqrt_tanh": (
        lambda x: F.exp(x) + F.log(x) + F.sqrt(x) + F.tanh(x),
        lambda x: np.exp(x) + np.log(x) + np.sqrt(x) + np.tanh(x),
        [(3, 4)],
        True,
    ),
    "pow_and_sub": (lambda x: F.pow(x, 2.5) - x, lambda x: x**2.5 - x, [(3, 4)], True),
    "relu": (F.relu, lambda x: np.maximum(x, 0), [(3, 4)]),
    "gelu_exact": (F.gelu, lambda x: x * 0.5 * (1 + _erf(x / math.sqrt(2))), [(5, 4)]),
    "gelu_tanh": (
        lambda x: F.gelu(x, approximate="tanh"),
        lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
        [(5, 4)],
    ),
    "shape_ops": (
        lambda a, b: F.concat([F.transpose(a, 0, 1), F.stack([b, b], axis=0)[1]], axis=1)[:, ::2],
        lambda a, b: np.concatenate([a.swapaxes(0, 1), b], axis=1)[:, ::2],
        [(3, 2), (2, 4)],
    ),
    "matmul_batched": (F.matmul, np.matmul, [(2, 1, 3, 4), (3, 4, 5)]),
    "matmul_vectors": (F.matmul, np.matmul, [(4,), (4,)]),
    "linear": (F.linear, lambda x, w, b: x @ w.T + b, [(2, 3, 4), (5, 4), (5,)]),
    "embedding": (lambda w: F.embedding(IDS, w), lambda w: w[IDS], [(5, 3)]),
    "layer_norm": (
        lambda x, w, b: F.layer_norm(x, 6, w, b),
        _np_layer_norm,
        [(2, 3, 6), (6,), (6,)],
    ),
    "add_layer_norm": (
        lambda x, r, w, b: F.add_layer_norm(x, r, 6, w, b),
        lambda x, r, w, b: _np_layer_norm(x + r, w, b),
        [(2, 3, 6), (2, 3, 6), (6,), (6,)],
    ),
    "cross_entropy": (
        lambda z: F.cross_entropy(z, TARGETS, ignore_index=-1, label_smoothing=0.2),
        lambda z: _np_cross_entropy(z, TARGETS, -1, 0.2),
        [(4, 5)],
    ),
}


@pytest.mark.parametrize("case", VALUE_CASES.values(), ids=VALUE_CASES.keys())
def test_forward_values_match_numpy_references(case, randn):
    op, reference, shapes, *positive = case  # positive: inputs must be > 0
    inputs = [randn(*shape, positive=bool(positive)) for shape in shapes]
    want = reference(*[t.numpy() for t in inputs])
    np.testing.assert_allclose(op(*inputs).numpy(), want, rtol=1e-12, atol=1e-14)


def test_dropout_zeroes_about_p_and_scales_the_rest_by_1_over_1_minus_p(randn):
    x = randn(100, 100, positive=True)
    minivlm.manual_seed(0)
    dropped = F.dropout(x, p=0.25).numpy()
    kept = dropped != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(dropped[kept], x.numpy()[kept] / 0.75, rtol=1e-15)
    minivlm.manual_seed(0)
    np.testing.assert_array_equal(F.dropout(x, p=0.25).numpy(), dropped)  # same seed, same mask
    assert F.dropout(x, p=0.25, training=False) is x and F.dropout(x, p=0.0) is x


# -- float32 forwards agree with float64 ------------------------------------------------


def _int_ids(device, high, *shape):
    return tensor(np.random.default_rng(5).integers(0, high, shape), device=device)


FAMILIES = {
    "arithmetic": lambda r, dev: (lambda a, b: (a * b - a) / (b * b + 1) + (-a), [r(3, 4), r(4)]),
    "pow": lambda r, dev: (lambda a: F.pow(a, 2.5), [r(3, 4, positive=True)]),
    "pointwise": lambda r, dev: (
        lambda x: (
            F.exp(F.tanh(x)) + F.log(F.sqrt(x * x + 1)) + F.relu(x) + F.gelu(x) + F.gelu(x, "tanh")
        ),
        [r(4, 5)],
    ),
    "reduction": lambda r, dev: (
        lambda x: F.sum(x, axis=0) + F.mean(x, axis=(0, 2), keepdims=True) + F.max(x, axis=0),
        [r(3, 4, 5)],
    ),
    "shape": lambda r, dev: (
        lambda x, y: F.concat(
            [F.reshape(F.permute(x, (1, 0, 2)), (4, 6)), F.stack([y, y], 1)[:, 0]], 0
        )[np.array([0, 2, 2])],
        [r(2, 4, 3), r(3, 6)],
    ),
    "matmul": lambda r, dev: (
        lambda a, b, w, c: F.matmul(a, b) + F.linear(a, w, c),
        [r(2, 3, 4), r(4, 5), r(5, 4), r(5)],
    ),
    "embedding": lambda r, dev: (
        lambda w, ids: F.embedding(ids, w),
        [r(7, 3), _int_ids(dev, 7, 2, 4)],
    ),
    "layer_norm": lambda r, dev: (lambda x, w, b: F.layer_norm(x, 6, w, b), [r(3, 6), r(6), r(6)]),
    "add_layer_norm": lambda r, dev: (
        lambda x, y, w, b: F.add_layer_norm(x, y, 6, w, b),
        [r(3, 6), r(3, 6), r(6), r(6)],
    ),
    "softmax": lambda r, dev: (
        lambda x: F.softmax(x, dim=1) + F.log_softmax(x, dim=-1),
        [r(3, 4, 5)],
    ),
    "attention_naive": lambda r, dev: (
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, impl="naive"),
        [r(2, 2, 5, 4), r(2, 2, 7, 4), r(2, 2, 7, 4)],
    ),
    "attention_fused": lambda r, dev: (
        lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, key_lengths=np.array([7, 3]), impl="fused"
        ),
        [r(2, 2, 5, 4), r(2, 2, 7, 4), r(2, 2, 7, 4)],
    ),
    "cross_entropy": lambda r, dev: (
        lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1),
        [r(5, 7), _int_ids(dev, 7, 5)],
    ),
}


def _as_float32(t):
    if t.dtype.kind != "f":
        return t
    return tensor(t.data, requires_grad=True, dtype=np.float32, device=t.device)


@pytest.mark.parametrize("family", FAMILIES.values(), ids=FAMILIES.keys())
def test_float32_agrees_with_float64_and_keeps_float32_gradients(family, randn, device):
    fn, inputs64 = family(randn, device)
    inputs32 = [_as_float32(t) for t in inputs64]
    out64, out32 = fn(*inputs64), fn(*inputs32)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32.numpy(), out64.numpy(), rtol=2e-5, atol=2e-5)
    upstream = np.random.default_rng(2).standard_normal(out64.shape)
    out64.backward(upstream)
    out32.backward(upstream)
    for i, (t32, t64) in enumerate(zip(inputs32, inputs64, strict=True)):
        if t64.dtype.kind != "f":
            continue
        assert t32.grad.dtype == np.float32, (
            f"input {i}: float32 tensor got a {t32.grad.dtype} gradient"
        )
        np.testing.assert_allclose(
            to_numpy(t32.grad), to_numpy(t64.grad), rtol=1e-4, atol=1e-4, err_msg=f"input {i}"
        )
