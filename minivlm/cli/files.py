"""Using a trained checkpoint on files: caption, ask, evaluate (the CLI's back end).

Every checkpoint is verified before use (see minivlm.checkpoint); an empty caption or
answer, and metrics that are NaN, raise NoResult instead of being printed as results.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..checkpoint import CheckpointError, atomic_write_bytes, load_model, read_json
from ..data import FolderDataset, SceneConfig, Tokenizer, image_to_array
from ..data.folder import MAX_IMAGE_PIXELS
from ..evaluate import EvalConfig, evaluate, format_table
from ..evaluate_folder import evaluate_folder
from ..generate import SamplingConfig, answer_questions, caption_images
from ..models import VLM
from ..train.checkpoint import latest_checkpoint
from ..train.config import TrainConfig
from ..viz import attention_grid


class NoResult(RuntimeError):
    """The model gave nothing to show: an empty text or NaN metrics."""


@dataclass
class Loaded:
    model: VLM
    tokenizer: Tokenizer
    scenes: SceneConfig
    qa_format: str  # "direct", or "describe": caption the image before answering


def load_checkpoint(path: Path, device: str = "cpu") -> Loaded:
    """A run folder (its latest checkpoint) or a checkpoint folder -> model, tokenizer, scenes."""
    path = Path(path)
    folder = latest_checkpoint(path) if (path / "checkpoints").is_dir() else path
    needed = ["model.safetensors", "config.json", "tokenizer.json", "trainer.json"]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--checkpoint {path}: expected a run folder or a checkpoint folder holding {needed}; "
            f"{folder} lacks {missing}"
        )
    model = load_model(folder, device)  # checks the manifest first
    # nested, or flat as runs saved before TrainConfig nested its sections wrote it
    state_file = folder / "trainer.json"
    try:
        config = TrainConfig.from_dict(read_json(state_file)["train_config"])
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(state_file, f"no usable train_config ({error!r})") from None
    try:
        tokenizer = Tokenizer.load(folder / "tokenizer.json")
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(folder / "tokenizer.json", f"unreadable ({error!r})") from None
    return Loaded(model, tokenizer, config.data, config.qa_format)


def read_image(path: Path, image_size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The image at `path` as the model's input; its size is checked from the header,
    before decoding, against `max_pixels`."""
    try:
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                raise ValueError(
                    f"image {path}: {image.width}x{image.height} pixels, more than the "
                    f"limit of {max_pixels}"
                )
            return image_to_array(image, image_size)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"image {path}: cannot read it as an image ({err})") from err


def caption_file(
    checkpoint: Path,
    image: Path,
    sampling: SamplingConfig,
    seed: int = 0,
    attention_png: Path | None = None,
    device: str = "cpu",
) -> str:
    loaded = load_checkpoint(checkpoint, device)
    pixels = read_image(image, loaded.model.config.image_size)[None]
    (result,) = caption_images(
        loaded.model,
        loaded.tokenizer,
        pixels,
        sampling=sampling,
        seed=seed,
        return_attention=attention_png is not None,
    )
    if attention_png is not None:
        tokens = [loaded.tokenizer.tokens[t] for t in result.ids]
        with Image.open(image) as original:
            attention_grid(
                original.convert("RGB"), tokens, result.attention.mean(axis=(1, 2)), attention_png
            )
    if not result.text.strip():
        raise NoResult(
            f"the model generated an empty caption for {image} (is {checkpoint} trained?)"
        )
    return result.text


def answer_file(
    checkpoint: Path,
    image: Path,
    question: str,
    sampling: SamplingConfig,
    seed: int = 0,
    device: str = "cpu",
) -> str:
    loaded = load_checkpoint(checkpoint, device)
    pixels = read_image(image, loaded.model.config.image_size)[None]
    if not question.strip():
        raise ValueError("question: expected a non-empty question, got an empty string")
    answer = answer_questions(
        loaded.model,
        loaded.tokenizer,
        pixels,
        [question],
        describe=loaded.qa_format == "describe",
        sampling=sampling,
        seed=seed,
    )[0]
    if not answer.strip():
        raise NoResult(f"the model generated an empty answer (is {checkpoint} trained?)")
    return answer


def evaluate_checkpoint(
    checkpoint: Path,
    captions: int,
    questions: int,
    json_path: Path | None,
    device: str = "cpu",
    style: str | None = None,
) -> dict:
    for name, count in (("captions", captions), ("questions", questions)):
        if type(count) is not int or count < 1:
            raise ValueError(f"--{name}: expected an int >= 1, got {count!r}")
    loaded = load_checkpoint(checkpoint, device)
    scenes = loaded.scenes
    if style is not None:
        try:
            scenes = dataclasses.replace(scenes, held_out_style=style)
        except ValueError as error:
            raise ValueError(f"--style {style}: {error}") from None
    results = evaluate(
        loaded.model,
        loaded.tokenizer,
        scenes,
        EvalConfig(captions, questions, device=device, qa_format=loaded.qa_format),
    )
    return _report(results, str(checkpoint), format_table(results), json_path)


def evaluate_checkpoint_on_folder(
    checkpoint: Path, data: Path, json_path: Path | None, device: str = "cpu"
) -> dict:
    """evaluate_folder on every row of the folder `data`, with the checkpoint's vocabulary."""
    loaded = load_checkpoint(checkpoint, device)
    dataset = FolderDataset(data, loaded.model.config.image_size, tokenizer=loaded.tokenizer)
    results = evaluate_folder(loaded.model, loaded.tokenizer, dataset, device=device)
    table = "\n".join(
        f"{name:32s}{value:12.3f}" if isinstance(value, float) else f"{name:32s}{value:12d}"
        for name, value in results.items()
    )
    return _report(results, f"{checkpoint} on {data}", table, json_path)


def _report(results: dict, what: str, table: str, json_path: Path | None) -> dict:
    """Print the metrics' table and write them as JSON; NaN or inf in any is NoResult."""
    broken = [name for name, value in results.items() if not math.isfinite(value)]
    if broken:
        raise NoResult(f"evaluating {what} gave NaN or inf for {broken}")
    print(table)
    if json_path is not None:
        atomic_write_bytes(Path(json_path), json.dumps(results, indent=1).encode())
    return results
