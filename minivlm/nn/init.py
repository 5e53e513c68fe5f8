"""Initial weights as PyTorch draws them, from minivlm's one seeded generator.

Every function returns a NumPy array of DEFAULT_FLOAT (float32); the draws are in
float64 first, so a seed gives the same weights whatever the target dtype.
"""

from __future__ import annotations

import math

import numpy as np

from .. import random
from ..backend import DEFAULT_FLOAT


def uniform(shape: tuple[int, ...], bound: float) -> np.ndarray:
    """U(-bound, bound)."""
    return random.generator().uniform(-bound, bound, size=shape).astype(DEFAULT_FLOAT)


def normal(shape: tuple[int, ...], std: float = 1.0) -> np.ndarray:
    """N(0, std^2)."""
    return (std * random.generator().standard_normal(shape)).astype(DEFAULT_FLOAT)


def zeros(shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape, DEFAULT_FLOAT)


def ones(shape: tuple[int, ...]) -> np.ndarray:
    return np.ones(shape, DEFAULT_FLOAT)


def fan_in_uniform(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's Linear default, which it writes as
    kaiming_uniform(a=sqrt(5)): gain sqrt(2 / (1 + a^2)) = sqrt(1/3), bound
    gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in). Its bias uses the same bound."""
    return uniform(shape, 1.0 / math.sqrt(fan_in))


def xavier_uniform(shape: tuple[int, int]) -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) for a (fan_out, fan_in) weight."""
    fan_out, fan_in = shape
    return uniform(shape, math.sqrt(6.0 / (fan_in + fan_out)))
