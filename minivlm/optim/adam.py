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

        # One scratch array of the parameter's shape serves every intermediate below.
        scratch = xp.multiply(grad, grad)  # g^2
        scratch *= 1 - beta2
        exp_avg_sq *= beta2  # v = beta2 * v + (1 - beta2) * g^2
        exp_avg_sq += scratch
        xp.multiply(grad, 1 - beta1, out=scratch)
        exp_avg *= beta1  # m = beta1 * m + (1 - beta1) * g
        exp_avg += scratch

        # p -= lr * m_hat / (sqrt(v_hat) + eps), with m_hat = m / bias1 and v_hat = v / bias2
        bias1 = 1 - beta1**step
        bias2 = 1 - beta2**step
        xp.sqrt(exp_avg_sq, out=scratch)
        scratch /= math.sqrt(bias2)
        scratch += eps  # sqrt(v_hat) + eps
        xp.divide(exp_avg, scratch, out=scratch)
        scratch *= lr / bias1
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
