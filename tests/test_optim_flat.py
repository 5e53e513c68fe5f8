"""FlatAdamW is AdamW bit for bit (float32, NumPy), over a real model's two param groups,
with a schedule changing lr, with gradients missing on some steps; its checkpoints load
into AdamW and AdamW's into it; its clipping matches clip_grad_norm_; on a GPU the CUDA
kernel gives the NumPy update's bits."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivlm import F, Tensor, manual_seed
from minivlm.backend import cuda_available
from minivlm.models import VLM, VLMConfig
from minivlm.optim import AdamW, FlatAdamW, WarmupCosine, clip_grad_norm_
from minivlm.train.loop import parameter_groups

SHAPES = [(3, 4), (5,), (2, 3, 2), (1,), (4, 4)]


def make_params(dtype=np.float32, shapes=SHAPES, seed=0) -> list[Tensor]:
    rng = np.random.default_rng(seed)
    return [Tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in shapes]


def two_groups(params: list[Tensor]) -> list[dict]:
    """Decayed and plain groups, as parameter_groups makes them."""
    return [
        {"params": params[::2], "weight_decay": 0.1},
        {"params": params[1::2], "weight_decay": 0.0},
    ]


def run(optimizer, params, grads, lrs=None) -> None:
    """grads[t][i]: param i's gradient at step t, or None; lrs[t]: every group's lr then."""
    for t, step_grads in enumerate(grads):
        for param, grad in zip(params, step_grads, strict=True):
            param.grad = None if grad is None else grad.copy()
        if lrs is not None:
            for group in optimizer.param_groups:
                group["lr"] = lrs[t]
        optimizer.step()


def random_grads(params, steps, seed=1, missing=0.0) -> list[list]:
    """Standard-normal gradients, each None with probability `missing`."""
    rng = np.random.default_rng(seed)
    return [
        [
            None if rng.random() < missing else rng.standard_normal(p.shape).astype(p.dtype)
            for p in params
        ]
        for _ in range(steps)
    ]


def assert_same_bits(got: list, want: list, what: str) -> None:
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(g, w, err_msg=f"{what}: param {i} differs from AdamW's")


def assert_same_state(got: dict, want: dict) -> None:
    assert got["param_groups"] == want["param_groups"]
    assert sorted(got["state"]) == sorted(want["state"]), "params with state differ"
    for index, state in want["state"].items():
        for name, value in state.items():
            saved = got["state"][index][name]
            np.testing.assert_array_equal(saved, value, err_msg=f"param {index}'s {name}")
            assert saved.dtype == value.dtype, f"param {index}'s {name} has dtype {saved.dtype}"


# -- the same numbers as AdamW ----------------------------------------------------------------


def tiny_vlm_and_batch(seed: int):
    config = VLMConfig(
        image_size=16, patch_size=8, d_model=32, n_heads=2, n_encoder_layers=1, n_blocks=1,
        vocab_size=29, encoder_dropout=0.1, max_len=16, token_lags=2,
    )  # fmt: skip
    manual_seed(seed)
    model = VLM(config).eval()  # no dropout: both models see the same forward
    rng = np.random.default_rng(seed)
    images = Tensor(rng.random((4, 3, 16, 16), dtype=np.float32))
    tokens, targets = rng.integers(0, config.vocab_size, (2, 4, 8))
    return model, (images, tokens, targets)


def train_tiny_vlm(make_optimizer, steps: int = 5) -> tuple[dict, dict]:
    """(weights, optimizer state) after `steps` steps of a tiny VLM with a warm-up-cosine lr."""
    model, (images, tokens, targets) = tiny_vlm_and_batch(seed=3)
    optimizer = make_optimizer(parameter_groups(model, weight_decay=0.1), lr=1e-2)
    schedule = WarmupCosine(optimizer, warmup_steps=2, total_steps=steps)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = model(images, tokens)  # (B, T, V)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).backward()
        optimizer.step()
        schedule.step()
    return model.state_dict(), optimizer.state_dict()


def test_flat_adamw_trains_a_model_to_adamws_bits_with_two_groups_and_a_schedule():
    want_weights, want_state = train_tiny_vlm(AdamW)
    got_weights, got_state = train_tiny_vlm(FlatAdamW)
    for name, value in want_weights.items():
        np.testing.assert_array_equal(got_weights[name], value, err_msg=f"weight {name}")
    assert_same_state(got_state, want_state)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    missing=st.sampled_from([0.0, 0.3, 0.7]),
    steps=st.integers(1, 6),
)
def test_missing_gradients_are_skipped_as_adamw_skips_them(seed, missing, steps):
    """A parameter without a grad is not updated and its step count does not advance, so
    parameters of one group drift to different step counts: still AdamW's bits."""
    grads = random_grads(make_params(), steps, seed=seed, missing=missing)
    lrs = list(np.linspace(1e-2, 1e-3, steps))
    params = make_params()
    reference = AdamW(two_groups(params), lr=1e-2)
    run(reference, params, grads, lrs)
    flat_params = make_params()
    flat = FlatAdamW(two_groups(flat_params), lr=1e-2)
    run(flat, flat_params, grads, lrs)
    assert_same_bits([p.data for p in flat_params], [p.data for p in params], "weights")
    assert_same_state(flat.state_dict(), reference.state_dict())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flat_adamw_matches_adamw_in_each_dtype(dtype):
    grads = random_grads(make_params(dtype), 4)
    params, flat_params = make_params(dtype), make_params(dtype)
    run(AdamW(params, lr=3e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05), params, grads)
    flat = FlatAdamW(flat_params, lr=3e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05)
    run(flat, flat_params, grads)
    assert_same_bits([p.data for p in flat_params], [p.data for p in params], f"{dtype}")
    assert all(p.dtype == dtype for p in flat_params)


# -- the flat layout ----------------------------------------------------------------------------


def test_each_param_becomes_a_view_of_its_groups_flat_buffer_with_its_values():
    params = make_params()
    before = [p.data.copy() for p in params]
    optimizer = FlatAdamW(two_groups(params))
    for group, flat in zip(optimizer.param_groups, optimizer.groups, strict=True):
        assert flat.param.size == sum(p.size for p in group["params"])
        for param in group["params"]:
            assert np.shares_memory(param.data, flat.param), "param.data is not in the buffer"
    assert_same_bits([p.data for p in params], before, "values moved into the buffer")


def test_an_update_writes_the_model_through_the_views():
    params = make_params()
    optimizer = FlatAdamW(params, lr=0.1)
    before = params[0].data.copy()
    params[0].grad = np.ones_like(before)
    optimizer.step()
    assert not np.array_equal(params[0].data, before), "the update did not reach the param"
    np.testing.assert_array_equal(params[1].data, make_params()[1].data)  # no grad: unchanged


def test_a_group_without_parameters_is_allowed():
    params = make_params()
    optimizer = FlatAdamW([{"params": params}, {"params": [], "weight_decay": 0.0}], lr=0.1)
    run(optimizer, params, random_grads(params, 2))
    optimizer.clip_grad_norm_(1.0)


def test_a_group_of_mixed_dtypes_is_refused_naming_the_param():
    params = make_params() + make_params(np.float64)[:1]
    with pytest.raises(ValueError, match=r"group 0: params\[5\] has dtype float64, expected"):
        FlatAdamW(params)


def test_replacing_a_params_data_is_reported_at_the_next_step():
    params = make_params()
    optimizer = FlatAdamW(params)
    params[2].data = params[2].data.copy()
    params[2].grad = np.zeros_like(params[2].data)
    with pytest.raises(RuntimeError, match=r"param 2's \.data was replaced"):
        optimizer.step()


def test_a_grad_of_the_wrong_shape_is_refused_before_any_change():
    params = make_params()
    optimizer = FlatAdamW(params, lr=0.1)
    before = [p.data.copy() for p in params]
    params[0].grad = np.ones(params[0].shape, np.float32)
    params[1].grad = np.ones((6,), np.float32)
    with pytest.raises(ValueError, match=r"param 1 has shape \(5,\) but its grad has shape"):
        optimizer.step()
    assert_same_bits([p.data for p in params], before, "a refused step")
    assert optimizer.state == {}


# -- checkpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize("first, second", [(AdamW, FlatAdamW), (FlatAdamW, AdamW)])
def test_a_checkpoint_of_either_optimizer_resumes_in_the_other_bit_for_bit(first, second):
    grads = random_grads(make_params(), 6, missing=0.2)
    lrs = [1e-2, 2e-2, 3e-2, 2e-2, 1e-2, 5e-3]
    params = make_params()
    run(AdamW(two_groups(params), lr=1e-2), params, grads, lrs)  # never interrupted

    half_params = make_params()
    first_half = first(two_groups(half_params), lr=1e-2)
    run(first_half, half_params, grads[:3], lrs[:3])
    saved = copy.deepcopy(first_half.state_dict())
    resumed_params = [Tensor(p.data.copy(), requires_grad=True) for p in half_params]
    resumed = second(two_groups(resumed_params), lr=1.0)
    resumed.load_state_dict(saved)
    assert_same_state(resumed.state_dict(), saved)
    run(resumed, resumed_params, grads[3:], lrs[3:])
    assert_same_bits([p.data for p in resumed_params], [p.data for p in params], "resumed")


def test_loading_a_state_clears_the_moments_of_params_it_has_none_for():
    params = make_params()
    optimizer = FlatAdamW(params, lr=0.1)
    run(optimizer, params, random_grads(params, 2))
    empty = {"state": {}, "param_groups": optimizer.state_dict()["param_groups"]}
    optimizer.load_state_dict(empty)
    assert optimizer.state_dict()["state"] == {}
    assert not optimizer.groups[0].exp_avg.any() and not optimizer.groups[0].exp_avg_sq.any()


# -- clipping --------------------------------------------------------------------------------


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clipping_scales_one_step_as_clip_grad_norm_does(max_norm):
    grads = random_grads(make_params(), 3, missing=0.2)
    params = make_params()
    reference = AdamW(two_groups(params), lr=1e-2)
    flat_params = make_params()
    flat = FlatAdamW(two_groups(flat_params), lr=1e-2)
    for t, step_grads in enumerate(grads):
        for p, q, grad in zip(params, flat_params, step_grads, strict=True):
            p.grad = q.grad = None if grad is None else grad.copy()
        clipped = t != 1  # step 1 is not clipped: the scale must not carry over
        want = clip_grad_norm_(params, max_norm) if clipped else None
        got = flat.clip_grad_norm_(max_norm) if clipped else None
        if clipped:
            np.testing.assert_allclose(float(got), want, rtol=1e-6, err_msg=f"norm at step {t}")
        reference.step()
        flat.step()
    # not clipped: the same bits; clipped: the norm's float32 sum rounds in another order
    tolerance = 0 if max_norm > 1e3 else 1e-6
    for i, (q, p) in enumerate(zip(flat_params, params, strict=True)):
        np.testing.assert_allclose(q.data, p.data, rtol=tolerance, atol=tolerance, err_msg=str(i))


def test_clipping_leaves_the_callers_gradients_alone():
    params = make_params()
    flat = FlatAdamW(params)
    for param, grad in zip(params, random_grads(params, 1)[0], strict=True):
        param.grad = grad * 10
    before = [p.grad.copy() for p in params]
    flat.clip_grad_norm_(1.0)
    assert_same_bits([p.grad for p in params], before, "grads after clipping")
    assert float(flat.grad_scale[0]) < 1.0


def test_a_nan_gradient_makes_the_norm_nan_and_the_scale_nan():
    params = make_params()
    flat = FlatAdamW(params)
    for param in params:
        param.grad = np.ones_like(param.data)
    params[3].grad[0] = np.nan
    assert np.isnan(flat.clip_grad_norm_(1.0))
    assert np.isnan(flat.grad_scale[0])


@pytest.mark.parametrize("bad", ["grad inf", "grad nan", "loss nan", "loss inf"])
def test_a_non_finite_norm_or_loss_updates_nothing_and_undo_takes_the_counts_back(bad):
    """What a captured step relies on: the device decides to skip, the host undoes."""
    params = make_params()
    flat = FlatAdamW(two_groups(params), lr=1e-2)
    run(flat, params, random_grads(params, 2))  # two good steps first
    weights = [p.data.copy() for p in params]
    state = flat.state_dict()  # NumPy copies
    for param, grad in zip(params, random_grads(params, 1, seed=5)[0], strict=True):
        param.grad = grad
    loss = np.float32({"loss nan": np.nan, "loss inf": np.inf}.get(bad, 1.0))
    if bad.startswith("grad"):
        params[2].grad[0] = np.inf if bad == "grad inf" else np.nan
    flat.clip_grad_norm_(1.0, loss=loss)
    assert np.isnan(flat.grad_scale[0])
    flat.prepare_step()
    flat.apply_step()
    assert flat.grad_scale[0] == 1.0, "the scale is reset for the next step"
    flat.undo_prepare()
    assert_same_bits([p.data for p in params], weights, "weights after a skipped step")
    assert_same_state(flat.state_dict(), state)


def test_undo_after_a_parameters_first_step_leaves_it_without_state_as_adamw():
    params = make_params()
    flat = FlatAdamW(params, lr=1e-2)
    for param, grad in zip(params, random_grads(params, 1)[0], strict=True):
        param.grad = grad
    flat.gather_grads()
    flat.prepare_step()
    assert len(flat.state) == len(params)
    flat.undo_prepare()
    assert flat.state == {}


def test_step_is_gather_prepare_and_apply():
    """prepare_step on the host, apply_step on the device: together step()'s bits."""
    grads = random_grads(make_params(), 3, missing=0.2)
    whole, halves = make_params(), make_params()
    one, two = FlatAdamW(two_groups(whole), lr=1e-2), FlatAdamW(two_groups(halves), lr=1e-2)
    for step_grads in grads:
        for p, q, grad in zip(whole, halves, step_grads, strict=True):
            p.grad = q.grad = None if grad is None else grad.copy()
        one.step()
        two.gather_grads()
        two.prepare_step()
        two.apply_step()
    assert_same_bits([q.data for q in halves], [p.data for p in whole], "weights")


def test_clipping_refuses_a_max_norm_of_zero():
    with pytest.raises(ValueError, match="max_norm must be > 0, got 0.0"):
        FlatAdamW(make_params()).clip_grad_norm_(0)


# -- CUDA --------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="CuPy sees no usable GPU")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("clip", [False, True])
def test_the_cuda_kernel_gives_the_numpy_updates_bits(dtype, clip):
    """kernels/adamw.cu rounds each operation on its own, in NumPy's order: the same bits.
    Large parameters, so that a thread of the grid-stride loop crosses parameters."""
    cupy = pytest.importorskip("cupy")
    shapes = [(700, 300), (5,), (0,), (3, 3), (4000,), (512, 1030)]
    grads = random_grads(make_params(dtype, shapes), 4, missing=0.3)
    lrs = [1e-2, 2e-2, 1e-2, 5e-3]
    results = {}
    for device in ("cpu", "cuda"):
        params = make_params(dtype, shapes)
        if device == "cuda":
            params = [Tensor(cupy.asarray(p.data), requires_grad=True) for p in params]
        flat = FlatAdamW(two_groups(params), lr=1e-2)
        xp = cupy if device == "cuda" else np
        for t, step_grads in enumerate(grads):
            for param, grad in zip(params, step_grads, strict=True):
                param.grad = None if grad is None else xp.asarray(grad)
            for group in flat.param_groups:
                group["lr"] = lrs[t]
            if clip:
                flat.clip_grad_norm_(1.0)
            flat.step()
        results[device] = ([cupy.asnumpy(p.data) for p in params], flat.state_dict())
    if clip:  # the norm is summed in another order on each device: close, not equal
        pairs = zip(results["cuda"][0], results["cpu"][0], strict=True)
        for i, (got, want) in enumerate(pairs):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"param {i}")
    else:
        assert_same_bits(results["cuda"][0], results["cpu"][0], "CUDA weights vs NumPy")
        assert_same_state(results["cuda"][1], results["cpu"][1])
