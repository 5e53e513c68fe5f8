"""Training on a folder of your own images (TrainConfig.data_dir): the split into
training and validation rows, and the batches.

The vocabulary is built from the texts of every row of `data_dir` (characters as
tokens), so a held-out row never meets an unknown character. Validation rows are
`val_data_dir`'s, or a `val_fraction` of `data_dir`'s rows chosen by the seed.

Batch s holds positions s*B .. (s+1)*B - 1 of an endless stream of epochs; epoch e is
the training rows in the order of a permutation seeded by (seed, e). A batch is a
function of its step alone, so a resumed run sees the batches an uninterrupted one
would, and batch workers can build them ahead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..data import Batch, Example, FolderDataset, Tokenizer, collate


@lru_cache(maxsize=8)
def _opened(root: str, image_size: int, stamp: tuple[int, int]) -> FolderDataset:
    """One FolderDataset per folder, image size and captions.jsonl version (stamp)."""
    return FolderDataset(root, image_size)


def open_folder(data_dir: str | os.PathLike, image_size: int) -> FolderDataset:
    """The folder's dataset, checked once per version of its captions.jsonl."""
    captions = Path(data_dir) / "captions.jsonl"
    if not captions.is_file():
        raise ValueError(
            f"TrainConfig.data_dir (--data): expected a folder holding captions.jsonl, "
            f"got {str(data_dir)!r}"
        )
    stat = captions.stat()
    return _opened(str(captions.parent.resolve()), image_size, (stat.st_mtime_ns, stat.st_size))


def folder_tokenizer(data_dir: str | os.PathLike, image_size: int) -> Tokenizer:
    """The tokenizer a run on `data_dir` starts with: the characters of all its texts."""
    return open_folder(data_dir, image_size).tokenizer


@dataclass
class FolderSplit:
    """The rows a run trains on and the rows it validates on (indices into each dataset)."""

    tokenizer: Tokenizer  # what every row is encoded by
    train: FolderDataset
    train_rows: np.ndarray  # (N_train,) int
    val: FolderDataset
    val_rows: np.ndarray  # (N_val,) int, may be empty

    @classmethod
    def from_config(cls, config, tokenizer: Tokenizer) -> FolderSplit:
        """`config` is a TrainConfig with data_dir; every row is encoded by `tokenizer`."""
        size = config.data.image_size
        train = open_folder(config.data_dir, size)
        if train.tokenizer != tokenizer:  # a resumed run keeps its checkpoint's vocabulary
            train = FolderDataset(config.data_dir, size, tokenizer=tokenizer)
        if config.val_data_dir:
            val = FolderDataset(config.val_data_dir, size, tokenizer=tokenizer)
            return cls(tokenizer, train, np.arange(len(train)), val, np.arange(len(val)))
        order = np.random.default_rng([config.seed, 11]).permutation(len(train))
        held = int(round(config.val_fraction * len(train)))
        if held >= len(train):
            raise ValueError(
                f"--val-fraction {config.val_fraction}: holds out all {len(train)} rows of "
                f"{config.data_dir}; expected some left to train on"
            )
        return cls(tokenizer, train, np.sort(order[held:]), train, np.sort(order[:held]))

    def val_batches(self, batch_size: int, batches: int, max_len: int) -> list[Batch]:
        """Up to `batches` batches of the validation rows, in order (fixed: comparable)."""
        rows = self.val_rows[: batch_size * batches]
        return [
            collate([self.val[int(i)] for i in rows[start : start + batch_size]], max_len=max_len)
            for start in range(0, len(rows), batch_size)
        ]


@dataclass(frozen=True)
class FolderStream:
    """The training batches of a folder run, as TrainingStream gives the scenes'."""

    dataset: FolderDataset
    rows: np.ndarray  # (N,) the training rows
    batch_size: int
    seed: int = 0
    max_len: int | None = None  # longest allowed token sequence, <bos> and <eos> included

    def rows_of(self, step: int) -> np.ndarray:
        """(B,) the dataset rows of batch `step`."""
        n = len(self.rows)
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)  # (B,)
        epochs, places = np.divmod(positions, n)
        picked = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            order = np.random.default_rng([self.seed, int(epoch)]).permutation(n)  # (N,)
            here = epochs == epoch
            picked[here] = self.rows[order[places[here]]]
        return picked

    def batch(self, step: int, rows: np.ndarray | None = None) -> Batch:
        """Batch `step`, or only its `rows` (indices into it), as TrainingStream.batch."""
        return collate(list(self.examples(step, rows)), max_len=self.max_len)

    def examples(self, step: int, rows: np.ndarray | None = None) -> Iterator[Example]:
        """The examples of `batch(step, rows)`, each read when it is asked for."""
        picked = self.rows_of(step) if rows is None else self.rows_of(step)[rows]
        return (self.dataset[int(i)] for i in picked)
