"""Training: presets and config errors, a falling loss, exact resume, checkpoint layout."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivlm.train.loop as train_module
from minivlm.train import (
    TrainConfig,
    Trainer,
    latest_checkpoint,
    length_groups,
    preset,
    sequence_loss,
    target_weights,
    train,
)
from minivlm.train.augment import AttributeCorruption


def _losses(out_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (out_dir / "log.jsonl").read_text().splitlines()]


def test_resumed_run_repeats_the_uninterrupted_loss_sequence_exactly(tmp_path):
    settings = dict(
        steps=8,
        checkpoint_every=4,
        eval_every=4,
        task="mix",
        qa_start=0.25,
        corrupt_attributes=0.3,
        greyscale_captions=0.5,
        encoder_dropout=0.1,
    )
    train(preset("tiny", out_dir=str(tmp_path / "whole"), **settings))
    train(preset("tiny", out_dir=str(tmp_path / "split"), **settings), stop_at=4)
    resumed = train(preset("tiny", out_dir=str(tmp_path / "split"), **settings), resume=True)
    assert resumed.step == 8
    assert _losses(tmp_path / "split") == _losses(tmp_path / "whole")
    # the same run, its batches rendered ahead by a worker process, resumed from step 4
    train(preset("tiny", out_dir=str(tmp_path / "ahead"), **settings), stop_at=4)
    ahead = preset("tiny", out_dir=str(tmp_path / "ahead"), data_workers=1, **settings)
    train(ahead, resume=True)
    assert _losses(tmp_path / "ahead") == _losses(tmp_path / "whole")


def test_checkpoint_holds_weights_tokenizer_optimizer_and_state(tmp_path):
    train(preset("tiny", out_dir=str(tmp_path), steps=4, checkpoint_every=2))
    folder = latest_checkpoint(tmp_path)
    assert folder.name == "step_000004"
    names = {p.name for p in folder.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "optimizer.safetensors",
        "trainer.json",
    } <= names
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_loss_falls_on_a_tiny_run(tmp_path):
    train(preset("tiny", out_dir=str(tmp_path), steps=30, lr=3e-3))
    losses = _losses(tmp_path)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5


def test_resume_refuses_a_run_made_with_other_settings(tmp_path):
    train(preset("tiny", out_dir=str(tmp_path), steps=4, checkpoint_every=2))
    with pytest.raises(ValueError, match="d_model"):
        train(preset("tiny", out_dir=str(tmp_path), steps=4, d_model=16), resume=True)


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        train(preset("tiny", out_dir=str(tmp_path)), resume=True)


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("task", "poems", "one of 'caption'"),
        ("steps", 0, "at least 1"),
        ("lr", -1.0, "positive"),
        ("device", "tpu", "'cpu' or 'cuda'"),
        ("corrupt_attributes", 1.5, "[0, 1)"),
        ("greyscale_captions", -0.1, "[0, 1]"),
    ],
)
def test_bad_train_config_names_the_field(field, value, expected):
    with pytest.raises(
        ValueError, match=rf"TrainConfig\.{field}: expected .*{re.escape(expected)}"
    ):
        TrainConfig.from_dict({field: value})


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"model": {"image_size": 48}},
            "TrainConfig.model.image_size: expected 64 (data.image_size), got 48",
        ),
        (
            {"model": {"vocab_size": 5}},
            "TrainConfig.model.vocab_size: expected 71 (the size of the 'en' tokenizer's "
            "vocabulary), got 5",
        ),
        ({"data": {"jiter": 0.1}}, "TrainConfig.data: unknown field(s) ['jiter']"),
        ({"model": 5}, "TrainConfig.model: expected a dict of VLMConfig fields, got 5"),
        ({"token_lags": 64}, "token_lags must be an integer in [0, max_len=64), got 64"),
        ({"data": {"max_objects": 0}}, "SceneConfig.max_objects: expected an int in [1, 9], got 0"),
    ],
)
def test_bad_nested_config_names_the_section_and_field(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig.from_dict(values)


# trainer.json's "train_config" as runs saved it before TrainConfig nested the data's and
# the model's configs: one flat dict of every field
FLAT_TRAIN_CONFIG = {
    "image_size": 48,
    "max_objects": 2,
    "language": "zh",
    "attribute_order": ["colour", "shape", "size"],
    "task": "mix",
    "qa_fraction": 0.5,
    "qa_start": 0.25,
    "qa_format": "describe",
    "worked_answers": True,
    "questions_per_image": 2,
    "corrupt_attributes": 0.3,
    "greyscale_captions": 0.5,
    "loss_weighting": "sequence",
    "answer_weight": 2.0,
    "patch_size": 16,
    "d_model": 48,
    "n_heads": 3,
    "n_encoder_layers": 1,
    "n_blocks": 3,
    "encoder_dropout": 0.1,
    "max_len": 80,
    "fusion": "gated",
    "norm": "pre",
    "token_lags": 6,
    "steps": 6,
    "batch_size": 8,
    "lr": 0.002,
    "warmup_steps": 2,
    "min_lr_ratio": 0.1,
    "weight_decay": 0.02,
    "grad_clip": 0.5,
    "seed": 3,
    "device": "cpu",
    "data_workers": 1,
    "out_dir": "/tmp/run",
    "log_every": 1,
    "eval_every": 10,
    "eval_batches": 1,
    "checkpoint_every": 10,
    "progress": False,
    "extra": {"note": "flat"},
}


def test_an_old_flat_config_loads_into_the_nested_one_with_equal_values():
    config = TrainConfig.from_dict(FLAT_TRAIN_CONFIG)
    nested = config.to_dict()
    leaves = {**nested.pop("data"), **nested.pop("model"), **nested}
    for name, value in FLAT_TRAIN_CONFIG.items():
        got = list(leaves[name]) if name == "attribute_order" else leaves[name]
        assert got == value, f"{name}: the flat config says {value!r}, the nested {got!r}"
    assert config.model.image_size == config.data.image_size == 48
    assert config.model.vocab_size == Trainer.create(config).tokenizer.vocab_size


def test_a_nested_config_round_trips_through_json():
    config = preset(
        "demo",
        language="zh",
        d_model=64,
        data={"jitter": 0.1, "held_out_pairs": [["red", "star"]]},
        model={"ffn_mult": 2},
    )
    saved = json.loads(json.dumps(config.to_dict()))
    assert set(saved["data"]) >= {"jitter", "held_out_pairs"} and "vocab_size" not in saved["model"]
    assert TrainConfig.from_dict(saved) == config
    assert (config.data.jitter, config.data.held_out_pairs) == (0.1, (("red", "star"),))
    assert (config.model.ffn_mult, config.model.d_model, config.model.token_lags) == (2, 64, 6)


def test_replace_changes_leaves_and_rederives_what_follows_from_the_data():
    config = preset("tiny").replace(image_size=48, language="zh", n_blocks=2)
    assert config.model.image_size == config.data.image_size == 48
    assert config.model.vocab_size == Trainer.create(config).tokenizer.vocab_size
    assert (config.data.language, config.model.n_blocks) == ("zh", 2)


def test_resume_reads_a_checkpoint_whose_train_config_is_flat(tmp_path):
    """A run saved before the nesting continues exactly where it stopped."""
    settings = dict(steps=4, checkpoint_every=2, eval_every=2, d_model=16, n_heads=2)
    train(preset("tiny", out_dir=str(tmp_path / "whole"), **settings))
    train(preset("tiny", out_dir=str(tmp_path / "old"), **settings), stop_at=2)
    state_file = latest_checkpoint(tmp_path / "old") / "trainer.json"
    state = json.loads(state_file.read_text())
    nested = state["train_config"]
    flat = {**nested.pop("data"), **nested.pop("model"), **nested}
    state["train_config"] = {k: v for k, v in flat.items() if k in FLAT_TRAIN_CONFIG}
    state_file.write_text(json.dumps(state))
    (state_file.parent / "manifest.json").unlink()  # such runs had no manifests either
    train(preset("tiny", out_dir=str(tmp_path / "old"), **settings), resume=True)
    assert _losses(tmp_path / "old") == _losses(tmp_path / "whole")


def test_negative_data_workers_is_named():
    with pytest.raises(ValueError, match="data_workers"):
        preset("tiny", data_workers=-1)


def test_unknown_config_field_is_listed():
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_dict({"stpes": 3})


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="demo"):
        preset("huge")


def test_target_weights_per_token_and_per_sequence_with_heavier_answers():
    targets = np.array([[5, 6, -100, -100], [-100, -100, 7, 8], [-100] * 4])
    answers = np.array([[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=bool)
    token = target_weights(targets, answers, "token", answer_weight=3.0)
    np.testing.assert_allclose(token, np.array([[1, 1, 0, 0], [0, 0, 3, 3], [0] * 4]) / 8)
    sequence = target_weights(targets, answers, "sequence", answer_weight=3.0)
    np.testing.assert_allclose(sequence, [[0.25, 0.25, 0, 0], [0, 0, 0.25, 0.25], [0] * 4])


def test_weighted_loss_per_sequence_is_the_mean_of_each_rows_token_mean():
    trainer = Trainer.create(preset("tiny", task="mix", qa_fraction=0.5))
    batch = trainer.batch(0)
    model = trainer.model.eval()
    args = (model, batch.images, batch.inputs, batch.targets)
    weights = target_weights(batch.targets, batch.answers, "sequence")
    whole = sequence_loss(*args, weights=weights)
    rows = [
        sequence_loss(model, *(x[b : b + 1] for x in args[1:])).item()
        for b in range(len(batch.inputs))
    ]
    np.testing.assert_allclose(whole.item(), np.mean(rows), rtol=1e-5)
    plain = sequence_loss(*args).item()
    uniform = target_weights(batch.targets, batch.answers, "token")
    np.testing.assert_allclose(sequence_loss(*args, weights=uniform).item(), plain, rtol=1e-5)
    assert abs(plain - whole.item()) > 1e-6  # rows of different lengths: not the same


def test_answers_mark_the_answer_words_and_eos_of_question_rows_only():
    trainer = Trainer.create(preset("tiny", task="mix", qa_fraction=0.5))
    batch = trainer.batch(0)
    ignored = batch.targets == -100
    for row in range(len(batch.inputs)):
        marked = np.flatnonzero(batch.answers[row])
        if marked.size == 0:  # a caption
            continue
        assert not ignored[row, marked].any()
        assert ignored[row, : marked[0]].all()  # before the answer: the question
        assert batch.targets[row, marked[-1]] == trainer.tokenizer.eos_id
    assert batch.answers.any() and not batch.answers.all(axis=1).any()


def test_unknown_loss_weighting_is_named():
    with pytest.raises(ValueError, match="loss_weighting"):
        preset("tiny", loss_weighting="word")
    with pytest.raises(ValueError, match="answer_weight"):
        preset("tiny", answer_weight=0.0)
    targets = np.zeros((1, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="weighting.*'word'"):
        target_weights(targets, targets > 0, "word")


def _padded_cost(lengths, groups):
    return sum(len(rows) * lengths[rows].max() for rows in groups)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 90), min_size=1, max_size=70))
def test_length_groups_cover_every_row_once_at_the_least_padded_cost(lengths):
    lengths = np.array(lengths)
    groups = length_groups(lengths)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
    assert len(groups) in (1, 2)
    ordered = np.sort(lengths)
    best_split = min(
        (
            cut * ordered[cut - 1] + (len(ordered) - cut) * ordered[-1]
            for cut in range(1, len(ordered))
        ),
        default=len(ordered) * ordered[-1],
    )
    if len(groups) == 2:
        assert _padded_cost(lengths, groups) == best_split <= 0.9 * len(lengths) * lengths.max()
        assert lengths[groups[0]].max() <= lengths[groups[1]].min()
    else:
        assert best_split > 0.9 * len(lengths) * lengths.max()


def test_a_step_in_length_groups_equals_a_step_on_the_whole_padded_batch(monkeypatch):
    """Captions and described questions (two per image) in one batch: the grouped
    step and a single padded pass give the same loss and the same gradients."""
    config = preset("tiny", task="mix", qa_format="describe", questions_per_image=2, max_len=96)
    grouped, whole = Trainer.create(config), Trainer.create(config)
    batch = grouped.batch(0)
    assert len(length_groups(batch.lengths)) == 2
    corruption = AttributeCorruption(grouped.tokenizer, {}, rate=0.0, width=64)
    loss_grouped = grouped.train_step(batch, corruption)
    monkeypatch.setattr(train_module, "length_groups", lambda lengths: [np.arange(len(lengths))])
    loss_whole = whole.train_step(batch, corruption)
    assert loss_grouped == pytest.approx(loss_whole, rel=1e-5)
    for (name, a), (_, b) in zip(
        grouped.model.named_parameters(), whole.model.named_parameters(), strict=True
    ):
        assert a.grad is not None and np.abs(a.grad).max() > 0, name
        np.testing.assert_allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7, err_msg=name)
