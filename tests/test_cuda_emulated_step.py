"""A training step of a small VLM through the GPU branches of its ops, checked without a
GPU: attention, layer norm (with its residual), cross-entropy and FlatAdamW take their CuPy
branches on NumPy arrays, every kernel emulated on the CPU (the `emulated_cuda` fixture of
conftest.py), and the step gives the CPU step's loss, gradients and updated weights.

What it shows: the ops' GPU branches compose in the model (the heads made contiguous for the
fused kernels, the residual inside the layer norm, the saved arrays each backward reads, the
optimizer's one launch a group). What it cannot: anything CuPy itself does (its elementwise
ops and GEMMs run as NumPy here), and what the kernel emulation cannot (cuda_on_host.h).
"""

from __future__ import annotations

import numpy as np

from minivlm import F, Tensor, manual_seed
from minivlm.functional import attention as attention_op
from minivlm.functional import loss, normalization
from minivlm.kernels_cuda import adamw, attention, cross_entropy, layer_norm
from minivlm.models import VLM, VLMConfig
from minivlm.optim import FlatAdamW
from minivlm.train.loop import parameter_groups

CONFIG = VLMConfig(
    image_size=16, patch_size=8, d_model=32, n_heads=2, n_encoder_layers=1, n_blocks=1,
    vocab_size=29, encoder_dropout=0.0, max_len=16, token_lags=2,
)  # fmt: skip
LR = 1e-2


def train_step(on_gpu_branches: bool) -> tuple[float, dict, dict]:
    """(loss, gradients, weights after the update) of one step from a fixed start."""
    manual_seed(0)
    model = VLM(CONFIG)
    optimizer = FlatAdamW(parameter_groups(model, weight_decay=0.1), lr=LR)
    if on_gpu_branches:
        for flat in optimizer.groups:
            flat.scratch = None  # what marks a CuPy group: its update is the kernel's
    rng = np.random.default_rng(0)
    images = Tensor(rng.random((3, 3, 16, 16), dtype=np.float32))
    tokens, targets = rng.integers(0, CONFIG.vocab_size, (2, 3, 10))
    targets[0, -2:] = -100  # padding, ignored
    logits = model(images, tokens)  # (B, T, V)
    value = F.cross_entropy(logits.reshape(-1, CONFIG.vocab_size), targets.reshape(-1))
    value.backward()
    grads = {name: param.grad.copy() for name, param in model.named_parameters()}
    optimizer.clip_grad_norm_(1.0)
    optimizer.step()
    weights = {name: param.data.copy() for name, param in model.named_parameters()}
    return float(value.numpy()), grads, weights


def test_a_training_step_through_the_gpu_branches_gives_the_cpu_steps_numbers(
    emulated_cuda, monkeypatch
):
    want_loss, want_grads, want_weights = train_step(on_gpu_branches=False)

    emulated_cuda(attention, attention.FORWARD_SOURCE, attention.BACKWARD_SOURCE)
    for module in (layer_norm, cross_entropy, adamw):
        emulated_cuda(module)
    for op_module in (attention_op, normalization, loss):  # NumPy takes the CuPy branches
        monkeypatch.setattr(op_module, "is_cupy", lambda xp: True)
    got_loss, got_grads, got_weights = train_step(on_gpu_branches=True)

    assert abs(got_loss - want_loss) <= 1e-5 * abs(want_loss)
    for name, want in want_grads.items():
        scale = max(1e-3, float(np.abs(want).max()))
        error = float(np.abs(got_grads[name] - want).max()) / scale
        assert error <= 1e-4, f"gradient of {name}: {error:.1e} of its largest element"
    # Adam's first step moves each weight by about lr whatever its gradient's size, so a
    # gradient near 0 may step differently on rounding: weights within a tenth of lr
    for name, want in want_weights.items():
        np.testing.assert_allclose(got_weights[name], want, rtol=0, atol=LR / 10, err_msg=name)
