"""The gradient of a tiny VLM's loss wrt every parameter tensor, against finite differences.

Each parameter tensor W is checked in float64 along random directions u,
<d loss/dW, u> ~ (loss(W + h u) - loss(W - h u)) / (2 h), plus a few single elements so
that a failure names one. `model_functions_check` instead checks every Function the
forward records, each on its own saved inputs, and names the first wrong backward. The
"gated" model's gates are set away from 0 first: at 0, tanh(gate) = 0 cuts the
cross-attention and MLP out of the loss, and their gradients would be checked only as
zeros.
"""

from __future__ import annotations

import warnings

import numpy as np

from .. import random
from ..autograd import Tensor
from ..backend import to_device
from ..gradcheck import FunctionsReport, GradcheckReport, GradcheckWarning, gradcheck
from ..models.config import tiny_config
from ..models.vlm import VLM
from ..nn import functional_call

GATE_VALUE = 0.7


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


def _loss_of_parameters(fusion, seed, device, norm, token_lags):
    """(loss(*weights), the parameters, their names) of a tiny VLM on a tiny batch."""
    model = tiny_model(fusion, seed, norm, device, token_lags)
    images, tokens = (to_device(array, device) for array in tiny_batch(model, seed))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T - 1) each
    names = [name for name, _ in model.named_parameters()]

    def loss(*weights):  # VLM.forward's loss, as training computes it
        parameters = dict(zip(names, weights, strict=True))
        _, value = functional_call(model, parameters, images, inputs, targets)
        return value

    return loss, list(model.parameters()), names


def model_gradcheck(
    fusion: str = "cross",
    seed: int = 0,
    device: str = "cpu",
    *,
    norm: str = "post",
    token_lags: int = 0,
    directions: int = 3,
    samples: int = 2,
) -> GradcheckReport:
    """Check d(loss)/d(every parameter) of a tiny VLM; the loss is next-token cross-entropy.
    Each input of the report is named after its parameter."""
    loss, parameters, names = _loss_of_parameters(fusion, seed, device, norm, token_lags)
    with warnings.catch_warnings():
        # the loss is a scalar by design; model_functions_check covers the Functions inside
        warnings.simplefilter("ignore", GradcheckWarning)
        return gradcheck(
            loss,
            parameters,
            names=names,
            full_limit=0,
            directions=directions,
            samples=samples,
            seed=seed,
            raise_on_failure=False,
        )


def model_functions_check(
    fusion: str = "cross",
    seed: int = 0,
    device: str = "cpu",
    *,
    norm: str = "post",
    token_lags: int = 0,
    directions: int = 2,
    samples: int = 4,
) -> FunctionsReport:
    """Check every Function one loss forward of a tiny VLM records, each on its own saved
    inputs with its own random upstream gradient; names the first whose backward is wrong."""
    loss, parameters, names = _loss_of_parameters(fusion, seed, device, norm, token_lags)
    leaves = [Tensor(p.data.copy(), requires_grad=True) for p in parameters]
    return gradcheck(
        loss,
        leaves,
        names=names,
        directions=directions,
        samples=samples,
        seed=seed,
        per_function=True,
        raise_on_failure=False,
    )
