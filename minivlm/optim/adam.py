"""Adam (L2 weight decay in the gradient) and AdamW (decoupled weight decay).

For each parameter p with gradient g, at step t = 1, 2, ...:

    Adam:   g = g + wd * p                  AdamW:  p = p * (1 - lr * wd)
    m = beta1 * m + (1 - beta1) * g                  first moment, m_0 = 0
    v = beta2 * v + (1 - beta2) * g^2                second moment, v_0 = 0
    m_hat = m / (1 - beta1^t)                        bias corrections
    v_hat = v / (1 - beta2^t)
    p = p - lr * m_hat / (sqrt(v_hat) + eps)         eps outside the square root

as torch.optim.Adam and torch.optim.AdamW (amsgrad=False, maximize=False).
"""

from __future__ import annotations

import math

from ..backend import get_array_module
from .optimizer import Optimizer, check_betas, check_real


class Adam(Optimizer):
    """Adam; weight_decay adds wd * p to the gradient (L2), as torch.optim.Adam."""

    state_names = ("step", "exp_avg", "exp_avg_sq")
    decoupled_weight_decay = False

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _check_hyperparameters(self, hyper: dict, where: str) -> dict:
        return {
            "lr": check_real(where, "lr", hyper["lr"], 0.0),
            "betas": check_betas(where, hyper["betas"]),
            "eps": check_real(where, "eps", hyper["eps"], 0.0),
            "weight_decay": check_real(where, "weight_decay", hyper["weight_decay"], 0.0),
        }

    def _update(self, param, grad, state: dict, hyper: dict) -> None:  # param, grad (same shape)
        xp = get_array_module(param)
        lr, eps, weight_decay = hyper["lr"], hyper["eps"], hyper["weight_decay"]
        beta1, beta2 = hyper["betas"]
        if not state:
            state.update(step=0, exp_avg=xp.zeros_like(param), exp_avg_sq=xp.zeros_like(param))
        state["step"] += 1
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]

        if weight_decay and self.decoupled_weight_decay:
            param *= 1 - lr * weight_decay  # AdamW: p = p * (1 - lr * wd)
        elif weight_decay:
            decayed_grad = xp.multiply(param, weight_decay)  # Adam: g = g + wd * p, a new array
            decayed_grad += grad
            grad = decayed_grad

        bias1 = 1 - beta1**step
        bias2 = 1 - beta2**step
        scratch = xp.empty_like(param)  # every intermediate below
        adam_moments_and_update(
            param, grad, exp_avg, exp_avg_sq, scratch, beta1, beta2, eps,
            math.sqrt(bias2), lr / bias1,
        )  # fmt: skip


def adam_moments_and_update(
    param, grad, exp_avg, exp_avg_sq, scratch, beta1: float, beta2: float, eps: float,
    bias2_sqrt: float, step_size: float,
) -> None:  # fmt: skip
    """The moments and the step, in place, one call at a time in this order (FlatAdamW
    runs the same calls over flat buffers, so both round every element alike):

        v = beta2 * v + (1 - beta2) * g^2,   m = beta1 * m + (1 - beta1) * g
        p -= step_size * m / (sqrt(v) / bias2_sqrt + eps)

    with step_size = lr / (1 - beta1^t) and bias2_sqrt = sqrt(1 - beta2^t), Python floats
    (so a float32 array stays float32); scratch: an array of the parameter's shape."""
    xp = get_array_module(param)
    xp.multiply(grad, grad, out=scratch)  # g^2
    scratch *= 1 - beta2
    exp_avg_sq *= beta2
    exp_avg_sq += scratch
    xp.multiply(grad, 1 - beta1, out=scratch)
    exp_avg *= beta1
    exp_avg += scratch
    xp.sqrt(exp_avg_sq, out=scratch)
    scratch /= bias2_sqrt
    scratch += eps  # sqrt(v_hat) + eps
    xp.divide(exp_avg, scratch, out=scratch)
    scratch *= step_size
    param -= scratch


class AdamW(Adam):
    """Adam with decoupled weight decay: p = p * (1 - lr * wd) before the Adam step."""

    decoupled_weight_decay = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
