"""Matrix products: matmul (batched, broadcast) and linear (x W^T + b)."""

from __future__ import annotations

from ..autograd import Function, Tensor
from .arithmetic import unbroadcast


def _swap_last(x):
    return x.swapaxes(-1, -2)


class MatMul(Function):
    """y = a @ b with NumPy's rules: batch axes broadcast, 1-D operands promoted."""

    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(
                f"matmul: operands must have at least 1 dimension, got {a.shape} and {b.shape}"
            )
        if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(
                f"matmul: shapes {a.shape} and {b.shape} do not chain (inner sizes differ)"
            )
        self.save(a, b)
        return a @ b

    def backward(self, dy):
        a, b = self.saved
        # treat a (k,) as (1, k) and b (k,) as (k, 1), and give dy those axes back
        a2 = a[None, :] if a.ndim == 1 else a                 # (..., n, k)
        b2 = b[:, None] if b.ndim == 1 else b                 # (..., k, m)
        if b.ndim == 1:                                       # b first: a (k,) @ b (k,) gives dy ()
            dy = dy[..., None]
        if a.ndim == 1:
            dy = dy[..., None, :]                             # (..., n, m)
        # y = a b, so da = dy b^T and db = a^T dy, summed over broadcast batch axes
        da = unbroadcast(dy @ _swap_last(b2), a2.shape).reshape(a.shape)
        db = unbroadcast(_swap_last(a2) @ dy, b2.shape).reshape(b.shape)
        return da, db


class Linear(Function):
    """y = x W^T + b over the last axis: x (..., in), W (out, in), b (out,)."""

    def forward(self, x, weight, bias=None):
        if x.shape[-1] != weight.shape[1]:
            raise ValueError(
                f"linear: input has {x.shape[-1]} features (shape {x.shape}), "
                f"weight expects {weight.shape[1]} (weight shape {weight.shape})"
            )
        self.save(x, weight)
        self.has_bias = bias is not None
        # one 2-D GEMM over all leading axes: (N, in) @ (in, out); a 3-D operand would
        # make NumPy run one small GEMM per leading index
        y = x.reshape(-1, x.shape[-1]) @ weight.T             # (N, out)
        if self.has_bias:
            y += bias
        return y.reshape(*x.shape[:-1], weight.shape[0])      # (..., out)

    def backward(self, dy):                                   # dy (..., out)
        x, weight = self.saved
        dy2 = dy.reshape(-1, dy.shape[-1])                    # (N, out)
        x2 = x.reshape(-1, x.shape[-1])                       # (N, in)
        # y = x W^T + b: dx = dy W, dW = dy^T x, db = sum_n dy (dx skipped for images, ids...)
        dx = (dy2 @ weight).reshape(x.shape) if self.needs_input_grad[0] else None  # (..., in)
        dweight = dy2.T @ x2                                  # (out, in)
        if not self.has_bias:
            return dx, dweight
        return dx, dweight, dy2.sum(axis=0)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    return MatMul()(a, b)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """torch.nn.functional.linear: x W^T + b."""
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out, in), got shape {weight.shape}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: bias must have shape ({weight.shape[0]},), got {bias.shape}")
    inputs = (x, weight) if bias is None else (x, weight, bias)
    return Linear()(*inputs)
