"""Worked answers: a relation is answered by naming both objects' columns or rows, then
yes/no; a count of one shape by naming the shape in the singular, then the count."""

from __future__ import annotations

import numpy as np
import pytest

import minivlm.evaluate as evaluate_module
from minivlm.data import (
    QA_TYPES,
    Scene,
    SceneConfig,
    SceneDataset,
    SceneObject,
    all_questions,
    answer_text,
    collate,
    get_language,
    questions_of_type,
    sample_scene,
)
from minivlm.evaluate import EvalConfig
from minivlm.train import preset, train

SCENE = Scene(
    (
        SceneObject("red", "circle", "small", 0, 0),
        SceneObject("blue", "square", "large", 1, 2),
    )
)
WORKED = SceneConfig(image_size=32, worked_answers=True)


def test_a_relation_is_worked_through_both_objects_columns_or_rows():
    """Red circle top left (row 0, col 0), blue square in the middle row on the right."""
    worked = {qa.question: answer_text(qa, WORKED) for qa in questions_of_type(SCENE, "relation")}
    assert (
        worked["is the red circle left of the blue square?"]
        == "red circle left to blue square right so yes"
    )
    assert (
        worked["is the blue square right of the red circle?"]
        == "red circle left to blue square right so yes"
    )
    assert (
        worked["is the red circle right of the blue square?"]
        == "blue square right to red circle left so no"
    )
    assert (
        worked["is the blue square above the red circle?"]
        == "blue square middle to red circle top so no"
    )
    assert (
        worked["is the red circle below the blue square?"]
        == "blue square middle to red circle top so no"
    )
    assert (
        worked["is the red circle above the blue square?"]
        == "red circle top to blue square middle so yes"
    )
    plain = {
        qa.question: answer_text(qa, SceneConfig()) for qa in questions_of_type(SCENE, "relation")
    }
    assert plain["is the red circle left of the blue square?"] == "yes"


def test_chinese_relation_working():
    zh = SceneConfig(language="zh", worked_answers=True)
    worked = {qa.question: answer_text(qa, zh) for qa in questions_of_type(SCENE, "relation", "zh")}
    assert worked["红色圆形在蓝色正方形的左边吗？"] == "红色圆形左到蓝色正方形右，所以是"
    assert worked["蓝色正方形在红色圆形的上方吗？"] == "蓝色正方形中到红色圆形上，所以否"


def test_a_count_of_one_shape_first_says_the_shape():
    worked = {qa.question: answer_text(qa, WORKED) for qa in questions_of_type(SCENE, "count")}
    assert worked["how many circles are there?"] == "circle so one"
    assert worked["how many crosses are there?"] == "cross so zero"
    assert worked["how many objects are there?"] == "two"
    zh = SceneConfig(language="zh", worked_answers=True)
    chinese = {qa.question: answer_text(qa, zh) for qa in questions_of_type(SCENE, "count", "zh")}
    assert chinese["有几个圆形？"] == "圆形，所以一个"
    counts = questions_of_type(SCENE, "count")
    plain = {qa.question: answer_text(qa, SceneConfig()) for qa in counts}
    assert plain["how many circles are there?"] == "one"


def test_a_count_of_one_shape_can_name_each_object_it_counts():
    scene = Scene(
        (
            SceneObject("red", "star", "small", 0, 0),
            SceneObject("blue", "square", "large", 1, 2),
            SceneObject("green", "star", "large", 2, 1),
        )
    )
    listing = SceneConfig(image_size=32, worked_answers=True, count_working="objects")
    worked = {qa.question: answer_text(qa, listing) for qa in questions_of_type(scene, "count")}
    assert worked["how many stars are there?"] == "red star, green star so two"
    assert worked["how many squares are there?"] == "blue square so one"
    assert worked["how many crosses are there?"] == "cross so zero"  # nothing to name
    assert worked["how many objects are there?"] == "three"
    zh = SceneConfig(language="zh", worked_answers=True, count_working="objects")
    chinese = {
        qa.question: answer_text(qa, zh) for qa in questions_of_type(scene, "count", "zh")
    }
    assert chinese["有几个星形？"] == "红色星形，绿色星形，所以两个"
    with pytest.raises(ValueError, match="SceneConfig.count_working: expected one of"):
        SceneConfig(count_working="each")


@pytest.mark.parametrize("qa_type", [t for t in QA_TYPES if t not in ("relation", "count")])
def test_other_question_types_answer_directly(qa_type):
    for qa in questions_of_type(SCENE, qa_type):
        assert qa.working == "" and answer_text(qa, WORKED) == qa.answer


@pytest.mark.parametrize("language", ["en", "zh"])
def test_the_answer_is_yes_when_the_first_word_comes_before_the_second(language):
    """On random scenes: the working names each object as the question did, then its
    column (left of, right of) or row (above, below); the answer is yes exactly when the
    first comes first, and final_answer recovers it from the worked text."""
    config = SceneConfig(language=language, max_objects=4, worked_answers=True)
    table = get_language(language)
    between = table.relation_working.format(
        first_object="", first="", second_object="", second=""
    ).strip()
    between = table.word_gap + between + table.word_gap  # " to " ("bottom" holds "to")
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(40):
        for qa in questions_of_type(sample_scene(config, rng), "relation", language):
            assert table.final_answer(answer_text(qa, config)) == qa.answer
            sideways = any(table.relations[r] in qa.question for r in ("left", "right"))
            axis = table.columns if sideways else table.rows
            places = []
            for part in qa.working.split(between):
                place = next(word for word in axis if part.strip().endswith(word))
                named = part.strip().removesuffix(place).strip()
                assert table.definite + named in qa.question
                places.append(axis.index(place))
            assert qa.answer == (table.yes if places[0] < places[1] else table.no)
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("language", ["en", "zh"])
def test_final_answer_of_a_plain_answer_is_the_answer(language):
    table = get_language(language)
    for qa in all_questions(SCENE, language):
        assert table.final_answer(f" {qa.answer} ") == qa.answer


@pytest.mark.parametrize("qa_format", ["direct", "describe"])
def test_the_working_is_trained_as_part_of_the_answer(qa_format):
    data = SceneDataset(WORKED, "train", 60, 1, task="qa", qa_format=qa_format)
    tok = data.tokenizer
    worked = [i for i in range(len(data)) if data.record(i).qa.working]
    assert {data.record(i).qa.qa_type for i in worked} == {"relation", "count"}
    for i in worked:
        example, qa = data[i], data.record(i).qa
        batch = collate([example])
        trained = batch.targets[0][batch.answers[0]]  # the answer's targets, <eos> last
        assert tok.decode(trained[:-1].tolist()) == answer_text(qa, WORKED) != qa.answer
        assert example.answer == qa.answer  # scored by its end
        assert tok.unk_id not in example.ids


@pytest.mark.parametrize("split", ["iid", "heldout"])
def test_eval_scores_a_worked_answer_by_its_end(tmp_path, monkeypatch, split):
    trainer = train(preset("tiny", out_dir=str(tmp_path), steps=3, worked_answers=True))
    scenes = trainer.config.data
    assert scenes.worked_answers
    seed = EvalConfig().seed
    data = SceneDataset(scenes, split, 32, seed, task="qa", tokenizer=trainer.tokenizer)
    worked = iter([answer_text(data.record(i).qa, scenes) for i in range(32)])  # in order
    assert any(data.record(i).qa.working for i in range(32))

    def answer_with_the_working(model, tokenizer, images, questions, describe=False):
        return [next(worked) for _ in questions]

    monkeypatch.setattr(evaluate_module, "answer_questions", answer_with_the_working)
    results = evaluate_module._qa_metrics(trainer.model, trainer.tokenizer, data, {}, EvalConfig())
    assert results["vqa_accuracy"] == 1.0
    assert results["vqa_relation_accuracy"] == 1.0


def test_worked_answers_must_be_a_bool():
    with pytest.raises(ValueError, match="SceneConfig.worked_answers: expected a bool, got 1"):
        SceneConfig(worked_answers=1)
    with pytest.raises(ValueError, match="SceneConfig.worked_answers: expected a bool"):
        preset("tiny", worked_answers="yes")
