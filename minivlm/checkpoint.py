"""Saving and loading a model: its weights as safetensors, its config as JSON.

A checkpoint is a directory:
    model.safetensors   every parameter under its dotted name, in the model's dtype
    config.json         VLMConfig.to_dict()
Each file is written to a temporary file in the same directory and then moved over
the old one with os.replace, so a crash mid-write never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from . import random
from .models import VLM, VLMConfig
from .nn import Module

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that `path` holds either the old or the new content."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_weights(state: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """A state dict (name -> array) as a safetensors file, written atomically."""
    arrays = {name: np.ascontiguousarray(value) for name, value in state.items()}
    atomic_write_bytes(path, safetensors_save(arrays, metadata={"format": "np"}))


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_weights: no weights file at {path}")
    return safetensors_load(path.read_bytes())


def save_model(model: Module, config: VLMConfig, directory: str | os.PathLike) -> Path:
    """Write model.safetensors and config.json into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model.state_dict(), directory / WEIGHTS_FILE)
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(directory / CONFIG_FILE, text.encode())
    return directory


def load_config(directory: str | os.PathLike) -> VLMConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"load_config: no {CONFIG_FILE} in {directory}")
    return VLMConfig.from_dict(json.loads(path.read_text()))


def load_model(directory: str | os.PathLike, device: str = "cpu") -> VLM:
    """The VLM saved in `directory`, in the dtype it was saved in, in eval mode.

    Weights that do not fit the saved config raise StateDictError listing every
    missing, unexpected and mis-shaped entry. Building the model does not disturb the
    global random generator (a resumed run continues its random stream exactly).
    """
    config = load_config(directory)
    weights = load_weights(Path(directory) / WEIGHTS_FILE)
    state = random.get_state()
    try:
        model = VLM(config)
    finally:
        random.set_state(state)
    dtypes = {array.dtype for array in weights.values() if array.dtype.kind == "f"}
    if len(dtypes) == 1:
        model.to(dtype=dtypes.pop())
    model.load_state_dict(weights)
    return model.to(device).eval()
