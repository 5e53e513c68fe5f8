"""The step a GPU captures as a CUDA graph (minivlm/train/graph_step.py): on the CPU the
same body runs eagerly, and it must train as the Trainer's eager step does; on a GPU a
captured replay must equal that body run eagerly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from minivlm import random
from minivlm.backend import cuda_available
from minivlm.data import IGNORE_INDEX
from minivlm.optim import FlatAdamW, WarmupCosine
from minivlm.train import Trainer, preset
from minivlm.train.checkpoint import NonFiniteError
from minivlm.train.graph_step import FixedShapes, GraphedStep
from minivlm.train.loop import StepPreparation, parameter_groups

SETTINGS = dict(steps=6, warmup_steps=1, task="mix", qa_start=0.0, corrupt_attributes=0.3)


def test_fixed_widths_are_multiples_of_16_up_to_max_len():
    assert FixedShapes.for_model(64, 10).widths == (16, 32, 48, 64)
    assert FixedShapes.for_model(40, 10).widths == (16, 32, 40)
    fixed = FixedShapes.for_model(40, 10)
    assert [fixed.width(n) for n in (1, 16, 17, 33, 40)] == [16, 16, 32, 40, 40]
    with pytest.raises(ValueError, match="41 positions is longer than the widest shape, 40"):
        fixed.width(41)


def test_padding_trains_nothing_and_the_weights_sum_to_one():
    fixed = FixedShapes((8, 16), vocab_size=5)
    inputs = np.array([[1, 2, 3], [4, 0, 0]])
    targets = np.array([[2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    weights = np.array([[1.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    images = np.zeros((2, 3, 4, 4), np.float32)
    _, padded_inputs, padded_targets, shares = fixed.pad(
        images, inputs, targets, weights, np.array([3, 1]), total=4.0
    )
    assert padded_inputs.shape == padded_targets.shape == shares.shape == (2, 8)
    np.testing.assert_array_equal(padded_inputs[:, 3:], 0)
    np.testing.assert_array_equal(padded_targets[:, 3:], IGNORE_INDEX)
    np.testing.assert_array_equal(shares[:, 3:], 0.0)
    np.testing.assert_allclose(shares[0, :3], [0.25, 0.25, 0.5])


@pytest.mark.parametrize(
    ("name", "inputs", "targets", "message"),
    [
        ("inputs", [[1, 7]], [[1, 1]], "inputs: expected ids in 0..4, got 7"),
        ("inputs", [[-1, 1]], [[1, 1]], "inputs: expected ids in 0..4, got -1"),
        ("targets", [[1, 1]], [[5, 1]], "targets: expected ids in 0..4 or -100, got 5"),
    ],
)
def test_ids_are_checked_on_the_host_as_the_device_no_longer_does(name, inputs, targets, message):
    fixed = FixedShapes((8,), vocab_size=5)
    with pytest.raises(ValueError, match=message):
        fixed.pad(np.zeros((1, 3, 4, 4)), np.array(inputs), np.array(targets),
                  np.ones((1, 2)), np.array([2]), 1.0)  # fmt: skip


def graph_ready_trainer(
    config, device: str = "cpu", capture: bool = True
) -> tuple[Trainer, GraphedStep]:
    """A Trainer as --cuda-graph makes it (FlatAdamW, FixedShapes) on `device`, with the
    GraphedStep that trains it; the CPU runs the body eagerly."""
    trainer = Trainer.create(dataclasses.replace(config, device=device))
    optimizer = FlatAdamW(parameter_groups(trainer.model, config.weight_decay), lr=config.lr)
    trainer.optimizer = optimizer
    trainer.schedule = WarmupCosine(
        optimizer, config.warmup_steps, config.steps, config.min_lr_ratio
    )
    return trainer, GraphedStep(trainer.model, optimizer, config.grad_clip, capture)


def fixed_inputs(trainer: Trainer, step: int):
    c = trainer.config
    prepare = StepPreparation(
        *trainer.augmentations(), c.loss_weighting, c.answer_weight,
        FixedShapes.for_model(c.model.max_len, c.model.vocab_size),
    )  # fmt: skip
    return prepare(trainer.batch(step), step)


def test_the_graph_ready_step_trains_as_the_eager_step_does():
    """Padding to fixed widths, weights divided by the total on the host, clipping and
    the non-finite test on the device, FlatAdamW: the same gradients and losses to
    float32 rounding (the weights drift apart by Adam's rounding-sized steps only)."""
    config = preset("tiny", **SETTINGS)
    eager = Trainer.create(config)
    graphed, step = graph_ready_trainer(config)
    for index in range(config.steps):
        want = eager.train_step(eager.batch(index), *eager.augmentations())
        got = step(fixed_inputs(graphed, index))
        graphed.schedule.step()
        assert got == pytest.approx(want, rel=1e-5), f"loss at step {index}"
        if index == 0:
            assert_same_clipped_gradients(eager, graphed)
    for (name, p), q in zip(eager.model.named_parameters(), graphed.model.parameters(),
                            strict=True):  # fmt: skip
        np.testing.assert_allclose(q.data, p.data, atol=0.1 * config.lr, err_msg=name)


def assert_same_clipped_gradients(eager: Trainer, graphed: Trainer) -> None:
    """The eager step's clipped grads against the graph-ready step's flat grads, which
    FlatAdamW's NumPy update scaled by the clipping scale in place."""
    flat = {id(p): v for g, f in zip(graphed.optimizer.param_groups, graphed.optimizer.groups,
                                     strict=True) for p, v in zip(g["params"], f.views["grad"],
                                                                  strict=True)}  # fmt: skip
    # against the largest gradient: some are 0 but for rounding (a key's bias)
    tolerance = 1e-5 * max(float(np.abs(p.grad).max()) for p in eager.model.parameters())
    for (name, p), q in zip(eager.model.named_parameters(), graphed.model.parameters(),
                            strict=True):  # fmt: skip
        np.testing.assert_allclose(flat[id(q)], p.grad, rtol=1e-4, atol=tolerance, err_msg=name)


def test_a_non_finite_step_changes_nothing_and_raises():
    config = preset("tiny", **SETTINGS)
    trainer, step = graph_ready_trainer(config)
    step(fixed_inputs(trainer, 0))
    weights = [p.data.copy() for p in trainer.model.parameters()]
    state = trainer.optimizer.state_dict()
    inputs = fixed_inputs(trainer, 1)
    inputs.parts[0].images[0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="the loss is nan"):
        step(inputs)
    for before, param in zip(weights, trainer.model.parameters(), strict=True):
        np.testing.assert_array_equal(param.data, before)
    after = trainer.optimizer.state_dict()
    assert [s["step"] for s in after["state"].values()] == [
        s["step"] for s in state["state"].values()
    ]


def test_a_step_of_several_parts_is_refused():
    config = preset("tiny", **SETTINGS)
    trainer, step = graph_ready_trainer(config)
    inputs = fixed_inputs(trainer, 0)
    two = dataclasses.replace(inputs, parts=inputs.parts * 2)
    with pytest.raises(ValueError, match="expected one part \\(FixedShapes\\), got 2"):
        step(two)


def test_cuda_graph_needs_the_gpu_and_no_anomaly_detection():
    with pytest.raises(ValueError, match="cuda_graph: expected false unless device is 'cuda'"):
        preset("tiny", cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph: expected false with detect_anomaly"):
        preset("tiny", cuda_graph=True, device="cuda", detect_anomaly=True)


# -- on a GPU -------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="CuPy sees no usable GPU")
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_a_captured_step_equals_the_same_step_run_eagerly(dropout):
    """Steps 2.. of each shape replay a graph; the other model runs the body eagerly,
    drawing its dropout keys one by one from the same seeds (the same keys). The same
    kernels on the same inputs: the same numbers, to cuBLAS's choices."""
    config = preset("tiny", encoder_dropout=dropout, **SETTINGS)
    captured, captured_step = graph_ready_trainer(config, "cuda")
    eager, eager_step = graph_ready_trainer(config, "cuda", capture=False)
    for index in range(config.steps):
        inputs = fixed_inputs(captured, index)
        random.manual_seed(index)
        got = captured_step(inputs)
        random.manual_seed(index)
        want = eager_step(inputs)
        captured.schedule.step()
        eager.schedule.step()
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7), f"loss at step {index}"
    assert any(shape.graph is not None for shape in captured_step.shapes.values())
    # cuBLAS may pick other algorithms under capture: Adam's rounding-sized steps only
    for p, q in zip(eager.model.parameters(), captured.model.parameters(), strict=True):
        np.testing.assert_allclose(q.data.get(), p.data.get(), atol=0.1 * config.lr)


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="CuPy sees no usable GPU")
def test_training_with_cuda_graph_from_the_cli_config(tmp_path):
    from minivlm.train import train

    config = preset("tiny", device="cuda", cuda_graph=True, out_dir=str(tmp_path), **SETTINGS)
    trainer = train(config)
    assert trainer.step == config.steps
    assert isinstance(trainer.optimizer, FlatAdamW)
