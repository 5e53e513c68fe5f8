"""minivlm.gradcheck itself: it passes correct ops, reports what it compared, catches
planted backward bugs and names the input and element, and leaves the caller's tensors
alone."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from minivlm import F, Function, GradcheckError, gradcheck, tensor
from minivlm.backend import get_array_module, to_numpy
from minivlm.functional.attention import Attention
from minivlm.functional.softmax import Softmax
from minivlm.gradcheck import FunctionsReport, GradcheckReport, GradcheckWarning, InputCheck


class SoftmaxIgnoringUpstream(Softmax):
    """Planted bug: the backward of softmax as if dy were all ones."""

    def backward(self, dy):
        (y,) = self.saved
        ones = get_array_module(dy).ones_like(dy)
        return y * (ones - (ones * y).sum(axis=self.axis, keepdims=True))


class AttentionWithTransposedKeyGrad(Attention):
    """Planted bug: dK = scale dS Q instead of scale dS^T Q (shapes fit when Lq == Lk)."""

    def backward(self, d_out):
        q, k, v, probs, _ = self.saved
        d_v = probs.swapaxes(-1, -2) @ d_out
        d_probs = d_out @ v.swapaxes(-1, -2)
        d_scores = probs * (d_probs - (d_probs * probs).sum(axis=-1, keepdims=True))
        return d_scores @ k * self.scale, d_scores @ q * self.scale, d_v


class SoftmaxReturningZeros(Softmax):
    """Planted bug: a backward that returns zeros whatever comes in."""

    def backward(self, dy):
        return get_array_module(dy).zeros_like(dy)


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


def _row(message: str, name: str) -> list[str]:
    """The cells of input `name`'s row in a printed report."""
    found = re.search(rf"^{re.escape(name)}  +(\(.*?\))  +(\S+ \d+)  +(\(.*?\)|direction \d+)"
                      rf"  +(\S+)  +(\S+)  +(\S+)  +(\S+)  +(.*)$", message, re.MULTILINE)
    assert found, f"no row for {name} in:\n{message}"
    return list(found.groups())


def _worst_element(message: str, name: str) -> tuple[int, ...]:
    return tuple(int(i) for i in _row(message, name)[2].strip("()").split(",") if i.strip())


def test_passes_a_correct_op_and_reports_every_checked_input(randn):
    x, w, b = randn(2, 3), randn(4, 3), randn(4)
    report = gradcheck(F.linear, [x, w, b])
    assert isinstance(report, GradcheckReport) and report.passed
    assert [c.index for c in report.inputs] == [0, 1, 2]
    assert report.names == ["x", "weight", "bias"]  # F.linear's parameters
    assert [c.shape for c in report.inputs] == [(2, 3), (4, 3), (4,)]
    assert all(isinstance(c, InputCheck) and c.mode == "full" and c.passed for c in report.inputs)
    assert [c.compared for c in report.inputs] == [6, 12, 4]
    assert report.max_abs_error < 1e-8 and report.max_rel_error < 1e-6
    assert report.max_abs_error == max(c.max_abs_error for c in report.inputs)
    assert all(isinstance(c.element, tuple) and len(c.element) == 2 for c in report.inputs[:2])
    assert (report.atol, report.rtol, report.step) == (1e-6, 1e-4, 1e-6)
    text = str(report)
    assert _row(text, "bias")[:2] == ["(4,)", "full, 4"]
    assert "tolerance" in text.splitlines()[0]
    assert text.splitlines()[-1].startswith("passed: every compared element within tolerance")


def test_softmax_backward_ignoring_its_upstream_gradient_fails_with_the_element_named(randn):
    x = randn(3, 5)
    # a plain sum cannot see the bug: the true gradient of sum(softmax(x)) is zero too
    SoftmaxIgnoringUpstream(-1)(x).sum().backward()
    np.testing.assert_allclose(to_numpy(x.grad), 0.0, atol=1e-12)

    with pytest.raises(GradcheckError) as caught:
        gradcheck(lambda t: SoftmaxIgnoringUpstream(-1)(t), [x])
    message = str(caught.value)
    assert _row(message, "t")[:2] == ["(3, 5)", "full, 15"]
    row, col = _worst_element(message, "t")
    assert 0 <= row < 3 and 0 <= col < 5
    assert "analytic" in message and "numeric" in message and "FAILED: outside tolerance" in message


def test_attention_backward_with_a_transposed_term_fails_on_the_key_only(randn):
    q, k, v = randn(1, 2, 4, 3), randn(1, 2, 4, 3), randn(1, 2, 4, 3)

    def buggy(q, k, v):
        return AttentionWithTransposedKeyGrad(0.5, None, False)(q, k, v)

    with pytest.raises(GradcheckError) as caught:
        gradcheck(buggy, [q, k, v])
    message = str(caught.value)
    assert _row(message, "k")[-1].startswith("FAIL")
    assert _row(message, "q")[-1] == "pass" and _row(message, "v")[-1] == "pass"
    assert len(_worst_element(message, "k")) == 4
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
    assert not check.passed and check.element.startswith("direction")
    assert check.compared == 1 + 4 and check.outside >= 1
    with pytest.raises(GradcheckError) as caught:
        gradcheck(fn, [x], full_limit=10, samples=1, seed=1)
    assert _row(str(caught.value), "x")[1] == "directions+sample, 5"


def test_failure_message_shows_both_values_errors_and_tolerance(randn):
    x = randn(2, 3)
    with pytest.raises(GradcheckError) as caught:
        gradcheck(DoubleWithOneWrongElement(bad=4), [x], atol=1e-5, rtol=1e-3)
    message = str(caught.value)
    shape, mode, element, analytic, numeric, error, tolerance, result = _row(message, "x")
    assert element == "(1, 1)" and "np.int64" not in message
    assert float(analytic) - float(numeric) == pytest.approx(1.0, abs=1e-6)
    assert error == "1.0e+00"
    assert float(tolerance) == pytest.approx(1e-5 + 1e-3 * abs(float(numeric)), rel=0.05)
    assert result == "FAIL (1 outside)"
    assert "atol 1e-05 + rtol 0.001 * |numeric|" in message


def test_callers_tensors_keep_their_values_dtype_and_grad(device):
    x = tensor(np.random.default_rng(0).standard_normal((3, 4)), requires_grad=True, device=device)
    before = x.numpy().copy()
    with pytest.warns(GradcheckWarning, match="x promoted to float64"):
        report = gradcheck(F.exp, [x])
    assert "warning: x promoted to float64" in str(report)
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


def test_the_element_shown_is_the_one_with_the_largest_error_with_its_own_values(randn):
    x = randn(4, 5)
    # relu's gradient is 0 at negative x; those elements must not be shown for their 0 error
    report = gradcheck(lambda x: F.relu(x) * F.exp(x), [x])
    (check,) = report.inputs
    assert check.abs_error == check.max_abs_error > 0
    assert check.analytic != 0
    assert check.abs_error == abs(check.analytic - check.numeric)


def test_inputs_are_named_by_names_or_by_the_function_signature(randn):
    q, k, v = randn(1, 1, 2, 2), randn(1, 1, 3, 2), randn(1, 1, 3, 2)
    report = gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), [q, k, v])
    assert report.names == ["q", "k", "v"]
    named = gradcheck(lambda *xs: F.add(*xs), [randn(2), randn(2)], names=["left", "right"])
    assert named.names == ["left", "right"]
    assert gradcheck(lambda *xs: F.add(*xs), [randn(2), randn(2)]).names == ["xs[0]", "xs[1]"]
    with pytest.raises(ValueError, match="names has 1 entries for 2 inputs"):
        gradcheck(F.add, [randn(2), randn(2)], names=["a"])


def test_case_settings_are_printed_above_the_table(randn):
    report = gradcheck(F.tanh, [randn(2)], settings={"scale": 0.5, "key_lengths": [3, 1]})
    assert str(report).splitlines()[0] == "settings: scale=0.5, key_lengths=[3, 1]"


def test_a_scalar_output_warns_that_it_can_be_fooled_and_per_function_is_not(randn):
    x = randn(3, 4)

    def summed(t):
        return F.sum(SoftmaxReturningZeros(-1)(t))

    with pytest.warns(GradcheckWarning, match="every output is a scalar"):
        fooled = gradcheck(summed, [x])
    assert fooled.passed and "per_function=True" in str(fooled)
    with pytest.raises(GradcheckError) as caught:
        gradcheck(summed, [x], per_function=True)
    message = str(caught.value)
    assert "first Function whose backward is wrong: #0 SoftmaxReturningZeros(x (3, 4))" in message
    report = gradcheck(summed, [x], per_function=True, raise_on_failure=False)
    assert isinstance(report, FunctionsReport)
    assert [f.name for f in report.functions] == ["SoftmaxReturningZeros", "Sum"]
    assert report.first_failure.name == "SoftmaxReturningZeros"
    assert "tests/test_gradcheck.py" in report.first_failure.backward_at


def test_an_op_that_reduces_to_a_scalar_itself_does_not_warn(randn):
    targets = tensor(np.array([0, 2, 1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradcheckWarning)
        gradcheck(lambda z: F.cross_entropy(z, targets), [randn(3, 4)])


def test_a_failure_inside_a_composite_names_the_function_whose_backward_is_wrong(randn):
    def composite(x, w):
        return F.tanh(F.linear(SoftmaxReturningZeros(-1)(x), w))

    report = gradcheck(composite, [randn(2, 3), randn(4, 3)], raise_on_failure=False)
    assert [c.passed for c in report.inputs] == [False, True]
    assert report.culprit.name == "SoftmaxReturningZeros" and report.culprit.position == 0
    assert "culprit: #0 SoftmaxReturningZeros(x (2, 3))" in str(report)


def test_float32_arithmetic_inside_a_correct_op_fails_with_a_precision_hint(randn):
    def tanh_in_float32(x):
        return F.astype(F.tanh(F.astype(x, np.float32)), np.float64)

    report = gradcheck(tanh_in_float32, [randn(3, 4)], raise_on_failure=False)
    assert not report.passed
    (hint,) = report.hints
    assert "AsType, Tanh computed below float64" in hint and "step=1e-3" in hint
    loose = gradcheck(tanh_in_float32, [randn(3, 4)], step=1e-3, atol=1e-2, rtol=1e-2)
    assert loose.passed


def test_per_function_checks_every_recorded_function_on_its_own_inputs(randn):
    x, w, b = randn(2, 3), randn(4, 3), randn(4)
    report = gradcheck(lambda x, w, b: F.softmax(F.linear(x, w, b), dim=-1), [x, w, b],
                       per_function=True)  # fmt: skip
    assert report.passed and [f.name for f in report.functions] == ["Linear", "Softmax"]
    assert report.functions[0].report.names == ["x", "weight", "bias"]
    assert str(report).splitlines()[-1] == "passed: all 2 Functions, each on its own inputs"
