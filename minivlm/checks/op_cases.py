"""The gradient check of every op with a backward: the table behind `minivlm gradcheck`.

Each case builds small random float64 inputs on a device and a function of them; the
check is `minivlm.gradcheck` (random upstream gradient, central differences).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import functional as F
from .. import random
from ..autograd import Tensor, tensor
from ..gradcheck import GradcheckReport, gradcheck


@dataclass(frozen=True)
class OpCase:
    name: str  # what `minivlm gradcheck NAME` selects
    covers: tuple[str, ...]  # the Function classes it exercises
    build: Callable  # (rng, device) -> (fn, inputs)

    def run(self, device: str = "cpu", seed: int = 0) -> tuple[GradcheckReport, str]:
        rng = np.random.default_rng(seed)
        fn, inputs = self.build(rng, device)
        shapes = ", ".join(
            "x".join(map(str, t.shape)) or "()" for t in inputs if isinstance(t, Tensor)
        )
        return gradcheck(fn, inputs, raise_on_failure=False), shapes


def _t(rng, device, *shape, positive=False):
    data = rng.standard_normal(shape)
    if positive:
        data = np.abs(data) + 0.5
    return tensor(data, requires_grad=True, dtype=np.float64, device=device)


def _ids(rng, device, high, *shape):
    return tensor(rng.integers(0, high, size=shape), device=device)


def _unary(fn, positive=False):
    return lambda rng, dev: (fn, [_t(rng, dev, 3, 5, positive=positive)])


def _binary(fn):  # broadcasting (3, 1, 4) against (5, 4)
    return lambda rng, dev: (fn, [_t(rng, dev, 3, 1, 4), _t(rng, dev, 5, 4, positive=True)])


def _attention(causal=False, lq=5, lk=5, lengths=None, impl="naive", mask=False, weights=False):
    def build(rng, dev):
        q, k, v = _t(rng, dev, 2, 2, lq, 4), _t(rng, dev, 2, 2, lk, 4), _t(rng, dev, 2, 2, lk, 4)
        attn_mask = tensor(rng.random((2, 1, lq, lk)) > 0.3, device=dev) if mask else None
        key_lengths = None if lengths is None else tensor(np.array(lengths), device=dev)

        def fn(q, k, v):
            return F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=attn_mask,
                is_causal=causal,
                key_lengths=key_lengths,
                return_weights=weights,
                impl=impl,
            )

        return fn, [q, k, v]

    return build


def _embedding(rng, dev):
    ids = _ids(rng, dev, 6, 2, 5)  # (2, 5) rows of a (6, 3) table
    return (lambda w: F.embedding(ids, w)), [_t(rng, dev, 6, 3)]


def _dropout(rng, dev):
    def fn(x):
        random.manual_seed(7)  # the same mask on every evaluation
        return F.dropout(x, p=0.3)

    return fn, [_t(rng, dev, 4, 6)]


def _layer_norm(affine: bool):
    def build(rng, dev):
        x = _t(rng, dev, 3, 2, 6)
        if not affine:
            return (lambda x: F.layer_norm(x, 6)), [x]
        return (lambda x, w, b: F.layer_norm(x, 6, w, b)), [x, _t(rng, dev, 6), _t(rng, dev, 6)]

    return build


def _cross_entropy(reduction: str, smoothing: float):
    def build(rng, dev):
        targets = rng.integers(0, 7, size=6)
        targets[2] = -100
        target = tensor(targets, device=dev)
        return (
            lambda z: F.cross_entropy(z, target, reduction=reduction, label_smoothing=smoothing)
        ), [_t(rng, dev, 6, 7)]

    return build


CASES = [
    OpCase("add", ("Add",), _binary(F.add)),
    OpCase("sub", ("Sub",), _binary(F.sub)),
    OpCase("mul", ("Mul",), _binary(F.mul)),
    OpCase("div", ("Div",), _binary(F.div)),
    OpCase("neg", ("Neg",), _unary(F.neg)),
    OpCase("pow", ("Pow",), _unary(lambda x: F.pow(x, 2.5), positive=True)),
    OpCase("exp", ("Exp",), _unary(F.exp)),
    OpCase("log", ("Log",), _unary(F.log, positive=True)),
    OpCase("sqrt", ("Sqrt",), _unary(F.sqrt, positive=True)),
    OpCase("tanh", ("Tanh",), _unary(F.tanh)),
    OpCase("relu", ("ReLU",), _unary(F.relu)),
    OpCase("gelu", ("GELU",), _unary(F.gelu)),
    OpCase("gelu_tanh", ("GELU",), _unary(lambda x: F.gelu(x, approximate="tanh"))),
    OpCase("sum", ("Sum",), _unary(lambda x: F.sum(x, axis=1, keepdims=True))),
    OpCase("mean", ("Mean",), _unary(lambda x: F.mean(x, axis=0))),
    OpCase("max", ("Max",), _unary(lambda x: F.max(x, axis=-1))),
    OpCase("reshape", ("Reshape",), _unary(lambda x: F.reshape(x, (5, 3)))),
    OpCase("permute", ("Permute",), _unary(lambda x: F.transpose(x, 0, 1))),
    OpCase("getitem", ("GetItem",), _unary(lambda x: x[np.array([0, 2, 0]), 1:4])),
    OpCase(
        "concat",
        ("Concat",),
        lambda rng, dev: (
            lambda a, b: F.concat([a, b], axis=1),
            [_t(rng, dev, 2, 3), _t(rng, dev, 2, 4)],
        ),
    ),
    OpCase(
        "stack",
        ("Stack",),
        lambda rng, dev: (
            lambda a, b: F.stack([a, b], axis=1),
            [_t(rng, dev, 2, 3), _t(rng, dev, 2, 3)],
        ),
    ),
    OpCase(
        "matmul",
        ("MatMul",),
        lambda rng, dev: (F.matmul, [_t(rng, dev, 2, 1, 3, 4), _t(rng, dev, 3, 4, 5)]),
    ),
    OpCase(
        "linear",
        ("Linear",),
        lambda rng, dev: (F.linear, [_t(rng, dev, 2, 3, 4), _t(rng, dev, 5, 4), _t(rng, dev, 5)]),
    ),
    OpCase(
        "embedding",
        ("Embedding",),
        _embedding,
    ),
    OpCase("dropout", ("Dropout",), _dropout),
    OpCase("layer_norm", ("LayerNorm",), _layer_norm(affine=True)),
    OpCase("layer_norm_no_affine", ("LayerNorm",), _layer_norm(affine=False)),
    OpCase("softmax", ("Softmax",), _unary(lambda x: F.softmax(x, dim=-1))),
    OpCase("log_softmax", ("LogSoftmax",), _unary(lambda x: F.log_softmax(x, dim=0))),
    OpCase("attention", ("Attention",), _attention()),
    OpCase(
        "attention_causal_cross",
        ("Attention",),
        _attention(causal=True, lq=3, lk=6, lengths=[6, 2]),
    ),
    OpCase("attention_mask_weights", ("Attention",), _attention(mask=True, weights=True)),
    OpCase("attention_fused", ("FusedAttention",), _attention(impl="fused", lengths=[5, 0])),
    OpCase(
        "attention_fused_causal_cross", ("FusedAttention",), _attention(True, 7, 4, [4, 3], "fused")
    ),
    OpCase("cross_entropy", ("CrossEntropy",), _cross_entropy("mean", 0.0)),
    OpCase("cross_entropy_smooth_sum", ("CrossEntropy",), _cross_entropy("sum", 0.1)),
    OpCase("cross_entropy_none", ("CrossEntropy",), _cross_entropy("none", 0.2)),
]


def select(names: list[str] | None) -> list[OpCase]:
    """The cases named, or matching by prefix (`attention` selects every attention case)."""
    if not names:
        return CASES
    chosen = [c for c in CASES if any(c.name == n or c.name.startswith(n + "_") for n in names)]
    unknown = [
        n for n in names if not any(c.name == n or c.name.startswith(n + "_") for c in CASES)
    ]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; known: {', '.join(c.name for c in CASES)}")
    return chosen
