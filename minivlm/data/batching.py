"""Examples and batches: images as normalised arrays, token sequences as padded
inputs and targets with the prompt and padding masked out of the loss."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from minivlm.data.scenes import Scene

IGNORE_INDEX = -100  # a target the loss skips
TASKS: tuple[str, ...] = ("caption", "qa")
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


@dataclass(frozen=True)
class Example:
    """One training example: an image and its token sequence, with what it came from.

    ids: <bos> ... <eos>; loss_start: the first index of `ids` that is trained on;
    untrained: later spans [start, stop) of ids that are not, in order (the questions
    asked after a description, see Tokenizer.described_qa_sequence). question, answer
    and qa_type are those of the first question.
    """

    image: np.ndarray  # (3, S, S) float32 in [-1, 1]
    ids: tuple[int, ...]
    loss_start: int
    task: str  # "caption" or "qa"
    caption: str | None = None
    question: str | None = None
    answer: str | None = None
    qa_type: str | None = None
    scene: Scene | None = None
    source: str | None = None  # where it came from, e.g. an image file name
    untrained: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"Example.task: expected one of {TASKS}, got {self.task!r}")
        if len(self.ids) < 2:
            raise ValueError(f"Example.ids: expected at least 2 tokens, got {len(self.ids)}")
        if not 1 <= self.loss_start < len(self.ids):
            raise ValueError(
                f"Example.loss_start: expected 1 <= loss_start < {len(self.ids)}, "
                f"got {self.loss_start}"
            )
        bounds = [self.loss_start, *(i for span in self.untrained for i in span), len(self.ids)]
        spans_ok = all(len(span) == 2 for span in self.untrained)
        if not spans_ok or any(a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
            raise ValueError(
                f"Example.untrained: expected spans in order with {self.loss_start} < start < "
                f"stop < next start ... < {len(self.ids)}, got {self.untrained}"
            )


@dataclass(frozen=True)
class Batch:
    images: np.ndarray  # (B, 3, S, S) float32
    inputs: np.ndarray  # (B, T) int64: ids[:-1], padded with pad_id
    targets: np.ndarray  # (B, T) int64: ids[1:], IGNORE_INDEX at padding and prompt
    lengths: np.ndarray  # (B,) int64: real (unpadded) positions of each row
    answers: np.ndarray  # (B, T) bool: targets that answer a question (answer words, <eos>)


def image_to_array(image: Image.Image, image_size: int) -> np.ndarray:
    """(3, S, S) float32 in [-1, 1] from a Pillow image of any mode and size.

    Transparency is composited over white; 16-bit and 32-bit greyscale ("I;16",
    "I", "F") are scaled by 65535 when any value exceeds 255, else by 255.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image_to_array image: expected a PIL.Image.Image, got {type(image)}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_to_array image_size: expected a positive int, got {image_size!r}")
    if image.mode in _HIGH_DEPTH_MODES:
        grey = _high_depth_to_unit(image, image_size)  # (S, S) in [0, 1]
        unit = np.repeat(grey[None], 3, axis=0)  # (3, S, S)
    else:
        rgb = _to_rgb(image)
        if rgb.size != (image_size, image_size):
            rgb = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC)
        return pixels_to_array(np.asarray(rgb))
    return (unit * 2.0 - 1.0).astype(np.float32)


# byte value v -> v / 255 * 2 - 1 in float32, the same arithmetic as the array's
_BYTE_TO_UNIT = (np.arange(256, dtype=np.float32) / 255.0 * 2.0 - 1.0).astype(np.float32)


def pixels_to_array(pixels: np.ndarray) -> np.ndarray:
    """(3, S, S) float32 in [-1, 1] from RGB bytes (S, S, 3) uint8: image_to_array
    without Pillow (one table look-up a byte)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(
            f"pixels_to_array pixels: expected (S, S, 3) uint8, got {pixels.shape} {pixels.dtype}"
        )
    return _BYTE_TO_UNIT[np.ascontiguousarray(pixels.transpose(2, 0, 1))]  # (3, S, S)


def _to_rgb(image: Image.Image) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _high_depth_to_unit(image: Image.Image, image_size: int) -> np.ndarray:
    """(S, S) float32 in [0, 1] from a one-channel image deeper than 8 bits."""
    values = np.asarray(image, dtype=np.float32)  # (H, W)
    scale = 65535.0 if values.size and values.max() > 255 else 255.0
    unit = Image.fromarray(np.clip(values / scale, 0.0, 1.0), "F")
    if unit.size != (image_size, image_size):
        unit = unit.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(unit, dtype=np.float32), 0.0, 1.0)


def collate(examples: Sequence[Example], pad_id: int = 0, max_len: int | None = None) -> Batch:
    """Stack examples into a batch padded to its longest sequence.

    For a sequence ids of length n: inputs = ids[:-1], targets = ids[1:]. Target t
    predicts ids[t + 1], so it is trained only when t + 1 >= loss_start and t + 1 is
    outside the example's untrained spans; the others (prompts) and padding get
    IGNORE_INDEX.
    """
    if len(examples) == 0:
        raise ValueError("collate examples: expected at least one example, got none")
    image_shape = examples[0].image.shape
    for index, example in enumerate(examples):
        if example.image.shape != image_shape:
            raise ValueError(
                f"collate examples[{index}].image: expected shape {image_shape} like "
                f"examples[0], got {example.image.shape}"
            )
        if max_len is not None and len(example.ids) > max_len:
            named = example.source or example.caption or example.question
            raise ValueError(
                f"collate examples[{index}] ({named!r}): sequence of {len(example.ids)} tokens "
                f"is longer than max_len={max_len}"
            )
    width = max(len(example.ids) for example in examples) - 1
    inputs = np.full((len(examples), width), pad_id, dtype=np.int64)  # (B, T)
    targets = np.full((len(examples), width), IGNORE_INDEX, dtype=np.int64)  # (B, T)
    lengths = np.zeros(len(examples), dtype=np.int64)  # (B,)
    answers = np.zeros((len(examples), width), dtype=bool)  # (B, T)
    for row, example in enumerate(examples):
        ids = np.asarray(example.ids, dtype=np.int64)
        n = len(ids) - 1
        inputs[row, :n] = ids[:-1]
        targets[row, :n] = ids[1:]
        targets[row, : example.loss_start - 1] = IGNORE_INDEX
        for start, stop in example.untrained:
            targets[row, start - 1 : stop - 1] = IGNORE_INDEX
        if example.task == "qa":
            answer_start = example.untrained[0][1] if example.untrained else example.loss_start
            answers[row, answer_start - 1 : n] = True  # from the first answer, less later questions
            for start, stop in example.untrained[1:]:
                answers[row, start - 1 : stop - 1] = False
        lengths[row] = n
    images = np.stack([example.image for example in examples]).astype(np.float32, copy=False)
    return Batch(images, inputs, targets, lengths, answers)
