"""The training stream: batches depend only on the step, inline or built by workers."""

from __future__ import annotations

import numpy as np
import pytest

from minivlm.data import SceneConfig, default_tokenizer
from minivlm.data.stream import TrainingStream, stream_batches


def _stream(**changes) -> TrainingStream:
    config = SceneConfig(image_size=24, max_objects=2)
    settings = dict(batch_size=4, seed=3, task="mix", qa_fraction=0.5, qa_start_step=2)
    settings.update(changes)
    return TrainingStream(config, default_tokenizer(config), **settings)


def _assert_same(a, b) -> None:
    for name in ("images", "inputs", "targets", "lengths"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_workers_build_the_same_batches_in_the_same_order():
    stream = _stream()
    inline = list(stream_batches(stream, 1, 6))
    ahead = list(stream_batches(stream, 1, 6, workers=2))
    assert len(inline) == len(ahead) == 5
    for a, b in zip(inline, ahead, strict=True):
        _assert_same(a, b)
    _assert_same(inline[2], stream.batch(3))


def test_questions_join_at_qa_start_step():
    stream = _stream(batch_size=32)
    before, after = stream.batch(1), stream.batch(2)
    # target 1 is a caption's first word, but still part of a question's prompt
    assert (before.targets[:, 1] != -100).all()
    assert (after.targets[:, 1] == -100).any()


def test_a_workers_error_reaches_the_caller():
    stream = _stream(max_len=3)
    with pytest.raises(ValueError, match="max_len=3"):
        list(stream_batches(stream, 0, 3, workers=1))


@pytest.mark.parametrize("workers", [-1, 1.5, True])
def test_bad_worker_count_is_named(workers):
    with pytest.raises(ValueError, match="workers"):
        list(stream_batches(_stream(), 0, 1, workers=workers))


def test_a_ranks_rows_are_the_whole_batchs_rows_padded_to_their_own_longest():
    stream = _stream(batch_size=8, qa_start_step=0)
    whole, rows = stream.batch(5), np.array([5, 6, 7])
    mine = stream.batch(5, rows)
    width = mine.inputs.shape[1]
    assert width == mine.lengths.max() <= whole.inputs.shape[1]
    np.testing.assert_array_equal(mine.images, whole.images[rows])
    np.testing.assert_array_equal(mine.lengths, whole.lengths[rows])
    for name in ("inputs", "targets", "answers"):
        np.testing.assert_array_equal(getattr(mine, name), getattr(whole, name)[rows, :width])
    _assert_same(next(stream_batches(stream, 5, 6, rows=rows)), mine)


def test_batches_built_ahead_an_example_at_a_time_are_the_streams_batches():
    """A rank that waits for the others builds its next batch meanwhile (build_one); how
    much of a batch was built ahead changes nothing in it."""
    stream, rows = _stream(qa_start_step=0), np.array([1, 3])
    builder = stream_batches(stream, 2, 6, rows=rows)
    ahead_counts = [0, 1, 2, 5]  # none, part, all (and asking past the batch's end)
    for step, ahead in zip(range(2, 6), ahead_counts, strict=True):
        built = sum(builder.build_one() for _ in range(ahead))
        assert built == min(ahead, len(rows))
        _assert_same(next(builder), stream.batch(step, rows))
    assert not builder.build_one()  # nothing left to build
    with pytest.raises(StopIteration):
        next(builder)


def test_a_closed_builder_builds_nothing_more():
    builder = stream_batches(_stream(), 0, 3)
    next(builder)
    builder.close()
    assert not builder.build_one()
    assert list(builder) == []
