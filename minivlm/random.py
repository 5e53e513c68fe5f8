"""The random numbers behind dropout and initialisation, from one seeded generator,
so that a run can be repeated and a resumed run continue exactly (its state is saved
in checkpoints)."""

from __future__ import annotations

import numpy as np

from .backend import get_array_module

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    global _generator
    _generator = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    return _generator


def get_state() -> dict:
    return _generator.bit_generator.state


def set_state(state: dict) -> None:
    _generator.bit_generator.state = state


def uniform_like(array):
    """Uniform [0, 1) numbers of `array`'s shape, dtype and device."""
    xp = get_array_module(array)
    if xp is np:
        return _generator.random(array.shape, dtype=np.float32).astype(array.dtype, copy=False)
    # CuPy draws on the GPU from a seed taken from the one generator, so runs repeat
    seed = int(_generator.integers(2**63))
    return xp.random.default_rng(seed).random(array.shape, dtype=xp.float32).astype(array.dtype)
