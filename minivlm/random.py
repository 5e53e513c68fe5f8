"""The random numbers behind dropout and initialisation, from one seeded generator,
so that a run can be repeated and a resumed run continue exactly (its state is saved
in checkpoints).

On the GPU a draw of uniform numbers takes one 64-bit key from the generator and hashes
(key, element index) on the device (splitmix64): no state lives on the GPU. A captured
CUDA graph cannot take a new key from the host at each replay, so while DeviceKeys are
in use (see use_device_keys) the i-th draw of a step reads slot i of a key table on the
device, which the host refills from the generator before each replay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from .backend import get_array_module

_generator = np.random.default_rng(0)
_device_keys: DeviceKeys | None = None  # set by use_device_keys


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
    if _device_keys is None:  # a key from the one generator, so runs repeat
        keys, slot = xp.asarray(_generator.integers(2**63, size=1, dtype=np.uint64)), 0
    else:
        keys, slot = _device_keys.keys, _device_keys.take()
    out = xp.empty(array.shape, dtype=array.dtype)
    _hashed_uniform(xp)(keys, np.int64(slot), out)
    return out


class DeviceKeys:
    """A table of 64-bit keys on the device for the uniform draws of a captured step:
    the i-th draw after reset() reads keys[i]. In a pass that runs (not one being
    captured) each draw can take its key from the one generator there and then
    (draw_now), so the generator moves exactly as in an eager step; before a replay,
    refill() writes the keys of all the slots the captured pass used in one copy."""

    def __init__(self, xp, capacity: int = 256) -> None:
        self.keys = xp.zeros(capacity, dtype=np.uint64)  # (capacity,)
        self.used = 0  # draws since reset()
        self.draw_now = False

    def take(self) -> int:
        if self.used == len(self.keys):
            raise RuntimeError(
                f"DeviceKeys: a step drew more than its {len(self.keys)} keys; make the table "
                "with a larger capacity"
            )
        if self.draw_now:
            fresh = _generator.integers(2**63, size=1, dtype=np.uint64)
            self.keys[self.used : self.used + 1] = get_array_module(self.keys).asarray(fresh)
        self.used += 1
        return self.used - 1

    def reset(self) -> None:
        self.used = 0

    def refill(self) -> None:
        """New keys for the slots the last pass used: one copy to the device. The same
        keys as that many draws of one key each."""
        fresh = _generator.integers(2**63, size=self.used, dtype=np.uint64)
        self.keys[: self.used] = get_array_module(self.keys).asarray(fresh)


@contextlib.contextmanager
def use_device_keys(keys: DeviceKeys, draw_now: bool = False) -> Iterator[DeviceKeys]:
    """Within the block, GPU draws read their keys from `keys` (slot by slot from 0);
    with draw_now each key is drawn from the generator as its slot is taken."""
    global _device_keys
    previous, _device_keys = _device_keys, keys
    keys.reset()
    keys.draw_now = draw_now
    try:
        yield keys
    finally:
        _device_keys = previous
        keys.draw_now = False


# u = the top 24 bits of splitmix64(key + (i + 1) * golden ratio) / 2^24, element i of out
_HASHED_UNIFORM = r"""
unsigned long long z = keys[slot] + (unsigned long long)(i + 1) * 0x9E3779B97F4A7C15ull;
z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
z = z ^ (z >> 31);
out = (T)((double)(z >> 40) * (1.0 / 16777216.0));
"""
_kernels: dict = {}


def _hashed_uniform(xp):
    """The CuPy kernel (keys (K,) uint64, slot int64, out) -> uniform numbers in out."""
    if "uniform" not in _kernels:
        _kernels["uniform"] = xp.ElementwiseKernel(
            "raw uint64 keys, int64 slot", "T out", _HASHED_UNIFORM, "minivlm_hashed_uniform"
        )
    return _kernels["uniform"]
