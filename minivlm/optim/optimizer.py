"""The Optimizer base class: parameter groups, per-parameter state, state_dict.

An optimizer holds a list of param groups; each group is a dict with its own
hyperparameters (lr, weight_decay, ...) and its "params". Per-parameter state
(moment buffers, step counts) lives in `self.state`, keyed by the parameter's
position in the flattened groups, which is also how `state_dict` names it.
Subclasses write `_check_hyperparameters` and `_update`; `step` feeds `_update`
one parameter at a time.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Iterable

import numpy as np

from ..autograd import Tensor
from ..backend import to_device, to_numpy


def check_real(
    where: str, name: str, value, low: float, high: float = math.inf, high_open: bool = False
) -> float:
    """`value` as a Python float after checking low <= value <= high (or < high)."""
    bracket = ")" if high_open else "]"
    expected = f">= {low}" if high == math.inf else f"in [{low}, {high}{bracket}"
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be a number {expected}, got {value!r}")
    value = float(value)  # a Python float, so float32 arrays stay float32
    above_high = value >= high if high_open else value > high
    if math.isnan(value) or value < low or above_high:
        raise ValueError(f"{where}: {name} must be {expected}, got {value!r}")
    return value


def check_betas(where: str, betas) -> tuple[float, float]:
    """(beta1, beta2), each in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}")
    beta1 = check_real(where, "betas[0]", betas[0], 0.0, 1.0, high_open=True)
    beta2 = check_real(where, "betas[1]", betas[1], 0.0, 1.0, high_open=True)
    return beta1, beta2


class Optimizer(abc.ABC):
    """Param groups and state; `step()` calls the subclass's `_update` per parameter."""

    state_names: tuple[str, ...] = ()  # what `_update` keeps in a parameter's state

    def __init__(self, params, defaults: dict):
        name = type(self).__name__
        self.defaults = self._check_hyperparameters(dict(defaults), name)
        self.param_groups = [
            self._make_group(group, f"{name} param group {index}")
            for index, group in enumerate(_as_group_dicts(name, params))
        ]
        _check_no_duplicates(name, self.param_groups)
        self.state: dict[int, dict] = {}  # flat param index -> {"step": int, "exp_avg": array, ...}

    @abc.abstractmethod
    def _check_hyperparameters(self, hyper: dict, where: str) -> dict:
        """The group's hyperparameters, normalised (Python floats); raises on bad values."""

    @abc.abstractmethod
    def _update(self, param, grad, state: dict, hyper: dict) -> None:
        """Update the array `param` in place from `grad` and the group's checked `hyper`."""

    def _make_group(self, group: dict, where: str) -> dict:
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            allowed = ", ".join(["params", *self.defaults])
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed keys are {allowed}")
        params = group["params"]
        for index, param in enumerate(params):
            _check_param(f"{where}: params[{index}]", param)
        hyper = {key: group.get(key, default) for key, default in self.defaults.items()}
        return {"params": params, **self._check_hyperparameters(hyper, where)}

    def _indexed_params(self):
        """(flat index, group, param) for every parameter, in group order."""
        index = 0
        for group in self.param_groups:
            for param in group["params"]:
                yield index, group, param
                index += 1

    def step(self) -> None:
        """One update of every parameter that has a gradient; the others are left alone.

        Each group's hyperparameters are checked again here (a schedule or the caller may
        have changed them) and read as Python floats, so that a NumPy float64 lr cannot
        turn float32 arithmetic into float64.
        """
        name = type(self).__name__
        index = 0
        for group_index, group in enumerate(self.param_groups):
            where = f"{name} param group {group_index}"
            hyper = self._check_hyperparameters({key: group[key] for key in self.defaults}, where)
            for param in group["params"]:
                if param.grad is not None:
                    _check_grad(f"{name}: param {index}", param)
                    state = self.state.get(index, {})
                    self._update(param.data, param.grad, state, hyper)
                    if state:
                        self.state[index] = state
                index += 1

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (sets .grad to None)."""
        for _, _, param in self._indexed_params():
            param.grad = None

    # -- checkpoints ------------------------------------------------------------
    def state_dict(self) -> dict:
        """{"state": {index: {name: NumPy array}}, "param_groups": [{hyperparameters, "params"}]}.

        Step counts become 0-d int64 arrays, buffers NumPy copies in the parameter's dtype;
        "params" lists the flat indices of each group's parameters.
        """
        state = {
            index: {key: _saved_value(value) for key, value in param_state.items()}
            for index, param_state in self.state.items()
        }
        groups, start = [], 0
        for group in self.param_groups:
            count = len(group["params"])
            hyper = {key: value for key, value in group.items() if key != "params"}
            groups.append({**hyper, "params": list(range(start, start + count))})
            start += count
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and state saved by `state_dict()` exactly.

        Buffers are copied onto each parameter's device in its dtype. Raises ValueError when
        the groups, parameter counts, state names or shapes do not match this optimizer; on
        error nothing is changed.
        """
        name = type(self).__name__
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(
                f"{name}.load_state_dict: expected a dict with keys 'param_groups' and 'state', "
                f"got {got}"
            )
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{name}.load_state_dict: the saved state has {len(saved_groups)} param groups, "
                f"this optimizer has {len(self.param_groups)}"
            )
        new_hypers = [
            self._loaded_hyperparameters(saved, group, f"{name}.load_state_dict param group {i}")
            for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True))
        ]
        params = [param for _, _, param in self._indexed_params()]
        new_state = {
            _check_index(name, index, len(params)): self._loaded_param_state(
                saved, params[index], f"{name}.load_state_dict param {index}"
            )
            for index, saved in state_dict["state"].items()
        }
        for group, hyper in zip(self.param_groups, new_hypers, strict=True):
            group.update(hyper)
        self.state = new_state

    def _loaded_hyperparameters(self, saved: dict, group: dict, where: str) -> dict:
        count = len(saved.get("params", ()))
        if count != len(group["params"]):
            raise ValueError(
                f"{where}: the saved group has {count} params, this one has {len(group['params'])}"
            )
        hyper = {key: value for key, value in saved.items() if key != "params"}
        if set(hyper) != set(self.defaults):
            raise ValueError(
                f"{where}: saved hyperparameters {sorted(hyper)}, expected {sorted(self.defaults)}"
            )
        return self._check_hyperparameters(hyper, where)

    def _loaded_param_state(self, saved: dict, param: Tensor, where: str) -> dict:
        if set(saved) != set(self.state_names):
            raise ValueError(
                f"{where}: saved state has {sorted(saved)}, expected {sorted(self.state_names)}"
            )
        loaded = {}
        for key, value in saved.items():
            value = np.asarray(value)
            if key == "step":  # a count, kept as a Python int so beta**step stays a Python float
                if value.shape != () or value.dtype.kind not in "iu":
                    raise ValueError(
                        f"{where}: step must be a single integer, got {value.dtype} of shape "
                        f"{value.shape}"
                    )
                loaded[key] = int(value)
            elif value.shape != param.shape:
                raise ValueError(
                    f"{where}: {key} has shape {value.shape}, the parameter has shape {param.shape}"
                )
            else:
                loaded[key] = to_device(value.astype(param.dtype), param.device)  # a fresh copy
        return loaded


def _as_group_dicts(name: str, params) -> list[dict]:
    if isinstance(params, Tensor) or not isinstance(params, Iterable):
        raise TypeError(
            f"{name}: params must be an iterable of Tensors or of param-group dicts, "
            f"got {type(params).__name__}"
        )
    params = list(params)
    if not params:
        raise ValueError(f"{name}: params is empty; pass the tensors to optimize")
    if all(isinstance(p, dict) for p in params):
        for index, group in enumerate(params):
            if "params" not in group:
                raise ValueError(f"{name} param group {index}: a group needs a 'params' entry")
        groups = [{**group, "params": _as_list(group["params"])} for group in params]
        if not any(group["params"] for group in groups):
            raise ValueError(f"{name}: every param group is empty; pass the tensors to optimize")
        return groups
    if any(isinstance(p, dict) for p in params):
        raise TypeError(f"{name}: params mixes Tensors and param-group dicts; use one or the other")
    return [{"params": params}]


def _as_list(params) -> list:
    """A group's "params": one Tensor or an iterable of them (a generator is read once)."""
    return [params] if isinstance(params, Tensor) else list(params)


def _check_param(where: str, param) -> None:
    if not isinstance(param, Tensor):
        raise TypeError(f"{where} must be a Tensor, got {type(param).__name__}")
    if param.dtype.kind != "f":
        raise TypeError(f"{where} must have a floating dtype, got {param.dtype}")
    if not param.is_leaf:
        raise ValueError(f"{where} is not a leaf tensor (it was computed by {param.creator.name})")


def _check_no_duplicates(name: str, groups: list[dict]) -> None:
    seen = set()
    for group in groups:
        for param in group["params"]:
            if id(param) in seen:
                raise ValueError(f"{name}: a parameter appears more than once in params")
            seen.add(id(param))


def _check_grad(where: str, param: Tensor) -> None:
    grad = param.grad
    if grad.shape != param.shape:
        raise ValueError(f"{where} has shape {param.shape} but its grad has shape {grad.shape}")
    if grad.dtype != param.dtype:
        raise TypeError(f"{where} has dtype {param.dtype} but its grad has dtype {grad.dtype}")


def _check_index(name: str, index, count: int) -> int:
    if not isinstance(index, numbers.Integral) or not 0 <= index < count:
        raise ValueError(
            f"{name}.load_state_dict: state for param {index!r}, expected an index in [0, {count})"
        )
    return int(index)


def _saved_value(value):
    """A step count as a 0-d int64 array, a buffer as a NumPy copy."""
    if isinstance(value, int):
        return np.array(value, dtype=np.int64)
    return to_numpy(value).copy()
