"""The cross-entropy kernels (kernels/cross_entropy.cu) give the right answers, checked
without a GPU: the unchanged source runs on the CPU in tests/cuda_host/kernel_emulator.cpp
through the real wrappers of minivlm/kernels_cuda/cross_entropy.py (the `emulated_cuda`
fixture of conftest.py), against float64: ignored rows, label smoothing, large logits,
vocabularies below a warp and above a block of threads."""

from __future__ import annotations

import numpy as np
import pytest

import minivlm
from minivlm import F
from minivlm.functional import loss
from minivlm.kernels_cuda import cross_entropy


@pytest.fixture
def emulated_gpu(emulated_cuda):
    emulated_cuda(cross_entropy)


def reference(logits, targets, d_loss, ignore_index, smoothing):
    """Float64 (loss, lse, d_logits) of each row; 0 loss and gradient for ignored rows."""
    z = logits.astype(np.float64)
    row_max = z.max(axis=1, keepdims=True)
    lse = row_max[:, 0] + np.log(np.exp(z - row_max).sum(axis=1))  # (N,)
    kept = targets != ignore_index
    rows = np.arange(len(z))
    picked = z[rows, np.where(kept, targets, 0)]
    loss = (1 - smoothing) * (lse - picked) + smoothing * (lse - z.mean(axis=1))
    target_share = np.zeros_like(z)
    target_share[rows[kept], targets[kept]] = 1 - smoothing
    softmax = np.exp(z - lse[:, None])
    d_logits = d_loss[:, None] * (softmax - target_share - smoothing / z.shape[1])
    return np.where(kept, loss, 0.0), lse, np.where(kept[:, None], d_logits, 0.0)


def relative_error(got, want) -> float:
    assert not np.isnan(got).any(), "NaN: an element never written?"
    return float(np.abs(got - want).max(initial=0.0) / max(1.0, np.abs(want).max(initial=0.0)))


# (rows, vocab, label smoothing, offset added to every logit)
CASES = [(7, 5, 0.0, 0.0), (20, 71, 0.1, 0.0), (3, 1000, 0.0, 1e4), (5, 1, 0.2, 0.0)]


@pytest.mark.parametrize("rows, vocab, smoothing, offset", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_emulated_cross_entropy_matches_float64(
    emulated_gpu, rows, vocab, smoothing, offset, dtype
):
    rng = np.random.default_rng(rows * vocab)
    logits = (rng.standard_normal((rows, vocab)) * 3 + offset).astype(dtype)
    targets = rng.integers(0, vocab, rows)
    targets[1] = -100  # an ignored row
    d_loss = rng.standard_normal(rows).astype(dtype)
    options = {"ignore_index": -100, "label_smoothing": smoothing}

    loss, row_max, log_sum = cross_entropy.cross_entropy_forward(logits, targets, **options)
    d_logits = cross_entropy.cross_entropy_backward(
        logits, targets, row_max, log_sum, d_loss, **options
    )
    want_loss, want_lse, want_d_logits = reference(logits, targets, d_loss, -100, smoothing)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    # the loss of a row is small next to its lse (1e4 here): compared on its own scale
    assert relative_error(loss, want_loss) <= tolerance
    assert relative_error(row_max.astype(np.float64) + log_sum, want_lse) <= tolerance
    assert relative_error(d_logits, want_d_logits) <= tolerance
    assert loss[1] == 0 and not d_logits[1].any(), "the ignored row"


def test_emulated_wrapper_names_a_target_out_of_range(emulated_gpu):
    logits = np.zeros((3, 4), np.float32)
    expected = r"targets must be class indices in \[0, 4\).*got 9 at row 2"
    with pytest.raises(ValueError, match=expected):
        cross_entropy.cross_entropy_forward(logits, np.array([0, 3, 9]))


def test_gpu_branch_of_f_cross_entropy_gives_the_cpu_branchs_loss_and_gradient(
    emulated_gpu, monkeypatch
):
    """F.cross_entropy through the kernels (as on CuPy) against NumPy's, mean over the
    counted rows; the logits a slice, whose rows are a stride apart."""
    rng = np.random.default_rng(3)
    wide = rng.standard_normal((12, 40)).astype(np.float32)
    targets = rng.integers(0, 29, 12)
    targets[[2, 7]] = -100

    def run():
        logits = minivlm.tensor(wide, requires_grad=True)
        value = F.cross_entropy(logits[:, :29], targets, label_smoothing=0.1)
        value.backward()
        return value.numpy(), logits.grad

    want_loss, want_grad = run()
    monkeypatch.setattr(loss, "is_cupy", lambda xp: True)  # NumPy takes the GPU branch
    got_loss, got_grad = run()
    assert relative_error(got_loss, want_loss) <= 1e-6
    assert relative_error(got_grad, want_grad) <= 1e-6
