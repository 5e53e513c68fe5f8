"""Module and Parameter: the objects that own a model's weights.

A Module's attributes that are Parameters or Modules are registered when they are
assigned, so the tree of a model can be walked without listing it by hand. Names are
dotted paths ("vlm_blocks.0.norm1.weight"), the names that state dicts and
checkpoints use, in PyTorch's order: a module's own parameters first (in the order
they were assigned), then each child's, depth first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numpy as np

from ..autograd import Tensor
from ..backend import check_device, get_array_module, to_device, to_numpy


class Parameter(Tensor):
    """A tensor that a Module owns as a weight: a floating leaf with requires_grad=True."""

    def __init__(self, data):
        data = get_array_module(data).asarray(data)
        if data.dtype.kind != "f":
            raise TypeError(f"Parameter: data must be floating, got dtype {data.dtype}")
        super().__init__(data, requires_grad=True)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device={self.device!r})"


class StateDictError(ValueError):
    """A state dict that does not fit a module: missing, unexpected or mis-shaped entries."""


class LoadResult(NamedTuple):
    """What load_state_dict(strict=False) left out."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class of every layer and model. Subclasses assign their weights and
    sub-modules in __init__ (after super().__init__()) and write forward()."""

    training: bool

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- registration -------------------------------------------------------------
    def __setattr__(self, name: str, value) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}: call super().__init__() before assigning "
                f"attribute {name!r}"
            )
        if not isinstance(value, Parameter):
            self._parameters.pop(name, None)
        if not isinstance(value, Module):
            self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value  # a re-assigned name keeps its place
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        object.__delattr__(self, name)

    # -- walking the tree ---------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module (named `prefix`) and every descendant, depth first."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) pairs; a parameter shared by two modules comes once."""
        seen = set()
        for module_name, module in self.named_modules(prefix):
            for name, param in module._parameters.items():
                if id(param) not in seen:
                    seen.add(id(param))
                    yield (f"{module_name}.{name}" if module_name else name), param

    def parameters(self) -> Iterator[Parameter]:
        for _, param in self.named_parameters():
            yield param

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # -- modes, gradients, devices ------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Training mode (dropout on) for this module and all below it."""
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for param in self.parameters():
            param.grad = None

    def to(self, device: str | None = None, dtype=None) -> Module:
        """Move (and/or cast to a floating `dtype`) every parameter in place; returns self.

        The Parameter objects stay the same (an optimizer holding them keeps working);
        their arrays are replaced. Casting drops gradients, moving carries them along.
        """
        if dtype is not None and np.dtype(dtype).kind != "f":
            raise TypeError(
                f"{type(self).__name__}.to: dtype must be floating, got {np.dtype(dtype)}"
            )
        if device is not None:
            check_device(device)
        for param in self.parameters():
            if device is not None:
                param.data = to_device(param.data, device)
                param.grad = None if param.grad is None else to_device(param.grad, device)
            if dtype is not None and param.dtype != np.dtype(dtype):
                param.data = param.data.astype(dtype)
                param.grad = None
        return self

    # -- state dicts --------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """{dotted name: a NumPy copy of the parameter}, in named_parameters() order."""
        return {name: np.array(to_numpy(p.data), copy=True) for name, p in self.named_parameters()}

    def load_state_dict(self, state: Mapping, strict: bool = True) -> LoadResult:
        """Copy `state` (name -> array or Tensor) into the parameters, in place, each in its
        parameter's dtype and device.

        Mis-shaped entries are always refused; missing and unexpected names are refused
        when `strict`. Every problem goes into one StateDictError, so a checkpoint from
        another configuration shows all its differences at once.
        """
        own = dict(self.named_parameters())
        missing = [name for name in own if name not in state]
        unexpected = [name for name in state if name not in own]
        mis_shaped = [
            f"{name}: got {tuple(_array(state[name]).shape)}, expected {own[name].shape}"
            for name in own
            if name in state and tuple(_array(state[name]).shape) != own[name].shape
        ]
        problems = [f"wrong shape: {entry}" for entry in mis_shaped]
        if strict:
            problems += [f"missing: {name}" for name in missing]
            problems += [f"unexpected: {name}" for name in unexpected]
        if problems:
            raise StateDictError(
                f"{type(self).__name__}.load_state_dict: {len(problems)} entries do not fit "
                "this model:\n  " + "\n  ".join(problems)
            )
        for name, param in own.items():
            if name in state:
                value = to_device(to_numpy(_array(state[name])), param.device)
                param.data[...] = value.astype(param.dtype, copy=False)
        return LoadResult(missing, unexpected)

    # -- printing -----------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        """The tree of modules, as PyTorch prints it."""
        lines = [
            f"({name}): {child!r}".replace("\n", "\n  ") for name, child in self._modules.items()
        ]
        if not lines:
            return f"{type(self).__name__}({self.extra_repr()})"
        extra = [self.extra_repr()] if self.extra_repr() else []
        return f"{type(self).__name__}(\n  " + "\n  ".join(extra + lines) + "\n)"


def _array(value):
    return value.data if isinstance(value, Tensor) else value


@contextlib.contextmanager
def swapped_parameters(module: Module, tensors: Mapping[str, Tensor]):
    """Inside it, module's forward reads `tensors` (by dotted name) in place of its own
    parameters; the parameters come back on exit. The graph then leads to `tensors`."""
    modules = dict(module.named_modules())
    own = dict(module.named_parameters())
    unknown = [name for name in tensors if name not in own]
    if unknown:
        raise KeyError(f"swapped_parameters: {type(module).__name__} has no parameters {unknown}")
    swapped = []
    try:
        for name, tensor in tensors.items():
            owner_name, _, attribute = name.rpartition(".")
            owner = modules[owner_name]
            object.__setattr__(owner, attribute, tensor)  # bypasses registration on purpose
            swapped.append((owner, attribute))
        yield module
    finally:
        for owner, attribute in swapped:
            object.__setattr__(owner, attribute, owner._parameters[attribute])


def functional_call(module: Module, tensors: Mapping[str, Tensor], *args, **kwargs):
    """module(*args, **kwargs) computed with `tensors` in place of the named parameters
    (torch.func.functional_call): gradients then flow into `tensors`."""
    with swapped_parameters(module, tensors):
        return module(*args, **kwargs)
