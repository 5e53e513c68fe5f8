"""Issue 18, problems 1-5: a run's work is never lost or silently corrupted.

1 a run started over another, 2 two writers at once, 3 a diverging run, 4 corrupt
checkpoints, 5 the log after a resume, staging leftovers and pruning. Each test failed
before the fix (the overwrite went through, no lock, NaN checkpoints, no checksum,
repeated log lines, leftovers kept, no pruning).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

import minivlm.train.loop as loop
from minivlm.checkpoint import CheckpointError, load_model, write_manifest
from minivlm.cli import main
from minivlm.train import NonFiniteError, RunFolderError, latest_checkpoint, preset, train
from minivlm.train.run_folder import RunLock

FILES = [
    "model.safetensors",
    "optimizer.safetensors",
    "trainer.json",
    "tokenizer.json",
    "config.json",
    "manifest.json",
]


def tiny(out, **changes):
    return preset("tiny", out_dir=str(out), **{"steps": 4, "checkpoint_every": 2, **changes})


def log_records(out) -> list[dict]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("samples_per_s")
    return records


def snapshot(out) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "run.lock"
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny run of 4 steps with checkpoints at 2 and 4, and its log."""
    out = tmp_path_factory.mktemp("finished")
    train(tiny(out))
    return out


# 1. a new run over an existing one


def test_a_new_run_in_a_folder_holding_a_run_is_refused_and_the_run_is_kept(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    with pytest.raises(RunFolderError, match="already holds a run.*--overwrite.*--resume"):
        train(tiny(out, lr=5e-3))
    assert snapshot(out) == before, "the refused run changed the folder"


def test_overwrite_replaces_the_previous_run_entirely(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    train(tiny(out, steps=3, lr=5e-3), overwrite=True)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "latest",
        "step_000002",
        "step_000003",
    ]
    assert [r["step"] for r in log_records(out)] == [1, 2, 3]


def test_the_cli_refuses_a_second_run_in_one_line_with_status_2(finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    assert main(["train", "--preset", "tiny", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minivlm train: error: --out-dir") and "\n" not in err, err
    assert snapshot(out) == before


# 2. two writers at once


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out), pytest.raises(RunFolderError, match="in use by another run"):
        train(tiny(out))
    assert not (out / "log.jsonl").exists() and not (out / "checkpoints").exists()


def test_a_lock_held_by_another_process_refuses_until_it_is_killed_then_is_stale(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from minivlm.train.run_folder import RunLock\n"
            f"with RunLock({str(out)!r}):\n print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {holder.pid}"):
            train(tiny(out, steps=3))
    finally:
        holder.kill()  # SIGKILL: the lock file keeps its pid, the kernel drops the lock
        holder.wait()
    train(tiny(out, steps=3))
    assert f"stale lock of pid {holder.pid}" in capsys.readouterr().err
    assert [r["step"] for r in log_records(out)] == [1, 2, 3]


# 3. a diverging run


def poison_loss_at(monkeypatch, trainer_steps: set[int]):
    """Make the loss (and so every gradient) NaN at the given 1-based steps."""
    real = loop.sequence_loss
    calls = {}

    def sequence_loss(model, *args, **kwargs):
        loss = real(model, *args, **kwargs)
        return loss * float("nan") if calls["trainer"].step + 1 in trainer_steps else loss

    real_step = loop.Trainer.train_step

    def train_step(self, *args, **kwargs):
        calls["trainer"] = self
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(loop, "sequence_loss", sequence_loss)
    monkeypatch.setattr(loop.Trainer, "train_step", train_step)


def test_a_non_finite_loss_stops_training_naming_the_step_and_keeps_the_good_checkpoint(
    tmp_path, monkeypatch
):
    poison_loss_at(monkeypatch, {3})
    with pytest.raises(NonFiniteError, match=r"step 3: the loss is nan.*step_000002 stays"):
        train(tiny(tmp_path))
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_000002"
    assert not (tmp_path / "checkpoints" / "step_000004").exists()
    for name, array in load_file(latest / "model.safetensors").items():
        assert np.isfinite(array).all(), name
    assert [r["step"] for r in log_records(tmp_path)] == [1, 2]


def test_detect_anomaly_names_the_op_that_made_the_nan(tmp_path, monkeypatch):
    poison_loss_at(monkeypatch, {3})
    with pytest.raises(NonFiniteError, match=r"step 3: Mul forward output 0 contains NaN"):
        train(tiny(tmp_path, detect_anomaly=True))


def test_skip_nonfinite_skips_up_to_n_bad_steps_then_stops(tmp_path, monkeypatch):
    poison_loss_at(monkeypatch, {3})
    trainer = train(tiny(tmp_path / "one", skip_nonfinite=1))
    assert trainer.step == 4 and trainer.skipped_steps == [3]
    skipped = [r for r in log_records(tmp_path / "one") if r["step"] == 3]
    assert skipped[0]["loss"] is None and "non-finite" in skipped[0]["skipped"]
    assert all(np.isfinite(p.data).all() for p in trainer.model.parameters())
    state = json.loads((latest_checkpoint(tmp_path / "one") / "trainer.json").read_text())
    assert state["skipped_steps"] == [3]
    poison_loss_at(monkeypatch, {3, 4})
    with pytest.raises(NonFiniteError, match="step 4"):
        train(tiny(tmp_path / "two", skip_nonfinite=1))


def test_lr_1e6_from_the_cli_exits_1_naming_the_step_with_no_nan_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["train", "--preset", "tiny", "--out-dir", str(out), "--lr", "1e6"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1 and err.startswith("minivlm train: error: step "), err
    for folder in (out / "checkpoints").glob("step_*"):
        for name, array in load_file(folder / "model.safetensors").items():
            assert np.isfinite(array).all(), f"{folder.name}: {name}"


def test_a_nan_checkpoint_is_refused_by_caption_and_eval(finished_run, tmp_path, capsys):
    folder = tmp_path / "step_000004"
    shutil.copytree(latest_checkpoint(finished_run), folder)
    weights = load_file(folder / "model.safetensors")
    weights["token_embedding.weight"][0, 0] = np.nan
    from safetensors.numpy import save_file

    save_file(weights, folder / "model.safetensors")
    write_manifest(folder)  # as a version without the checks would have saved it
    image = tmp_path / "scene.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    assert main(["caption", str(image), "--checkpoint", str(folder)]) == 2
    assert "NaN or inf in ['token_embedding.weight']" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(folder), "--captions", "2"]) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_an_empty_caption_and_nan_metrics_are_errors_not_answers(
    finished_run, tmp_path, capsys, monkeypatch
):
    import minivlm.cli.files as files

    image = tmp_path / "scene.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)

    class Empty:
        text, ids = "", []

    monkeypatch.setattr(files, "caption_images", lambda *a, **k: [Empty()])
    assert main(["caption", str(image), "--checkpoint", str(finished_run)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "empty caption" in captured.err
    monkeypatch.setattr(files, "evaluate", lambda *a, **k: {"iid/loss": float("nan")})
    assert main(["eval", "--checkpoint", str(finished_run), "--captions", "2"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "NaN or inf for ['iid/loss']" in captured.err


# 4. integrity


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", FILES)
def test_a_flipped_byte_in_any_checkpoint_file_is_named_and_resume_falls_back(
    finished_run, tmp_path, name, capsys
):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    flip_a_byte(out / "checkpoints" / "step_000004" / name)
    with pytest.raises(CheckpointError) as caught:
        load_model(out / "checkpoints" / "step_000004")  # what caption, ask and eval load
    assert "step_000004" in str(caught.value)
    capsys.readouterr()
    resumed = train(tiny(out), resume=True)
    err = capsys.readouterr().err
    assert "skipped step_000004" in err and "continuing from step_000002" in err, err
    if name != "manifest.json":  # a flipped manifest blames the file whose digest it broke
        assert name in err, err
    assert resumed.step == 4
    assert log_records(out) == log_records(finished_run)
    again = latest_checkpoint(out)
    for file in ("model.safetensors", "optimizer.safetensors"):
        expected = finished_run / "checkpoints" / "step_000004" / file
        assert (again / file).read_bytes() == expected.read_bytes(), file


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_truncated_or_missing_weights_file_is_named(finished_run, tmp_path, damage):
    folder = tmp_path / "step"
    shutil.copytree(latest_checkpoint(finished_run), folder)
    weights = folder / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        weights.unlink()
    with pytest.raises((CheckpointError, FileNotFoundError), match="model.safetensors"):
        load_model(folder)


@pytest.mark.parametrize("pointer", ["../../elsewhere", "/etc", "step_000004/../..", "garbage"])
def test_latest_may_only_name_a_checkpoint_folder_of_the_run(finished_run, tmp_path, pointer):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "checkpoints" / "latest").write_text(pointer)
    with pytest.raises(CheckpointError, match="expected a step_NNNNNN checkpoint folder"):
        latest_checkpoint(out)
    assert train(tiny(out), resume=True).step == 4  # falls back to the folders themselves


def test_resume_with_every_checkpoint_broken_lists_each_and_why(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    for folder in ("step_000002", "step_000004"):
        flip_a_byte(out / "checkpoints" / folder / "optimizer.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint verifies.*step_000004.*step_000002"):
        train(tiny(out), resume=True)


# 5. the log, leftovers, pruning


def test_a_resumed_run_logs_each_step_once_and_drops_a_torn_line(finished_run, tmp_path):
    out = tmp_path / "run"
    train(tiny(out), stop_at=3)  # killed after step 3: the checkpoint is step 2's
    with open(out / "log.jsonl", "a") as log:
        log.write('{"step": 4, "lo')  # torn by the kill
    train(tiny(out), resume=True)
    assert log_records(out) == log_records(finished_run)


def test_leftovers_of_interrupted_writes_are_removed_when_the_folder_is_opened(
    finished_run, tmp_path
):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    root = out / "checkpoints"
    (root / ".step_000006.k2j3h").mkdir()
    (root / ".step_000006.k2j3h" / "model.safetensors").write_bytes(b"half")
    (root / ".latest.abc.tmp").write_bytes(b"step_0")
    (root / ".trash.step_000000").mkdir()
    (out / ".log.jsonl.x1.tmp").write_bytes(b"{")
    train(tiny(out), resume=True)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    assert not (out / ".log.jsonl.x1.tmp").exists()


@pytest.mark.parametrize("keep", [1, 2])
def test_keep_checkpoints_prunes_the_oldest_and_keeps_the_newest(tmp_path, keep):
    train(tiny(tmp_path, steps=8, keep_checkpoints=keep))
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == sorted(["latest", *[f"step_{s:06d}" for s in (8, 6)[:keep]]])
    assert latest_checkpoint(tmp_path).name == "step_000008"
