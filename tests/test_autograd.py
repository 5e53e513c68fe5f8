"""The engine: how gradients accumulate and flow through shared, deep and detached graphs,
when graphs are kept or freed, dtypes, reflected operators, devices and indexing."""

from __future__ import annotations

import numpy as np
import pytest

from minivlm import F, Tensor, enable_grad, no_grad, tensor
from minivlm.backend import DeviceError, cuda_available, to_numpy
from minivlm.functional.arithmetic import Mul


def grad_of(t: Tensor) -> np.ndarray:
    return to_numpy(t.grad)


def test_gradients_accumulate_across_backward_calls_until_zero_grad(randn):
    x = randn(3)
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(grad_of(x), 3.0 + 2 * x.numpy())
    x.zero_grad()
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(grad_of(x), 3.0)


def test_a_tensor_used_twice_gets_both_gradients(randn):
    x = randn(4)
    (x * x).sum().backward()
    np.testing.assert_allclose(grad_of(x), 2 * x.numpy())


def test_shared_subexpressions_sum_the_gradients_of_every_path(randn):
    x = randn(4)
    y = F.exp(x)  # used by three consumers
    (y * y + y - F.tanh(y)).sum().backward()
    e = np.exp(x.numpy())
    np.testing.assert_allclose(grad_of(x), (2 * e + 1 - (1 - np.tanh(e) ** 2)) * e, rtol=1e-12)


def test_a_graph_of_5000_chained_adds_backpropagates_without_recursion(randn):
    x = randn(2)
    y = x
    for _ in range(5000):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_array_equal(grad_of(x), 1.0)
    np.testing.assert_allclose(y.numpy(), x.numpy() + 5000)


def test_backward_twice_needs_retain_graph_the_first_time(randn):
    x = randn(3)
    loss = (x * x).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(grad_of(x), 4 * x.numpy())
    with pytest.raises(
        RuntimeError, match=r"Sum: backward through this graph a second time.*retain_graph=True"
    ):
        loss.backward()


def test_no_grad_records_no_graph_and_saves_nothing(randn):
    x = randn(3)
    mul = Mul()
    with no_grad():
        y = mul(x, x)
        with enable_grad():
            z = x * 2.0
    assert not y.requires_grad and y.creator is None and mul.saved == ()
    assert z.requires_grad and z.creator is not None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_is_lifted_even_when_its_block_raises(randn):
    x = randn(2)
    with pytest.raises(KeyError), no_grad():
        raise KeyError
    assert (x * 2.0).requires_grad


def test_detach_shares_the_values_but_stops_the_gradient(randn):
    x = randn(3)
    y = F.exp(x)
    d = y.detach()
    assert d.is_leaf and not d.requires_grad and d.data is y.data
    (x * d).sum().backward()
    np.testing.assert_allclose(grad_of(x), d.numpy())


def test_backward_on_a_leaf_and_with_an_explicit_tensor_gradient(randn):
    x = randn(3)
    x.backward(tensor(np.array([1.0, 2.0, 3.0]), device=x.device))
    np.testing.assert_array_equal(grad_of(x), [1.0, 2.0, 3.0])


def test_inputs_without_requires_grad_get_no_gradient(randn):
    x, c = randn(3), randn(3, requires_grad=False)
    (x * c).sum().backward()
    assert c.grad is None and x.grad is not None


def test_an_unused_output_of_a_two_output_op_counts_as_zero_gradient(randn):
    q, k, v = randn(1, 1, 2, 3), randn(1, 1, 4, 3), randn(1, 1, 4, 3)
    F.scaled_dot_product_attention(q, k, v, impl="naive").sum().backward()
    expected = [grad_of(t) for t in (q, k, v)]
    for t in (q, k, v):
        t.zero_grad()
    out, _weights = F.scaled_dot_product_attention(q, k, v, return_weights=True, impl="naive")
    out.sum().backward()
    for name, t, want in zip("qkv", (q, k, v), expected, strict=True):
        np.testing.assert_allclose(grad_of(t), want, rtol=1e-13, err_msg=f"d{name}")


def test_floats_default_to_float32_and_float64_is_kept_when_asked():
    assert tensor([1.0, 2.0]).dtype == np.float32
    assert tensor(np.zeros(2, dtype=np.float64)).dtype == np.float32
    assert tensor(np.zeros(2), dtype=np.float64).dtype == np.float64
    assert tensor([1, 2]).dtype.kind == "i"
    x32 = tensor([1.0], requires_grad=True)
    assert (x32 * 2.5 + 1).dtype == np.float32
    x64 = tensor([1.0], requires_grad=True, dtype=np.float64)
    y = F.exp(x64 * 2.5)
    y.sum().backward()
    assert y.dtype == np.float64 and x64.grad.dtype == np.float64


def test_a_float32_tensor_gets_a_float32_gradient_even_from_float64_operands():
    x = tensor([1.0, 2.0], requires_grad=True)
    (np.array([0.5, 3.0]) * x).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, [0.5, 3.0])


@pytest.mark.parametrize(
    "expression, expected_value, expected_grad",
    [
        (lambda a, t: a + t, [3.0, 5.0], [1.0, 1.0]),
        (lambda a, t: a - t, [1.0, 1.0], [-1.0, -1.0]),
        (lambda a, t: a * t, [2.0, 6.0], [2.0, 3.0]),
        (lambda a, t: a / t, [2.0, 1.5], [-2.0, -0.75]),
        (lambda a, t: 2.0 - t, [1.0, 0.0], [-1.0, -1.0]),
        (lambda a, t: 6.0 / t, [6.0, 3.0], [-6.0, -1.5]),
        (lambda a, t: np.float64(3.0) * t, [3.0, 6.0], [3.0, 3.0]),
        (lambda a, t: a @ t, 8.0, [2.0, 3.0]),
    ],
    ids=["add", "sub", "mul", "div", "scalar_rsub", "scalar_rdiv", "numpy_scalar_mul", "matmul"],
)
def test_ndarray_or_scalar_on_the_left_of_a_tensor_gives_a_tensor(
    expression, expected_value, expected_grad
):
    t = tensor([1.0, 2.0], requires_grad=True, dtype=np.float64)
    out = expression(np.array([2.0, 3.0]), t)
    assert isinstance(out, Tensor)
    np.testing.assert_allclose(out.numpy(), expected_value)
    out.sum().backward()
    np.testing.assert_allclose(t.grad, expected_grad)


def test_to_the_own_device_returns_the_same_tensor(device):
    x = tensor([1.0], requires_grad=True, device=device)
    assert x.to(device) is x


def test_to_an_unknown_device_names_the_choices():
    with pytest.raises(ValueError, match=r"device must be one of \('cpu', 'cuda'\), got 'tpu'"):
        tensor([1.0]).to("tpu")


def test_to_cuda_without_a_gpu_is_a_device_error():
    if cuda_available():
        pytest.skip("a GPU is present: moving to it is expected to work")
    with pytest.raises(DeviceError, match="cuda"):
        tensor([1.0]).to("cuda")


@pytest.mark.gpu
def test_to_cuda_and_back_keeps_values_and_sends_gradients_home():
    if not cuda_available():
        pytest.skip("device 'cuda' needs CuPy and a usable NVIDIA GPU")
    x = tensor([1.0, 2.0], requires_grad=True)
    on_gpu = x.to("cuda") * 3.0
    assert on_gpu.device == "cuda"
    back = on_gpu.to("cpu")
    np.testing.assert_array_equal(back.numpy(), [3.0, 6.0])
    back.sum().backward()
    assert isinstance(x.grad, np.ndarray)
    np.testing.assert_array_equal(x.grad, [3.0, 3.0])


@pytest.mark.parametrize(
    "index, expected_grad",
    [
        (np.s_[1:3], [0, 1, 1, 0, 0]),
        (np.s_[::-2], [1, 0, 1, 0, 1]),
        (-1, [0, 0, 0, 0, 1]),
        (np.array([0, 3]), [1, 0, 0, 1, 0]),
        (np.array([4, 1, 4, 4]), [0, 1, 0, 0, 3]),  # repeated ids add up
        (np.array([[0, 0], [2, 0]]), [3, 0, 1, 0, 0]),
        (np.array([True, False, True, False, False]), [1, 0, 1, 0, 0]),
        ((Ellipsis, slice(1, 4), None), [0, 1, 1, 1, 0]),
    ],
    ids=[
        "slice",
        "negative_step",
        "negative_int",
        "int_array",
        "repeated_ids",
        "2d_ids",
        "bool_mask",
        "ellipsis_slice_newaxis",
    ],
)
def test_indexing_picks_like_numpy_and_scatter_adds_the_gradient(index, expected_grad, randn):
    x = randn(5)
    picked = x[index]
    np.testing.assert_array_equal(picked.numpy(), x.numpy()[index])
    picked.sum().backward()
    np.testing.assert_array_equal(grad_of(x), expected_grad)


def test_indexing_with_a_tuple_of_slices_and_tensor_ids(randn, device):
    x = randn(3, 4)
    rows = tensor(np.array([2, 0, 2]), device=device)
    picked = x[rows, 1:3]
    np.testing.assert_array_equal(picked.numpy(), x.numpy()[[2, 0, 2], 1:3])
    picked.sum().backward()
    expected = np.zeros((3, 4))
    expected[0, 1:3], expected[2, 1:3] = 1, 2
    np.testing.assert_array_equal(grad_of(x), expected)
