"""Feeding the step: StepInputs built ahead (in data workers or here), handed out in
order by the prefetcher, with their arrays on the step's device; "auto" data workers."""

from __future__ import annotations

import numpy as np
import pytest

import minivlm.train.config as config_module
from minivlm.backend import cuda_available
from minivlm.cli import main
from minivlm.train import Trainer, preset
from minivlm.train.config import AUTO_WORKERS_MAX, TrainConfig, data_workers_for
from minivlm.train.loop import StepInputs, StepPreparation, training_batches
from minivlm.train.prefetch import Prefetcher, StayOnHost, prefetch_to


class Source:
    """Items 0, 1, ... n-1 (then `error`, if given), counting how many were taken."""

    def __init__(self, n: int, error: Exception | None = None) -> None:
        self.n, self.error, self.taken, self.closed = n, error, 0, False

    def __iter__(self):
        return self

    def __next__(self) -> int:
        if self.closed or self.taken > self.n:
            raise StopIteration
        if self.taken == self.n:
            self.taken += 1
            if self.error is not None:
                raise self.error
            raise StopIteration
        self.taken += 1
        return self.taken - 1

    def close(self) -> None:
        self.closed = True


class RecordingCopy(StayOnHost):
    """A copier one item ahead, as the GPU's, that logs when each copy starts and ends."""

    ahead = 1

    def __init__(self) -> None:
        self.log: list[str] = []

    def start(self, item):
        self.log.append(f"start {item}")
        return item

    def finish(self, started):
        self.log.append(f"finish {started}")
        return started


def test_on_the_cpu_items_pass_through_in_order_and_none_is_taken_ahead():
    source = Source(3)
    batches = prefetch_to("cpu", source)
    for expected in range(3):
        assert next(batches) == expected
        assert source.taken == expected + 1, "the CPU path took an item before it was asked"
    with pytest.raises(StopIteration):
        next(batches)


def test_on_the_cpu_a_sources_error_comes_after_the_items_before_it():
    batches = prefetch_to("cpu", Source(2, ValueError("batch 2 is broken")))
    assert [next(batches), next(batches)] == [0, 1]
    with pytest.raises(ValueError, match="batch 2 is broken"):
        next(batches)
    with pytest.raises(StopIteration):  # raised once, then the end
        next(batches)


def test_closing_closes_the_source_and_hands_out_nothing_more():
    source = Source(5)
    batches = prefetch_to("cpu", source)
    next(batches)
    batches.close()
    assert source.closed
    assert list(batches) == []


def test_one_ahead_the_next_copy_starts_before_the_current_item_is_handed_out():
    copier = RecordingCopy()
    assert list(Prefetcher(Source(3), copier)) == [0, 1, 2]
    assert copier.log == [
        "start 0",
        "start 1",
        "finish 0",
        "start 2",
        "finish 1",
        "finish 2",
    ]


def test_one_ahead_an_error_fetching_ahead_waits_for_the_items_before_it():
    copier = RecordingCopy()
    source = Source(2, ValueError("batch 2 is broken"))
    batches = Prefetcher(source, copier)
    assert next(batches) == 0
    assert next(batches) == 1  # batch 2's error was met while fetching ahead of item 1
    assert source.taken == 3
    with pytest.raises(ValueError, match="batch 2 is broken"):
        next(batches)
    with pytest.raises(StopIteration):
        next(batches)


def _host_inputs(trainer: Trainer, step: int) -> StepInputs:
    corruption, greyscale = trainer.augmentations()
    config = trainer.config
    prepare = StepPreparation(corruption, greyscale, config.loss_weighting, config.answer_weight)
    return prepare(trainer.batch(step), step, trainer.my_rows())


def _demo_like(**changes) -> TrainConfig:
    """The tiny preset with the demo's augmentations and two question lengths a batch
    (no dropout: two trainers of one seed train alike whatever ran between them)."""
    settings = dict(
        encoder_dropout=0.0,
        task="mix",
        qa_fraction=0.5,
        qa_format="describe",
        questions_per_image=2,
        max_len=96,
        corrupt_attributes=0.5,
        greyscale_captions=0.7,
        steps=6,
    )
    return preset("tiny", **{**settings, **changes})


def _assert_same_inputs(a: StepInputs, b: StepInputs, to_host=np.asarray) -> None:
    assert (a.step, a.total) == (b.step, b.total)
    assert len(a.parts) == len(b.parts)
    for part_a, part_b in zip(a.parts, b.parts, strict=True):
        for name in ("images", "inputs", "targets", "weights"):
            x, y = to_host(getattr(part_a, name)), np.asarray(getattr(part_b, name))
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=f"step {a.step}: {name}")


@pytest.mark.parametrize("workers", [0, 1])
def test_training_batches_are_the_steps_host_inputs_built_here_or_by_workers(workers):
    trainer = Trainer.create(_demo_like(data_workers=workers))
    trainer.step = 2  # as if resumed
    with training_batches(trainer, 5) as batches:
        got = list(batches)
    assert [inputs.step for inputs in got] == [2, 3, 4]
    assert any(len(inputs.parts) == 2 for inputs in got), "expected a batch split in two"
    for inputs in got:
        _assert_same_inputs(inputs, _host_inputs(trainer, inputs.step))


def test_a_step_from_prepared_inputs_equals_a_step_from_the_batch():
    config = _demo_like()
    from_batch, from_inputs = Trainer.create(config), Trainer.create(config)
    corruption, greyscale = from_batch.augmentations()
    loss_batch = from_batch.train_step(from_batch.batch(0), corruption, greyscale)
    loss_inputs = from_inputs.train_step(_host_inputs(from_inputs, 0))
    assert loss_batch == loss_inputs
    for (name, a), (_, b) in zip(
        from_batch.model.named_parameters(), from_inputs.model.named_parameters(), strict=True
    ):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)


def test_inputs_of_another_step_are_refused():
    trainer = Trainer.create(_demo_like())
    with pytest.raises(ValueError, match="expected the inputs of step 0, got those of step 1"):
        trainer.train_step(_host_inputs(trainer, 1))


def test_a_batch_without_its_augmentations_is_refused():
    trainer = Trainer.create(_demo_like())
    with pytest.raises(ValueError, match="train_step corruption"):
        trainer.train_step(trainer.batch(0))


# -- "auto" data workers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("cores", "ranks", "expected"),
    [(16, 1, AUTO_WORKERS_MAX), (16, 4, 3), (3, 1, 2), (2, 1, 1), (1, 1, 0), (8, 8, 0)],
)
def test_auto_workers_on_a_gpu_leave_a_core_to_each_training_process(
    monkeypatch, cores, ranks, expected
):
    monkeypatch.setattr(config_module, "usable_cores", lambda: cores)
    assert data_workers_for("auto", "cuda", ranks) == expected
    assert data_workers_for("auto", "cpu", ranks) == 0, "the CPU's cores train"
    assert data_workers_for(3, "cpu", ranks) == 3, "a number given is taken as it is"


def test_auto_is_the_default_and_survives_a_round_trip():
    config = preset("tiny")
    assert config.data_workers == "auto"
    assert TrainConfig.from_dict(config.to_dict()).data_workers == "auto"
    assert TrainConfig.from_dict(config.replace(data_workers=2).to_dict()).data_workers == 2


@pytest.mark.parametrize("value", [-1, 1.5, True, "two", "", None])
def test_a_bad_data_workers_value_is_named(value):
    with pytest.raises(ValueError, match=r"TrainConfig.data_workers: expected an int >= 0 or"):
        preset("tiny", data_workers=value)
    with pytest.raises(ValueError, match="data_workers"):
        data_workers_for(value, "cuda")


def test_the_data_workers_flag_takes_auto_or_a_count_and_names_a_bad_one(capsys, tmp_path):
    from minivlm.cli.main import build_parser
    from minivlm.train import config_from_arguments

    parser = build_parser()
    for text, expected in (("auto", "auto"), ("3", 3), ("0", 0)):
        args = parser.parse_args(["train", "--preset", "tiny", "--data-workers", text])
        assert config_from_arguments(args).data_workers == expected
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "tiny", "--data-workers", "-2", "--out-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--data-workers: expected 'auto' or an int >= 0, got '-2'" in capsys.readouterr().err


# -- on the GPU -----------------------------------------------------------------------


@pytest.mark.gpu
def test_prefetched_inputs_are_the_host_inputs_on_the_gpu_and_train_alike():
    if not cuda_available():
        pytest.skip("device 'cuda' needs CuPy and a usable NVIDIA GPU")
    import cupy

    config = _demo_like(device="cuda", data_workers=0)
    trainer, reference = Trainer.create(config), Trainer.create(config)
    with training_batches(trainer, 4) as batches:
        for inputs in batches:
            host = _host_inputs(trainer, inputs.step)
            for part in inputs.parts:
                for name in ("images", "inputs", "targets", "weights"):
                    assert isinstance(getattr(part, name), cupy.ndarray), name
            _assert_same_inputs(inputs, host, to_host=cupy.asnumpy)
            # a step from the prefetched arrays is the step from the host's
            assert trainer.train_step(inputs) == pytest.approx(reference.train_step(host), rel=1e-6)
