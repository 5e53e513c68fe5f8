"""qa_format "describe": the caption first, then the question (untrained), then the answer."""

from __future__ import annotations

import numpy as np
import pytest

from minivlm.cli import main
from minivlm.cli.files import answer_file, load_checkpoint
from minivlm.data import (
    IGNORE_INDEX,
    Example,
    SceneConfig,
    SceneDataset,
    all_questions,
    answer_text,
    caption,
    collate,
    render_scene,
    sample_scene,
    sample_scene_questions,
)
from minivlm.evaluate import EvalConfig
from minivlm.generate import (
    ANSWER_ROOM,
    SamplingConfig,
    answer_questions,
    caption_images,
    generate,
    question_prompt,
)
from minivlm.train import preset, train


@pytest.fixture(scope="module")
def described():
    return SceneDataset(SceneConfig(image_size=32), "train", 6, 2, task="qa", qa_format="describe")


def test_a_described_question_trains_the_caption_and_the_answer_only(described):
    tok = described.tokenizer
    for i in range(len(described)):
        example = described[i]
        record = described.record(i)
        assert example.caption == caption(record.scene)
        batch = collate([example])
        targets = batch.targets[0].tolist()
        words = [tok.tokens[t] if t != IGNORE_INDEX else None for t in targets]
        n_caption = len(tok.encode(example.caption))
        n_question = len(tok.encode(example.question))
        n_answer = len(tok.encode(example.answer))
        assert words[0] is None  # <caption> is the prompt
        assert tok.decode(targets[1 : 1 + n_caption]) == example.caption
        assert words[1 + n_caption : 1 + n_caption + n_question + 2] == [None] * (n_question + 2)
        answer = targets[1 + n_caption + n_question + 2 :]
        assert tok.decode(answer[:-1]) == example.answer
        assert answer[-1] == tok.eos_id and len(answer) == n_answer + 1
        assert np.flatnonzero(batch.answers[0]).tolist() == list(
            range(len(targets) - n_answer - 1, len(targets))
        )


def test_direct_and_described_questions_ask_the_same_thing(described):
    direct = SceneDataset(described.config, "train", 6, 2, task="qa")
    for i in range(len(described)):
        assert (described[i].question, described[i].answer) == (
            direct[i].question,
            direct[i].answer,
        )
        assert direct[i].untrained == () and direct[i].caption is None


@pytest.mark.parametrize(
    "untrained",
    [((1, 4),), ((4, 7),), ((4, 3),), ((3, 5), (4, 6)), ((3, 4), (2, 5)), ((3,),)],
)
def test_untrained_spans_must_lie_in_order_inside_the_trained_part(untrained):
    image = np.zeros((3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="Example.untrained: expected spans in order"):
        Example(image, (2, 4, 9, 9, 5, 9, 3), 2, "qa", untrained=untrained)
    Example(image, (2, 4, 9, 9, 5, 9, 3), 2, "qa", untrained=((3, 4), (5, 6)))


def test_question_prompt_puts_the_description_first_and_trims_it_to_fit():
    tok = SceneDataset(SceneConfig(image_size=32), "train", 1).tokenizer
    description = [*tok.encode("a small red circle in the centre"), tok.eos_id]
    prompt = question_prompt(tok, "how many objects are there?", description)
    asked = question_prompt(tok, "how many objects are there?")[1:]
    assert prompt == [tok.bos_id, tok.caption_id, *description[:-1], *asked]
    trimmed = question_prompt(tok, "how many objects are there?", description, max_length=12)
    assert len(trimmed) == 12 and trimmed[-len(asked) :] == asked


def test_answering_with_describe_captions_first_then_answers_after_the_caption(tmp_path):
    trainer = train(
        preset("tiny", out_dir=str(tmp_path), steps=4, task="mix", qa_format="describe")
    )
    data = SceneDataset(trainer.config.data, "iid", 3, 4, task="qa")
    images = np.stack([data[i].image for i in range(3)])
    questions = [data[i].question for i in range(3)]
    model, tok = trainer.model, trainer.tokenizer
    answers = answer_questions(model, tok, images, questions, describe=True)
    captions = caption_images(model, tok, images)
    room = model.config.max_len - ANSWER_ROOM
    for b in range(3):
        prompt = question_prompt(tok, questions[b], captions[b].ids, room)
        (expected,) = generate(model, tok, images[b : b + 1], [prompt])
        assert answers[b] == expected.text


def test_unknown_qa_format_is_named():
    with pytest.raises(ValueError, match="qa_format"):
        preset("tiny", qa_format="chain")
    with pytest.raises(ValueError, match="qa_format"):
        EvalConfig(qa_format="chain")
    with pytest.raises(ValueError, match="qa_format"):
        SceneDataset(SceneConfig(image_size=32), "train", 1, qa_format="chain")


def test_a_describe_checkpoint_answers_by_describing_first(tmp_path, capsys):
    args = ["train", "--preset", "tiny", "--out-dir", str(tmp_path), "--steps", "3"]
    assert main([*args, "--task", "mix", "--qa-format", "describe"]) == 0
    loaded = load_checkpoint(tmp_path)
    assert loaded.qa_format == "describe"
    data = SceneDataset(loaded.scenes, "iid", 1, 0, task="qa")
    image = tmp_path / "scene.png"
    render_scene(data.record(0).scene, 32).save(image)
    question = data[0].question
    answer = answer_file(tmp_path, image, question, SamplingConfig())
    pixels = np.stack([data[0].image])
    assert answer == answer_questions(loaded.model, loaded.tokenizer, pixels, [question], True)[0]
    capsys.readouterr()


class _ShiftModel:
    """Predicts each next input token (the truth, given teacher forcing), shifted by `offset`
    in the rows `wrong_rows` of every batch."""

    def __init__(self, vocab: int, offset: int = 0, wrong_rows=()):
        self.vocab, self.offset, self.wrong_rows = vocab, offset, list(wrong_rows)

    def __call__(self, images, inputs):
        from minivlm.autograd import Tensor

        following = np.roll(inputs, -1, axis=1)  # (B, T): input t + 1 = target t
        rows = [r for r in self.wrong_rows if r < len(inputs)]
        following[rows] = (following[rows] + self.offset) % self.vocab
        return Tensor(np.eye(self.vocab, dtype=np.float32)[following])  # (B, T, V)


def test_accuracy_given_the_true_caption_counts_rows_with_every_answer_word_right(described):
    from minivlm.evaluate import _teacher_forced_answer_accuracy

    vocab, config = described.tokenizer.vocab_size, EvalConfig(batch_size=4)
    assert _teacher_forced_answer_accuracy(_ShiftModel(vocab), described, config) == 1.0
    wrong = _ShiftModel(vocab, offset=1, wrong_rows=[0, 2])  # batches of 4 and 2: 3 rows wrong
    assert _teacher_forced_answer_accuracy(wrong, described, config) == 3 / 6


def test_several_questions_per_image_are_asked_in_turn_after_one_caption():
    config = SceneConfig(image_size=32, worked_answers=True)
    one = SceneDataset(config, "train", 8, 5, task="qa", qa_format="describe")
    three = SceneDataset(
        config, "train", 8, 5, task="qa", qa_format="describe", questions_per_image=3
    )
    tok = three.tokenizer
    for i in range(len(three)):
        record, example = three.record(i), three[i]
        assert record.qa == one.record(i).qa and len(record.more_qa) == 2  # the first is kept
        asked = [record.qa, *record.more_qa]
        for qa in asked:
            assert qa in all_questions(record.scene, excluded_pairs=config.held_out_pairs)
        batch = collate([example])
        targets = batch.targets[0]
        trained = tok.decode([t for t in targets.tolist() if t not in (IGNORE_INDEX, tok.eos_id)])
        answers = " ".join(answer_text(qa, config) for qa in asked)
        assert trained == f"{example.caption} {answers}"
        assert (targets == tok.eos_id).sum() == 3  # each answer ends with <eos>
        assert len(example.untrained) == 3
        for (start, stop), qa in zip(example.untrained, asked, strict=True):
            assert example.ids[start] == tok.question_id and example.ids[stop - 1] == tok.answer_id
            assert tok.decode(example.ids[start + 1 : stop - 1]) == qa.question
            assert (targets[start - 1 : stop - 1] == IGNORE_INDEX).all()
            assert not batch.answers[0, start - 1 : stop - 1].any()
        assert batch.answers[0].sum() == sum(
            len(tok.encode(answer_text(q, config))) + 1 for q in asked
        )


def test_later_questions_are_balanced_within_their_type_and_skip_held_out_pairs():
    config = SceneConfig(image_size=32)
    rng = np.random.default_rng(0)
    answers = {"exists": [], "relation": []}
    for _ in range(600):
        scene = sample_scene(config, rng, "train")
        for qa in sample_scene_questions(scene, config, rng, 2):
            if qa.qa_type in answers:
                answers[qa.qa_type].append(qa.answer)
            if qa.qa_type == "exists":
                named = tuple(qa.question.removeprefix("is there ").rstrip("?").split()[-2:])
                assert named not in config.held_out_pairs
    for qa_type, given in answers.items():
        assert 0.4 < given.count("yes") / len(given) < 0.6, qa_type


def test_several_questions_per_image_need_the_describe_format():
    config = SceneConfig(image_size=32)
    with pytest.raises(ValueError, match="questions_per_image: 2 questions per image need"):
        SceneDataset(config, "train", 1, questions_per_image=2)
    for bad in (0, 9, 1.5, True):
        with pytest.raises(ValueError, match=r"questions_per_image: expected an int in \[1, 8\]"):
            SceneDataset(config, "train", 1, qa_format="describe", questions_per_image=bad)
    with pytest.raises(ValueError, match="TrainConfig.questions_per_image"):
        preset("tiny", questions_per_image=2)
    with pytest.raises(ValueError, match="at least one"):
        SceneDataset(config, "train", 1).tokenizer.described_qa_sequence("a red circle", [])
