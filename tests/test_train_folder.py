"""Training on a folder of your own images: `minivlm train --data DIR`, resume, `minivlm
eval --data DIR`, caption and ask on the result, and the lazy image cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minivlm.cli.main import main
from minivlm.data import FolderDataset
from minivlm.train import preset, train
from minivlm.train.folder_data import FolderSplit, FolderStream

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    script = REPO / "examples" / "make_image_folder.py"
    subprocess.run([sys.executable, script, root, "--images", "24"], check=True, timeout=60)
    return root


def _config(folder: Path, out: Path, **changes):
    return preset("tiny", data_dir=str(folder), out_dir=str(out), **changes)


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_a_folder_run_resumes_exactly_and_validates_on_held_out_rows(folder, tmp_path):
    settings = dict(steps=6, checkpoint_every=3, eval_every=3, val_fraction=0.25)
    whole = train(_config(folder, tmp_path / "whole", **settings))
    train(_config(folder, tmp_path / "split", **settings), stop_at=3)
    resumed = train(_config(folder, tmp_path / "split", **settings), resume=True)
    assert resumed.step == 6
    assert resumed.folder is resumed.folder  # built once, with the checkpoint's vocabulary
    assert _losses(tmp_path / "split") == _losses(tmp_path / "whole")
    for name, value in whole.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[name], value, err_msg=name)
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "val_loss" in r] == [3, 6]
    split = whole.folder
    assert len(split.val_rows) == 12  # a quarter of 48 rows (a caption and a question each)
    assert not set(split.val_rows) & set(split.train_rows)


def test_the_cli_trains_evaluates_captions_and_answers_on_a_folder(folder, tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--preset", "tiny", "--steps", "4", "--no-progress", "--out-dir", str(run)]
    assert main(["train", "--data", str(folder), *flags]) == 0
    report = tmp_path / "metrics.json"
    assert (
        main(["eval", "--checkpoint", str(run), "--data", str(folder), "--json", str(report)]) == 0
    )
    metrics = json.loads(report.read_text())
    assert metrics["rows"] == 48 and metrics["caption_rows"] == 24
    assert np.isfinite(metrics["image_information_gain"]) and metrics["perplexity"] >= 1
    assert 0 <= metrics["exact_match"] <= 1
    capsys.readouterr()
    image = str(folder / "0000.png")
    assert main(["caption", image, "--checkpoint", str(run)]) in (0, 1)  # 1: an empty caption
    assert main(["ask", image, "what colour is it?", "--checkpoint", str(run)]) in (0, 1)
    out = capsys.readouterr()
    assert out.out.strip() or "empty" in out.err


def test_a_separate_validation_folder_is_read_with_the_training_vocabulary(folder, tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    (val / "a.png").write_bytes((folder / "0001.png").read_bytes())
    (val / "captions.jsonl").write_text(json.dumps({"image": "a.png", "text": "a red zebra"}))
    trainer = train(_config(folder, tmp_path / "run", steps=3, val_data_dir=str(val)))
    split = trainer.folder
    assert len(split.train_rows) == 48 and list(split.val_rows) == [0]
    assert split.val.tokenizer is trainer.tokenizer  # "z" and "b" are unknown to it
    assert trainer.tokenizer.unk_id in split.val[0].ids


def test_batches_cover_every_training_row_once_an_epoch(folder):
    rows = np.arange(0, 48, 2)  # 24 training rows, 3 batches of 8 an epoch
    stream = FolderStream(FolderDataset(folder, 32), rows, batch_size=8, seed=3)
    epochs = [np.concatenate([stream.rows_of(s) for s in range(e * 3, e * 3 + 3)]) for e in (0, 1)]
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), rows)
    assert list(epochs[0]) != list(epochs[1])  # each epoch in its own order
    straddling = FolderStream(stream.dataset, rows, batch_size=10, seed=3)
    np.testing.assert_array_equal(straddling.rows_of(2)[:4], epochs[0][20:])  # the epoch's end
    np.testing.assert_array_equal(straddling.rows_of(2)[4:], epochs[1][:6])  # the next's start
    np.testing.assert_array_equal(stream.batch(5).inputs, stream.batch(5).inputs)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(corrupt_attributes=0.5), "corrupt_attributes: expected 0 with data_dir"),
        (dict(qa_format="describe"), "qa_format: expected 'direct' with data_dir"),
        (dict(val_fraction=1.0), r"val_fraction: expected a number in \[0, 1\)"),
    ],
)
def test_scene_only_settings_are_refused_with_a_folder(folder, tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        _config(folder, tmp_path, **changes)


def test_a_missing_folder_and_the_demo_with_data_get_one_line_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path)]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["demo", "--data", str(tmp_path)]) == 2
    assert "minivlm train --data DIR" in capsys.readouterr().err


def test_images_are_decoded_on_first_use_and_the_cache_is_bounded(folder, monkeypatch):
    dataset = FolderDataset(folder, 32, cache_images=3)
    decoded = []
    real = FolderDataset.image

    def counting(self, index):
        decoded.append(index)
        return real(self, index)

    monkeypatch.setattr(FolderDataset, "image", counting)
    for index in (0, 2, 4, 0, 6, 8, 0):  # rows 0, 2, ... are the captions of images 0, 1, ...
        dataset[index]
    assert decoded == [0, 2, 4, 6, 8]  # row 0 stays: it was used again before falling out
    assert len(dataset._arrays) == 3
    dataset[2]
    assert decoded[-1] == 2  # evicted, decoded again


def test_the_split_is_a_function_of_the_seed(folder, tmp_path):
    first = FolderSplit.from_config(
        _config(folder, tmp_path, seed=1), FolderDataset(folder, 32).tokenizer
    )
    again = FolderSplit.from_config(_config(folder, tmp_path, seed=1), first.train.tokenizer)
    other = FolderSplit.from_config(_config(folder, tmp_path, seed=2), first.train.tokenizer)
    np.testing.assert_array_equal(first.val_rows, again.val_rows)
    assert list(first.val_rows) != list(other.val_rows)
