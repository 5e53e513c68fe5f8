"""The training stream: batch s is a pure function of s, so it can be built in the
training process or ahead of time in worker processes with the same result, and each
example of it is a pure function of its place, so a rank builds only its own rows.

Workers overlap rendering (about 40 ms for 64 scenes of 64 px) with the model's
step. They are spawned, not forked: a forked child would inherit CUDA state and
BLAS thread pools it cannot use safely.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from minivlm.data.batching import Batch, collate
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
        return collate([data[first + int(i)] for i in rows], max_len=self.max_len)


def stream_batches(
    stream: TrainingStream, start: int, end: int, workers: int = 0, rows: np.ndarray | None = None
) -> Iterator[Batch]:
    """Batches start .. end-1 in order, or their `rows` only. workers > 0: built ahead, 2
    per worker in flight."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"stream_batches workers: expected an int >= 0, got {workers!r}")
    if workers == 0:
        yield from (stream.batch(step, rows) for step in range(start, end))
        return
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
