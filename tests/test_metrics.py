"""The evaluation metrics on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from minivlm.data import SceneConfig, SceneObject, caption, caption_with_spans
from minivlm.data.scenes import Scene
from minivlm.metrics import (
    CaptionScores,
    QAScores,
    patch_masks,
    pointing_score,
    token_objects_from_spans,
)


def _scene(*objects) -> Scene:
    return Scene(tuple(objects), background=255, noise=0.0, noise_seed=0)


RED_SQUARE = SceneObject("red", "square", "large", 0, 0, 0.0, 0.0)
BLUE_CIRCLE = SceneObject("blue", "circle", "small", 1, 1, 0.0, 0.0)


def test_caption_scores_count_exact_matches_and_attributes_by_cell():
    config = SceneConfig(
        held_out_pairs=(
            ("red", "square"),
            ("green", "circle"),
            ("blue", "triangle"),
            ("yellow", "diamond"),
            ("purple", "star"),
            ("orange", "cross"),
        )
    )
    scene = _scene(RED_SQUARE, BLUE_CIRCLE)
    truth = caption(scene)
    scores = CaptionScores()
    scores.add(truth, truth, scene, config)
    wrong_shape = truth.replace("square", "circle", 1)
    scores.add(wrong_shape, truth, scene, config)
    assert scores.exact_match == 0.5
    assert scores.accuracy("colour") == 1.0
    assert scores.accuracy("shape") == 0.75
    assert scores.held_out_objects == 2 and scores.held_out_named == 1
    assert scores.held_out_pair_accuracy == 0.5


def test_an_object_missing_from_the_caption_counts_wrong_on_every_attribute():
    scene = _scene(RED_SQUARE, BLUE_CIRCLE)
    scores = CaptionScores()
    scores.add(caption(_scene(RED_SQUARE)), caption(scene), scene, SceneConfig())
    assert scores.accuracy("cell") == 0.5 and scores.accuracy("colour") == 0.5


def test_qa_scores_per_type_and_majority_baseline():
    scores = QAScores()
    for predicted, answer in [("yes", "yes"), ("no", "yes"), ("no", "no"), ("yes", "yes")]:
        scores.add("exists", predicted, answer)
    scores.add("count", "two", "three")
    assert scores.accuracy("exists") == 0.75
    assert scores.accuracy() == 3 / 5
    training = {"exists": ["yes", "yes", "no"], "count": ["three"]}
    assert scores.majority_baseline(training, "exists") == 0.75  # always "yes"
    assert scores.majority_baseline(training) == 4 / 5


def test_patch_masks_mark_the_patches_an_object_touches():
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, 1:3, 5:7] = True  # rows 1-2, columns 5-6
    np.testing.assert_array_equal(patch_masks(masks, 4)[0], [False, True, False, False])


def test_pointing_score_is_the_mass_on_the_named_object():
    attention = np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.0, 1.0]])
    patches = np.array([[True, False, False, False], [False, False, False, True]])
    share, chance, n = pointing_score(attention, [0, None, 1], patches)
    assert n == 2
    assert share == pytest.approx((0.7 + 1.0) / 2)
    assert chance == pytest.approx(0.25)


def test_token_owners_follow_the_caption_spans():
    scene = _scene(RED_SQUARE, BLUE_CIRCLE)
    text, spans = caption_with_spans(scene)
    words = text.split(" ")
    offsets, start = [], 0
    for word in words:
        start = text.index(word, start)
        offsets.append((start, start + len(word)))
        start += len(word)
    owners = token_objects_from_spans(offsets, spans)
    named = {words[i].strip(",."): o for i, o in enumerate(owners) if o is not None}
    assert named == {"red": 0, "square": 0, "blue": 1, "circle": 1}
