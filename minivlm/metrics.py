"""Scores of generated text and attention against the scenes they describe.

Pure functions of strings, scenes and arrays (no model), so each can be tested on
hand-made cases. `minivlm.evaluate` runs the model and feeds them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .data import ParsedObject, Scene, SceneConfig, is_held_out, parse_caption

ATTRIBUTE_FIELDS = ("colour", "shape", "size", "cell")


@dataclass
class CaptionScores:
    """Counts over a set of (generated caption, scene) pairs; rates as properties."""

    captions: int = 0
    exact: int = 0
    objects: int = 0
    correct: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ATTRIBUTE_FIELDS, 0))
    held_out_objects: int = 0
    held_out_named: int = 0

    def add(self, generated: str, reference: str, scene: Scene, config: SceneConfig) -> None:
        self.captions += 1
        self.exact += generated.strip() == reference.strip()
        predicted = parse_caption(generated, config.language)
        by_cell = {(p.row, p.col): p for p in predicted if p.row is not None}
        for obj in scene.objects:
            self.objects += 1
            guess = by_cell.get((obj.row, obj.col))
            for name, ok in object_attribute_hits(obj, guess).items():
                self.correct[name] += ok
            if is_held_out(obj, config):
                self.held_out_objects += 1
                self.held_out_named += (
                    guess is not None and guess.colour == obj.colour and guess.shape == obj.shape
                )

    @property
    def exact_match(self) -> float:
        return self.exact / max(self.captions, 1)

    def accuracy(self, name: str) -> float:
        return self.correct[name] / max(self.objects, 1)

    @property
    def held_out_pair_accuracy(self) -> float:
        """Objects with a colour-shape pair never seen in training, named with both right."""
        return self.held_out_named / max(self.held_out_objects, 1)


def object_attribute_hits(obj, guess: ParsedObject | None) -> dict[str, bool]:
    """Which attributes of a true object a caption got right (the object is found by its cell)."""
    if guess is None:
        return dict.fromkeys(ATTRIBUTE_FIELDS, False)
    return {
        "colour": guess.colour == obj.colour,
        "shape": guess.shape == obj.shape,
        "size": guess.size == obj.size,
        "cell": True,
    }


@dataclass
class QAScores:
    """Answer accuracy per question type next to the majority-answer baseline."""

    correct: Counter = field(default_factory=Counter)
    total: Counter = field(default_factory=Counter)
    answers: dict = field(default_factory=lambda: defaultdict(list))

    def add(self, qa_type: str, predicted: str, answer: str) -> None:
        self.total[qa_type] += 1
        self.correct[qa_type] += predicted.strip() == answer.strip()
        self.answers[qa_type].append(answer)

    def accuracy(self, qa_type: str | None = None) -> float:
        if qa_type is None:
            return sum(self.correct.values()) / max(sum(self.total.values()), 1)
        return self.correct[qa_type] / max(self.total[qa_type], 1)

    def majority_baseline(
        self, training_answers: dict[str, Sequence[str]], qa_type: str | None = None
    ) -> float:
        """Accuracy of always giving the most common training answer of each type."""
        types = [qa_type] if qa_type else list(self.total)
        hits = total = 0
        for t in types:
            common = Counter(training_answers.get(t, [])).most_common(1)
            guess = common[0][0] if common else None
            hits += sum(answer == guess for answer in self.answers[t])
            total += self.total[t]
        return hits / max(total, 1)


def patch_masks(object_masks: np.ndarray, patch_size: int) -> np.ndarray:
    """(n_objects, n_patches) bool: the patches that hold any pixel of each object.

    object_masks (n_objects, H, W) bool; patches in row-major order like the encoder's.
    """
    n, height, width = object_masks.shape
    rows, cols = height // patch_size, width // patch_size
    blocks = object_masks.reshape(n, rows, patch_size, cols, patch_size)
    return blocks.any(axis=(2, 4)).reshape(n, rows * cols)


def pointing_score(
    attention: np.ndarray, token_objects: Sequence[int | None], patches: np.ndarray
) -> tuple[float, float, int]:
    """Share of cross-attention mass on the named object's patches, and the chance level.

    attention (T, n_patches): each generated token's attention over patches (rows sum to 1);
    token_objects[t]: the index of the object token t names, or None;
    patches (n_objects, n_patches) bool. Returns (mean share, mean share under uniform
    attention, number of tokens scored).
    """
    shares, chance = [], []
    for t, obj in enumerate(token_objects):
        if obj is None:
            continue
        on_object = patches[obj]
        shares.append(float(attention[t, on_object].sum()))
        chance.append(on_object.mean())
    if not shares:
        return 0.0, 0.0, 0
    return float(np.mean(shares)), float(np.mean(chance)), len(shares)


def token_objects_from_spans(
    token_spans: Sequence[tuple[int, int]], object_spans
) -> list[int | None]:
    """For each token's character span, the object whose colour or shape word contains it.

    token_spans: [start, end) of each generated token in the caption text; object_spans:
    ObjectSpans per object (from `caption_with_spans`).
    """
    owners: list[int | None] = []
    for start, end in token_spans:
        owner = None
        for index, spans in enumerate(object_spans):
            if any(a <= start and end <= b for a, b in (spans.colour, spans.shape)):
                owner = index
        owners.append(owner)
    return owners
