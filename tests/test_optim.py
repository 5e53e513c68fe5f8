"""Optimizers, gradient clipping and learning-rate schedules against hand formulas and torch."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from minivlm.autograd import Tensor
from minivlm.backend import cuda_available
from minivlm.optim import SGD, Adam, AdamW, ConstantLR, WarmupCosine, clip_grad_norm_

SHAPES = [(3, 4), (5,)]
STEPS = 4


def make_params(dtype=np.float64, seed=0) -> list[Tensor]:
    rng = np.random.default_rng(seed)
    return [
        Tensor(rng.standard_normal(shape).astype(dtype), requires_grad=True) for shape in SHAPES
    ]


def gradient_sequence(dtype=np.float64, seed=1, steps=STEPS) -> list[list[np.ndarray]]:
    """grads[t][i]: the gradient of param i at step t."""
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(shape).astype(dtype) for shape in SHAPES] for _ in range(steps)]


def run(optimizer, params, grads, schedule=None) -> list[np.ndarray]:
    for step_grads in grads:
        for param, grad in zip(params, step_grads, strict=True):
            param.grad = grad.copy()
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return [param.data.copy() for param in params]


# -- independent NumPy formulas -----------------------------------------------------------


def sgd_reference(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    p, buf = p.copy(), None
    for g in grads:
        d = g + weight_decay * p
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        p = p - lr * d
    return p


def adam_reference(p, grads, lr, betas, eps, weight_decay, decoupled):
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, dampening=0.3),
    dict(lr=0.1, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.8, weight_decay=0.01, nesterov=True),
    dict(lr=0.1, weight_decay=0.1),
]
ADAM_CONFIGS = [
    dict(lr=1e-2),
    dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-6),
    dict(lr=1e-2, weight_decay=0.1),
    dict(lr=3e-3, betas=(0.0, 0.5), eps=0.0, weight_decay=0.5),
]


def config_id(config: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items())


@pytest.mark.parametrize("config", SGD_CONFIGS, ids=config_id)
def test_sgd_matches_hand_formula(config):
    params, grads = make_params(), gradient_sequence()
    final = run(SGD(params, **config), params, grads)
    for i, (start, got) in enumerate(zip(make_params(), final, strict=True)):
        want = sgd_reference(start.data, [g[i] for g in grads], **config)
        np.testing.assert_allclose(got, want, rtol=1e-13, err_msg=f"SGD {config}, param {i}")


@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("config", ADAM_CONFIGS, ids=config_id)
def test_adam_and_adamw_match_hand_formula(cls, config):
    config = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, **config}
    params, grads = make_params(), gradient_sequence()
    final = run(cls(params, **config), params, grads)
    for i, (start, got) in enumerate(zip(make_params(), final, strict=True)):
        want = adam_reference(start.data, [g[i] for g in grads], decoupled=cls is AdamW, **config)
        np.testing.assert_allclose(got, want, rtol=1e-13, err_msg=f"{cls.__name__} {config}, {i}")


def test_adam_first_step_moves_each_weight_by_lr_times_sign_of_grad():
    # t = 1: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps) ~ lr * sign(g)
    param = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    param.grad = np.array([0.5, -4.0, 1e-3])
    Adam([param], lr=0.1, eps=0.0).step()
    np.testing.assert_allclose(param.data, [0.9, -1.9, 2.9], rtol=1e-15)


# -- against torch.optim -----------------------------------------------------------------


def torch_trajectory(torch_cls, groups_config, grads) -> list[np.ndarray]:
    """Run torch_cls on float64 copies of make_params() split into groups like minivlm's."""
    torch = pytest.importorskip("torch")
    tensors = [torch.tensor(p.data, requires_grad=True) for p in make_params()]
    groups = [{**group, "params": [tensors[i] for i in group["params"]]} for group in groups_config]
    optimizer = torch_cls(groups, foreach=False)
    for step_grads in grads:
        for tensor, grad in zip(tensors, step_grads, strict=True):
            tensor.grad = torch.tensor(grad)
        optimizer.step()
    return [t.detach().numpy() for t in tensors]


def minivlm_trajectory(cls, groups_config, grads) -> list[np.ndarray]:
    params = make_params()
    groups = [{**group, "params": [params[i] for i in group["params"]]} for group in groups_config]
    lr = {"lr": 1.0} if cls is SGD else {}  # SGD has no default lr; every group sets its own
    return run(cls(groups, **lr), params, grads)


def assert_same_trajectories(got, want, what):
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=0, err_msg=f"{what}, param {i}")


@pytest.mark.parametrize("config", SGD_CONFIGS, ids=config_id)
def test_sgd_matches_torch(config):
    torch = pytest.importorskip("torch")
    groups, grads = [{"params": [0, 1], **config}], gradient_sequence()
    want = torch_trajectory(torch.optim.SGD, groups, grads)
    assert_same_trajectories(minivlm_trajectory(SGD, groups, grads), want, f"SGD {config}")


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("config", ADAM_CONFIGS, ids=config_id)
def test_adam_and_adamw_match_torch(name, config):
    torch = pytest.importorskip("torch")
    groups, grads = [{"params": [0, 1], **config}], gradient_sequence()
    want = torch_trajectory(getattr(torch.optim, name), groups, grads)
    cls = {"Adam": Adam, "AdamW": AdamW}[name]
    assert_same_trajectories(minivlm_trajectory(cls, groups, grads), want, f"{name} {config}")


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_param_groups_with_their_own_lr_and_weight_decay_match_torch(name):
    torch = pytest.importorskip("torch")
    extra = {"momentum": 0.9} if name == "SGD" else {}
    groups = [
        {"params": [0], "lr": 0.05, "weight_decay": 0.1, **extra},
        {"params": [1], "lr": 0.2, "weight_decay": 0.0, **extra},
    ]
    grads = gradient_sequence()
    want = torch_trajectory(getattr(torch.optim, name), groups, grads)
    cls = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}[name]
    assert_same_trajectories(minivlm_trajectory(cls, groups, grads), want, f"{name} groups")


# -- param groups and the contract of step() ----------------------------------------------


def test_group_without_weight_decay_is_not_decayed_while_the_other_is():
    decayed, kept = make_params()
    optimizer = AdamW(
        [{"params": [decayed], "weight_decay": 0.5}, {"params": [kept], "weight_decay": 0.0}],
        lr=0.1,
    )
    decayed_start, kept_start = decayed.data.copy(), kept.data.copy()
    decayed.grad, kept.grad = np.zeros_like(decayed.data), np.zeros_like(kept.data)
    optimizer.step()  # zero grads: only the decoupled decay moves anything
    np.testing.assert_allclose(decayed.data, decayed_start * (1 - 0.1 * 0.5), rtol=1e-15)
    np.testing.assert_array_equal(kept.data, kept_start)


def test_group_values_fill_from_the_constructor_defaults():
    first, second = make_params()
    optimizer = SGD([{"params": [first]}, {"params": second, "lr": 0.5}], lr=0.1, momentum=0.9)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.5]
    assert [g["momentum"] for g in optimizer.param_groups] == [0.9, 0.9]
    assert optimizer.param_groups[1]["params"] == [second]


def test_params_may_be_a_generator():
    params = make_params()
    optimizer = Adam(p for p in params)
    assert optimizer.param_groups[0]["params"] == params


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1, momentum=0.9), Adam, AdamW])
def test_step_skips_params_without_grad_and_keeps_no_state_for_them(make):
    with_grad, without_grad = make_params()
    start = without_grad.data.copy()
    optimizer = make([with_grad, without_grad])
    with_grad.grad = np.ones_like(with_grad.data)
    optimizer.step()
    np.testing.assert_array_equal(without_grad.data, start)
    assert list(optimizer.state) == [0]


@pytest.mark.parametrize(
    "make",
    [
        lambda p: SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
        lambda p: Adam(p, weight_decay=0.1),
        AdamW,
    ],
)
def test_step_updates_arrays_in_place_and_leaves_grads_alone(make):
    params = make_params()
    arrays = [p.data for p in params]
    optimizer = make(params)
    for _ in range(2):  # the second step also goes through the momentum buffers
        grads = [np.full_like(p.data, 0.5) for p in params]
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        optimizer.step()
        for param, array, grad in zip(params, arrays, grads, strict=True):
            assert param.data is array, "step() replaced the parameter's array"
            assert param.grad is grad, "step() replaced the gradient"
            np.testing.assert_array_equal(grad, 0.5, err_msg="step() changed the gradient")


def test_zero_grad_drops_every_grad():
    params = make_params()
    optimizer = SGD([{"params": params[:1]}, {"params": params[1:]}], lr=0.1)
    for param in params:
        param.grad = np.ones_like(param.data)
    optimizer.zero_grad()
    assert all(param.grad is None for param in params)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True),
        lambda p: Adam(p, weight_decay=0.1),
        AdamW,
    ],
)
def test_float32_params_and_state_stay_float32(make):
    params = make_params(np.float32)
    optimizer = make(params)
    run(optimizer, params, gradient_sequence(np.float32))
    assert [p.dtype for p in params] == [np.float32, np.float32]
    for index, state in optimizer.state.items():
        for name, value in state.items():
            if name != "step":
                assert value.dtype == np.float32, f"state[{index}][{name!r}] is {value.dtype}"


@pytest.mark.parametrize("name", ["SGD-nesterov", "Adam", "AdamW"])
def test_numpy_float64_hyperparameters_do_not_upcast_float32_arithmetic(name):
    # NumPy float64 scalars would turn float32 temporaries into float64 ones; the
    # optimizer reads every hyperparameter as a Python float, so both runs agree bit for bit.
    make, grads = OPTIMIZER_MAKERS[name], gradient_sequence(np.float32)
    results = []
    for as_scalar in (float, np.float64):
        params = make_params(np.float32)
        optimizer = make(params)
        for key in ("lr", "weight_decay"):
            optimizer.param_groups[0][key] = as_scalar(optimizer.param_groups[0][key])
        results.append(run(optimizer, params, grads))
    for python_float, numpy_float64 in zip(*results, strict=True):
        np.testing.assert_array_equal(numpy_float64, python_float)


def test_float32_adam_matches_float64_adam_to_float32_precision():
    params64, params32 = make_params(), make_params(np.float32)
    want = run(Adam(params64, lr=1e-2), params64, gradient_sequence())
    got = run(Adam(params32, lr=1e-2), params32, gradient_sequence(np.float32))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


# -- state_dict ---------------------------------------------------------------------------

OPTIMIZER_MAKERS = {
    "SGD-nesterov": lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "Adam": lambda p: Adam(p, lr=1e-2, weight_decay=0.1),
    "AdamW": lambda p: AdamW(p, lr=1e-2),
}


@pytest.mark.parametrize("name", OPTIMIZER_MAKERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_round_trip_continues_bit_for_bit(name, dtype):
    make = OPTIMIZER_MAKERS[name]
    grads = gradient_sequence(dtype, steps=6)
    params = make_params(dtype)
    uninterrupted = run(make(params), params, grads)

    params = make_params(dtype)
    first_half = make(params)
    run(first_half, params, grads[:3])
    saved = copy.deepcopy(first_half.state_dict())
    resumed_params = [Tensor(p.data.copy(), requires_grad=True) for p in params]
    resumed = make(resumed_params)
    resumed.load_state_dict(saved)
    resumed_final = run(resumed, resumed_params, grads[3:])
    for i, (got, want) in enumerate(zip(resumed_final, uninterrupted, strict=True)):
        np.testing.assert_array_equal(got, want, err_msg=f"{name} resumed run differs, param {i}")


def test_state_dict_holds_numpy_copies_and_int64_step_counts():
    params = make_params(np.float32)
    optimizer = Adam(params)
    run(optimizer, params, gradient_sequence(np.float32, steps=2))
    saved = optimizer.state_dict()
    assert saved["state"][0]["step"].dtype == np.int64 and saved["state"][0]["step"] == 2
    assert saved["state"][1]["exp_avg"].dtype == np.float32
    assert saved["param_groups"] == [
        {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "params": [0, 1]}
    ]
    snapshot = saved["state"][0]["exp_avg"].copy()
    run(optimizer, params, gradient_sequence(np.float32, steps=1))
    np.testing.assert_array_equal(saved["state"][0]["exp_avg"], snapshot)


def test_load_state_dict_restores_group_hyperparameters():
    params = make_params()
    source = SGD([{"params": params[:1], "lr": 0.3}, {"params": params[1:]}], lr=0.1, momentum=0.5)
    target = SGD([{"params": params[:1]}, {"params": params[1:]}], lr=0.7)
    target.load_state_dict(source.state_dict())
    assert [(g["lr"], g["momentum"]) for g in target.param_groups] == [(0.3, 0.5), (0.1, 0.5)]


def adam_state_after_one_step() -> dict:
    params = make_params()
    optimizer = Adam(params)
    run(optimizer, params, gradient_sequence(steps=1))
    return optimizer.state_dict()


@pytest.mark.parametrize(
    "make_target, message",
    [
        (lambda p: Adam([{"params": p[:1]}, {"params": p[1:]}]), "has 1 param groups, this .* 2"),
        (lambda p: Adam(p[:1]), "saved group has 2 params, this one has 1"),
        (lambda p: Adam(p[::-1]), r"exp_avg has shape \(3, 4\), the parameter has shape \(5,\)"),
        (lambda p: SGD(p, lr=0.1), "saved hyperparameters"),
    ],
)
def test_load_state_dict_rejects_a_mismatch_and_changes_nothing(make_target, message):
    target = make_target(make_params())
    before = target.state_dict()
    with pytest.raises(ValueError, match=message):
        target.load_state_dict(adam_state_after_one_step())
    assert target.state_dict() == before


def test_load_state_dict_rejects_another_optimizers_state():
    params = make_params()
    sgd = SGD(params, lr=0.1, momentum=0.9)
    run(sgd, params, gradient_sequence(steps=1))
    saved = sgd.state_dict()
    saved["param_groups"] = adam_state_after_one_step()["param_groups"]
    with pytest.raises(ValueError, match=r"saved state has \['momentum_buffer'\], expected"):
        Adam(params).load_state_dict(saved)


def test_load_state_dict_rejects_a_state_index_out_of_range():
    saved = adam_state_after_one_step()
    saved["state"][7] = saved["state"].pop(0)
    with pytest.raises(ValueError, match=r"state for param 7, expected an index in \[0, 2\)"):
        Adam(make_params()).load_state_dict(saved)


# -- learning-rate schedules --------------------------------------------------------------


def test_warmup_cosine_values_at_key_steps():
    optimizer = SGD(make_params(), lr=0.5)
    schedule = WarmupCosine(optimizer, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(120):
        schedule.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == 0.0, "step 0 of the warm-up has lr 0"
    assert lrs[5] == pytest.approx(0.25, rel=1e-15), "halfway through warm-up is half the lr"
    assert lrs[10] == pytest.approx(0.5, rel=1e-15), "warm-up ends at the base lr"
    assert lrs[60] == pytest.approx(0.05 + 0.45 * 0.5, rel=1e-12), "the cosine's middle"
    assert lrs[110] == pytest.approx(0.05, rel=1e-15), "total_steps reaches min_lr"
    assert lrs[120] == pytest.approx(0.05, rel=1e-15), "after total_steps the lr stays at min_lr"
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True)), "the decay never goes up"
    assert schedule.get_lr() == [lrs[120]]


def test_warmup_cosine_without_warmup_starts_at_the_base_lr():
    optimizer = Adam(make_params(), lr=0.2)
    WarmupCosine(optimizer, warmup_steps=0, total_steps=5)
    assert optimizer.param_groups[0]["lr"] == 0.2


def test_warmup_cosine_matches_torch_lambda_lr_for_every_group():
    torch = pytest.importorskip("torch")
    warmup, total, ratio = 7, 40, 0.2

    def factor(s):
        if s < warmup:
            return s / warmup
        q = min(1.0, (s - warmup) / (total - warmup))
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * q))

    params = make_params()
    optimizer = AdamW([{"params": params[:1], "lr": 0.3}, {"params": params[1:]}], lr=0.01)
    schedule = WarmupCosine(optimizer, warmup, total, min_lr_ratio=ratio)
    tensors = [torch.zeros(1, requires_grad=True) for _ in range(2)]
    torch_optimizer = torch.optim.AdamW(
        [{"params": tensors[:1], "lr": 0.3}, {"params": tensors[1:]}], lr=0.01
    )
    torch_schedule = torch.optim.lr_scheduler.LambdaLR(torch_optimizer, factor)
    for step in range(total + 5):
        want = [g["lr"] for g in torch_optimizer.param_groups]
        got = [g["lr"] for g in optimizer.param_groups]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=f"lr at step {step}")
        torch_optimizer.step()
        torch_schedule.step()
        schedule.step()


def test_constant_lr_keeps_the_base_lr():
    optimizer = SGD(make_params(), lr=0.3)
    schedule = ConstantLR(optimizer)
    for _ in range(3):
        schedule.step()
    assert optimizer.param_groups[0]["lr"] == 0.3 and schedule.get_lr() == [0.3]


def test_optimizer_and_schedule_state_dicts_resume_bit_for_bit():
    grads = gradient_sequence(np.float32, steps=8)

    def make(params):
        optimizer = AdamW(params, lr=1e-2)
        return optimizer, WarmupCosine(optimizer, warmup_steps=3, total_steps=8)

    params = make_params(np.float32)
    optimizer, schedule = make(params)
    uninterrupted = run(optimizer, params, grads, schedule)

    params = make_params(np.float32)
    optimizer, schedule = make(params)
    run(optimizer, params, grads[:4], schedule)
    saved = copy.deepcopy((optimizer.state_dict(), schedule.state_dict()))
    resumed_params = [Tensor(p.data.copy(), requires_grad=True) for p in params]
    resumed_optimizer, resumed_schedule = make(resumed_params)
    resumed_optimizer.load_state_dict(saved[0])
    resumed_schedule.load_state_dict(saved[1])
    assert resumed_schedule.get_lr() == schedule.get_lr()
    resumed = run(resumed_optimizer, resumed_params, grads[4:], resumed_schedule)
    for got, want in zip(resumed, uninterrupted, strict=True):
        np.testing.assert_array_equal(got, want)


def test_schedule_load_state_dict_rejects_other_settings():
    optimizer = SGD(make_params(), lr=0.1)
    saved = WarmupCosine(optimizer, warmup_steps=2, total_steps=10).state_dict()
    with pytest.raises(ValueError, match="'total_steps': 10.*'total_steps': 20"):
        WarmupCosine(optimizer, warmup_steps=2, total_steps=20).load_state_dict(saved)


# -- gradient clipping --------------------------------------------------------------------


def test_clip_grad_norm_scales_all_grads_to_max_norm_and_returns_the_old_norm():
    first, second = make_params()
    first.grad, second.grad = np.full((3, 4), 3.0), np.full(5, 4.0)
    old_grad = first.grad
    total = clip_grad_norm_([first, second], max_norm=2.0)
    assert total == pytest.approx(math.sqrt(12 * 9 + 5 * 16), rel=1e-15)
    scale = 2.0 / (total + 1e-6)
    np.testing.assert_allclose(first.grad, 3.0 * scale, rtol=1e-15)
    np.testing.assert_allclose(second.grad, 4.0 * scale, rtol=1e-15)
    np.testing.assert_array_equal(old_grad, 3.0, err_msg="the old grad array was changed")


def test_clip_grad_norm_leaves_small_grads_and_missing_grads_alone():
    first, second = make_params()
    first.grad = np.full((3, 4), 0.1)
    grad = first.grad
    assert clip_grad_norm_([first, second], max_norm=10.0) == pytest.approx(math.sqrt(0.12))
    assert first.grad is grad and second.grad is None


def test_clip_grad_norm_keeps_float32_grads_float32():
    (param,) = make_params(np.float32)[:1]
    param.grad = np.full((3, 4), 100.0, dtype=np.float32)
    clip_grad_norm_(param, max_norm=1.0)
    assert param.grad.dtype == np.float32
    assert float(np.linalg.norm(param.grad)) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(max_norm):
    torch = pytest.importorskip("torch")
    params, grads = make_params(), gradient_sequence(steps=1)[0]
    tensors = [torch.tensor(p.data, requires_grad=True) for p in params]
    for param, tensor, grad in zip(params, tensors, grads, strict=True):
        param.grad, tensor.grad = grad.copy(), torch.tensor(grad)
    total = clip_grad_norm_(params, max_norm)
    want_total = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    assert total == pytest.approx(want_total.item(), rel=1e-12)
    for param, tensor in zip(params, tensors, strict=True):
        np.testing.assert_allclose(param.grad, tensor.grad.numpy(), rtol=1e-12, atol=0)


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda p: SGD(p, lr=-0.1), ValueError, r"SGD: lr must be >= 0.0, got -0.1"),
        (lambda p: SGD(p, lr="0.1"), TypeError, r"SGD: lr must be a number >= 0.0, got '0.1'"),
        (lambda p: SGD(p, lr=0.1, momentum=1.5), ValueError, r"momentum must be in \[0.0, 1.0\]"),
        (lambda p: SGD(p, lr=0.1, nesterov=True), ValueError, "nesterov=True needs momentum > 0"),
        (lambda p: Adam(p, betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be in \[0.0, 1.0\)"),
        (lambda p: Adam(p, betas=(-0.1, 0.9)), ValueError, r"betas\[0\] must be in .*got -0.1"),
        (lambda p: Adam(p, betas=0.9), ValueError, r"betas must be a pair"),
        (lambda p: Adam(p, eps=-1e-8), ValueError, r"Adam: eps must be >= 0.0, got -1e-08"),
        (lambda p: AdamW(p, lr=float("nan")), ValueError, r"AdamW: lr must be >= 0.0, got nan"),
        (lambda p: AdamW(p, weight_decay=-1), ValueError, r"weight_decay must be >= 0.0, got -1"),
        (lambda p: Adam([{"params": p, "lr": -1}]), ValueError, r"Adam param group 0: lr must"),
        (lambda p: Adam([{"params": p, "wd": 0}]), ValueError, r"unknown keys \['wd'\]"),
        (lambda p: Adam([{"lr": 0.1}]), ValueError, "needs a 'params' entry"),
        (lambda p: Adam(p[0]), TypeError, "params must be an iterable .* got Tensor"),
        (lambda p: Adam([]), ValueError, "params is empty"),
        (lambda p: Adam([p[0], {"params": p[1:]}]), TypeError, "mixes Tensors and param-group"),
        (lambda p: Adam([p[0], p[0]]), ValueError, "appears more than once"),
        (lambda p: Adam([p[0].data]), TypeError, r"params\[0\] must be a Tensor, got ndarray"),
        (lambda p: Adam([Tensor(np.arange(3))]), TypeError, "must have a floating dtype"),
    ],
)
def test_bad_hyperparameters_and_params_raise_naming_the_argument(make, error, message):
    with pytest.raises(error, match=message):
        make(make_params())


def test_step_rejects_a_grad_of_the_wrong_shape_or_dtype():
    params = make_params()
    optimizer = Adam(params)
    params[1].grad = np.zeros(4)
    with pytest.raises(ValueError, match=r"param 1 has shape \(5,\) but its grad has shape \(4,\)"):
        optimizer.step()
    params[1].grad = np.zeros(5, dtype=np.float32)
    with pytest.raises(TypeError, match="param 1 has dtype float64 but its grad has dtype float32"):
        optimizer.step()


def test_step_rejects_a_bad_lr_set_after_construction():
    params = make_params()
    optimizer = SGD([{"params": params[:1]}, {"params": params[1:]}], lr=0.1)
    optimizer.param_groups[1]["lr"] = -0.5
    with pytest.raises(ValueError, match=r"SGD param group 1: lr must be >= 0.0, got -0.5"):
        optimizer.step()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(warmup_steps=-1, total_steps=10), "warmup_steps must be an integer >= 0, got -1"),
        (dict(warmup_steps=2.5, total_steps=10), "warmup_steps must be an integer >= 0, got 2.5"),
        (dict(warmup_steps=10, total_steps=10), "total_steps must be > warmup_steps"),
        (dict(warmup_steps=1, total_steps=10, min_lr_ratio=1.5), r"min_lr_ratio must be in"),
    ],
)
def test_bad_schedule_settings_raise_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WarmupCosine(SGD(make_params(), lr=0.1), **kwargs)


def test_schedule_needs_a_minivlm_optimizer():
    with pytest.raises(TypeError, match="optimizer must be a minivlm Optimizer, got list"):
        ConstantLR([])


@pytest.mark.parametrize("max_norm", [0.0, -1.0])
def test_clip_grad_norm_rejects_a_non_positive_max_norm(max_norm):
    with pytest.raises(ValueError, match="max_norm must be"):
        clip_grad_norm_(make_params(), max_norm)


# -- CuPy -----------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a GPU")
@pytest.mark.parametrize("name", OPTIMIZER_MAKERS)
def test_optimizers_on_cupy_match_numpy_and_load_numpy_state(name):
    import cupy

    make, grads = OPTIMIZER_MAKERS[name], gradient_sequence(np.float32)
    cpu_params = make_params(np.float32)
    want = run(make(cpu_params), cpu_params, grads)
    gpu_params = [Tensor(cupy.asarray(p.data), requires_grad=True) for p in make_params(np.float32)]
    gpu_optimizer = make(gpu_params)
    for step_grads in grads:
        for param, grad in zip(gpu_params, step_grads, strict=True):
            param.grad = cupy.asarray(grad)
        gpu_optimizer.step()
    for param, w in zip(gpu_params, want, strict=True):
        assert isinstance(param.data, cupy.ndarray) and param.dtype == np.float32
        np.testing.assert_allclose(cupy.asnumpy(param.data), w, rtol=1e-5, atol=1e-6)
    clip_grad_norm_(gpu_params, max_norm=0.1)
    assert all(isinstance(p.grad, cupy.ndarray) for p in gpu_params)
    reloaded = make(gpu_params)
    reloaded.load_state_dict(gpu_optimizer.state_dict())
    for state in reloaded.state.values():
        assert all(isinstance(v, (int, cupy.ndarray)) for v in state.values())
