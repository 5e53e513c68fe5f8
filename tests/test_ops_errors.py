"""Bad input is refused with an error that names what it got and what it expected."""

from __future__ import annotations

import re

import numpy as np
import pytest

import minivlm.autograd
from minivlm import F, Tensor, tensor
from minivlm.backend import DeviceError, cuda_available


def _raises(error, *fragments):
    """pytest.raises(error) whose message must contain every fragment, literally."""
    return pytest.raises(error, match="(?s)" + ".*".join(re.escape(f) for f in fragments))


def test_binary_ops_name_both_shapes_that_do_not_broadcast(randn):
    a, b = randn(2, 3), randn(4)
    for name, op in (("add", F.add), ("sub", F.sub), ("mul", F.mul), ("div", F.div)):
        with _raises(ValueError, f"{name}: shapes (2, 3) and (4,) do not broadcast", "equal or 1"):
            op(a, b)


def test_matmul_names_the_shapes_whose_inner_sizes_differ(randn):
    with _raises(ValueError, "matmul: shapes (2, 3) and (4, 5) do not chain", "inner sizes differ"):
        F.matmul(randn(2, 3), randn(4, 5))
    with _raises(ValueError, "at least 1 dimension, got () and (3,)"):
        F.matmul(randn(), randn(3))


def test_linear_names_the_features_it_got_and_the_weight_expects(randn):
    with _raises(
        ValueError, "input has 3 features (shape (2, 3))", "weight expects 4 (weight shape (5, 4))"
    ):
        F.linear(randn(2, 3), randn(5, 4))
    with _raises(ValueError, "weight must be 2-D (out, in), got shape (4,)"):
        F.linear(randn(2, 4), randn(4))
    with _raises(ValueError, "bias must have shape (5,), got (4,)"):
        F.linear(randn(2, 4), randn(5, 4), randn(4))


def test_layer_norm_names_the_shape_it_got_and_the_normalized_shape(randn):
    with _raises(ValueError, "input shape (2, 3) does not end in normalized_shape (4,)"):
        F.layer_norm(randn(2, 3), 4)
    with _raises(ValueError, "weight has shape (3,), expected (4,)"):
        F.layer_norm(randn(2, 4), 4, weight=randn(3))
    with _raises(ValueError, "bias has shape (4, 1), expected (4,)"):
        F.layer_norm(randn(2, 4), 4, bias=randn(4, 1))
    with _raises(ValueError, "add_layer_norm: residual has shape (1, 4), expected the shape"):
        F.add_layer_norm(randn(2, 4), randn(1, 4), 4)  # no broadcasting
    with _raises(ValueError, "add_layer_norm: input shape (2, 3) does not end in"):
        F.add_layer_norm(randn(2, 3), randn(2, 3), 4)


def test_attention_names_each_bad_shape(randn):
    q, k = randn(1, 2, 3, 4), randn(1, 2, 5, 4)
    with _raises(ValueError, "query must be 4-D (B, H, L, d), got shape (2, 3, 4)"):
        F.scaled_dot_product_attention(randn(2, 3, 4), k, k)
    with _raises(ValueError, "key (1, 2, 5, 4) and value (1, 2, 6, 4) must have one shape"):
        F.scaled_dot_product_attention(q, k, randn(1, 2, 6, 4))
    with _raises(ValueError, "query (1, 2, 3, 4) and key (1, 2, 5, 3) must agree in B, H and d"):
        F.scaled_dot_product_attention(q, randn(1, 2, 5, 3), randn(1, 2, 5, 3))
    with _raises(ValueError, "attn_mask of shape (3, 4) does not broadcast to (1, 2, 3, 5)"):
        F.scaled_dot_product_attention(q, k, k, attn_mask=np.ones((3, 4), dtype=bool))


def test_attention_names_each_bad_mask_or_option(randn):
    q, k = randn(2, 1, 3, 4), randn(2, 1, 5, 4)
    with _raises(TypeError, "attn_mask must be boolean", "got dtype float64"):
        F.scaled_dot_product_attention(q, k, k, attn_mask=np.ones((3, 5)))
    with _raises(
        ValueError, "key_lengths must be integers of shape (2,), got dtype int64 shape (3,)"
    ):
        F.scaled_dot_product_attention(q, k, k, key_lengths=np.array([1, 2, 3]))
    with _raises(ValueError, "key_lengths must lie in 0..5, got [6, 1]"):
        F.scaled_dot_product_attention(q, k, k, key_lengths=np.array([6, 1]))
    with _raises(ValueError, "impl must be 'auto', 'naive' or 'fused', got 'flash'"):
        F.scaled_dot_product_attention(q, k, k, impl="flash")
    with _raises(ValueError, "impl='fused' supports is_causal and key_lengths, not attn_mask"):
        F.scaled_dot_product_attention(q, k, k, attn_mask=np.ones((3, 5), dtype=bool), impl="fused")
    with _raises(ValueError, "precision must be one of ieee, 3xtf32, tf32, got 'fp16'"):
        F.scaled_dot_product_attention(q, k, k, precision="fp16")


@pytest.mark.parametrize("precision", ["3xtf32", "tf32"])
def test_attention_on_numpy_computes_in_full_precision_whatever_precision_asks(randn, precision):
    """precision= picks the GPU's tensor-core kernels; NumPy computes in the arrays' dtype."""
    q, k = randn(2, 2, 9, 8), randn(2, 2, 11, 8)
    for impl in ("naive", "fused"):
        plain = F.scaled_dot_product_attention(q, k, k, is_causal=True, impl=impl)
        asked = F.scaled_dot_product_attention(
            q, k, k, is_causal=True, impl=impl, precision=precision
        )
        np.testing.assert_array_equal(asked.data, plain.data)


def test_an_integer_tensor_cannot_require_grad():
    with _raises(
        TypeError, "requires_grad=True needs a floating dtype, got a tensor of dtype int64"
    ):
        tensor(np.array([1, 2]), requires_grad=True)
    with _raises(TypeError, "can only become floating, not int32"):
        F.astype(tensor([1.0], requires_grad=True), np.int32)


def test_backward_names_the_shape_when_it_needs_a_gradient(randn):
    y = randn(2, 3) * 2.0
    with _raises(
        ValueError,
        "without grad= needs a tensor with one element, got shape (2, 3)",
        "grad= an array",
    ):
        y.backward()
    with _raises(ValueError, "backward(grad=...) expected shape (2, 3), got (3,)"):
        y.backward(np.ones(3))
    with _raises(RuntimeError, "backward() on a tensor that does not require grad"):
        randn(2, requires_grad=False).sum().backward()


class TensorClaimingCuda(Tensor):
    """A CPU tensor that reports device 'cuda': what an op sees when handed a GPU tensor."""

    device = property(lambda self: "cuda")


def test_tensors_on_two_devices_in_one_op_are_named_by_position():
    on_gpu = TensorClaimingCuda(np.ones(3))
    with _raises(
        DeviceError,
        "Add got tensors on different devices (input 0 on cpu, input 1 on cuda)",
        ".to()",
    ):
        F.add(tensor(np.ones(3)), on_gpu)


@pytest.mark.gpu
def test_real_cpu_and_cuda_tensors_in_one_op_are_refused():
    if not cuda_available():
        pytest.skip("device 'cuda' needs CuPy and a usable NVIDIA GPU")
    with _raises(
        DeviceError, "MatMul got tensors on different devices (input 0 on cuda, input 1 on cpu)"
    ):
        F.matmul(tensor(np.ones((2, 2)), device="cuda"), tensor(np.ones((2, 2))))


def test_backward_names_the_device_of_a_gradient_on_the_wrong_one(monkeypatch):
    y = tensor(np.ones(3), requires_grad=True) * 2.0
    upstream = np.ones(3)
    real_device_of = minivlm.autograd.device_of
    monkeypatch.setattr(
        minivlm.autograd, "device_of", lambda a: "cuda" if a is upstream else real_device_of(a)
    )
    with _raises(DeviceError, "backward(grad=...) is on cuda, the tensor on cpu"):
        y.backward(upstream)


def test_embedding_names_an_id_out_of_range_and_the_valid_range(randn):
    weight = randn(5, 2)
    with _raises(IndexError, "id 7 is out of range for 5 rows (expected 0..4)"):
        F.embedding(np.array([0, 7, 1]), weight)
    with _raises(IndexError, "id -1 is out of range for 5 rows (expected 0..4)"):
        F.embedding(np.array([0, -1]), weight)
    with _raises(TypeError, "input must hold integer ids, got dtype float64"):
        F.embedding(np.array([0.0, 1.0]), weight)


def test_cross_entropy_names_each_bad_target_and_option(randn):
    logits = randn(3, 4)
    with _raises(
        IndexError, "target 4 is out of range for 4 classes (expected 0..3 or ignore_index=-100)"
    ):
        F.cross_entropy(logits, np.array([0, 4, 1]))
    with _raises(IndexError, "target -1 is out of range for 4 classes"):
        F.cross_entropy(logits, np.array([0, -1, 1]))
    with _raises(ValueError, "reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        F.cross_entropy(logits, np.array([0, 1, 2]), reduction="avg")
    with _raises(ValueError, "label_smoothing must be in [0, 1], got 1.5"):
        F.cross_entropy(logits, np.array([0, 1, 2]), label_smoothing=1.5)
    with _raises(TypeError, "target must hold integer class ids, got dtype float64"):
        F.cross_entropy(logits, np.array([0.0, 1.0, 2.0]))
    with _raises(ValueError, "target must have shape (3,), got (2,)"):
        F.cross_entropy(logits, np.array([0, 1]))
    with _raises(ValueError, "input must be logits of shape (N, V), got (3, 4, 1)"):
        F.cross_entropy(randn(3, 4, 1), np.array([0, 1, 2]))


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5])
def test_dropout_names_a_probability_outside_0_to_1(p, randn):
    with _raises(ValueError, f"dropout: p must be in [0, 1), got {p}"):
        F.dropout(randn(3), p=p)


def test_axes_and_dims_out_of_range_are_named(randn):
    x = randn(2, 3)
    with _raises(ValueError, "softmax: dim 2 is out of range for a tensor of shape (2, 3)"):
        F.softmax(x, dim=2)
    with _raises(ValueError, "log_softmax: dim -3 is out of range for a tensor of shape (2, 3)"):
        F.log_softmax(x, dim=-3)
    with _raises(ValueError, "sum: axis 2 is out of range for a tensor with 2 dimensions"):
        F.sum(x, axis=2)
    with _raises(ValueError, "max: axis -3 is out of range for a tensor with 2 dimensions"):
        F.max(x, axis=(0, -3))
    with _raises(ValueError, "permute: axes (0, 0) are not a permutation of 2 dimensions"):
        F.permute(x, (0, 0))
    with _raises(ValueError, "permute: axes (0, 2) are not a permutation of 2 dimensions"):
        F.permute(x, (0, 2))


def test_shape_ops_name_the_shapes_that_do_not_fit(randn):
    with _raises(ValueError, "reshape: cannot view shape (2, 3) as (4, 2)"):
        F.reshape(randn(2, 3), (4, 2))
    with _raises(
        ValueError, "concat: tensor 1 has shape (3, 2), tensor 0 has (2, 3)", "except axis 1"
    ):
        F.concat([randn(2, 3), randn(3, 2)], axis=1)
    with _raises(
        ValueError, "stack: tensor 1 has shape (2, 4), tensor 0 has (2, 3)", "all shapes equal"
    ):
        F.stack([randn(2, 3), randn(2, 4)])
    with _raises(ValueError, "concat: needs at least one tensor, got none"):
        F.concat([])


def test_other_bad_arguments_are_named(randn):
    with _raises(TypeError, "pow: exponent must be a Python number, got a Tensor"):
        F.pow(randn(2), randn(1))
    with _raises(ValueError, "gelu: approximate must be 'none' or 'tanh', got 'erf'"):
        F.gelu(randn(2), approximate="erf")
    with _raises(ValueError, "item() needs a tensor with one element, got shape (2,)"):
        randn(2).item()
    with _raises(TypeError, "Add needs at least one Tensor input, got ['float', 'int']"):
        F.add(1.0, 2)
