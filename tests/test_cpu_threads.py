"""Row-wise ops shared out among threads (kernels_cpu.threads.split_rows): every row once,
the same results as on one thread, gradients right, a worker's error raised.

The machine running the tests may have one core: each test sets the core count and the
size threshold itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from minivlm import F, Tensor, gradcheck
from minivlm.kernels_cpu import threads


@pytest.fixture
def cores(monkeypatch):
    """cores(n): split_rows sees n usable cores and splits work of any size."""

    def set_cores(count: int) -> None:
        monkeypatch.setattr(threads, "usable_cores", lambda: count)
        monkeypatch.setattr(threads, "SPLIT_MIN_WORK", 0)

    return set_cores


def shares_of(rows: int, passes: int = 1) -> list[slice]:
    seen = []  # appended by the shares' threads, in any order
    threads.split_rows(seen.append, np.zeros((rows, 3), np.float32), passes)
    return seen if seen == [...] else sorted(seen, key=lambda rows: rows.start)


def test_rows_are_cut_into_one_run_a_core_covering_each_row_once(cores):
    cores(3)
    shares = shares_of(10)
    assert shares == [slice(0, 3), slice(3, 6), slice(6, 10)]
    assert shares_of(2) == [slice(0, 1), slice(1, 2)]  # fewer rows than cores


def test_small_work_and_one_core_stay_on_this_thread(monkeypatch, cores):
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    assert shares_of(100, passes=2) == [...]  # 600 element-passes: below the bar
    cores(1)
    assert shares_of(100) == [...]


def test_a_scalar_relu_and_its_gradient_stay_whole(cores):
    cores(2)
    x = Tensor(np.float32(-2.0), requires_grad=True)
    y = F.relu(x)
    y.backward()
    assert y.data == 0 and x.grad == 0


def layer_norm_and_relu(x, weight, bias, upstream):
    """Outputs and input gradients of relu(layer_norm(x)) * upstream, summed."""
    leaves = [Tensor(a, requires_grad=True) for a in (x, weight, bias)]
    y = F.relu(F.layer_norm(leaves[0], x.shape[-1], leaves[1], leaves[2]))
    (y * Tensor(upstream)).sum().backward()
    return [y.data] + [leaf.grad for leaf in leaves]


def test_split_layer_norm_and_relu_agree_with_one_thread(cores):
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((301, 24)) + 1).astype(np.float32)
    weight, bias = (rng.standard_normal(24).astype(np.float32) for _ in range(2))
    upstream = rng.standard_normal((301, 24)).astype(np.float32)
    cores(1)
    one = layer_norm_and_relu(x, weight, bias, upstream)
    cores(3)
    split = layer_norm_and_relu(x, weight, bias, upstream)
    for name, got, want in zip(("y", "dx", "dw", "db"), split, one, strict=True):
        # a row sum may differ in its last bit with the cut (see split_rows)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_gradients_of_split_layer_norm_and_relu_pass_the_gradcheck(cores):
    cores(2)
    rng = np.random.default_rng(1)
    x, upstream = rng.standard_normal((7, 5)), rng.standard_normal((7, 5))
    weight, bias = rng.standard_normal(5), rng.standard_normal(5)

    def fn(x, weight, bias):
        return F.relu(F.layer_norm(x, 5, weight, bias)) * Tensor(upstream)

    gradcheck(fn, [x, weight, bias])  # raises on a wrong element


def test_an_error_in_a_worker_share_is_raised_by_the_caller(cores):
    cores(2)

    def work(rows):
        if rows.start:  # the share that runs on the pool
            raise FloatingPointError("share failed")

    with pytest.raises(FloatingPointError, match="share failed"):
        threads.split_rows(work, np.zeros((4, 2)), passes=1)
