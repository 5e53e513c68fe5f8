"""The gradient of a tiny VLM's loss wrt every parameter tensor, against finite differences.

Each parameter tensor is checked in float64 along random directions u,
<dL/dW, u> ~ (L(W + eps u) - L(W - eps u)) / (2 eps), plus a few single elements so that
a failure names one. The "gated" model's gates are set away from 0 first: at 0,
tanh(gate) = 0 cuts the cross-attention and MLP out of the loss, and their gradients
would be checked only as zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import random
from ..backend import to_device
from ..gradcheck import GradcheckReport, gradcheck
from ..models.config import tiny_config
from ..models.vlm import VLM
from ..nn import functional_call

GATE_VALUE = 0.7


@dataclass
class ModelGradcheckReport(GradcheckReport):
    """A GradcheckReport whose lines name the parameter of each input."""

    names: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(
            f"{name}: {check.describe(self.atol, self.rtol)}"
            for name, check in zip(self.names, self.inputs, strict=True)
        )


def tiny_model(
    fusion: str = "cross",
    seed: int = 0,
    norm: str = "post",
    device: str = "cpu",
    token_lags: int = 0,
) -> VLM:
    """A float64 tiny VLM in eval mode drawn from `seed`; the global generator is untouched."""
    state = random.get_state()
    random.manual_seed(seed)
    try:
        model = VLM(tiny_config(fusion, norm, token_lags))
    finally:
        random.set_state(state)
    model.to(device, dtype=np.float64).eval()
    if fusion == "gated":
        for block in model.vlm_blocks:
            block.cross_gate.data[...] = GATE_VALUE
            block.ff_gate.data[...] = -GATE_VALUE
    return model


def tiny_batch(model: VLM, seed: int = 0, batch: int = 2):
    """Random images (B, 3, S, S) float64 and token ids (B, T), T = max_len."""
    c = model.config
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, c.image_size, c.image_size))
    tokens = rng.integers(0, c.vocab_size, size=(batch, c.max_len))
    return images, tokens


def model_gradcheck(
    fusion: str = "cross",
    seed: int = 0,
    device: str = "cpu",
    *,
    norm: str = "post",
    token_lags: int = 0,
    directions: int = 3,
    samples: int = 2,
) -> ModelGradcheckReport:
    """Check d(loss)/d(every parameter) of a tiny VLM; the loss is next-token cross-entropy."""
    model = tiny_model(fusion, seed, norm, device, token_lags)
    images, tokens = (to_device(array, device) for array in tiny_batch(model, seed))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T - 1) each
    names = [name for name, _ in model.named_parameters()]

    def loss(*weights):  # VLM.forward's loss, as training computes it
        parameters = dict(zip(names, weights, strict=True))
        _, value = functional_call(model, parameters, images, inputs, targets)
        return value

    report = gradcheck(
        loss,
        list(model.parameters()),
        full_limit=0,
        directions=directions,
        samples=samples,
        seed=seed,
        raise_on_failure=False,
    )
    return ModelGradcheckReport(report.inputs, report.atol, report.rtol, names)
