"""Learning-rate schedules: each sets every param group's lr to base_lr * factor(step).

The convention is torch's LambdaLR: making the schedule applies factor(0), so the first
optimizer.step() runs at base_lr * factor(0); call schedule.step() after each
optimizer.step(), and after n calls the lr is base_lr * factor(n).

    for batch in batches:
        loss.backward(); optimizer.step(); optimizer.zero_grad(); schedule.step()

base_lr is each group's lr when the schedule is made. To resume, make the optimizer and
the schedule as before, then load both state dicts (in either order).
"""

from __future__ import annotations

import abc
import math
import numbers

from .optimizer import Optimizer, check_real


class LRSchedule(abc.ABC):
    """Sets lr = base_lr * factor(last_step) in every group; subclasses write `factor`."""

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__}: optimizer must be a minivlm Optimizer, "
                f"got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    @abc.abstractmethod
    def factor(self, step: int) -> float:
        """The multiplier of base_lr after `step` calls of step()."""

    def settings(self) -> dict:
        """What the schedule was made with; a loaded state must have been saved with the same."""
        return {}

    def get_lr(self) -> list[float]:
        """The lr of each param group now."""
        factor = self.factor(self.last_step)
        return [base_lr * factor for base_lr in self.base_lrs]

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr

    def state_dict(self) -> dict:
        return {
            "last_step": self.last_step,
            "base_lrs": list(self.base_lrs),
            "settings": self.settings(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the step count and base lrs, and set the groups' lr to match."""
        where = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict) or set(state_dict) != {
            "last_step",
            "base_lrs",
            "settings",
        }:
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(
                f"{where}: expected keys 'base_lrs', 'last_step', 'settings', got {got}"
            )
        if state_dict["settings"] != self.settings():
            raise ValueError(
                f"{where}: the state was saved by a schedule with {state_dict['settings']}, "
                f"this one has {self.settings()}; make the schedule with the saved settings"
            )
        base_lrs = [
            check_real(where, f"base_lrs[{i}]", lr, 0.0)
            for i, lr in enumerate(state_dict["base_lrs"])
        ]
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(
                f"{where}: the state has {len(base_lrs)} base lrs, the optimizer has "
                f"{len(self.optimizer.param_groups)} param groups"
            )
        self.last_step = _check_count(where, "last_step", state_dict["last_step"])
        self.base_lrs = base_lrs
        self._apply()


class ConstantLR(LRSchedule):
    """lr = base_lr at every step. (Not torch's ConstantLR, which scales the first steps.)"""

    def factor(self, step: int) -> float:
        return 1.0


class WarmupCosine(LRSchedule):
    """Linear warm-up from 0 to base_lr, then cosine decay to min_lr_ratio * base_lr.

        factor(s) = s / warmup_steps                                   for s < warmup_steps
        factor(s) = r + (1 - r) * (1 + cos(pi * q)) / 2                for s >= warmup_steps
            with q = min(1, (s - warmup_steps) / (total_steps - warmup_steps)), r = min_lr_ratio

    So factor(0) = 0 when warmup_steps > 0 (the first update has lr 0; Adam's moments still
    take in its gradient), factor(warmup_steps) = 1, and factor(s) = r for s >= total_steps.
    """

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
    ):
        self.warmup_steps = _check_count("WarmupCosine", "warmup_steps", warmup_steps)
        self.total_steps = _check_count("WarmupCosine", "total_steps", total_steps)
        if self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"WarmupCosine: total_steps must be > warmup_steps, got total_steps={total_steps}, "
                f"warmup_steps={warmup_steps}"
            )
        self.min_lr_ratio = check_real("WarmupCosine", "min_lr_ratio", min_lr_ratio, 0.0, 1.0)
        super().__init__(optimizer)

    def settings(self) -> dict:
        return {
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "min_lr_ratio": self.min_lr_ratio,
        }

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine


def _check_count(where: str, name: str, value) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{where}: {name} must be an integer >= 0, got {value!r}")
    return int(value)
