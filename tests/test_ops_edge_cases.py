"""Numerical edge cases: logits of +-1e4, fully masked attention rows, layer norm on
rows that are far from zero, constant, or one wide; ties in max; GELU's tails."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minivlm import F, gradcheck, tensor
from minivlm.backend import get_array_module, to_numpy

HUGE_LOGITS = [[1e4, -1e4, 0.0], [1e4, 1e4, -1e4], [-1e4, -1e4, -1e4]]
LOG2, LOG3 = math.log(2), math.log(3)
UPSTREAM = np.array([[0.3, -1.2, 0.7], [1.1, 0.4, -0.5], [-0.8, 0.2, 0.9]])


def _grad(t) -> np.ndarray:
    return to_numpy(t.grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_of_logits_of_plus_minus_1e4_is_exact_and_finite(dtype, device):
    x = tensor(HUGE_LOGITS, requires_grad=True, dtype=dtype, device=device)
    probs = F.softmax(x, dim=-1)
    expected = np.array([[1, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(probs.numpy(), expected, rtol=1e-6, atol=0)
    probs.backward(UPSTREAM)
    # dx = p * (g - sum_j g_j p_j)
    expected_grad = expected * (UPSTREAM - (UPSTREAM * expected).sum(-1, keepdims=True))
    np.testing.assert_allclose(_grad(x), expected_grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_softmax_of_logits_of_plus_minus_1e4_is_exact_and_finite(dtype, device):
    x = tensor(HUGE_LOGITS, requires_grad=True, dtype=dtype, device=device)
    log_probs = F.log_softmax(x, dim=-1)
    expected = [[0, -2e4, -1e4], [-LOG2, -LOG2, -2e4 - LOG2], [-LOG3, -LOG3, -LOG3]]
    np.testing.assert_allclose(log_probs.numpy(), expected, rtol=1e-6)
    log_probs.backward(UPSTREAM)
    # dx = g - softmax * sum_j g_j
    probs = np.array([[1, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(
        _grad(x), UPSTREAM - probs * UPSTREAM.sum(-1, keepdims=True), rtol=1e-6, atol=1e-7
    )


def test_softmax_and_log_softmax_gradients_at_1e4_pass_finite_differences(device):
    x = tensor(HUGE_LOGITS, requires_grad=True, dtype=np.float64, device=device)
    gradcheck(F.softmax, [x])
    gradcheck(F.log_softmax, [x])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_of_logits_of_plus_minus_1e4_is_exact_and_finite(dtype, device):
    logits = tensor(HUGE_LOGITS, requires_grad=True, dtype=dtype, device=device)
    targets = tensor(np.array([1, 0, 2]), device=device)
    rows = F.cross_entropy(logits, targets, reduction="none")
    np.testing.assert_allclose(rows.numpy(), [2e4, LOG2, LOG3], rtol=1e-6)
    loss = F.cross_entropy(logits, targets)
    np.testing.assert_allclose(loss.item(), (2e4 + LOG2 + LOG3) / 3, rtol=1e-6)
    loss.backward()
    probs = np.array([[1, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]])
    onehot = np.eye(3)[[1, 0, 2]]
    np.testing.assert_allclose(_grad(logits), (probs - onehot) / 3, rtol=1e-6, atol=1e-7)


def test_cross_entropy_gradient_at_1e4_passes_finite_differences(device):
    logits = tensor(HUGE_LOGITS, requires_grad=True, dtype=np.float64, device=device)
    targets = tensor(np.array([1, 0, 2]), device=device)
    gradcheck(lambda z: F.cross_entropy(z, targets, label_smoothing=0.1), [logits])


def test_bare_ids_and_targets_go_to_the_device_of_the_weights(device):
    weight = tensor(np.arange(6.0).reshape(3, 2), requires_grad=True, device=device)
    rows = F.embedding([2, 0], weight)  # a list, no device of its own
    assert rows.device == device
    np.testing.assert_array_equal(rows.numpy(), [[4, 5], [0, 1]])
    losses = F.cross_entropy(rows, np.array([1, 0]), reduction="none")  # a NumPy array
    assert losses.device == device
    expected = [math.log1p(math.e**-1), math.log1p(math.e)]
    np.testing.assert_allclose(losses.numpy(), expected, rtol=1e-6)


def test_cross_entropy_with_every_target_ignored_is_zero_with_zero_gradient(randn, device):
    logits = randn(2, 3)
    loss = F.cross_entropy(logits, tensor(np.array([-100, -100]), device=device))
    loss.backward()
    assert loss.item() == 0.0
    np.testing.assert_array_equal(_grad(logits), 0.0)


# -- attention rows that may see no key ---------------------------------------------------

FULLY_MASKED = {
    # (impl, Lq, Lk, options, which (batch, query) rows see no key)
    "key_length_0_naive": ("naive", 3, 4, {"key_lengths": np.array([4, 0])}, np.s_[1, :]),
    "key_length_0_fused": ("fused", 3, 4, {"key_lengths": np.array([4, 0])}, np.s_[1, :]),
    "causal_lq_gt_lk_naive": ("naive", 5, 3, {"is_causal": True}, np.s_[:, :2]),
    "causal_lq_gt_lk_fused": ("fused", 5, 3, {"is_causal": True}, np.s_[:, :2]),
    "attn_mask_row_naive": (
        "naive",
        3,
        4,
        {"attn_mask": np.array([True, False, True])[:, None]},
        np.s_[:, 1],
    ),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", FULLY_MASKED.values(), ids=FULLY_MASKED.keys())
def test_a_query_that_sees_no_key_gets_output_0_and_gradient_0(case, dtype, randn):
    impl, lq, lk, options, hidden = case
    q, k, v = (randn(2, 2, n, 3, dtype=dtype) for n in (lq, lk, lk))
    xp = get_array_module(q.data)
    if "attn_mask" in options:
        options = {"attn_mask": xp.asarray(options["attn_mask"])}
    out = F.scaled_dot_product_attention(q, k, v, impl=impl, **options)
    out.backward(xp.ones(out.shape, dtype=dtype))
    values = out.numpy().transpose(0, 2, 1, 3)  # (B, Lq, H, d): rows indexed by (batch, query)
    d_q = _grad(q).transpose(0, 2, 1, 3)
    for name, array in (("out", values), ("dq", d_q), ("dk", _grad(k)), ("dv", _grad(v))):
        assert np.isfinite(array).all(), f"{name} has NaN or inf"
    np.testing.assert_array_equal(values[hidden], 0.0)
    np.testing.assert_array_equal(d_q[hidden], 0.0)
    visible = np.ones(values.shape[:2], dtype=bool)
    visible[hidden] = False
    assert np.abs(values[visible]).sum() > 0, "rows that see keys should not be zeroed"


def test_keys_nobody_may_see_get_gradient_0_on_both_paths(randn):
    q, k, v = randn(1, 2, 3, 4), randn(1, 2, 5, 4), randn(1, 2, 5, 4)
    for impl in ("naive", "fused"):
        for t in (q, k, v):
            t.zero_grad()
        F.scaled_dot_product_attention(
            q, k, v, key_lengths=np.array([2]), impl=impl
        ).sum().backward()
        np.testing.assert_array_equal(_grad(k)[:, :, 2:], 0.0, err_msg=impl)
        np.testing.assert_array_equal(_grad(v)[:, :, 2:], 0.0, err_msg=impl)


# -- layer norm -----------------------------------------------------------------------------


def test_layer_norm_in_float32_stays_accurate_for_mean_1e4_and_std_1e_2(device):
    rng = np.random.default_rng(0)
    rows = (1e4 + 1e-2 * rng.standard_normal((4, 256))).astype(np.float32)
    x = tensor(rows, requires_grad=True, device=device)
    out = F.layer_norm(x, 256)
    exact = rows.astype(np.float64)  # the same float32 numbers, normalised in float64
    reference = (exact - exact.mean(-1, keepdims=True)) / np.sqrt(
        exact.var(-1, keepdims=True) + 1e-5
    )
    np.testing.assert_allclose(out.numpy(), reference, atol=2e-6)

    upstream = rng.standard_normal(rows.shape)
    out.backward(upstream)
    x64 = tensor(rows, requires_grad=True, dtype=np.float64, device=device)
    F.layer_norm(x64, 256).backward(upstream)  # float64 backward: gradchecked elsewhere
    scale = np.abs(_grad(x64)).max()
    np.testing.assert_allclose(_grad(x) / scale, _grad(x64) / scale, atol=1e-6)


@pytest.mark.parametrize("value", [3.0, 1e4, -2.5e-3])
def test_layer_norm_of_a_constant_row_is_the_bias_with_a_finite_gradient(value, randn, device):
    x = tensor(np.full((2, 5), value), requires_grad=True, dtype=np.float64, device=device)
    weight, bias = randn(5), randn(5)
    out = F.layer_norm(x, 5, weight, bias)
    np.testing.assert_array_equal(out.numpy(), np.broadcast_to(bias.numpy(), (2, 5)))
    out.backward(np.arange(10.0).reshape(2, 5))
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        assert np.isfinite(_grad(t)).all(), f"d{name} is not finite"
    np.testing.assert_array_equal(_grad(weight), 0.0)  # dw = sum dy * xhat, xhat = 0
    np.testing.assert_array_equal(_grad(bias), [5, 7, 9, 11, 13])


def test_layer_norm_over_one_feature_outputs_the_bias_and_passes_no_gradient(randn):
    x, weight, bias = randn(4, 1), randn(1), randn(1)
    out = F.layer_norm(x, 1, weight, bias)
    np.testing.assert_array_equal(out.numpy(), np.broadcast_to(bias.numpy(), (4, 1)))
    out.backward(np.random.default_rng(1).standard_normal((4, 1)))
    assert (_grad(x) == 0.0).all(), f"dx should be exactly 0, got {_grad(x).ravel()}"


# -- ties, kinks and tails -------------------------------------------------------------------


def test_max_splits_the_gradient_evenly_among_ties(device):
    x = tensor([[2.0, 5.0, 5.0, 5.0], [1.0, 1.0, 0.0, -1.0]], requires_grad=True, device=device)
    F.max(x, axis=1).backward(np.array([3.0, 1.0]))
    np.testing.assert_allclose(_grad(x), [[0, 1, 1, 1], [0.5, 0.5, 0, 0]])


def test_relu_passes_no_gradient_at_exactly_zero(device):
    x = tensor([-1.0, 0.0, 2.0], requires_grad=True, device=device)
    F.relu(x).sum().backward()
    np.testing.assert_array_equal(_grad(x), [0, 0, 1])


def test_exact_gelu_follows_erf_into_both_tails(device):
    values = np.concatenate([np.linspace(-12, 12, 49), [-3.0, -2.83, 2.82, 2.83, 3.0]])
    x = tensor(values, requires_grad=True, dtype=np.float64, device=device)
    reference = [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in values]
    np.testing.assert_allclose(F.gelu(x).numpy(), reference, rtol=1e-13, atol=1e-300)
    gradcheck(F.gelu, [x])
