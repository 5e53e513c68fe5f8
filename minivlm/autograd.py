"""Tensor, the Function base class and the backward graph walk.

A Tensor wraps a NumPy or CuPy array. Every op is a Function: `forward` takes arrays
and saves what its backward needs; `backward` takes the gradient of each output and
returns the gradient of each input. Calling a Function on tensors records it as the
`creator` of its outputs; `Tensor.backward` walks those records in reverse
topological order and adds each gradient into the inputs.
"""

from __future__ import annotations

import contextlib
import os
import traceback

import numpy as np

from .backend import (
    DEFAULT_FLOAT,
    DeviceError,
    check_device,
    device_of,
    get_array_module,
    to_device,
)

_grad_enabled = True
_anomaly_enabled = False
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@contextlib.contextmanager
def no_grad():
    """Inside it, ops record no graph and save nothing for a backward."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


@contextlib.contextmanager
def enable_grad():
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, True
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    return _grad_enabled


class AnomalyError(FloatingPointError):
    """A NaN or inf came out of an op's forward or backward inside detect_anomaly()."""


@contextlib.contextmanager
def detect_anomaly():
    """Inside it, a NaN or inf from any forward or backward raises AnomalyError,
    naming the op and the line of user code that created it."""
    global _anomaly_enabled
    previous, _anomaly_enabled = _anomaly_enabled, True
    try:
        yield
    finally:
        _anomaly_enabled = previous


def _user_frame() -> str:
    """'file:line in function' of the innermost caller outside this package."""
    for frame in reversed(traceback.extract_stack()):
        if not os.path.abspath(frame.filename).startswith(_PACKAGE_DIR):
            return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return "<inside minivlm>"


def _check_finite(fn: Function, arrays, what: str) -> None:
    for index, array in enumerate(arrays):
        if array is None or array.dtype.kind != "f":
            continue
        xp = get_array_module(array)
        if not bool(xp.isfinite(array).all()):
            kind = "NaN" if bool(xp.isnan(array).any()) else "inf"
            raise AnomalyError(
                f"{fn.name} {what} {index} contains {kind}; the op was created at "
                f"{fn.created_at or _user_frame()}"
            )


def _as_array(value, like=None):
    """A Python scalar or array as an array on `like`'s device and float dtype."""
    if like is None:
        return np.asarray(value)
    xp = get_array_module(like)
    if np.isscalar(value) and like.dtype.kind == "f":
        return xp.asarray(value, dtype=like.dtype)
    return xp.asarray(value)


class Tensor:
    """An array, whether it wants a gradient, and the Function that made it."""

    __array_priority__ = 1000  # ndarray (op) Tensor defers to Tensor's reflected operator

    def __init__(self, data, requires_grad: bool = False):
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(
                f"requires_grad=True needs a floating dtype, got a tensor of dtype {data.dtype}"
            )
        self.data = data
        self.requires_grad = requires_grad
        self.grad = None
        self.creator: Function | None = None
        self.output_index = 0

    # -- facts about the array --------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)
    device = property(lambda self: device_of(self.data))
    is_leaf = property(lambda self: self.creator is None)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        where = ", device='cuda'" if self.device == "cuda" else ""
        body = np.array2string(np.asarray(self.numpy()), separator=", ", threshold=20)
        return f"tensor({body}, dtype={self.dtype}{where}{grad})"

    def numpy(self) -> np.ndarray:
        return to_device(self.data, "cpu")

    def item(self):
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def detach(self) -> Tensor:
        """The same array, cut from the graph."""
        return Tensor(self.data)

    def to(self, device: str) -> Tensor:
        """This tensor on `device`; gradients flow back to the original device."""
        check_device(device)
        if device == self.device:
            return self
        return ToDevice(device)(self)

    def zero_grad(self) -> None:
        self.grad = None

    # -- backward ---------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Add d(self)/d(leaf) . grad into every leaf's .grad that requires grad."""
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad: no input had "
                "requires_grad=True, or it was computed inside no_grad()"
            )
        grad = self._initial_grad(grad)
        if self.creator is None:
            _accumulate_leaf(self, grad)
            return
        pending = {(id(self.creator), self.output_index): grad}
        for fn in _topological_order(self.creator):
            _run_backward(fn, pending, retain_graph)

    def _initial_grad(self, grad):
        xp = get_array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise ValueError(
                    f"backward() without grad= needs a tensor with one element, got shape "
                    f"{self.shape}; pass grad= an array of shape {self.shape}"
                )
            return xp.ones_like(self.data)
        grad = grad.data if isinstance(grad, Tensor) else _as_array(grad, self.data)
        if grad.shape != self.shape:
            raise ValueError(f"backward(grad=...) expected shape {self.shape}, got {grad.shape}")
        if device_of(grad) != self.device:
            raise DeviceError(
                f"backward(grad=...) is on {device_of(grad)}, the tensor on {self.device}"
            )
        return grad.astype(self.dtype, copy=False)


def tensor(data, requires_grad: bool = False, dtype=None, device: str = "cpu") -> Tensor:
    """A new leaf tensor. Floating data is float32 unless `dtype` says otherwise."""
    check_device(device)
    if isinstance(data, Tensor):
        data = data.data
    xp = get_array_module(data)
    array = xp.asarray(data)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    elif array.dtype.kind == "f" and array.dtype != DEFAULT_FLOAT:
        array = array.astype(DEFAULT_FLOAT)
    return Tensor(to_device(array, device), requires_grad=requires_grad)


def _accumulate_leaf(leaf: Tensor, grad) -> None:
    # A fresh array on first write: grads may alias arrays that other tensors hold.
    leaf.grad = grad.copy() if leaf.grad is None else leaf.grad + grad


def _topological_order(root: Function) -> list[Function]:
    """Functions from the root back to the leaves, each after all that consume it.

    Iterative depth-first post-order, so deep graphs cannot hit Python's recursion limit.
    """
    post_order, visited = [], set()
    stack = [(root, False)]
    while stack:
        fn, children_done = stack.pop()
        if children_done:
            post_order.append(fn)
            continue
        if id(fn) in visited:
            continue
        visited.add(id(fn))
        stack.append((fn, True))
        for t in fn.inputs:
            if t.creator is not None and id(t.creator) not in visited:
                stack.append((t.creator, False))
    post_order.reverse()
    return post_order


def _run_backward(fn: Function, pending: dict, retain_graph: bool) -> None:
    out_grads = [pending.pop((id(fn), i), None) for i in range(len(fn.output_specs))]
    if all(g is None for g in out_grads):
        return
    if fn.released:
        raise RuntimeError(
            f"{fn.name}: backward through this graph a second time, but its saved arrays "
            "were freed by the first backward(); pass retain_graph=True the first time"
        )
    xp = get_array_module(*[g for g in out_grads if g is not None])
    out_grads = [
        xp.zeros(shape, dtype) if g is None else g
        for g, (shape, dtype) in zip(out_grads, fn.output_specs, strict=True)
    ]
    in_grads = fn.backward(*out_grads)
    if not isinstance(in_grads, tuple):
        in_grads = (in_grads,)
    if _anomaly_enabled or fn.created_at is not None:
        _check_finite(fn, in_grads, "backward gradient for input")
    for t, g in zip(fn.inputs, in_grads, strict=True):
        if g is None or not t.requires_grad:
            continue
        if g.shape != t.shape:
            raise RuntimeError(
                f"{fn.name}.backward returned shape {g.shape} for an input of {t.shape}"
            )
        if g.dtype != t.dtype:  # e.g. a float64 array mixed into a float32 op promotes dy
            g = g.astype(t.dtype)
        if t.creator is None:
            _accumulate_leaf(t, g)
        else:
            key = (id(t.creator), t.output_index)
            pending[key] = g if key not in pending else pending[key] + g
    if not retain_graph:
        fn.release()


class Function:
    """One differentiable op. Subclasses write `forward(*arrays)` and `backward(*grads)`.

    Non-tensor settings (axes, flags) go to `__init__`; tensors go to the call:
    ``Sum(axis=1)(x)``. `forward` calls `self.save(...)` with what `backward` needs.
    `backward` returns one gradient per input, or None for an input without one.
    """

    inputs: tuple = ()
    saved: tuple = ()
    released = False
    created_at: str | None = None

    @property
    def name(self) -> str:
        return type(self).__name__

    def save(self, *arrays) -> None:
        self.saved = arrays

    def release(self) -> None:
        self.saved = ()
        self.released = True

    def __call__(self, *inputs):
        tensors = _as_tensors(self.name, inputs)
        # which inputs want a gradient, so a backward may skip the others' products
        self.needs_input_grad = tuple(t.requires_grad for t in tensors)
        outputs = self.forward(*[t.data for t in tensors])
        single = not isinstance(outputs, tuple)
        outputs = (outputs,) if single else outputs
        if _anomaly_enabled:
            self.created_at = _user_frame()
            _check_finite(self, outputs, "forward output")
        needs_grad = _grad_enabled and any(t.requires_grad for t in tensors)
        results = tuple(
            Tensor(o, requires_grad=needs_grad and o.dtype.kind == "f") for o in outputs
        )
        if needs_grad:
            self.inputs = tensors
            self.output_specs = [(o.shape, o.dtype) for o in outputs]
            for index, result in enumerate(results):
                result.creator, result.output_index = self, index
        else:
            self.saved = ()
        return results[0] if single else results


def _as_tensors(op_name: str, inputs) -> tuple[Tensor, ...]:
    """Tensors for every input: scalars and arrays join the first tensor's device."""
    first = next((x for x in inputs if isinstance(x, Tensor)), None)
    if first is None:
        raise TypeError(
            f"{op_name} needs at least one Tensor input, got {[type(x).__name__ for x in inputs]}"
        )
    tensors = tuple(
        x if isinstance(x, Tensor) else Tensor(_as_array(x, first.data)) for x in inputs
    )
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        where = ", ".join(f"input {i} on {t.device}" for i, t in enumerate(tensors))
        raise DeviceError(
            f"{op_name} got tensors on different devices ({where}); move them with .to()"
        )
    return tensors


class ToDevice(Function):
    """y = x on another device; the gradient goes back to x's device."""

    def __init__(self, device: str):
        self.device = device

    def __call__(self, x):  # the one op whose output is meant to leave its input's device
        needs_grad = x.requires_grad and _grad_enabled
        out = Tensor(to_device(x.data, self.device), requires_grad=needs_grad)
        if out.requires_grad:
            self.inputs = (x,)
            self.output_specs = [(out.shape, out.dtype)]
            out.creator = self
        return out

    def backward(self, dy):
        return to_device(dy, self.source_device)

    @property
    def source_device(self) -> str:
        return self.inputs[0].device
