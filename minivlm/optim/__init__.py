"""Optimizers, gradient clipping and learning-rate schedules.

optimizer = AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
schedule = WarmupCosine(optimizer, warmup_steps=100, total_steps=10_000)
loss.backward()
clip_grad_norm_(model.parameters(), max_norm=1.0)
optimizer.step(); optimizer.zero_grad(); schedule.step()
"""

from .adam import Adam, AdamW
from .clip import clip_grad_norm_
from .flat_adamw import FlatAdamW
from .optimizer import Optimizer
from .schedules import ConstantLR, LRSchedule, WarmupCosine
from .sgd import SGD

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "FlatAdamW",
    "clip_grad_norm_",
    "LRSchedule",
    "ConstantLR",
    "WarmupCosine",
]
