"""Stochastic gradient descent with momentum, dampening, L2 weight decay and Nesterov."""

from __future__ import annotations

from ..backend import get_array_module
from .optimizer import Optimizer, check_real


class SGD(Optimizer):
    """torch.optim.SGD's update, for each parameter p with gradient g:

    d = g + wd * p                              (L2 weight decay folded into the gradient)
    b = d                      on the first step (no dampening there)
    b = momentum * b + (1 - dampening) * d      afterwards
    d = d + momentum * b       if nesterov, else d = b      (only when momentum != 0)
    p = p - lr * d
    """

    state_names = ("momentum_buffer",)

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
        )
        super().__init__(params, defaults)

    def _check_hyperparameters(self, hyper: dict, where: str) -> dict:
        checked = {
            "lr": check_real(where, "lr", hyper["lr"], 0.0),
            "momentum": check_real(where, "momentum", hyper["momentum"], 0.0, 1.0),
            "dampening": check_real(where, "dampening", hyper["dampening"], 0.0, 1.0),
            "weight_decay": check_real(where, "weight_decay", hyper["weight_decay"], 0.0),
            "nesterov": hyper["nesterov"],
        }
        if not isinstance(checked["nesterov"], bool):
            raise TypeError(f"{where}: nesterov must be True or False, got {hyper['nesterov']!r}")
        if checked["nesterov"] and (checked["momentum"] == 0 or checked["dampening"] != 0):
            raise ValueError(
                f"{where}: nesterov=True needs momentum > 0 and dampening == 0, got "
                f"momentum={checked['momentum']}, dampening={checked['dampening']}"
            )
        return checked

    def _update(self, param, grad, state: dict, hyper: dict) -> None:  # param, grad (same shape)
        xp = get_array_module(param)
        momentum, dampening = hyper["momentum"], hyper["dampening"]
        if hyper["weight_decay"]:
            direction = xp.multiply(param, hyper["weight_decay"])  # d = wd * p + g, a new array
            direction += grad
        else:
            direction = grad  # read only from here on: grad belongs to the caller
        if momentum:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = direction.copy()  # b_1 = d_1
            else:
                buffer *= momentum  # b = momentum * b + (1 - dampening) * d
                buffer += direction if dampening == 0 else (1 - dampening) * direction
            direction = direction + momentum * buffer if hyper["nesterov"] else buffer
        param -= hyper["lr"] * direction
