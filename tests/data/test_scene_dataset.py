import numpy as np
import pytest

from minivlm.data import (
    ParsedObject,
    SceneConfig,
    SceneDataset,
    Tokenizer,
    collate,
    is_held_out,
    parse_caption,
)

CONFIG = SceneConfig()


def test_examples_are_deterministic_for_a_seed():
    first = SceneDataset(CONFIG, "train", size=20, seed=4, task="mix")
    second = SceneDataset(CONFIG, "train", size=20, seed=4, task="mix")
    for index in (0, 7, 19):
        a, b = first[index], second[index]
        assert a.ids == b.ids and a.scene == b.scene
        assert a.caption == b.caption and a.question == b.question and a.answer == b.answer
        assert first.image(index).tobytes() == second.image(index).tobytes()
        np.testing.assert_array_equal(a.image, b.image)


def test_different_seeds_give_different_examples():
    a = SceneDataset(CONFIG, "train", size=10, seed=0)
    b = SceneDataset(CONFIG, "train", size=10, seed=1)
    assert [a.record(i).caption for i in range(10)] != [b.record(i).caption for i in range(10)]


def test_caption_examples_keep_their_scene_and_text():
    dataset = SceneDataset(CONFIG, "heldout", size=10, task="caption")
    for index in range(len(dataset)):
        example = dataset[index]
        assert example.task == "caption" and example.question is None
        assert parse_caption(example.caption) == [ParsedObject.of(o) for o in example.scene.objects]
        assert any(is_held_out(o, CONFIG) for o in example.scene.objects)
        assert dataset.tokenizer.decode(example.ids) == example.caption
        assert example.image.shape == (3, 64, 64)


def test_qa_examples_keep_question_answer_and_type():
    dataset = SceneDataset(CONFIG, "iid", size=30, task="qa")
    for index in range(len(dataset)):
        example = dataset[index]
        assert example.task == "qa" and example.qa_type is not None
        assert dataset.tokenizer.decode(example.ids[example.loss_start :]) == example.answer


def test_mix_follows_qa_fraction():
    tasks = [
        SceneDataset(CONFIG, size=400, task="mix", qa_fraction=0.25).record(i).task
        for i in range(400)
    ]
    assert 0.18 < tasks.count("qa") / 400 < 0.32


@pytest.mark.parametrize("language", ["en", "zh"])
def test_default_tokenizer_covers_all_generated_text(language):
    dataset = SceneDataset(SceneConfig(language=language), size=300, task="mix")
    tokenizer = dataset.tokenizer
    for index in range(len(dataset)):
        record = dataset.record(index)
        texts = [record.caption] if record.caption else [record.qa.question, record.qa.answer]
        for text in texts:
            assert tokenizer.unk_id not in tokenizer.encode(text), text


def test_dataset_batches_collate():
    dataset = SceneDataset(CONFIG, size=8, task="mix")
    batch = collate([dataset[i] for i in range(8)], pad_id=dataset.tokenizer.pad_id)
    assert batch.images.shape == (8, 3, 64, 64)
    assert batch.inputs.shape == batch.targets.shape


def test_a_given_tokenizer_is_used():
    tokenizer = Tokenizer.build(["a"], kind="char")
    assert SceneDataset(CONFIG, size=1, tokenizer=tokenizer).tokenizer is tokenizer


def test_indexing_past_the_end_raises_index_error():
    dataset = SceneDataset(CONFIG, size=3)
    assert dataset.record(-1) == dataset.record(2)
    with pytest.raises(IndexError, match="index"):
        dataset[3]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"split": "val"}, "split"),
        ({"size": -1}, "size"),
        ({"task": "chat"}, "task"),
        ({"qa_fraction": 1.5}, "qa_fraction"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_dataset_arguments_are_named(kwargs, named):
    with pytest.raises(ValueError, match=named):
        SceneDataset(CONFIG, **kwargs)
