"""Training checkpoints: everything a run needs to continue exactly where it stopped.

    OUT/checkpoints/step_000400/
        model.safetensors, config.json    the weights and the model's configuration
        tokenizer.json                    the vocabulary
        optimizer.safetensors             moment buffers, one tensor per (param, buffer)
        trainer.json                      step, train config (TrainConfig.to_dict: nested;
                                          runs saved before the nesting hold it flat, and
                                          TrainConfig.from_dict reads both), schedule,
                                          optimizer hyperparameters, the generators' states
    OUT/checkpoints/latest                the name of the newest complete checkpoint

A checkpoint is written into a temporary folder that is renamed into place when
complete, and `latest` is replaced atomically after it: a run killed mid-write
leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from .. import random
from ..checkpoint import WEIGHTS_FILE, atomic_write_bytes, load_weights, save_model
from ..data import Tokenizer
from .config import SECTIONS, TrainConfig


def checkpoint_root(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def latest_checkpoint(out_dir: Path) -> Path:
    """The newest complete checkpoint folder of a run, or a clear error when none exists."""
    pointer = checkpoint_root(out_dir) / "latest"
    if not pointer.exists():
        raise FileNotFoundError(f"no checkpoint to resume from: {pointer} does not exist")
    return checkpoint_root(out_dir) / pointer.read_text().strip()


def save_training_checkpoint(out_dir: Path, trainer) -> Path:
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{trainer.step:06d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    save_model(trainer.model, trainer.model.config, staging)
    trainer.tokenizer.save(staging / "tokenizer.json")
    buffers, optimizer_meta = _split_optimizer_state(trainer.optimizer.state_dict())
    save_file(buffers, str(staging / "optimizer.safetensors"))  # inside the staging folder
    state = {
        "step": trainer.step,
        "train_config": trainer.config.to_dict(),
        "schedule": trainer.schedule.state_dict(),
        "optimizer": optimizer_meta,
        "random": random.get_state(),
    }
    (staging / "trainer.json").write_text(json.dumps(state, indent=1))  # inside the staging folder
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    atomic_write_bytes(root / "latest", name.encode())
    return final


def load_training_state(out_dir: Path, trainer) -> None:
    """Put the newest checkpoint's weights, optimizer, schedule, step and RNG into `trainer`."""
    folder = latest_checkpoint(out_dir)
    state = json.loads((folder / "trainer.json").read_text())
    saved_config = _settings(TrainConfig.from_dict(state["train_config"]))
    current = _settings(trainer.config)
    differing = sorted(k for k in current if current[k] != saved_config[k])
    if differing:
        raise ValueError(
            f"--resume: the run in {out_dir} was made with other settings for {differing} "
            f"(saved {[saved_config[k] for k in differing]}, "
            f"now {[current[k] for k in differing]})"
        )
    trainer.tokenizer = Tokenizer.load(folder / "tokenizer.json")
    trainer.model.load_state_dict(load_weights(folder / WEIGHTS_FILE))
    buffers = load_file(str(folder / "optimizer.safetensors"))
    trainer.optimizer.load_state_dict(_join_optimizer_state(buffers, state["optimizer"]))
    trainer.schedule.load_state_dict(state["schedule"])
    random.set_state(state["random"])
    trainer.step = state["step"]


# Settings that may change between a run and its resumption.
_RUN_ONLY_FIELDS = {
    "progress",
    "data_workers",
    "device",
    "out_dir",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "eval_batches",
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
