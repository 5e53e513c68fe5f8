"""Saving and loading a model: its weights as safetensors, its config as JSON.

A checkpoint is a directory:
    model.safetensors   every parameter under its dotted name, in the model's dtype
    config.json         VLMConfig.to_dict()
    manifest.json       {"files": {name: {"sha256": hex digest, "bytes": size}}}, written last
Each file is written to a temporary file in the same directory, fsynced, and then moved
over the old one with os.replace, so a crash mid-write never leaves a half-written file.
Loading checks every file against the manifest and names the one that fails; a folder
without a manifest (saved before there were manifests) loads unchecked. Weights holding
NaN or inf are refused. Nothing is ever unpickled: tensors are safetensors, the rest JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from . import random
from .backend import get_array_module
from .models import VLM, VLMConfig
from .nn import Module

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt or unusable; `path` names the file."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make the names in `directory` (files renamed in or out) durable (POSIX only)."""
    if os.name != "posix":
        return
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


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


def write_manifest(directory: str | os.PathLike) -> Path:
    """manifest.json: the SHA-256 digest and size of every other file in `directory`,
    written last (atomically, fsynced) and followed by an fsync of the folder."""
    directory = Path(directory)
    files = {}
    for path in sorted(directory.iterdir()):
        if path.name != MANIFEST_FILE and not path.name.startswith(".") and path.is_file():
            data = path.read_bytes()
            files[path.name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest = directory / MANIFEST_FILE
    atomic_write_bytes(manifest, json.dumps({"files": files}, indent=1).encode())
    fsync_directory(directory)
    return manifest


def verify_manifest(directory: str | os.PathLike) -> bool:
    """Check every file that `directory`'s manifest lists; False when there is no manifest
    (a folder saved before manifests), CheckpointError naming the first file that fails."""
    manifest = Path(directory) / MANIFEST_FILE
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_bytes())["files"]
        entries = [
            (str(name), entry["sha256"], int(entry["bytes"])) for name, entry in files.items()
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(manifest, f"not a readable manifest ({error!r})") from None
    for name, digest, size in entries:
        path = Path(directory) / name
        if Path(name).name != name or not path.is_file():
            raise CheckpointError(path, f"listed in {MANIFEST_FILE} but missing")
        data = path.read_bytes()
        if len(data) != size:
            raise CheckpointError(path, f"{len(data)} bytes, {MANIFEST_FILE} says {size}")
        if hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(path, f"SHA-256 digest does not match {MANIFEST_FILE} (corrupt)")
    return True


def read_json(path: str | os.PathLike) -> dict:
    """A checkpoint's JSON object, or CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "missing")
    try:
        value = json.loads(path.read_bytes())
    except ValueError as error:
        raise CheckpointError(path, f"not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise CheckpointError(path, f"expected a JSON object, got {type(value).__name__}")
    return value


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A safetensors file's arrays, or CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "missing")
    try:
        return safetensors_load(path.read_bytes())
    except (SafetensorError, ValueError) as error:
        raise CheckpointError(path, f"not a readable safetensors file ({error})") from None


def non_finite_arrays(arrays: dict[str, np.ndarray]) -> list[str]:
    """The names of the floating-point arrays that hold a NaN or an inf."""
    return [
        name
        for name, array in arrays.items()
        if array.dtype.kind == "f" and not bool(get_array_module(array).isfinite(array).all())
    ]


def save_weights(state: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """A state dict (name -> array) as a safetensors file, written atomically."""
    arrays = {name: np.ascontiguousarray(value) for name, value in state.items()}
    atomic_write_bytes(path, safetensors_save(arrays, metadata={"format": "np"}))


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a weights file; CheckpointError names the file when it is unreadable
    or holds NaN or inf."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_weights: no weights file at {path}")
    weights = load_arrays(path)
    bad = non_finite_arrays(weights)
    if bad:
        raise CheckpointError(path, f"NaN or inf in {bad[:5]} ({len(bad)} tensors)")
    return weights


def save_model(
    model: Module, config: VLMConfig, directory: str | os.PathLike, manifest: bool = True
) -> Path:
    """Write model.safetensors, config.json and, last, manifest.json into `directory`
    (created if needed); manifest=False leaves the manifest to a caller adding files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model.state_dict(), directory / WEIGHTS_FILE)
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(directory / CONFIG_FILE, text.encode())
    if manifest:
        write_manifest(directory)
    return directory


def load_config(directory: str | os.PathLike) -> VLMConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"load_config: no {CONFIG_FILE} in {directory}")
    try:
        return VLMConfig.from_dict(read_json(path))
    except (TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(path, f"not a model configuration ({error})") from None


def load_model(directory: str | os.PathLike, device: str = "cpu") -> VLM:
    """The VLM saved in `directory`, in the dtype it was saved in, in eval mode.

    Every file is checked against the folder's manifest first (CheckpointError names
    the file that fails). Weights that do not fit the saved config raise StateDictError
    listing every missing, unexpected and mis-shaped entry. Building the model does not disturb the
    global random generator (a resumed run continues its random stream exactly).
    """
    verify_manifest(directory)
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
