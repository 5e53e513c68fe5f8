from collections import Counter, defaultdict

import numpy as np
import pytest

from minivlm.data import (
    QA_TYPES,
    Scene,
    SceneConfig,
    SceneObject,
    all_questions,
    answer_space,
    available_qa_types,
    questions_of_type,
    sample_balanced_qa,
    sample_scene,
    sample_scene_questions,
)

CONFIG = SceneConfig()
SCENE = Scene(
    (
        SceneObject("red", "circle", "small", 0, 0),
        SceneObject("blue", "square", "large", 1, 1),
        SceneObject("green", "square", "small", 2, 2),
    )
)


def by_question(qa_type, language="en"):
    return {qa.question: qa.answer for qa in questions_of_type(SCENE, qa_type, language)}


def test_attribute_questions_describe_objects_unambiguously():
    assert by_question("colour") == {
        "what colour is the circle?": "red",
        "what colour is the large square?": "blue",
        "what colour is the small square?": "green",
    }
    assert by_question("shape")["what shape is the blue object?"] == "square"
    assert by_question("size")["what size is the green square?"] == "small"
    assert by_question("position")["where is the blue square?"] == "centre"


def test_an_object_with_no_unique_description_is_named_by_its_cell():
    twins = Scene(
        (SceneObject("red", "star", "small", 0, 0), SceneObject("red", "star", "small", 0, 2))
    )
    assert by_question_in(twins, "colour") == {
        "what colour is the object at the top left?": "red",
        "what colour is the object at the top right?": "red",
    }
    assert by_question_in(twins, "position") == {}


def by_question_in(scene, qa_type):
    return {qa.question: qa.answer for qa in questions_of_type(scene, qa_type)}


def test_existence_count_and_relation_answers_follow_the_scene():
    exists = by_question("exists")
    assert exists["is there a red circle?"] == "yes"
    assert exists["is there a red square?"] == "no"
    assert exists["is there an orange star?"] == "no"
    count = by_question("count")
    assert count["how many objects are there?"] == "three"
    assert count["how many squares are there?"] == "two"
    assert count["how many crosses are there?"] == "zero"
    relation = by_question("relation")
    assert relation["is the red circle left of the blue square?"] == "yes"
    assert relation["is the red circle above the blue square?"] == "yes"
    assert relation["is the green square left of the blue square?"] == "no"
    assert relation["is the green square below the red circle?"] == "yes"


def test_chinese_questions():
    assert by_question("colour", "zh")["圆形是什么颜色？"] == "红色"
    assert by_question("exists", "zh")["有红色圆形吗？"] == "是"
    assert by_question("relation", "zh")["红色圆形在蓝色正方形的左边吗？"] == "是"
    assert by_question("count", "zh")["有几个正方形？"] == "两个"


def test_excluded_pairs_are_never_named():
    questions = all_questions(SCENE, excluded_pairs=[("red", "triangle")])
    assert not any("red triangle" in qa.question for qa in questions)
    assert any("red circle" in qa.question for qa in questions)


def test_every_answer_lies_in_its_types_answer_space():
    for qa in all_questions(SCENE):
        assert qa.answer in answer_space(qa.qa_type, CONFIG), qa


@pytest.mark.parametrize("language", ["en", "zh"])
def test_answers_are_balanced_within_each_type(language):
    config = SceneConfig(language=language)
    rng = np.random.default_rng(0)
    answers = defaultdict(Counter)
    for _ in range(3000):
        _, qa = sample_balanced_qa(config, rng, "train")
        answers[qa.qa_type][qa.answer] += 1
    assert set(answers) == set(QA_TYPES)
    for qa_type, counts in answers.items():
        assert set(counts) == set(answer_space(qa_type, config)), qa_type
        total = sum(counts.values())
        shares = {answer: n / total for answer, n in counts.items()}
        uniform = 1 / len(counts)
        worst = max(abs(share - uniform) for share in shares.values())
        assert worst < 0.5 * uniform, f"{qa_type} answers are unbalanced: {shares}"


@pytest.mark.parametrize("qa_type", ["exists", "relation", "size"])
def test_yes_no_and_size_answers_are_split_near_evenly(qa_type):
    rng = np.random.default_rng(1)
    counts = Counter(
        sample_balanced_qa(CONFIG, rng, "train", qa_type)[1].answer for _ in range(1000)
    )
    assert 0.45 <= max(counts.values()) / 1000 <= 0.55, counts


def test_training_questions_never_name_a_held_out_pair():
    rng = np.random.default_rng(2)
    named = [f"{colour} {shape}" for colour, shape in CONFIG.held_out_pairs]
    for _ in range(500):
        _, qa = sample_balanced_qa(CONFIG, rng, "train", "exists")
        assert not any(pair in qa.question for pair in named), qa.question


def test_balanced_sampling_is_deterministic_for_a_seed():
    def draw():
        rng = np.random.default_rng(5)
        return [sample_balanced_qa(CONFIG, rng, "iid") for _ in range(5)]

    assert draw() == draw()


def follow_up_counts(config, scenes=400):
    """(share of follow-up questions that are counts, Counter of the counts' (form, answer))."""
    rng = np.random.default_rng(3)
    types, counts = Counter(), Counter()
    for _ in range(scenes):
        scene = sample_scene(config, rng, "train")
        for qa in sample_scene_questions(scene, config, rng, 3):
            types[qa.qa_type] += 1
            if qa.qa_type == "count":
                counts[("shape" if qa.working else "all", qa.answer)] += 1
    return types["count"] / types.total(), counts


def test_follow_up_counts_are_weighted_and_ask_about_shapes():
    share, balanced = follow_up_counts(CONFIG)
    all_objects = sum(n for (form, _), n in balanced.items() if form == "all")
    assert 0.1 < share < 0.2 and all_objects > 0.2 * balanced.total()  # 1 in 7; per scene
    share, focused = follow_up_counts(SceneConfig(count_weight=3.0, shape_count_share=1.0))
    assert 0.3 < share < 0.45  # 3 in 9
    assert {form for form, _ in focused} == {"shape"}
    # two of one shape: three times the counts, none given to "how many objects?"
    assert focused[("shape", "two")] > 3 * balanced[("shape", "two")]


def test_follow_up_count_knobs_are_checked():
    with pytest.raises(ValueError, match=r"SceneConfig.count_weight: expected a number"):
        SceneConfig(count_weight=-1.0)
    with pytest.raises(ValueError, match=r"SceneConfig.shape_count_share: expected a number"):
        SceneConfig(shape_count_share=1.5)


def test_relations_need_two_objects():
    one = SceneConfig(max_objects=1)
    assert "relation" not in available_qa_types(one)
    assert answer_space("count", one) == ("zero", "one")
    with pytest.raises(ValueError, match="qa_type"):
        sample_balanced_qa(one, np.random.default_rng(0), "train", "relation")


def test_unknown_question_type_is_refused():
    with pytest.raises(ValueError, match="qa_type"):
        questions_of_type(SCENE, "texture")
