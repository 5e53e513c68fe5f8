"""Every op with a backward against central finite differences, in float64, with a random
upstream gradient (minivlm.gradcheck), on every device of the `device` fixture.

Each case builds small inputs with `randn` and returns (function, inputs) or
(function, inputs, gradcheck options).
"""

from __future__ import annotations

import numpy as np
import pytest

import minivlm
from minivlm import F, gradcheck, tensor
from minivlm.kernels_cpu import flash_attention


def _ids(device, *values):
    return tensor(np.array(values, dtype=np.int64), device=device)


def _dropout_case(randn, device):
    def dropout_with_fixed_mask(x):  # gradcheck needs the same mask on every call
        minivlm.manual_seed(7)
        return F.dropout(x, p=0.3)

    return dropout_with_fixed_mask, [randn(4, 5)]


def _attention(**options):
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **options)


def _mask(device, lq, lk):
    """A boolean (1, 2, lq, lk) mask with one row of each head fully masked."""
    allowed = np.random.default_rng(3).random((1, 2, lq, lk)) > 0.4
    allowed[0, 0, 1] = False
    allowed[0, 1, 0] = False
    return tensor(allowed, device=device)


def _qkv(randn, lq, lk, batch=2, heads=2, dim=3):
    return [
        randn(batch, heads, lq, dim),
        randn(batch, heads, lk, dim),
        randn(batch, heads, lk, dim),
    ]


CASES = {
    # arithmetic, with broadcasting
    "add": lambda r, dev: (F.add, [r(3, 4), r(3, 4)]),
    "add_broadcast": lambda r, dev: (F.add, [r(2, 3, 4), r(3, 1)]),
    "sub_broadcast": lambda r, dev: (
        F.sub,
        [
            r(
                4,
            ),
            r(2, 3, 4),
        ],
    ),
    "mul_broadcast": lambda r, dev: (F.mul, [r(2, 1, 4), r(1, 3, 1)]),
    "div_broadcast": lambda r, dev: (F.div, [r(2, 3), r(3, positive=True)]),
    "neg": lambda r, dev: (F.neg, [r(2, 3)]),
    "pow_cube": lambda r, dev: (lambda x: F.pow(x, 3), [r(2, 3)]),
    "pow_fractional": lambda r, dev: (lambda x: F.pow(x, -1.5), [r(2, 3, positive=True)]),
    "scalar_operands": lambda r, dev: (
        lambda x: (2.0 - x) / 3.0 * 1.5 + 1.0,
        [
            r(
                3,
            )
        ],
    ),
    # pointwise
    "exp": lambda r, dev: (F.exp, [r(2, 3)]),
    "log": lambda r, dev: (F.log, [r(2, 3, positive=True)]),
    "sqrt": lambda r, dev: (F.sqrt, [r(2, 3, positive=True)]),
    "tanh": lambda r, dev: (F.tanh, [r(2, 3)]),
    "relu": lambda r, dev: (F.relu, [r(3, 4)]),
    "gelu_exact": lambda r, dev: (F.gelu, [r(3, 4) * 2]),
    "gelu_tanh": lambda r, dev: (lambda x: F.gelu(x, approximate="tanh"), [r(3, 4) * 2]),
    # reductions
    "sum_all": lambda r, dev: (F.sum, [r(2, 3, 4)]),
    "sum_axes_keepdims": lambda r, dev: (
        lambda x: F.sum(x, axis=(0, 2), keepdims=True),
        [r(2, 3, 4)],
    ),
    "mean_axis": lambda r, dev: (lambda x: F.mean(x, axis=-1), [r(2, 3, 4)]),
    "mean_all": lambda r, dev: (F.mean, [r(2, 3)]),
    "max_axis": lambda r, dev: (lambda x: F.max(x, axis=1), [r(2, 5, 3)]),
    "max_axes_keepdims": lambda r, dev: (
        lambda x: F.max(x, axis=(0, 2), keepdims=True),
        [r(2, 3, 4)],
    ),
    "max_all": lambda r, dev: (F.max, [r(3, 4)]),
    # shape
    "reshape": lambda r, dev: (lambda x: F.reshape(x, (4, -1)), [r(2, 3, 2)]),
    "transpose": lambda r, dev: (lambda x: F.transpose(x, 0, 2), [r(2, 3, 4)]),
    "permute": lambda r, dev: (lambda x: F.permute(x, (2, 0, 1)), [r(2, 3, 4)]),
    "getitem_slices": lambda r, dev: (lambda x: x[1:, ::2, -1], [r(3, 4, 2)]),
    "getitem_repeated_ids": lambda r, dev: (lambda x: x[np.array([0, 2, 0, 0])], [r(3, 2)]),
    "getitem_bool_mask": lambda r, dev: (lambda x: x[np.array([True, False, True])], [r(3, 2)]),
    "concat": lambda r, dev: (lambda a, b: F.concat([a, b], axis=1), [r(2, 3), r(2, 1)]),
    "stack": lambda r, dev: (lambda a, b: F.stack([a, b], axis=-1), [r(2, 3), r(2, 3)]),
    # matrix products
    "matmul": lambda r, dev: (F.matmul, [r(3, 4), r(4, 2)]),
    "matmul_batched_broadcast": lambda r, dev: (F.matmul, [r(2, 1, 3, 4), r(3, 4, 2)]),
    "matmul_vector_matrix": lambda r, dev: (
        F.matmul,
        [
            r(
                4,
            ),
            r(2, 4, 3),
        ],
    ),
    "matmul_matrix_vector": lambda r, dev: (
        F.matmul,
        [
            r(2, 3, 4),
            r(
                4,
            ),
        ],
    ),
    "matmul_vector_vector": lambda r, dev: (
        F.matmul,
        [
            r(
                4,
            ),
            r(
                4,
            ),
        ],
    ),
    "linear": lambda r, dev: (F.linear, [r(2, 3, 4), r(5, 4), r(5)]),
    "linear_no_bias": lambda r, dev: (F.linear, [r(3, 4), r(2, 4)]),
    # lookups and noise
    "embedding_repeated_ids": lambda r, dev: (
        lambda w, ids: F.embedding(ids, w),
        [r(5, 3), tensor(np.array([[0, 4, 0], [2, 0, 4]]), device=dev)],
    ),
    "dropout": _dropout_case,
    # normalisation and softmax
    "layer_norm_affine": lambda r, dev: (
        lambda x, w, b: F.layer_norm(x, 4, w, b),
        [r(2, 3, 4), r(4), r(4)],
    ),
    "layer_norm_plain": lambda r, dev: (lambda x: F.layer_norm(x, 5), [r(3, 5)]),
    "layer_norm_weight_only": lambda r, dev: (
        lambda x, w: F.layer_norm(x, 4, weight=w),
        [r(3, 4), r(4)],
    ),
    "layer_norm_bias_only": lambda r, dev: (
        lambda x, b: F.layer_norm(x, 4, bias=b),
        [r(3, 4), r(4)],
    ),
    "layer_norm_two_axes": lambda r, dev: (
        lambda x, w, b: F.layer_norm(x, (2, 3), w, b),
        [r(2, 2, 3), r(2, 3), r(2, 3)],
    ),
    "softmax_last": lambda r, dev: (F.softmax, [r(3, 5)]),
    "softmax_dim0": lambda r, dev: (lambda x: F.softmax(x, dim=0), [r(3, 2, 4)]),
    "log_softmax_last": lambda r, dev: (F.log_softmax, [r(3, 5)]),
    "log_softmax_dim1": lambda r, dev: (lambda x: F.log_softmax(x, dim=1), [r(2, 4, 3)]),
    # attention
    "attention_naive": lambda r, dev: (_attention(impl="naive"), _qkv(r, 3, 4)),
    "attention_naive_causal_lq_lt_lk": lambda r, dev: (
        _attention(is_causal=True, impl="naive"),
        _qkv(r, 3, 5),
    ),
    "attention_naive_causal_lq_gt_lk": lambda r, dev: (
        _attention(is_causal=True, impl="naive"),
        _qkv(r, 5, 3),
    ),
    "attention_naive_key_lengths": lambda r, dev: (
        _attention(key_lengths=np.array([4, 0]), scale=0.7, impl="naive"),
        _qkv(r, 3, 4),
    ),
    "attention_naive_attn_mask": lambda r, dev: (
        _attention(attn_mask=_mask(dev, 3, 4), impl="naive"),
        _qkv(r, 3, 4, batch=1),
    ),
    "attention_naive_return_weights": lambda r, dev: (
        _attention(is_causal=True, return_weights=True, impl="naive"),
        _qkv(r, 4, 4),
    ),
    "attention_fused": lambda r, dev: (_attention(impl="fused"), _qkv(r, 6, 9)),
    "attention_fused_causal_lq_lt_lk": lambda r, dev: (
        _attention(is_causal=True, impl="fused"),
        _qkv(r, 5, 9),
    ),
    "attention_fused_causal_lq_gt_lk": lambda r, dev: (
        _attention(is_causal=True, impl="fused"),
        _qkv(r, 9, 5),
    ),
    "attention_fused_key_lengths": lambda r, dev: (
        _attention(key_lengths=np.array([6, 0]), is_causal=True, impl="fused"),
        _qkv(r, 6, 9),
    ),
    # loss
    "cross_entropy_mean": lambda r, dev: (
        lambda z, t: F.cross_entropy(z, t),
        [r(4, 5), _ids(dev, 0, 4, 2, 2)],
    ),
    "cross_entropy_mean_ignore_index": lambda r, dev: (
        lambda z, t: F.cross_entropy(z, t, ignore_index=3),
        [r(4, 5), _ids(dev, 3, 1, 3, 4)],
    ),
    "cross_entropy_sum_ignore_index": lambda r, dev: (
        lambda z, t: F.cross_entropy(z, t, ignore_index=-1, reduction="sum"),
        [r(4, 5), _ids(dev, 1, -1, 3, -1)],
    ),
    "cross_entropy_none_smoothing": lambda r, dev: (
        lambda z, t: F.cross_entropy(z, t, reduction="none", label_smoothing=0.2),
        [r(3, 6), _ids(dev, 5, 0, 2)],
    ),
    # to float32 and back: finite differences of a float32 output need a large step
    "astype_float32": lambda r, dev: (
        lambda x: F.astype(x, np.float32),
        [r(3, 4)],
        {"step": 1e-2, "atol": 1e-4, "rtol": 1e-4},
    ),
}


@pytest.fixture
def flash_blocks_of_4(monkeypatch):
    """Tiles of 4 queries by 4 keys, so the small fused cases cross tile boundaries."""
    monkeypatch.setattr(flash_attention, "DEFAULT_BLOCK_Q", 4)
    monkeypatch.setattr(flash_attention, "DEFAULT_BLOCK_K", 4)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_analytic_gradient_matches_finite_differences(case, randn, device, flash_blocks_of_4):
    fn, inputs, *options = case(randn, device)
    report = gradcheck(fn, inputs, **(options[0] if options else {}))
    assert report.passed, str(report)


@pytest.mark.gpu
def test_gradient_of_moving_to_cuda_returns_to_the_cpu(make_tensor):
    if not minivlm.cuda_available():
        pytest.skip("device 'cuda' needs CuPy and a usable NVIDIA GPU")
    x = make_tensor(np.random.default_rng(0), 3, 4)
    report = gradcheck(lambda t: F.exp(t.to("cuda")), [x])
    assert report.passed, str(report)
