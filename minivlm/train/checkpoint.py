"""Training checkpoints: everything a run needs to continue exactly where it stopped.

    OUT/checkpoints/step_000400/
        model.safetensors, config.json    the weights and the model's configuration
        tokenizer.json                    the vocabulary
        optimizer.safetensors             moment buffers, one tensor per (param, buffer)
        trainer.json                      step, train config (TrainConfig.to_dict: nested;
                                          runs saved before the nesting hold it flat, and
                                          TrainConfig.from_dict reads both), schedule,
                                          optimizer hyperparameters, the generators' states,
                                          the steps skipped as non-finite
        manifest.json                     SHA-256 and size of each file above, written last
    OUT/checkpoints/latest                the name of the newest complete checkpoint

A checkpoint is written into a hidden staging folder (every file fsynced, the manifest
last, then the folder) that is renamed into place when complete; `latest` is replaced
atomically after it, and only then are checkpoints beyond the newest `keep` removed.
A run killed at any moment leaves the previous checkpoint as the latest, and at worst
hidden leftovers that `clean_leftovers` removes when the run folder is next opened.
Weights or optimizer moments holding NaN or inf are never written.

Resuming tries the checkpoint `latest` names, then the older ones, newest first, and
takes the first that verifies (manifest, JSON, safetensors, finite weights), reporting
each one skipped and why.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.numpy import save as safetensors_save

from .. import random
from ..checkpoint import (
    WEIGHTS_FILE,
    CheckpointError,
    atomic_write_bytes,
    fsync_directory,
    load_arrays,
    load_weights,
    non_finite_arrays,
    read_json,
    save_model,
    verify_manifest,
    write_manifest,
)
from ..data import Tokenizer
from .config import SECTIONS, TrainConfig

OPTIMIZER_FILE = "optimizer.safetensors"
STEP_FOLDER = re.compile(r"step_(\d{6,})")  # step_000400: a checkpoint's folder name
HIDDEN_PREFIXES = (".step_", ".latest.", ".trash.")  # what an interrupted write leaves


class NonFiniteError(FloatingPointError):
    """Training met a NaN or inf (in the loss, the gradients or the weights)."""


def checkpoint_root(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_folders(out_dir: Path) -> list[Path]:
    """The run's checkpoint folders, newest (highest step) first."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_FOLDER.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def latest_checkpoint(out_dir: Path) -> Path:
    """The checkpoint folder that `latest` names, or a clear error when there is none;
    `latest` may only name a step_NNNNNN folder of this run."""
    pointer = checkpoint_root(out_dir) / "latest"
    if not pointer.exists():
        raise FileNotFoundError(f"no checkpoint to resume from: {pointer} does not exist")
    name = pointer.read_bytes().decode("utf-8", "replace").strip()
    folder = checkpoint_root(out_dir) / name
    if not STEP_FOLDER.fullmatch(name) or not folder.is_dir():
        raise CheckpointError(
            pointer, f"names {name[:80]!r}, expected a step_NNNNNN checkpoint folder of this run"
        )
    return folder


def clean_leftovers(out_dir: Path) -> list[str]:
    """Remove what interrupted writes left behind (staging folders, temporary files,
    half-removed checkpoints); returns their names."""
    removed = []
    for folder, prefixes in (
        (checkpoint_root(out_dir), HIDDEN_PREFIXES),
        (Path(out_dir), (".log.jsonl.", ".trash.")),
    ):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.startswith(prefixes):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                removed.append(path.name)
    return removed


def save_training_checkpoint(out_dir: Path, trainer, keep: int | None = None) -> Path:
    """Write the trainer's state as checkpoints/step_NNNNNN, point `latest` at it, then
    keep only the newest `keep` checkpoints (all when None)."""
    buffers, optimizer_meta = _split_optimizer_state(trainer.optimizer.state_dict())
    weights = trainer.model.state_dict()
    bad = non_finite_arrays(weights) + non_finite_arrays(buffers)
    if bad:
        raise NonFiniteError(
            f"step {trainer.step}: NaN or inf in {bad[:5]}; checkpoint not written"
        )
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{trainer.step:06d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    save_model(trainer.model, trainer.model.config, staging, manifest=False)
    vocabulary = json.dumps(trainer.tokenizer.to_dict(), ensure_ascii=False, indent=1)
    atomic_write_bytes(staging / "tokenizer.json", vocabulary.encode())  # fsynced
    atomic_write_bytes(staging / OPTIMIZER_FILE, safetensors_save(buffers))
    state = {
        "step": trainer.step,
        "train_config": trainer.config.to_dict(),
        "schedule": trainer.schedule.state_dict(),
        "optimizer": optimizer_meta,
        "random": random.get_state(),
        "skipped_steps": list(trainer.skipped_steps),
    }
    atomic_write_bytes(staging / "trainer.json", json.dumps(state, indent=1).encode())
    write_manifest(staging)  # last: its presence means every file above is complete
    final = root / name
    if final.exists():
        remove_folder(final)
    staging.replace(final)
    fsync_directory(root)
    atomic_write_bytes(root / "latest", name.encode())
    fsync_directory(root)
    if keep is not None:
        prune_checkpoints(out_dir, keep)
    return final


def prune_checkpoints(out_dir: Path, keep: int) -> list[str]:
    """Remove all but the newest `keep` checkpoints, never the one `latest` names."""
    latest = latest_checkpoint(out_dir)
    old = [p for p in step_folders(out_dir) if p != latest][max(keep - 1, 0) :]
    for folder in old:
        remove_folder(folder)
    return [p.name for p in old]


def remove_folder(folder: Path) -> None:
    """Rename out of sight first, so a kill mid-removal leaves only a hidden leftover."""
    trash = folder.with_name(f".trash.{folder.name}")
    if trash.exists():
        shutil.rmtree(trash)
    folder.replace(trash)
    shutil.rmtree(trash)


def load_training_state(
    out_dir: Path, trainer, report: Callable[[str], None] | None = None
) -> Path:
    """Put the newest checkpoint that verifies into `trainer` (weights, optimizer,
    schedule, step, RNG); each newer one skipped is reported with the reason. Returns
    the folder used."""
    report = report or (lambda text: print(text, file=sys.stderr, flush=True))
    skipped = []
    for folder in _resume_candidates(out_dir, skipped):
        try:
            verified, *loaded = _read_checkpoint(folder)
        except CheckpointError as error:
            skipped.append(f"{folder.name} ({error})")
            continue
        for line in skipped:
            report(f"resume: skipped {line}")
        if not verified:
            report(f"resume: {folder.name} has no manifest (saved by an older version): unchecked")
        if skipped:
            report(f"resume: continuing from {folder.name}")
        _apply(out_dir, trainer, *loaded)
        return folder
    if not skipped:
        raise FileNotFoundError(
            f"no checkpoint to resume from: {checkpoint_root(out_dir)} holds no step_* folder"
        )
    raise CheckpointError(checkpoint_root(out_dir), "no checkpoint verifies: " + "; ".join(skipped))


def _resume_candidates(out_dir: Path, skipped: list[str]) -> list[Path]:
    """The folder `latest` names, then the older ones, newest first; every folder when
    `latest` is missing or broken (noted in `skipped`)."""
    folders = step_folders(out_dir)
    try:
        latest = latest_checkpoint(out_dir)
    except FileNotFoundError:
        if not folders:
            raise
        return folders
    except CheckpointError as error:
        skipped.append(f"latest ({error})")
        return folders
    return [latest] + [p for p in folders if int(p.name[5:]) < int(latest.name[5:])]


def _read_checkpoint(folder: Path) -> tuple:
    """Everything in `folder`, checked: CheckpointError names the file that fails."""
    verified = verify_manifest(folder)
    state_file = folder / "trainer.json"
    state = read_json(state_file)
    missing = [
        k for k in ("step", "train_config", "schedule", "optimizer", "random") if k not in state
    ]
    if missing:
        raise CheckpointError(state_file, f"not a training state: no {missing}")
    try:
        config = TrainConfig.from_dict(state["train_config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(state_file, f"unreadable train_config ({error})") from None
    try:
        tokenizer = Tokenizer.load(folder / "tokenizer.json")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(folder / "tokenizer.json", f"unreadable ({error!r})") from None
    if not (folder / WEIGHTS_FILE).is_file():
        raise CheckpointError(folder / WEIGHTS_FILE, "missing")
    weights = load_weights(folder / WEIGHTS_FILE)
    buffers = load_arrays(folder / OPTIMIZER_FILE)
    if non_finite_arrays(buffers):
        raise CheckpointError(folder / OPTIMIZER_FILE, "NaN or inf in the optimizer's moments")
    return verified, state, config, tokenizer, weights, buffers


def _apply(out_dir, trainer, state, config, tokenizer, weights, buffers) -> None:
    saved_config, current = _settings(config), _settings(trainer.config)
    differing = sorted(k for k in current if current[k] != saved_config.get(k))
    if differing:
        raise ValueError(
            f"--resume: the run in {out_dir} was made with other settings for {differing} "
            f"(saved {[saved_config.get(k) for k in differing]}, "
            f"now {[current[k] for k in differing]})"
        )
    trainer.tokenizer = tokenizer
    trainer.model.load_state_dict(weights)
    trainer.optimizer.load_state_dict(_join_optimizer_state(buffers, state["optimizer"]))
    trainer.schedule.load_state_dict(state["schedule"])
    random.set_state(state["random"])
    trainer.step = int(state["step"])
    trainer.skipped_steps = [int(s) for s in state.get("skipped_steps", [])]


# Settings that may change between a run and its resumption.
_RUN_ONLY_FIELDS = {
    "progress",
    "data_workers",
    "cuda_graph",
    "device",
    "out_dir",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "eval_batches",
    "keep_checkpoints",
    "skip_nonfinite",
    "detect_anomaly",
}


def _settings(config: TrainConfig) -> dict:
    """The fields a resumed run must share with its checkpoint: all but _RUN_ONLY_FIELDS,
    the sections' as "model.d_model"."""
    values = config.to_dict()
    settings = {f"{s}.{k}": v for s in SECTIONS for k, v in values.pop(s).items()}
    settings.update((k, v) for k, v in values.items() if k not in _RUN_ONLY_FIELDS)
    return settings


def _split_optimizer_state(state_dict: dict) -> tuple[dict, dict]:
    """Arrays to one flat {"index.name": array} dict; step counts and groups to JSON."""
    buffers, steps = {}, {}
    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if key == "step":
                steps[str(index)] = int(value)
            else:
                buffers[f"{index}.{key}"] = np.ascontiguousarray(value)
    return buffers, {"steps": steps, "param_groups": state_dict["param_groups"]}


def _join_optimizer_state(buffers: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for flat, array in buffers.items():
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = array
    for index, step in meta["steps"].items():
        state.setdefault(int(index), {})["step"] = np.int64(step)
    return {"state": state, "param_groups": meta["param_groups"]}
