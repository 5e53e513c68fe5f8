"""minivlm.gradcheck itself: it passes correct ops, reports what it compared, catches
planted backward bugs and names the input and element, and leaves the caller's tensors
alone."""

from __future__ import annotations

import re

import numpy as np
import pytest

from minivlm import F, Function, GradcheckError, gradcheck, tensor
from minivlm.backend import get_array_module, to_numpy
from minivlm.functional.attention import Attention
from minivlm.functional.softmax import Softmax
from minivlm.gradcheck import GradcheckReport, InputCheck


class SoftmaxIgnoringUpstream(Softmax):
    """Planted bug: the backward of softmax as if dy were all ones."""

    def backward(self, dy):
        (y,) = self.saved
        ones = get_array_module(dy).ones_like(dy)
        return y * (ones - (ones * y).sum(axis=self.axis, keepdims=True))


class AttentionWithTransposedKeyGrad(Attention):
    """Planted bug: dK = scale dS Q instead of scale dS^T Q (shapes fit when Lq == Lk)."""

    def backward(self, d_out):
        q, k, v, probs = self.saved
        d_v = probs.swapaxes(-1, -2) @ d_out
        d_probs = d_out @ v.swapaxes(-1, -2)
        d_scores = probs * (d_probs - (d_probs * probs).sum(axis=-1, keepdims=True))
        return d_scores @ k * self.scale, d_scores @ q * self.scale, d_v


class DoubleWithOneWrongElement(Function):
    """y = 2 x, whose backward is wrong at flat element `bad` only."""

    def __init__(self, bad: int):
        self.bad = bad

    def forward(self, x):
        return 2 * x

    def backward(self, dy):
        dx = 2 * dy
        dx.reshape(-1)[self.bad] += 1.0
        return dx


def _worst_element(message: str) -> tuple[int, ...]:
    found = re.search(r"worst at \(([\d, ]+)\)", message)
    assert found, f"no element named in: {message}"
    return tuple(int(i) for i in found.group(1).split(",") if i.strip())


def test_passes_a_correct_op_and_reports_every_checked_input(randn):
    x, w, b = randn(2, 3), randn(4, 3), randn(4)
    report = gradcheck(F.linear, [x, w, b])
    assert isinstance(report, GradcheckReport) and report.passed
    assert [c.index for c in report.inputs] == [0, 1, 2]
    assert [c.shape for c in report.inputs] == [(2, 3), (4, 3), (4,)]
    assert all(isinstance(c, InputCheck) and c.mode == "full" and c.passed for c in report.inputs)
    assert report.max_abs_error < 1e-8 and report.max_rel_error < 1e-6
    assert report.max_abs_error == max(c.max_abs_error for c in report.inputs)
    assert all(
        isinstance(c.worst_element, tuple) and len(c.worst_element) == 2 for c in report.inputs[:2]
    )
    assert (report.atol, report.rtol) == (1e-6, 1e-4)
    assert "input 2 (shape (4,), full check)" in str(report)


def test_softmax_backward_ignoring_its_upstream_gradient_fails_with_the_element_named(randn):
    x = randn(3, 5)
    # a plain sum cannot see the bug: the true gradient of sum(softmax(x)) is zero too
    SoftmaxIgnoringUpstream(-1)(x).sum().backward()
    np.testing.assert_allclose(to_numpy(x.grad), 0.0, atol=1e-12)

    with pytest.raises(GradcheckError) as caught:
        gradcheck(lambda t: SoftmaxIgnoringUpstream(-1)(t), [x])
    message = str(caught.value)
    assert "input 0 (shape (3, 5), full check)" in message
    row, col = _worst_element(message)
    assert 0 <= row < 3 and 0 <= col < 5
    assert "analytic" in message and "numeric" in message


def test_attention_backward_with_a_transposed_term_fails_on_the_key_only(randn):
    q, k, v = randn(1, 2, 4, 3), randn(1, 2, 4, 3), randn(1, 2, 4, 3)

    def buggy(q, k, v):
        return AttentionWithTransposedKeyGrad(0.5, None, False)(q, k, v)

    with pytest.raises(GradcheckError) as caught:
        gradcheck(buggy, [q, k, v])
    message = str(caught.value)
    assert "input 1 (shape (1, 2, 4, 3), full check)" in message
    assert "input 0" not in message and "input 2" not in message
    assert len(_worst_element(message)) == 4
    report = gradcheck(buggy, [q, k, v], raise_on_failure=False)
    assert [c.passed for c in report.inputs] == [True, False, True]


def test_large_inputs_get_random_directions_plus_a_sample_of_elements(randn):
    x = randn(20, 20)
    report = gradcheck(F.tanh, [x], full_limit=100, samples=5)
    (check,) = report.inputs
    assert check.mode == "directions+sample" and check.passed
    assert gradcheck(F.tanh, [x], full_limit=400).inputs[0].mode == "full"


def test_random_directions_catch_an_error_the_element_sample_missed(randn):
    x = randn(30, 30)
    fn = DoubleWithOneWrongElement(bad=0)
    report = gradcheck(fn, [x], full_limit=10, samples=1, seed=1, raise_on_failure=False)
    (check,) = report.inputs
    assert check.worst_element != (0, 0), "the seed should sample another element"
    assert not check.passed and check.worst_element.startswith("random direction")
    with pytest.raises(
        GradcheckError, match=r"input 0 \(shape \(30, 30\), directions\+sample check\)"
    ):
        gradcheck(fn, [x], full_limit=10, samples=1, seed=1)


def test_failure_message_shows_both_values_errors_and_tolerance(randn):
    x = randn(2, 3)
    with pytest.raises(GradcheckError) as caught:
        gradcheck(DoubleWithOneWrongElement(bad=4), [x], atol=1e-5, rtol=1e-3)
    message = str(caught.value)
    assert _worst_element(message) == (1, 1)
    analytic, numeric = (
        float(re.search(rf"{name} (\S+),", message).group(1)) for name in ("analytic", "numeric")
    )
    assert analytic - numeric == pytest.approx(1.0, abs=1e-6)
    assert "abs error 1.000e+00" in message
    assert "tolerance atol 1e-05 + rtol 0.001 * |numeric|" in message


def test_callers_tensors_keep_their_values_dtype_and_grad(device):
    x = tensor(np.random.default_rng(0).standard_normal((3, 4)), requires_grad=True, device=device)
    before = x.numpy().copy()
    report = gradcheck(F.exp, [x])
    assert report.passed
    assert x.dtype == np.float32 and x.grad is None
    np.testing.assert_array_equal(x.numpy(), before)


def test_integer_inputs_and_inputs_without_grad_are_not_checked(randn, device):
    weight = randn(5, 3)
    ids = tensor(np.array([1, 4, 1]), device=device)
    frozen = randn(3, requires_grad=False)
    report = gradcheck(lambda w, i, f: F.embedding(i, w) * f, [weight, ids, frozen])
    assert [c.index for c in report.inputs] == [0]


def test_no_input_requiring_grad_is_an_error(randn):
    with pytest.raises(ValueError, match="no input requires grad"):
        gradcheck(F.exp, [randn(3, requires_grad=False)])


def test_several_outputs_each_get_their_own_upstream_gradient(randn):
    q, k, v = randn(1, 1, 3, 2), randn(1, 1, 4, 2), randn(1, 1, 4, 2)
    report = gradcheck(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, return_weights=True, impl="naive"),
        [q, k, v],
    )
    assert report.passed and len(report.inputs) == 3
