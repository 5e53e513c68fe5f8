"""Python operators and methods on Tensor, each a call into an op of this package.

Kept here rather than in autograd.py so that the engine does not import the ops.
"""

from __future__ import annotations

from ..autograd import Tensor
from . import arithmetic, cast, matmul, pointwise, reduction, shape


def _reflected(op):
    return lambda self, other: op(other, self)


Tensor.__add__ = lambda self, other: arithmetic.add(self, other)
Tensor.__radd__ = _reflected(arithmetic.add)
Tensor.__sub__ = lambda self, other: arithmetic.sub(self, other)
Tensor.__rsub__ = _reflected(arithmetic.sub)
Tensor.__mul__ = lambda self, other: arithmetic.mul(self, other)
Tensor.__rmul__ = _reflected(arithmetic.mul)
Tensor.__truediv__ = lambda self, other: arithmetic.div(self, other)
Tensor.__rtruediv__ = _reflected(arithmetic.div)
Tensor.__neg__ = arithmetic.neg
Tensor.__pow__ = arithmetic.pow
Tensor.__matmul__ = lambda self, other: matmul.matmul(self, other)
Tensor.__rmatmul__ = _reflected(matmul.matmul)
Tensor.__getitem__ = shape.getitem

Tensor.exp = pointwise.exp
Tensor.log = pointwise.log
Tensor.sqrt = pointwise.sqrt
Tensor.tanh = pointwise.tanh
Tensor.relu = pointwise.relu
Tensor.sum = reduction.sum
Tensor.mean = reduction.mean
Tensor.max = reduction.max
Tensor.reshape = shape.reshape
Tensor.permute = shape.permute
Tensor.transpose = shape.transpose
Tensor.astype = cast.astype
Tensor.T = property(lambda self: shape.permute(self, tuple(reversed(range(self.ndim)))))
