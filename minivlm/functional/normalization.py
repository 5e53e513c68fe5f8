"""Layer normalisation over the trailing axes, with its backward as three named terms."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..autograd import Function, Tensor
from ..backend import get_array_module, is_cupy
from ..kernels_cpu.threads import split_rows
from ..kernels_cuda import layer_norm as cuda_kernels


class LayerNorm(Function):
    """y = (s - mean) * rstd * w + b, statistics over the last axis of s viewed as (R, C),
    where s = x, or s = x + residual for a post-norm residual block (one op, so the GPU
    forms the sum inside the normalising kernel instead of in a launch of its own).

    Two-pass variance (mean first, then the mean of squared deviations), which stays
    accurate for rows like mean 1e4, std 1e-2 where E[x^2] - E[x]^2 cancels badly.
    """

    def __init__(self, eps: float, has_weight: bool, has_bias: bool, has_residual: bool = False):
        self.eps, self.has_weight, self.has_bias = eps, has_weight, has_bias
        self.has_residual = has_residual

    def forward(self, x, *rest):                              # x (R, C) after the caller's reshape
        xp = get_array_module(x)
        residual = rest[0] if self.has_residual else None     # (R, C)
        affine = rest[1:] if self.has_residual else rest
        # CuPy arrays with both weight and bias take the kernels of kernels/layer_norm.cu
        self.fused_cuda = is_cupy(xp) and self.has_weight and self.has_bias
        if self.fused_cuda:
            return self._forward_cuda(x, residual, *affine)
        if residual is not None:
            x = x + residual                                  # s (R, C)
        weight = affine[0] if self.has_weight else None
        bias = affine[-1] if self.has_bias else None
        xhat, rstd = xp.empty_like(x), xp.empty((x.shape[0], 1), x.dtype)  # (R, C), (R, 1)
        y = xp.empty_like(x) if self.has_weight or self.has_bias else xhat

        def rows(part):  # each row is normalised on its own: cores may take runs of rows
            _standardise(x[part], self.eps, xhat[part], rstd[part])
            if weight is not None:
                xp.multiply(xhat[part], weight, out=y[part])
            if bias is not None:
                xp.add(xhat[part] if weight is None else y[part], bias, out=y[part])

        split_rows(rows, x, passes=9)
        self.save(xhat, rstd, weight)
        return y

    def backward(self, dy):                                   # dy (R, C)
        if self.fused_cuda:
            return self._backward_cuda(dy)
        xhat, rstd, weight = self.saved
        xp = get_array_module(dy)
        dx = xp.empty_like(dy)                                # (R, C)
        # dw and db sum over rows: products with a row of ones, after the rows' part
        dy_xhat = xp.empty_like(dy) if self.has_weight else None

        def rows(part):
            _input_gradient(dy[part], xhat[part], rstd[part], weight, out=dx[part])
            if dy_xhat is not None:
                xp.multiply(dy[part], xhat[part], out=dy_xhat[part])

        split_rows(rows, dy, passes=11)
        grads = [dx, dx] if self.has_residual else [dx]       # s = x + residual: ds to both
        ones = xp.ones(dy.shape[0], dy.dtype)                 # (R,)
        if self.has_weight:
            grads.append(ones @ dy_xhat)                      # dw (C,)
        if self.has_bias:
            grads.append(ones @ dy)                           # db (C,)
        return tuple(grads)

    def _forward_cuda(self, x, residual, weight, bias):
        xp = get_array_module(x)                              # the kernels read whole rows
        x = xp.ascontiguousarray(x)
        residual = None if residual is None else xp.ascontiguousarray(residual)
        y, xhat, rstd = cuda_kernels.layer_norm_forward(
            x, weight, bias, eps=self.eps, residual=residual
        )                                                     # (R, C), (R, C), (R,)
        self.save(xhat, rstd, weight)
        return y

    def _backward_cuda(self, dy):
        xhat, rstd, weight = self.saved
        dy = get_array_module(dy).ascontiguousarray(dy)
        dx, dw, db = cuda_kernels.layer_norm_backward(dy, xhat, weight, rstd)
        return (dx, dx, dw, db) if self.has_residual else (dx, dw, db)


def _standardise(x, eps: float, xhat, rstd) -> None:
    """xhat = (x - mean) * rstd and rstd = 1 / sqrt(var + eps) of each row of x (R, C),
    written into xhat (R, C) and rstd (R, 1)."""
    xp = get_array_module(x)
    width = x.shape[-1]
    # Every row reduction is a BLAS product with a constant vector, which runs on all
    # cores, where x.mean(axis=-1) loops on one: x @ by_row = x.mean(axis=-1).
    by_row = xp.full(width, 1 / width, x.dtype)               # (C,)
    xc = xp.subtract(x, (x @ by_row)[:, None], out=xhat)      # (R, C)
    # mean is off by its rounding error (~ulp(1e4) in float32, a tenth of a 1e-2
    # spread); x - mean is exact for x near mean, so the mean of xc finds that error
    xc -= (xc @ by_row)[:, None]
    var = xp.einsum("rc,rc->r", xc, xc) / width               # (R,), biased like PyTorch
    xp.divide(1, xp.sqrt(var + eps), out=rstd[:, 0])          # (R, 1)
    xc *= rstd                                                # xhat


def _input_gradient(dy, xhat, rstd, weight, out) -> None:
    """dx of each row, written into `out` (R, C), from dy, xhat (R, C), rstd (R, 1)."""
    xp = get_array_module(dy)
    by_row = xp.full(dy.shape[-1], 1 / dy.shape[-1], dy.dtype)  # (C,), as in forward
    # forward was y = xhat * w + b; dxhat is formed in out, turned into dx in place below
    dxhat = out                                               # (R, C)
    if weight is None:
        dxhat[...] = dy
    else:
        xp.multiply(dy, weight, out=dxhat)
    # xhat = (x - mean) * rstd, so three terms:
    #   dx = rstd * (dxhat                                1: direct
    #                - mean(dxhat)                        2: through mean
    #                - xhat * mean(dxhat * xhat))         3: through rstd
    through_mean = (dxhat @ by_row)[:, None]              # (R, 1)
    through_rstd = xp.einsum("rc,rc->r", dxhat, xhat)[:, None] / dy.shape[-1]  # (R, 1)
    dx = dxhat
    dx -= through_mean
    dx -= xhat * through_rstd
    dx *= rstd


def layer_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """torch.nn.functional.layer_norm over the trailing `normalized_shape` axes."""
    return _normalise("layer_norm", x, None, normalized_shape, weight, bias, eps)


def add_layer_norm(
    x: Tensor,
    residual: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """layer_norm(x + residual, ...) as one op, the post-norm residual step
    x = norm(x + f(x)); x and residual have the same shape (no broadcasting).

    Same values and gradients as the two ops; on the GPU one kernel forms the sum while it
    normalises, and the sum is never stored.
    """
    if tuple(residual.shape) != tuple(x.shape):
        raise ValueError(
            f"add_layer_norm: residual has shape {residual.shape}, expected the shape of x "
            f"{x.shape}"
        )
    return _normalise("add_layer_norm", x, residual, normalized_shape, weight, bias, eps)


def _normalise(op: str, x, residual, normalized_shape, weight, bias, eps: float) -> Tensor:
    """The checks and reshapes of layer_norm and add_layer_norm around one LayerNorm."""
    from .shape import reshape

    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    normalized_shape = tuple(normalized_shape)
    k = len(normalized_shape)
    if tuple(x.shape[x.ndim - k:]) != normalized_shape:
        raise ValueError(
            f"{op}: input shape {x.shape} does not end in normalized_shape {normalized_shape}"
        )
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and tuple(param.shape) != normalized_shape:
            raise ValueError(f"{op}: {name} has shape {param.shape}, expected {normalized_shape}")
    width = math.prod(normalized_shape)
    if width == 0:
        raise ValueError(f"{op}: normalized_shape {normalized_shape} has no elements")
    rows = [reshape(t, (-1, width)) for t in (x, residual) if t is not None]  # (R, C) each
    affine = [reshape(p, (width,)) for p in (weight, bias) if p is not None]
    fn = LayerNorm(eps, weight is not None, bias is not None, residual is not None)
    y = fn(*rows, *affine)
    return reshape(y, x.shape)
