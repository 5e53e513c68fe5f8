"""The GPU's uniform draws: a hash of (key, element index), keys from the one seeded
generator, and the key table a captured CUDA graph reads (minivlm/random.py)."""

from __future__ import annotations

import numpy as np
import pytest

from minivlm import random
from minivlm.backend import cuda_available

GOLDEN, MIX1, MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def splitmix_uniform(key: int, size: int) -> np.ndarray:
    """The kernel's numbers in NumPy: top 24 bits of splitmix64(key + (i + 1) golden)."""
    with np.errstate(over="ignore"):
        z = np.uint64(key) + (np.arange(1, size + 1, dtype=np.uint64) * np.uint64(GOLDEN))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / 2**24


def test_the_reference_hash_is_uniform_enough_for_dropout():
    u = splitmix_uniform(12345, 200_000)
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    counts = np.histogram(u, bins=16, range=(0, 1))[0]
    assert counts.min() > 0.95 * len(u) / 16 and counts.max() < 1.05 * len(u) / 16
    assert np.corrcoef(u[:-1], u[1:])[0, 1] < 0.01  # neighbours unrelated


def test_device_keys_hand_out_slots_in_order_and_refill_as_many_as_were_used():
    keys = random.DeviceKeys(np, capacity=3)
    with random.use_device_keys(keys):
        assert [keys.take(), keys.take()] == [0, 1]
    random.manual_seed(7)
    keys.refill()
    expected = np.random.default_rng(7).integers(2**63, size=2, dtype=np.uint64)
    np.testing.assert_array_equal(keys.keys[:2], expected)
    assert keys.keys[2] == 0, "an unused slot is left alone"
    with random.use_device_keys(keys):
        assert keys.used == 0, "each pass starts at slot 0"


def test_drawing_as_slots_are_taken_moves_the_generator_as_a_refill_does():
    """The warm-up draws each key as it is taken, replays refill the table at once: for
    the same seed, the same keys (and the generator ends in the same state)."""
    random.manual_seed(9)
    keys = random.DeviceKeys(np, capacity=4)
    with random.use_device_keys(keys, draw_now=True):
        for _ in range(3):
            keys.take()
    drawn, after_drawing = keys.keys.copy(), random.generator().random()
    assert not keys.draw_now, "drawing stops with the block"
    random.manual_seed(9)
    keys.refill()
    np.testing.assert_array_equal(keys.keys, drawn)
    assert random.generator().random() == after_drawing


def test_a_step_that_draws_more_keys_than_the_table_holds_says_so():
    keys = random.DeviceKeys(np, capacity=1)
    with random.use_device_keys(keys):
        keys.take()
        with pytest.raises(RuntimeError, match="drew more than its 1 keys"):
            keys.take()


def test_numpy_draws_ignore_the_device_keys():
    random.manual_seed(3)
    plain = random.uniform_like(np.zeros((4, 5), np.float32))
    random.manual_seed(3)
    with random.use_device_keys(random.DeviceKeys(np)):
        keyed = random.uniform_like(np.zeros((4, 5), np.float32))
    np.testing.assert_array_equal(keyed, plain)


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="CuPy sees no usable GPU")
def test_gpu_draws_are_the_hash_of_a_key_from_the_generator():
    cupy = pytest.importorskip("cupy")
    random.manual_seed(11)
    got = random.uniform_like(cupy.zeros((3, 1000), cupy.float32))
    key = int(np.random.default_rng(11).integers(2**63, size=1, dtype=np.uint64)[0])
    np.testing.assert_allclose(cupy.asnumpy(got).ravel(), splitmix_uniform(key, 3000), atol=0)
    keys = random.DeviceKeys(cupy, capacity=4)
    with random.use_device_keys(keys):
        random.uniform_like(cupy.zeros(10, cupy.float32))  # slot 0
        second = random.uniform_like(cupy.zeros(10, cupy.float32))  # slot 1
    keys.refill()
    with random.use_device_keys(keys):
        random.uniform_like(cupy.zeros(10, cupy.float32))
        again = random.uniform_like(cupy.zeros(10, cupy.float32))
    slot_key = int(cupy.asnumpy(keys.keys)[1])
    np.testing.assert_allclose(cupy.asnumpy(again), splitmix_uniform(slot_key, 10), atol=0)
    assert not bool((second == again).all()), "a refill gives new numbers"
