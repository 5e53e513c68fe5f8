"""FlatAdamW: AdamW that updates all parameters of a param group in one pass over flat buffers.

At construction each group's parameters are copied end to end into one contiguous buffer
and every `param.data` becomes a view of its slice; the moments exp_avg and exp_avg_sq are
flat buffers of the same layout. A step is then, per group, one copy of the gradients into
a flat grad buffer and one update: a few vectorised NumPy calls, or one launch of
kernels/adamw.cu on CuPy, instead of about ten calls per parameter.

The numbers that change from step to step (lr from a schedule, the bias corrections
1 - beta^t, a clipping scale) are not passed to the update as Python floats: the host
writes them into `factors`, a small table on the parameters' device (a row per parameter,
columns FACTOR_COLUMNS), and `clip_grad_norm_` writes its scale into `grad_scale` there.
So a captured CUDA graph of the step can be replayed after rewriting that table.

The mathematics, rounding included, is AdamW's (minivlm/optim/adam.py): for a parameter
p with gradient g at its step t = 1, 2, ...

    p = p * (1 - lr * wd)
    m = beta1 * m + (1 - beta1) * g,    v = beta2 * v + (1 - beta2) * g^2
    p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

with each factor rounded to the parameter's dtype as NumPy rounds a Python float, so in
float32 the weights, moments and state_dict() are AdamW's bit for bit. As in AdamW, a
parameter whose grad is None is not updated and its step count does not advance: its
row of `factors` is marked inactive (the flat grad buffer holds zeros there). Each
parameter keeps its own step count, as in AdamW's state_dict, which this one shares, so
a checkpoint of either optimizer loads into the other.

Use:
    optimizer = FlatAdamW(parameter_groups(model, 0.1), lr=3e-4)   # after model.to(...)
    loss.backward()
    norm = optimizer.clip_grad_norm_(1.0)      # optional; a device scalar, no host sync
    optimizer.step(); optimizer.zero_grad()

Weights must be changed in place from then on (`param.data[...] = ...`, as
Module.load_state_dict does): a param whose .data is replaced (Module.to, an assignment)
leaves the flat buffer, and step() says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..backend import get_array_module, is_cupy
from ..kernels_cuda import adamw as cuda_kernels
from .adam import AdamW, adam_moments_and_update
from .optimizer import _check_grad, check_real

# the columns of `factors`; = enum AdamWFactor in kernels/adamw.cu
FACTOR_COLUMNS = (
    "active",  # 1.0 when the parameter has a grad this step, else 0.0 (and the row is 0)
    "decay",  # 1 - lr * wd
    "beta1",
    "one_minus_beta1",
    "beta2",
    "one_minus_beta2",
    "bias2_sqrt",  # sqrt(1 - beta2^t)
    "eps",
    "step_size",  # lr / (1 - beta1^t)
)
ACTIVE, DECAY, BETA1, ONE_MINUS_BETA1, BETA2, ONE_MINUS_BETA2, BIAS2_SQRT, EPS, STEP_SIZE = range(
    len(FACTOR_COLUMNS)
)
assert len(FACTOR_COLUMNS) == cuda_kernels.FACTOR_COLUMNS


@dataclass
class FlatGroup:
    """One param group's flat buffers; N = its number of elements, P its parameters."""

    first: int  # flat index (as in state_dict) of the group's first parameter
    ends: np.ndarray  # (P,) int64: parameter k holds elements [ends[k - 1], ends[k])
    device_ends: object  # (P,) int64 `ends` on the parameters' device, for the kernel
    param: object  # (N,) the parameters' values; each param.data is a view of a slice
    grad: object  # (N,) the gradients, copied in by gather_grads (zeros for a None grad)
    exp_avg: object  # (N,) m
    exp_avg_sq: object  # (N,) v
    scratch: object  # (N,) the NumPy update's intermediate; None on CuPy (the kernel needs none)
    views: dict  # "param", "grad", "exp_avg", "exp_avg_sq" -> [P views shaped like the params]
    active: list  # [P] whether each parameter had a grad at the last gather_grads


class FlatAdamW(AdamW):
    """AdamW (decoupled weight decay) over one flat buffer per param group; see the module
    docstring. Every parameter must be on one device, and a group's share one dtype."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        _check_one_device(self.param_groups)
        xp = get_array_module(*(p.data for group in self.param_groups for p in group["params"]))
        self.groups: list[FlatGroup] = []
        first = 0
        for index, group in enumerate(self.param_groups):
            where = f"FlatAdamW param group {index}"
            self.groups.append(_flatten(xp, group["params"], first, where))
            first += len(group["params"])
        # this step's factors: written on the host, copied to the device once a step
        self.host_factors = np.zeros((first, len(FACTOR_COLUMNS)))  # (all params, columns)
        self.factors = xp.asarray(self.host_factors) if is_cupy(xp) else self.host_factors
        self.grad_scale = xp.ones(1, dtype=np.float64)  # (1,) the next step's clipping scale
        self._gathered = False  # whether the flat grad buffers hold this step's grads
        self._advanced: list[int] = []  # the params whose step the last prepare_step advanced

    # -- one step ---------------------------------------------------------------------------
    def gather_grads(self) -> None:
        """Copy every param.grad into its group's flat grad buffer; a None grad becomes
        zeros there and marks its parameter inactive for this step.

        step() calls this itself unless clip_grad_norm_ did since the last step; grads
        changed after that are not seen by the step.
        """
        params = [param for group in self.param_groups for param in group["params"]]
        for index, param in enumerate(params):
            if param.grad is not None:
                _check_grad(f"FlatAdamW: param {index}", param)
        for group, flat in zip(self.param_groups, self.groups, strict=True):
            flat.active = [param.grad is not None for param in group["params"]]
            # one copy a parameter: CuPy's concatenate would send a table of pointers from
            # the host, which a captured graph could not replay
            for param, view in zip(group["params"], flat.views["grad"], strict=True):
                if param.grad is None:
                    view.fill(0)
                else:
                    view[...] = param.grad
        self._gathered = True

    def step(self) -> None:
        """One AdamW update of every parameter that has a gradient; the others are left
        alone. Applies and then resets the scale of clip_grad_norm_, if it was called."""
        if not self._gathered:
            self.gather_grads()
        self.prepare_step()
        self.apply_step()

    def prepare_step(self) -> None:
        """The host's half of step(): check the hyperparameters, advance the step count of
        each parameter active at the last gather_grads, write their factors and copy the
        table to the device. A captured CUDA graph of apply_step runs after this each step:
        the graph reads the table, so the schedule's lr reaches it."""
        self._check_views()
        hypers = [
            self._check_hyperparameters(
                {key: group[key] for key in self.defaults}, f"FlatAdamW param group {index}"
            )
            for index, group in enumerate(self.param_groups)
        ]
        self._advanced = []
        for flat, hyper in zip(self.groups, hypers, strict=True):
            self._advance(flat, hyper)
        if self.factors is not self.host_factors:
            self.factors.set(self.host_factors)  # one host-to-device copy of the whole table

    def apply_step(self) -> None:
        """The device's half of step(): every group's update from its flat grads (one
        kernel a group on CuPy), then the clipping scale back to 1. Reads no host value
        that changes from step to step. When clip_grad_norm_ found a non-finite norm (or
        loss) the scale is NaN and nothing is updated: take the step counts back with
        undo_prepare."""
        for flat in self.groups:
            self._update_group(flat)
        self.grad_scale.fill(1.0)
        self._gathered = False

    def undo_prepare(self) -> None:
        """Take back the step counts the last prepare_step advanced (its update was
        skipped); a parameter whose first step it was has no state again, as in AdamW."""
        for index in self._advanced:
            self.state[index]["step"] -= 1
            if self.state[index]["step"] == 0:
                del self.state[index]
        self._advanced = []

    def _advance(self, flat: FlatGroup, hyper: dict) -> None:
        """Advance the step count of each active parameter and write its row of factors."""
        rows_by_step: dict[int, tuple] = {}  # parameters at the same step share a row
        for offset, active in enumerate(flat.active):
            index = flat.first + offset
            if not active:
                self.host_factors[index] = 0.0
                continue
            state = self.state.get(index) or self._new_state(flat, offset)
            state["step"] += 1
            self.state[index] = state
            self._advanced.append(index)
            if state["step"] not in rows_by_step:
                rows_by_step[state["step"]] = _factor_row(hyper, state["step"])
            self.host_factors[index] = rows_by_step[state["step"]]

    def _update_group(self, flat: FlatGroup) -> None:
        if not flat.active:  # a group without parameters
            return
        rows = self.factors[flat.first : flat.first + len(flat.ends)]  # (P, columns)
        if flat.scratch is None:  # CuPy: one kernel launch
            cuda_kernels.adamw_step(
                flat.param,
                flat.grad,
                flat.exp_avg,
                flat.exp_avg_sq,
                rows,
                flat.device_ends,
                self.grad_scale,
            )
            return
        scale = self.grad_scale[0]
        if np.isnan(scale):  # clip_grad_norm_ saw a non-finite norm or loss: no update
            return
        if scale != 1.0:
            flat.grad *= flat.grad.dtype.type(scale)  # as clip_grad_norm_: g = g * scale
        # consecutive parameters with equal rows (usually the whole group) form one run,
        # updated by one set of vectorised calls
        starts = np.flatnonzero(np.r_[True, np.any(rows[1:] != rows[:-1], axis=1)])
        bounds = np.r_[0, flat.ends]  # (P + 1,) element offsets of the parameters
        for begin, end in zip(starts, np.r_[starts[1:], len(rows)], strict=True):
            if rows[begin, ACTIVE]:
                _adamw_numpy(flat, slice(bounds[begin], bounds[end]), rows[begin])

    def _new_state(self, flat: FlatGroup, offset: int) -> dict:
        """A parameter's AdamW state as views of the flat moments (zero until its first step)."""
        return {
            "step": 0,
            "exp_avg": flat.views["exp_avg"][offset],
            "exp_avg_sq": flat.views["exp_avg_sq"][offset],
        }

    def _check_views(self) -> None:
        index = 0
        for group, flat in zip(self.param_groups, self.groups, strict=True):
            for param, view in zip(group["params"], flat.views["param"], strict=True):
                if param.data is not view:
                    raise RuntimeError(
                        f"FlatAdamW: param {index}'s .data was replaced after the optimizer "
                        "was made (by Module.to or an assignment to .data), so the optimizer "
                        "no longer updates it; move or cast the model before making the "
                        "optimizer and write weights in place (param.data[...] = ...)"
                    )
                index += 1

    # -- gradient clipping ------------------------------------------------------------------
    def clip_grad_norm_(self, max_norm: float, loss=None):
        """Gather the grads and make the next step scale them so that their global L2 norm
        is at most `max_norm`, as minivlm.optim.clip_grad_norm_ does:

            total = sqrt(sum of grad^2 over every group's flat grad buffer)
            scale = min(max_norm / (total + 1e-6), 1)

        A total that is NaN or inf, or a `loss` (a 0-d array on the device, optional) that
        is, makes the scale NaN: the next step then updates nothing (see apply_step), where
        a trainer would not apply the step either. The scale goes into `grad_scale` on the
        device and param.grad is left as it is. Returns total as a float64 0-d array on the
        parameters' device (a NumPy scalar on the CPU): reading it on the host is the only
        sync, and the caller chooses when.
        """
        max_norm = check_real("FlatAdamW.clip_grad_norm_", "max_norm", max_norm, 0.0)
        if max_norm == 0:
            raise ValueError("FlatAdamW.clip_grad_norm_: max_norm must be > 0, got 0.0")
        self.gather_grads()
        xp = get_array_module(self.grad_scale)
        squares = []
        for flat in self.groups:
            # float16 squares overflow past 65504: sum them in float32 at least
            grad = flat.grad.astype(np.promote_types(flat.grad.dtype, np.float32), copy=False)
            squares.append(xp.vdot(grad, grad).astype(np.float64))
        total = xp.sqrt(sum(squares))
        finite = xp.isfinite(total) if loss is None else xp.isfinite(total) & xp.isfinite(loss)
        scale = xp.minimum(max_norm / (total + 1e-6), 1.0)
        self.grad_scale[...] = xp.where(finite, scale, np.nan)
        return total

    # -- checkpoints ------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict) -> None:
        """As AdamW.load_state_dict (the same format, so AdamW's checkpoints load too); the
        loaded moments are copied into the flat buffers, zeros for a parameter without state."""
        super().load_state_dict(state_dict)  # checks all, then sets self.state to new arrays
        loaded, self.state = self.state, {}
        for flat in self.groups:
            flat.exp_avg.fill(0)
            flat.exp_avg_sq.fill(0)
        slots = [(flat, offset) for flat in self.groups for offset in range(len(flat.ends))]
        for index, saved in loaded.items():
            flat, offset = slots[index]
            state = self._new_state(flat, offset)
            state["exp_avg"][...] = saved["exp_avg"]
            state["exp_avg_sq"][...] = saved["exp_avg_sq"]
            state["step"] = saved["step"]
            self.state[index] = state


def _factor_row(hyper: dict, step: int) -> tuple[float, ...]:
    """A parameter's row of factors at its step `step`, computed as AdamW computes them
    (Python floats, rounded to the parameter's dtype only where they are used)."""
    lr, eps, weight_decay = hyper["lr"], hyper["eps"], hyper["weight_decay"]
    beta1, beta2 = hyper["betas"]
    bias1 = 1 - beta1**step
    bias2 = 1 - beta2**step
    decay, step_size = 1 - lr * weight_decay, lr / bias1
    return (1.0, decay, beta1, 1 - beta1, beta2, 1 - beta2, math.sqrt(bias2), eps, step_size)


def _adamw_numpy(flat: FlatGroup, part: slice, row: np.ndarray) -> None:
    """AdamW over elements `part` of the flat buffers, with the factors `row`: Adam's own
    calls (adam_moments_and_update), so each element is rounded exactly as there."""
    factor = {name: float(row[index]) for index, name in enumerate(FACTOR_COLUMNS)}
    param = flat.param[part]  # (n,) view
    if factor["decay"] != 1.0:
        param *= factor["decay"]  # p = p * (1 - lr * wd)
    adam_moments_and_update(
        param, flat.grad[part], flat.exp_avg[part], flat.exp_avg_sq[part], flat.scratch[part],
        factor["beta1"], factor["beta2"], factor["eps"], factor["bias2_sqrt"],
        factor["step_size"],
    )  # fmt: skip


def _check_one_device(groups: list[dict]) -> None:
    """Every parameter on one device (the factors table and the clip scale live there)."""
    device = next(param.device for group in groups for param in group["params"])
    for group_index, group in enumerate(groups):
        for index, param in enumerate(group["params"]):
            if param.device != device:
                raise ValueError(
                    f"FlatAdamW param group {group_index}: params[{index}] is on "
                    f"{param.device!r}, expected {device!r} as the first parameter: all "
                    "parameters of a FlatAdamW must be on one device"
                )


def _flatten(xp, params: list, first: int, where: str) -> FlatGroup:
    """Copy the group's parameters into one buffer and make each param.data a view of it."""
    for index, param in enumerate(params):
        if param.dtype != params[0].dtype:
            raise ValueError(
                f"{where}: params[{index}] has dtype {param.dtype}, expected {params[0].dtype} "
                "as params[0]: a group's parameters share one flat buffer, so one dtype"
            )
    dtype = params[0].dtype if params else np.dtype(np.float32)
    sizes = [param.size for param in params]
    ends = np.cumsum(sizes, dtype=np.int64)  # (P,)
    total = int(ends[-1]) if params else 0
    buffers = {name: xp.zeros(total, dtype) for name in ("param", "grad", "exp_avg", "exp_avg_sq")}
    views = {name: [] for name in buffers}
    for param, end, size in zip(params, ends, sizes, strict=True):
        for name, buffer in buffers.items():
            views[name].append(buffer[end - size : end].reshape(param.shape))
        views["param"][-1][...] = param.data
        param.data = views["param"][-1]
    return FlatGroup(
        first=first,
        ends=ends,
        device_ends=xp.asarray(ends),
        **buffers,
        scratch=None if is_cupy(xp) else xp.empty(total, dtype),
        views=views,
        active=[False] * len(params),
    )
