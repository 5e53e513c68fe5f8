"""One device test per op, in backend.is_cupy; `saved` means the same on both devices.

An op asks `is_cupy(xp)` once, in its forward, and keeps what its backward needs. What it
saves has the same names, shapes and meaning whichever path ran, so the backward, the
docs and anyone reading `fn.saved` see one thing. The "cuda" runs need a GPU (the
`device` fixture skips them without one).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import minivlm
from minivlm import F, tensor
from minivlm.backend import cuda_available, get_array_module, is_cupy, to_device, to_numpy
from minivlm.functional.normalization import LayerNorm

PACKAGE = Path(minivlm.__file__).parent
# the only places that may tell NumPy from CuPy by the module's name
MAY_NAME_CUPY = ("backend.py", "kernels_cuda/")
NAME_TEST = re.compile(r"""__name__\s*[!=]=\s*["']cupy["']|["']cupy["']\s*[!=]=\s*[\w.]*__name__""")
EPS = 1e-5


def test_the_name_test_pattern_catches_the_old_spellings():
    assert NAME_TEST.search('if xp.__name__ == "cupy":')
    assert NAME_TEST.search("if get_array_module(x).__name__ != 'cupy'")
    assert NAME_TEST.search('"cupy" == xp.__name__')
    assert not NAME_TEST.search("if is_cupy(xp):")


def test_no_module_outside_backend_and_kernels_cuda_tests_for_cupy_by_name():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(MAY_NAME_CUPY):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if NAME_TEST.search(line):
                offenders.append(f"minivlm/{relative}:{number}: {line.strip()}")
    assert not offenders, (
        "ask backend.is_cupy(xp) instead of comparing xp.__name__ with 'cupy':\n"
        + "\n".join(offenders)
    )


def test_is_cupy_is_true_only_for_the_module_of_cupy_arrays(device):
    x = tensor(np.ones(3, np.float32), device=device)
    assert is_cupy(get_array_module(x.data)) == (device == "cuda")
    assert not is_cupy(np)


def _describe(saved) -> list:
    """None, or (shape, dtype) for each saved array: what must agree across devices."""
    return [None if a is None else (tuple(a.shape), np.dtype(a.dtype).name) for a in saved]


# Each case: (function of a device returning the Function after its forward, and a
# reference for each saved entry computed in NumPy from the same inputs).
RNG_SEED = 0


def _layer_norm_inputs():
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal((5, 6)).astype(np.float32) * 3 + 1  # (R, C)
    w = rng.standard_normal(6).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    return x, w, b


def _layer_norm_reference(x, w):
    mean = x.astype(np.float64).mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + EPS)  # (R, 1)
    return {"xhat": (x - mean) * rstd, "rstd": rstd, "weight": w}


def _layer_norm_case(affine: bool):
    def run(device):
        x, w, b = _layer_norm_inputs()
        args = [x, w, b] if affine else [x]
        fn = LayerNorm(EPS, has_weight=affine, has_bias=affine)
        fn(*[tensor(a, requires_grad=True, device=device) for a in args])
        return fn

    def reference():
        x, w, _ = _layer_norm_inputs()
        expected = _layer_norm_reference(x, w)
        if not affine:
            expected["weight"] = None
        return expected

    return run, reference


def _cross_entropy_inputs():
    rng = np.random.default_rng(RNG_SEED)
    logits = rng.standard_normal((4, 7)).astype(np.float32) * 4  # (N, V)
    targets = np.array([3, -100, 0, 6])  # row 1 ignored
    return logits, targets


def _cross_entropy_case(reduction: str, smoothing: float):
    def run(device):
        logits, targets = _cross_entropy_inputs()
        z = tensor(logits, requires_grad=True, device=device)
        loss = F.cross_entropy(
            z, targets, reduction=reduction, label_smoothing=smoothing
        )
        return loss.creator

    def reference():
        logits, targets = _cross_entropy_inputs()
        row_max = logits.max(axis=1)  # (N,)
        log_sum = np.log(np.exp(logits.astype(np.float64) - row_max[:, None]).sum(axis=1))
        return {"logits": logits, "targets": targets, "row_max": row_max, "log_sum": log_sum}

    return run, reference


def _fused_attention_case():
    def inputs():
        rng = np.random.default_rng(RNG_SEED)
        return [rng.standard_normal((1, 2, 5, 4)).astype(np.float32) for _ in range(3)]

    def run(device):
        q, k, v = (tensor(a, requires_grad=True, device=device) for a in inputs())
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, impl="fused").creator

    def reference():
        q, k, v = (a.astype(np.float64) for a in inputs())
        scores = q @ k.swapaxes(-1, -2) / 2.0  # scale 1/sqrt(4)
        scores = np.where(np.tril(np.ones((5, 5), bool)), scores, -np.inf)
        lse = np.log(np.exp(scores).sum(-1))  # (B, H, Lq)
        out = np.exp(scores - lse[..., None]) @ v
        return {"q": q, "k": k, "v": v, "out": out, "lse": lse}

    return run, reference


CASES = {
    "layer_norm_affine": _layer_norm_case(affine=True),
    "layer_norm_plain": _layer_norm_case(affine=False),
    "cross_entropy_mean": _cross_entropy_case("mean", 0.0),
    "cross_entropy_none_smoothed": _cross_entropy_case("none", 0.2),
    "fused_attention": _fused_attention_case(),
}


@pytest.mark.parametrize("case", CASES)
def test_saved_holds_the_named_arrays_with_the_reference_values(case, device):
    run, reference = CASES[case]
    fn = run(device)
    expected = reference()
    assert len(fn.saved) == len(expected), (
        f"{fn.name} on {device} saved {len(fn.saved)} entries, expected {list(expected)}"
    )
    for (name, want), got in zip(expected.items(), fn.saved, strict=True):
        if want is None:
            assert got is None, f"{fn.name} on {device}: {name} should be None, got {got!r}"
            continue
        got = to_numpy(got)
        assert got.shape == want.shape, (
            f"{fn.name} on {device}: saved {name} has shape {got.shape}, expected {want.shape}"
        )
        np.testing.assert_allclose(
            got, want, rtol=1e-5, atol=1e-5, err_msg=f"{fn.name} on {device}: saved {name}"
        )


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_saved_has_the_same_structure_on_cpu_and_cuda(case):
    if not cuda_available():
        pytest.skip("device 'cuda' needs CuPy and a usable NVIDIA GPU")
    run, _ = CASES[case]
    on_cpu, on_cuda = _describe(run("cpu").saved), _describe(run("cuda").saved)
    assert on_cpu == on_cuda, f"{case}: saved on cpu {on_cpu}, on cuda {on_cuda}"


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_gradients_agree_on_cpu_and_cuda_in_float32(case):
    if not cuda_available():
        pytest.skip("device 'cuda' needs CuPy and a usable NVIDIA GPU")
    run, _ = CASES[case]
    grads = {}
    for device in ("cpu", "cuda"):
        fn = run(device)
        rng = np.random.default_rng(1)  # the same upstream gradients on both devices
        d_out = [
            to_device(rng.standard_normal(shape).astype(dtype), device)
            for shape, dtype in fn.output_specs
        ]
        grads[device] = [None if g is None else to_numpy(g) for g in fn.backward(*d_out)]
    for index, (cpu, cuda) in enumerate(zip(grads["cpu"], grads["cuda"], strict=True)):
        if cpu is None:
            assert cuda is None, f"{case}: input {index} has a gradient only on cuda"
            continue
        np.testing.assert_allclose(
            cuda, cpu, rtol=1e-4, atol=1e-5, err_msg=f"{case}: gradient of input {index}"
        )
