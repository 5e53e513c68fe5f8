"""The training stream: batch s is a pure function of s, so it can be built in the
training process or ahead of time in worker processes with the same result, and each
example of it is a pure function of its place, so a rank builds only its own rows.

Workers overlap building (40-60 ms for the demo's 64 scenes of 64 px, captions and
questions, on one core of the 2-core AMD EPYC machine: 1,000-1,600 samples/s a worker)
with the model's step. They are spawned, not forked: a forked child would inherit CUDA
state and BLAS thread pools it cannot use safely. Without workers, a BatchBuilder builds
the batches in the training process, and a rank of several builds its next batch while
it waits for the others.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from minivlm.data.batching import Batch, Example, collate
from minivlm.data.config import SceneConfig
from minivlm.data.scene_dataset import SceneDataset
from minivlm.data.tokenizer import Tokenizer

STREAM_SIZE = 2**40  # examples in the endless stream (indexed, never listed)


@dataclass(frozen=True)
class TrainingStream:
    """Batch s holds examples s*B .. (s+1)*B - 1 of an endless seeded SceneDataset.

    task "mix": batches before qa_start_step are captions only (a curriculum).
    """

    config: SceneConfig
    tokenizer: Tokenizer
    batch_size: int
    seed: int = 0
    task: str = "caption"
    qa_fraction: float = 0.3
    qa_start_step: int = 0
    qa_format: str = "direct"
    questions_per_image: int = 1
    max_len: int | None = None  # longest allowed token sequence, <bos> and <eos> included

    def batch(self, step: int, rows: np.ndarray | None = None) -> Batch:
        """Batch `step`, or only its `rows` (indices into it, in that order), padded to
        their own longest."""
        return collate(list(self.examples(step, rows)), max_len=self.max_len)

    def examples(self, step: int, rows: np.ndarray | None = None) -> Iterator[Example]:
        """The examples of `batch(step, rows)`, each built when it is asked for."""
        task = "caption" if self.task == "mix" and step < self.qa_start_step else self.task
        data = SceneDataset(
            self.config,
            "train",
            STREAM_SIZE,
            self.seed,
            task,
            self.qa_fraction,
            self.tokenizer,
            self.qa_format,
            self.questions_per_image,
        )
        rows = range(self.batch_size) if rows is None else rows
        first = step * self.batch_size
        return (data[first + int(i)] for i in rows)


class BatchBuilder:
    """Batches start .. end-1 of a stream (their `rows` only), built in this process one
    example at a time: `next()` builds what is left of the next batch, and `build_one`
    builds one more example of it ahead of time. A rank waiting for the others at a
    collective calls build_one instead of sleeping (MPIGroup.while_waiting), so the
    time one rank waits for a slower one goes into its next batch. Each batch is
    stream.batch's, whoever built its examples and when."""

    def __init__(self, stream, start: int, end: int, rows: np.ndarray | None = None) -> None:
        self.stream, self.end, self.rows = stream, end, rows
        self._begin(start)

    def _begin(self, step: int) -> None:
        self.step, self._built = step, []  # the batch under construction, its examples
        self._left = iter(()) if step >= self.end else self.stream.examples(step, self.rows)

    def build_one(self) -> bool:
        """Build one more example of the next batch; False when there is none to build."""
        example = next(self._left, None)
        if example is None:
            return False
        self._built.append(example)
        return True

    def __iter__(self) -> BatchBuilder:
        return self

    def __next__(self) -> Batch:
        if self.step >= self.end:
            raise StopIteration
        while self.build_one():
            pass
        batch = collate(self._built, max_len=self.stream.max_len)
        self._begin(self.step + 1)
        return batch

    def close(self) -> None:
        """Stop: build nothing more."""
        self._begin(self.end)


def stream_batches(
    stream: TrainingStream, start: int, end: int, workers: int = 0, rows: np.ndarray | None = None
) -> BatchBuilder | Iterator[Batch]:
    """Batches start .. end-1 in order, or their `rows` only: with workers 0, a
    BatchBuilder; with workers > 0, built ahead by that many processes, 2 per worker in
    flight. Either way the result has close().

    With workers, `stream` may be any picklable object with batch(step, rows) (the
    training loop's PreparedStream: the batches made ready for the step, too)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"stream_batches workers: expected an int >= 0, got {workers!r}")
    if workers == 0:
        return BatchBuilder(stream, start, end, rows)
    return _built_by_workers(stream, start, end, workers, rows)


def _built_by_workers(
    stream: TrainingStream, start: int, end: int, workers: int, rows: np.ndarray | None
) -> Iterator[Batch]:
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        ahead = range(start, min(start + 2 * workers, end))
        pending = deque(pool.submit(stream.batch, step, rows) for step in ahead)
        next_step = ahead.stop
        while pending:
            batch = pending.popleft().result()  # a worker's exception is raised here
            if next_step < end:
                pending.append(pool.submit(stream.batch, next_step, rows))
                next_step += 1
            yield batch
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
