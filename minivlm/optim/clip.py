"""Gradient clipping by the global L2 norm, as torch.nn.utils.clip_grad_norm_."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ..autograd import Tensor
from ..backend import get_array_module
from .optimizer import check_real


def clip_grad_norm_(params: Tensor | Iterable[Tensor], max_norm: float) -> float:
    """Scale all gradients together so that their global L2 norm is at most `max_norm`.

        total = sqrt(sum over params of sum(grad^2))          (params without a grad skipped)
        if total > max_norm: grad = grad * max_norm / (total + 1e-6)   for every grad

    Each clipped gradient is replaced by a scaled copy (p.grad is a new array; the old one
    is left untouched), so gradients shared with other code are never changed under it.
    Returns the norm before clipping, as a Python float; it is inf or nan when a gradient
    is, and then the gradients are scaled to 0 or nan: check it with math.isfinite.
    """
    params = [params] if isinstance(params, Tensor) else list(params)
    max_norm = check_real("clip_grad_norm_", "max_norm", max_norm, 0.0)
    if max_norm == 0:
        raise ValueError("clip_grad_norm_: max_norm must be > 0, got 0.0")
    with_grads = [p for p in params if p.grad is not None]
    squared_sum = 0.0
    for param in with_grads:
        xp = get_array_module(param.grad)
        # float16 squares overflow past 65504: sum them in float32 at least
        flat = param.grad.ravel().astype(np.promote_types(param.grad.dtype, np.float32), copy=False)
        squared_sum += float(xp.vdot(flat, flat))
    total_norm = math.sqrt(squared_sum)
    scale = max_norm / (total_norm + 1e-6)
    if scale < 1.0 or math.isnan(scale):
        for param in with_grads:
            param.grad = param.grad * scale
    return total_norm
