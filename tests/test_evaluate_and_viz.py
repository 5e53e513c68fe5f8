"""Evaluation end to end on a tiny model, and the pictures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from minivlm.cli.demo import draw_pictures, evaluate_on_ranks
from minivlm.evaluate import EvalConfig, evaluate, evaluated_splits, format_table
from minivlm.train import preset, train
from minivlm.viz import attention_grid, line_chart, sample_sheet


def test_evaluate_reports_every_metric_for_both_splits_and_draws(tmp_path):
    trainer = train(preset("tiny", out_dir=str(tmp_path), steps=4, eval_every=2))
    results = evaluate(
        trainer.model,
        trainer.tokenizer,
        trainer.config.data,
        EvalConfig(captions=8, questions=16, batch_size=8),
    )
    for split in ("iid", "heldout"):
        for name in (
            "loss",
            "perplexity",
            "image_information_gain",
            "exact_match",
            "colour_accuracy",
            "held_out_pair_accuracy",
            "pointing_score",
            "pointing_chance",
            "vqa_accuracy",
            "vqa_majority_baseline",
        ):
            assert f"{split}/{name}" in results
        assert 0.0 <= results[f"{split}/pointing_chance"] <= 1.0
    assert results["heldout/held_out_objects"] > 0 and results["iid/held_out_objects"] == 0
    # of these 16 questions per split, heldout's ask "how many circles?" once, iid's never
    counted = [key for key in results if "vqa_shape_count_accuracy/" in key]
    assert len(counted) == 1 and counted[0].startswith("heldout/vqa_shape_count_accuracy/")
    assert counted[0].rsplit("/", 1)[1] in ("0", "1", "2")  # max_objects 2
    table = format_table(results)
    assert table.splitlines()[0].split() == ["metric", "iid", "heldout"]
    paths = draw_pictures(trainer, tmp_path, seed=0, count=2)
    assert {p.name for p in paths} >= {"loss_curves.png", "samples.png", "attention_0.png"}
    for path in paths:
        with Image.open(path) as image:
            assert image.size[0] > 100


def test_attention_grid_has_a_panel_per_token(tmp_path):
    maps = np.full((5, 16), 1 / 16)
    maps[2] = np.eye(16)[3]
    path = attention_grid(
        Image.new("RGB", (32, 32), "white"),
        ["a", "red", "square", "at", "top"],
        maps,
        tmp_path / "grid.png",
        cell=64,
    )
    with Image.open(path) as image:
        assert image.size == (6 * 64, 64 + 18)
        # the "square" panel (index 3) is red where the attention is
        assert image.getpixel((3 * 64 + 3 * 16 + 8, 18 + 8))[0] > 200


def test_line_chart_and_sample_sheet_are_written_atomically(tmp_path):
    line_chart({"train": ([1, 2, 3], [3.0, 2.0, 1.5])}, tmp_path / "c.png", "loss")
    sample_sheet([Image.new("RGB", (8, 8))] * 3, ["a red square"] * 3, tmp_path / "s.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "s.png"]


def test_demo_names_what_it_adds_to_the_tutorials_model():
    from minivlm.cli.demo import additions_to_the_tutorial

    line = additions_to_the_tutorial(preset("demo"))
    assert "lagged token embeddings" in line and "6 tokens" in line and "worked answers" in line
    plain = additions_to_the_tutorial(preset("demo", token_lags=0, worked_answers=False))
    assert plain == "the tutorial's model, plain answers"


def test_demo_in_chinese_prints_chinese_captions(tmp_path, capsys):
    from minivlm.cli.demo import run_demo

    config = preset("tiny", language="zh", steps=3, out_dir=str(tmp_path), max_len=160)
    run_demo(config, EvalConfig(captions=4, questions=4, qa_format=config.qa_format))
    printed = capsys.readouterr().out
    assert any("\u4e00" <= ch <= "\u9fff" for ch in printed), "no Chinese characters printed"
    assert (tmp_path / "metrics.json").is_file()


def test_a_held_out_style_gets_its_own_column_and_each_style_its_accuracies(tmp_path):
    styles = dict(styles=["soft", "outline"], held_out_style="plain")
    trainer = train(preset("tiny", out_dir=str(tmp_path), steps=3, data=styles))
    results = evaluate(
        trainer.model,
        trainer.tokenizer,
        trainer.config.data,
        EvalConfig(captions=16, questions=8, batch_size=8),
    )
    assert {"style/shape_accuracy", "style/vqa_accuracy", "style/exact_match"} <= set(results)
    assert results["style/held_out_objects"] == 0  # training pairs only
    assert results["heldout-style/held_out_objects"] > 0  # held-out pairs, held-out style
    for style in ("soft", "outline"):  # the iid scenes of each training style
        for name in ("colour", "shape", "size"):
            assert 0.0 <= results[f"iid/{name}_accuracy/{style}"] <= 1.0
    assert "iid/shape_accuracy/plain" not in results
    assert "iid/held_out_pair_accuracy/soft" not in results  # no held-out pairs there
    # the whole split's naming is a weighted mean of its styles'; one style: the same figure
    named = [results[f"heldout/held_out_pair_accuracy/{style}"] for style in ("soft", "outline")]
    assert min(named) <= results["heldout/held_out_pair_accuracy"] <= max(named)
    in_plain = results["heldout-style/held_out_pair_accuracy/plain"]
    assert in_plain == results["heldout-style/held_out_pair_accuracy"]
    header = ["metric", "iid", "heldout", "style", "heldout-style"]
    assert format_table(results).splitlines()[0].split() == header


class _RankZeroOfTwo:
    """Rank 0 of two whose partner evaluated `partner_results`."""

    rank, size = 0, 2

    def __init__(self, partner_results: dict):
        self.partner_results = partner_results

    def gather(self, value, what: str) -> list:
        return [value, self.partner_results]


def test_ranks_that_share_the_splits_out_report_what_one_process_does(tmp_path):
    styles = dict(styles=["soft"], held_out_style="plain")
    trainer = train(preset("tiny", out_dir=str(tmp_path), steps=3, data=styles))
    scenes, config = trainer.config.data, EvalConfig(captions=8, questions=8, batch_size=8)
    splits = evaluated_splits(scenes)
    assert splits == ("iid", "heldout", "style", "heldout-style")
    whole = evaluate(trainer.model, trainer.tokenizer, scenes, config)
    # rank 1 of 2 takes the second and fourth split
    partner = evaluate(trainer.model, trainer.tokenizer, scenes, config, splits[1::2])
    assert {key.split("/")[0] for key in partner} == {"heldout", "heldout-style"}
    merged = evaluate_on_ranks(trainer, config, _RankZeroOfTwo(partner))
    assert merged == whole and list(merged) == list(whole)  # same figures, same order
    with pytest.raises(ValueError, match="evaluate splits: expected some of"):
        evaluate(trainer.model, trainer.tokenizer, scenes, config, ("test",))
