"""The gradient check of every op with a backward: the table behind `minivlm gradcheck`.

Each case builds small random float64 inputs on a device and a function of them; the
check is `minivlm.gradcheck` (random upstream gradient, central differences).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import functional as F
from .. import random
from ..autograd import tensor
from ..functional.attention import FusedAttention
from ..gradcheck import GradcheckReport, gradcheck


@dataclass(frozen=True)
class OpCase:
    name: str  # what `minivlm gradcheck NAME` selects
    covers: tuple[str, ...]  # the Function classes it exercises
    build: Callable  # (rng, device) -> (fn, inputs, settings)
    function: str = ""  # the minivlm.F function it calls, when not `name`

    @property
    def op(self) -> str:
        """The minivlm.F function this case calls (`minivlm gradcheck OP` selects it too)."""
        return self.function or self.name

    def run(self, device: str = "cpu", seed: int = 0) -> GradcheckReport:
        rng = np.random.default_rng(seed)
        fn, inputs, settings = self.build(rng, device)
        return gradcheck(fn, inputs, settings=settings, raise_on_failure=False)


def _t(rng, device, *shape, positive=False):
    data = rng.standard_normal(shape)
    if positive:
        data = np.abs(data) + 0.5
    return tensor(data, requires_grad=True, dtype=np.float64, device=device)


def _ids(rng, device, high, *shape):
    return tensor(rng.integers(0, high, size=shape), device=device)


def _unary(fn, positive=False):
    return lambda rng, dev: (fn, [_t(rng, dev, 3, 5, positive=positive)], {})


def _binary(fn):  # broadcasting (3, 1, 4) against (5, 4)
    return lambda rng, dev: (
        fn, [_t(rng, dev, 3, 1, 4), _t(rng, dev, 5, 4, positive=True)], {}
    )  # fmt: skip


# The fused cases run the NumPy kernels with tiles of FUSED_TILES["block_q"] queries by
# FUSED_TILES["block_k"] keys, so that every case spans several tiles both ways and the
# online softmax's rescaling by exp(m - m') is exercised (the CUDA kernels fix their own).
FUSED_TILES = {"block_q": 2, "block_k": 3}
SDPA = "scaled_dot_product_attention"


def _attention(causal=False, lq=5, lk=5, lengths=None, impl="naive", mask=False, weights=False):
    def build(rng, dev):
        q, k, v = _t(rng, dev, 2, 2, lq, 4), _t(rng, dev, 2, 2, lk, 4), _t(rng, dev, 2, 2, lk, 4)
        attn_mask = tensor(rng.random((2, 1, lq, lk)) > 0.3, device=dev) if mask else None
        key_lengths = None if lengths is None else tensor(np.array(lengths), device=dev)
        scale = 1.0 / math.sqrt(q.shape[-1])
        settings = {"impl": impl, "scale": f"{scale:g} (1/sqrt(d))", "is_causal": causal}
        if lengths is not None:
            settings["key_lengths"] = list(lengths)
        if mask:
            settings["attn_mask (allowed = 1)"] = _mask_rows(attn_mask.numpy())
        if weights:
            settings["return_weights"] = True
        if impl == "fused" and dev == "cpu":
            settings.update(FUSED_TILES)
            lengths_array = None if key_lengths is None else key_lengths.data.astype(np.int32)

            def fused(q, k, v):  # the Function F.scaled_dot_product_attention takes
                return FusedAttention(scale, causal, lengths_array, FUSED_TILES)(q, k, v)

            return fused, [q, k, v], settings

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

        return fn, [q, k, v], settings

    return build


def _mask_rows(mask: np.ndarray) -> str:
    """(B, 1, Lq, Lk) booleans as 'item 0: 10111/01101/...; item 1: ...'."""
    items = []
    for b, item in enumerate(mask[:, 0]):
        rows = "/".join("".join("1" if a else "0" for a in row) for row in item)
        items.append(f"item {b}: {rows}")
    return "; ".join(items)


def _embedding(rng, dev):
    ids = _ids(rng, dev, 6, 2, 5)  # (2, 5) rows of a (6, 3) table
    settings = {"ids": ids.numpy().tolist()}
    return (lambda weight: F.embedding(ids, weight)), [_t(rng, dev, 6, 3)], settings


def _dropout(rng, dev):
    def fn(x):
        random.manual_seed(7)  # the same mask on every evaluation
        return F.dropout(x, p=0.3)

    return fn, [_t(rng, dev, 4, 6)], {"p": 0.3, "seed": 7}


def _layer_norm(affine: bool):
    def build(rng, dev):
        x = _t(rng, dev, 3, 2, 6)
        settings = {"normalized_shape": 6, "eps": 1e-5}
        if not affine:
            return (lambda x: F.layer_norm(x, 6)), [x], settings
        inputs = [x, _t(rng, dev, 6), _t(rng, dev, 6)]
        return (lambda x, weight, bias: F.layer_norm(x, 6, weight, bias)), inputs, settings

    return build


def _add_layer_norm(rng, dev):
    def fn(x, residual, weight, bias):
        return F.add_layer_norm(x, residual, 6, weight, bias)

    inputs = [_t(rng, dev, 3, 2, 6), _t(rng, dev, 3, 2, 6), _t(rng, dev, 6), _t(rng, dev, 6)]
    return fn, inputs, {"normalized_shape": 6, "eps": 1e-5}


def _cross_entropy(reduction: str, smoothing: float):
    def build(rng, dev):
        targets = rng.integers(0, 7, size=6)
        targets[2] = -100
        target = tensor(targets, device=dev)
        settings = {"targets": targets.tolist(), "ignore_index": -100,
                    "reduction": reduction, "label_smoothing": smoothing}  # fmt: skip

        def fn(logits):
            return F.cross_entropy(logits, target, reduction=reduction, label_smoothing=smoothing)

        return fn, [_t(rng, dev, 6, 7)], settings

    return build


def _pair(fn, first, second):
    return lambda rng, dev: (fn, [_t(rng, dev, *first), _t(rng, dev, *second)], {})


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
    OpCase("gelu_tanh", ("GELU",), _unary(lambda x: F.gelu(x, approximate="tanh")), "gelu"),
    OpCase("sum", ("Sum",), _unary(lambda x: F.sum(x, axis=1, keepdims=True))),
    OpCase("mean", ("Mean",), _unary(lambda x: F.mean(x, axis=0))),
    OpCase("max", ("Max",), _unary(lambda x: F.max(x, axis=-1))),
    OpCase("reshape", ("Reshape",), _unary(lambda x: F.reshape(x, (5, 3)))),
    OpCase("permute", ("Permute",), _unary(lambda x: F.permute(x, 1, 0))),
    OpCase("transpose", ("Permute",), _unary(lambda x: F.transpose(x, 0, 1))),
    OpCase("getitem", ("GetItem",), _unary(lambda x: x[np.array([0, 2, 0]), 1:4])),
    OpCase("concat", ("Concat",), _pair(lambda a, b: F.concat([a, b], axis=1), (2, 3), (2, 4))),
    OpCase("stack", ("Stack",), _pair(lambda a, b: F.stack([a, b], axis=1), (2, 3), (2, 3))),
    OpCase("matmul", ("MatMul",), _pair(F.matmul, (2, 1, 3, 4), (3, 4, 5))),
    OpCase(
        "linear",
        ("Linear",),
        lambda rng, dev: (
            F.linear, [_t(rng, dev, 2, 3, 4), _t(rng, dev, 5, 4), _t(rng, dev, 5)], {}
        ),
    ),
    OpCase("embedding", ("Embedding",), _embedding),
    OpCase("dropout", ("Dropout",), _dropout),
    OpCase("layer_norm", ("LayerNorm",), _layer_norm(affine=True)),
    OpCase("layer_norm_no_affine", ("LayerNorm",), _layer_norm(affine=False)),
    OpCase("add_layer_norm", ("LayerNorm",), _add_layer_norm),
    OpCase("softmax", ("Softmax",), _unary(lambda x: F.softmax(x, dim=-1))),
    OpCase("log_softmax", ("LogSoftmax",), _unary(lambda x: F.log_softmax(x, dim=0))),
    OpCase("attention", ("Attention",), _attention(), SDPA),
    OpCase(
        "attention_causal_cross",
        ("Attention",),
        _attention(causal=True, lq=3, lk=6, lengths=[6, 2]),
        SDPA,
    ),
    OpCase("attention_mask_weights", ("Attention",), _attention(mask=True, weights=True), SDPA),
    OpCase(
        "attention_fused", ("FusedAttention",), _attention(impl="fused", lengths=[5, 0]), SDPA
    ),
    OpCase(
        "attention_fused_causal_cross",
        ("FusedAttention",),
        _attention(True, 7, 4, [4, 3], "fused"),
        SDPA,
    ),
    OpCase("cross_entropy", ("CrossEntropy",), _cross_entropy("mean", 0.0)),
    OpCase("cross_entropy_smooth_sum", ("CrossEntropy",), _cross_entropy("sum", 0.1)),
    OpCase("cross_entropy_none", ("CrossEntropy",), _cross_entropy("none", 0.2)),
]


def calls(case: OpCase, name: str) -> bool:
    """Whether the case calls the minivlm.F function `name` (any alias: `cat` is `concat`)."""
    function = getattr(F, name, None) if name in F.__all__ else None
    return function is not None and function is getattr(F, case.op, None)


def _matches(case: OpCase, name: str) -> bool:
    """A case name, a family prefix (`attention`), or the minivlm.F function it calls."""
    return case.name == name or case.name.startswith(name + "_") or calls(case, name)


def select(names: list[str] | None) -> list[OpCase]:
    """The cases named, matching by prefix (`attention` selects every attention case), or
    calling the minivlm.F function named (`scaled_dot_product_attention`)."""
    if not names:
        return CASES
    unknown = [n for n in names if not any(_matches(c, n) for c in CASES)]
    if unknown:
        known = sorted({c.name for c in CASES} | {c.op for c in CASES})
        raise ValueError(f"unknown op(s) {unknown}; known: {', '.join(known)}")
    return [c for c in CASES if any(_matches(c, n) for n in names)]
