"""Training-time augmentations: corrupted attribute words and greyscale captions."""

from __future__ import annotations

import numpy as np
import pytest

from minivlm.data import IGNORE_INDEX, Example, collate, get_language
from minivlm.train import Trainer, preset
from minivlm.train.augment import LUMA_WEIGHTS, AttributeCorruption, GreyscaleCaptions

CAPTION = "a small red circle at the top left and a large blue square"


@pytest.fixture(scope="module")
def tok():
    return Trainer.create(preset("tiny")).tokenizer


def _caption_example(tok, text, image=None):
    ids, loss_start = tok.caption_sequence(text)
    image = np.zeros((3, 4, 4), np.float32) if image is None else image
    return Example(image, tuple(ids), loss_start, "caption")


def _question_examples(tok, image):
    ids, loss_start = tok.qa_sequence("what shape is the red object ?", "red")
    direct = Example(image, tuple(ids), loss_start, "qa")
    ids, loss_start, untrained = tok.described_qa_sequence(
        "a small red circle and a large blue square",
        [("what colour is the circle ?", "red"), ("what size is the red circle ?", "small")],
    )
    return direct, Example(image, tuple(ids), loss_start, "qa", untrained=untrained)


def _mixed_batch(tok, copies=4):
    """Rows: direct question, described question, caption; each `copies` times, each row
    its own random colour image."""
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(copies):
        image = rng.uniform(-1, 1, (3, 4, 4)).astype(np.float32)
        examples += [*_question_examples(tok, image), _caption_example(tok, CAPTION, image)]
    return collate(examples)


def test_attribute_corruption_changes_only_attribute_words_and_is_a_function_of_the_step(tok):
    words = {"colour": ["red", "blue", "green"], "shape": ["circle", "square"]}
    corrupt = AttributeCorruption(tok, words, rate=0.9, width=64)
    batch = collate([_caption_example(tok, CAPTION)] * 4)
    inputs = batch.inputs
    out = corrupt(inputs, batch.targets, batch.answers, step=3)
    attribute_ids = {tok.ids[w] for ws in words.values() for w in ws}
    changed = out != inputs
    assert changed.any()
    assert all(int(i) in attribute_ids for i in inputs[changed])
    assert all(int(i) in attribute_ids for i in out[changed])
    np.testing.assert_array_equal(out, corrupt(inputs, batch.targets, batch.answers, step=3))


def test_attribute_corruption_never_touches_a_question_row(tok):
    """Neither the question nor, in a described question, the caption the answer is read
    from: only caption rows are corrupted."""
    corrupt = AttributeCorruption(tok, {"colour": ["red", "blue"]}, rate=0.99, width=64)
    batch = _mixed_batch(tok)
    out = corrupt(batch.inputs, batch.targets, batch.answers, step=0)
    question_rows = batch.answers.any(axis=1)
    assert question_rows.sum() == 8
    np.testing.assert_array_equal(out[question_rows], batch.inputs[question_rows])
    assert (out[~question_rows] != batch.inputs[~question_rows]).any()


def _greyscale(tok, rate, seed=0):
    colours = list(get_language("en").colours.values())
    return GreyscaleCaptions(tok, colours, rate, seed)


def test_greyscale_caption_rows_lose_colour_and_colour_targets_only(tok):
    batch = _mixed_batch(tok)
    out = _greyscale(tok, rate=1.0)(batch, step=5)
    captions = ~batch.answers.any(axis=1)
    grey = np.tensordot(LUMA_WEIGHTS, batch.images[captions], axes=(0, 1))  # (rows, S, S)
    for channel in range(3):
        np.testing.assert_allclose(out.images[captions, channel], grey, rtol=1e-6)
    # question rows: image and targets as they were
    np.testing.assert_array_equal(out.images[~captions], batch.images[~captions])
    np.testing.assert_array_equal(out.targets[~captions], batch.targets[~captions])
    # caption rows: exactly the colour words' targets are dropped from the loss
    colour_ids = [tok.ids["red"], tok.ids["blue"]]
    dropped = out.targets != batch.targets
    assert dropped.sum() == 2 * captions.sum()
    assert np.isin(batch.targets[dropped], colour_ids).all()
    assert (out.targets[dropped] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(out.inputs, batch.inputs)  # the decoder still reads them
    # the batch it was given is left as it was
    assert np.isin(batch.targets[captions], colour_ids).sum() == 2 * captions.sum()


def test_greyscale_picks_a_share_of_caption_rows_by_seed_and_step(tok):
    image = np.stack([np.eye(4), np.zeros((4, 4)), -np.eye(4)]).astype(np.float32)  # in colour
    batch = collate([_caption_example(tok, CAPTION, image)] * 400)
    augment = _greyscale(tok, rate=0.3)

    def grey_rows(out):
        return np.all(out.images[:, 0] == out.images[:, 1], axis=(1, 2))

    rows = grey_rows(augment(batch, step=2))
    assert 0.22 < rows.mean() < 0.38
    np.testing.assert_array_equal(rows, grey_rows(augment(batch, step=2)))
    assert (rows != grey_rows(augment(batch, step=3))).any()
    assert (rows != grey_rows(_greyscale(tok, rate=0.3, seed=1)(batch, step=2))).any()


def test_greyscale_rate_zero_returns_the_batch_untouched(tok):
    batch = _mixed_batch(tok)
    assert _greyscale(tok, rate=0.0)(batch, step=0) is batch


def test_greyscale_colour_ids_of_a_character_tokenizer_cover_every_colour_character():
    trainer = Trainer.create(preset("tiny", language="zh"))
    colours = list(get_language("zh").colours.values())
    augment = GreyscaleCaptions(trainer.tokenizer, colours, 1.0, 0)
    characters = {trainer.tokenizer.ids[c] for word in colours for c in word}
    assert set(augment.colour_ids.tolist()) == characters


def test_a_rows_augmentation_does_not_depend_on_the_other_rows_or_the_padding(tok):
    """A rank that built only its rows (padded to their own longest) augments them as one
    process augments them in the whole batch."""
    long_caption = CAPTION + " and a small green circle at the bottom right"
    examples = [_caption_example(tok, text) for text in [long_caption, CAPTION] * 4]
    whole, rows = collate(examples), np.array([5, 7])
    mine = collate([examples[i] for i in rows])
    assert mine.inputs.shape[1] < whole.inputs.shape[1]  # padded differently
    corrupt = AttributeCorruption(tok, {"colour": ["red", "blue", "green"]}, 0.5, width=64)
    everyone = corrupt(whole.inputs, whole.targets, whole.answers, step=4)
    alone = corrupt(mine.inputs, mine.targets, mine.answers, step=4, rows=rows)
    assert (alone != mine.inputs).any()
    np.testing.assert_array_equal(alone, everyone[rows, : mine.inputs.shape[1]])
    grey = _greyscale(tok, rate=0.5)
    np.testing.assert_array_equal(
        grey(mine, step=4, rows=rows).images, grey(whole, step=4).images[rows]
    )


def test_attribute_corruption_refuses_rows_longer_than_its_width(tok):
    batch = collate([_caption_example(tok, CAPTION)])
    corrupt = AttributeCorruption(tok, {"colour": ["red"]}, 0.5, width=4)
    with pytest.raises(ValueError, match="width 4"):
        corrupt(batch.inputs, batch.targets, batch.answers, step=0)
