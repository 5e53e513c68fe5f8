"""Ops that move elements without changing them: reshape, transpose/permute, getitem,
concat/stack. Each backward moves the gradient back the same way."""

from __future__ import annotations

from collections.abc import Sequence

from ..autograd import Function, Tensor
from ..backend import get_array_module


class Reshape(Function):
    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape

    def forward(self, x):
        self.in_shape = x.shape
        try:
            return x.reshape(self.shape)
        except ValueError as err:
            raise ValueError(f"reshape: cannot view shape {x.shape} as {self.shape}") from err

    def backward(self, dy):
        return dy.reshape(self.in_shape)


class Permute(Function):
    def __init__(self, axes: tuple[int, ...]):
        self.axes = axes

    def forward(self, x):
        if sorted(a + x.ndim if a < 0 else a for a in self.axes) != list(range(x.ndim)):
            raise ValueError(
                f"permute: axes {self.axes} are not a permutation of {x.ndim} dimensions"
            )
        return x.transpose(self.axes)

    def backward(self, dy):
        # the inverse permutation sends every axis home
        inverse = [0] * len(self.axes)
        for position, a in enumerate(self.axes):
            inverse[a % len(self.axes)] = position
        return dy.transpose(inverse)


class GetItem(Function):
    """y = x[index]; the backward scatter-adds dy into zeros (repeated indices add up)."""

    def __init__(self, index):
        self.index = index

    def forward(self, x):
        self.in_shape, self.in_dtype = x.shape, x.dtype
        return x[self.index]

    def backward(self, dy):
        xp = get_array_module(dy)
        dx = xp.zeros(self.in_shape, dtype=dy.dtype)
        if _is_basic(self.index):
            dx[self.index] = dy  # slices and integers pick each element at most once
        else:
            xp.add.at(dx, self.index, dy)  # an index array may repeat an element
        return dx


def _is_basic(index) -> bool:
    """Whether x[index] is basic indexing (integers, slices, None, ...), never an array."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(part is None or part is Ellipsis or isinstance(part, (slice, int)) for part in parts)


class Concat(Function):
    def __init__(self, axis: int):
        self.axis = axis

    def forward(self, *xs):
        xp = get_array_module(*xs)
        self.sizes = [x.shape[self.axis] for x in xs]
        return xp.concatenate(xs, axis=self.axis)

    def backward(self, dy):
        xp = get_array_module(dy)
        edges = list(_running_sum(self.sizes))[:-1]
        return tuple(xp.split(dy, edges, axis=self.axis))


class Stack(Function):
    def __init__(self, axis: int):
        self.axis = axis

    def forward(self, *xs):
        return get_array_module(*xs).stack(xs, axis=self.axis)

    def backward(self, dy):
        xp = get_array_module(dy)
        return tuple(xp.take(dy, i, axis=self.axis) for i in range(dy.shape[self.axis]))


def _running_sum(sizes):
    total = 0
    for n in sizes:
        total += n
        yield total


def reshape(x: Tensor, *shape) -> Tensor:
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Reshape(shape)(x)


def permute(x: Tensor, *axes) -> Tensor:
    axes = tuple(axes[0]) if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
    return Permute(axes)(x)


def transpose(x: Tensor, dim0: int = -2, dim1: int = -1) -> Tensor:
    """Swap two axes (the last two by default)."""
    axes = list(range(x.ndim))
    axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
    return Permute(tuple(axes))(x)


def getitem(x: Tensor, index) -> Tensor:
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return GetItem(index)(x)


def concat(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    _check_same_shape_except(tensors, axis, "concat")
    return Concat(axis)(*tensors)


def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    _check_same_shape_except(tensors, None, "stack")
    return Stack(axis)(*tensors)


def _check_same_shape_except(tensors, axis, op: str) -> None:
    if not tensors:
        raise ValueError(f"{op}: needs at least one tensor, got none")
    first = tensors[0].shape
    for i, t in enumerate(tensors):
        a, b = list(first), list(t.shape)
        if axis is not None and len(a) == len(b):
            a.pop(axis), b.pop(axis)
        if a != b:
            rule = "all shapes equal" if axis is None else f"all shapes equal except axis {axis}"
            raise ValueError(
                f"{op}: tensor {i} has shape {t.shape}, tensor 0 has {first}; expected {rule}"
            )
