"""Training-time augmentations of a batch: corrupted attribute words, greyscale captions.

Both are functions of (batch, step, rows), so a resumed run augments exactly as an
uninterrupted one, and each row's draws depend on its place in the global batch only
(not on the other rows, nor on the padding): a rank that built only its rows augments
them as one process would. Both touch caption rows only: a question row's words are the
task itself, and in a described question (`qa_format="describe"`) its caption is the
evidence that the answer is read from.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..data import IGNORE_INDEX, Batch, Tokenizer

# ITU-R BT.601 luma weights of R, G, B: affine in each channel, so they hold on the
# images' [-1, 1] scale as they do on [0, 255]
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def caption_rows(answers: np.ndarray) -> np.ndarray:
    """(B,) bool: rows that answer no question. answers (B, T) as from `collate`."""
    return ~answers.any(axis=1)


class AttributeCorruption:
    """Replaces colour and shape words in the decoder's teacher-forced input at random.

    The targets keep the true words, so after a corrupted colour the model cannot lean
    on "red is usually a square": the shape must come from the image. Only words the
    model was trained to produce are touched (input t where target t-1 is trained).
    """

    def __init__(
        self, tokenizer: Tokenizer, words_by_kind: dict[str, list[str]], rate: float, width: int
    ):
        self.rate, self.width = rate, width  # width: the longest row the batches can have
        self.groups = [
            np.array([tokenizer.ids[w] for w in words if w in tokenizer.ids])
            for words in words_by_kind.values()
        ]

    def __call__(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        answers: np.ndarray,
        step: int,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """inputs, targets, answers: (B, T) as from `collate`, rows `rows` of the global
        batch (None: all of it); a corrupted copy of inputs."""
        if self.rate == 0.0:
            return inputs
        batch, length = inputs.shape
        if length > self.width:
            raise ValueError(f"AttributeCorruption: rows of {length} tokens, width {self.width}")
        rows = np.arange(batch) if rows is None else rows
        rng = np.random.default_rng([step, 7])  # a function of the step only: resumes exactly
        # (row, position, group, [hit, pick]) for rows 0 .. the last of `rows`, at the fixed
        # width: a row's draws are the same whatever rows and padding come with it
        draws = rng.random((int(rows.max()) + 1, self.width, len(self.groups), 2))
        draws = draws[rows, :length]  # (B, T, groups, 2)
        generated = np.zeros(inputs.shape, dtype=bool)  # (B, T): input t was target t-1
        generated[:, 1:] = targets[:, :-1] != IGNORE_INDEX
        generated &= caption_rows(answers)[:, None]
        corrupted = inputs.copy()
        for group, ids in enumerate(self.groups):
            hit = generated & np.isin(inputs, ids) & (draws[..., group, 0] < self.rate)
            picks = (draws[..., group, 1][hit] * len(ids)).astype(np.int64)  # uniform in ids
            corrupted[hit] = ids[picks]
        return corrupted


class GreyscaleCaptions:
    """Shows a share of the caption examples in greyscale, their colour words untrained.

    In colour, each shape is seen only in the colours it is paired with in training, so
    the encoder may learn "triangle" as "a triangle outline in green or blue" and fail
    on a red one (a held-out pair). A greyscale image shows the outline alone: its
    shape words are trained as usual, so the shape has to be read from the form. Its
    colour words cannot be read from the image and are left out of the loss (their
    targets become IGNORE_INDEX); the decoder's input still holds them.

    grey = 0.299 R + 0.587 G + 0.114 B per pixel, copied to the three channels.
    """

    STREAM = 77  # keeps these draws apart from the other generators seeded by the step

    def __init__(self, tokenizer: Tokenizer, colour_words: list[str], rate: float, seed: int):
        self.rate, self.seed = rate, seed
        ids = {i for word in colour_words for i in tokenizer.encode(word)}
        self.colour_ids = np.array(sorted(ids - {tokenizer.unk_id}), dtype=np.int64)

    def __call__(self, batch: Batch, step: int, rows: np.ndarray | None = None) -> Batch:
        """The batch (rows `rows` of the global batch; None: all of it) with the chosen
        caption rows' images grey and colour targets ignored."""
        if self.rate == 0.0:
            return batch
        places = np.arange(len(batch.images)) if rows is None else rows  # in the global batch
        rng = np.random.default_rng([self.seed, step, self.STREAM])
        drawn = rng.random(int(places.max()) + 1)[places]  # (B,) one draw per global row
        rows = caption_rows(batch.answers) & (drawn < self.rate)  # (B,) the rows made grey
        images = batch.images.copy()  # (B, 3, S, S)
        grey = np.tensordot(LUMA_WEIGHTS, images[rows], axes=(0, 1))  # (rows, S, S)
        images[rows] = grey[:, None]
        targets = batch.targets.copy()  # (B, T)
        targets[rows[:, None] & np.isin(targets, self.colour_ids)] = IGNORE_INDEX
        return dataclasses.replace(batch, images=images, targets=targets)
