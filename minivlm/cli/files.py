"""Using a trained checkpoint on files: caption, ask, evaluate (the CLI's back end)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..checkpoint import atomic_write_bytes, load_model
from ..data import SceneConfig, Tokenizer, image_to_array
from ..evaluate import EvalConfig, evaluate, format_table
from ..generate import SamplingConfig, answer_questions, caption_images
from ..models import VLM
from ..train.checkpoint import latest_checkpoint
from ..train.config import TrainConfig
from ..viz import attention_grid


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
    # nested, or flat as runs saved before TrainConfig nested its sections wrote it
    config = TrainConfig.from_dict(
        json.loads((folder / "trainer.json").read_text())["train_config"]
    )
    return Loaded(
        load_model(folder, device),
        Tokenizer.load(folder / "tokenizer.json"),
        config.data,
        config.qa_format,
    )


def read_image(path: Path, image_size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return image_to_array(image, image_size)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
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
    return answer_questions(
        loaded.model,
        loaded.tokenizer,
        pixels,
        [question],
        describe=loaded.qa_format == "describe",
        sampling=sampling,
        seed=seed,
    )[0]


def evaluate_checkpoint(
    checkpoint: Path, captions: int, questions: int, json_path: Path | None, device: str = "cpu"
) -> dict:
    loaded = load_checkpoint(checkpoint, device)
    results = evaluate(
        loaded.model,
        loaded.tokenizer,
        loaded.scenes,
        EvalConfig(captions, questions, device=device, qa_format=loaded.qa_format),
    )
    print(format_table(results))
    if json_path is not None:
        atomic_write_bytes(Path(json_path), json.dumps(results, indent=1).encode())
    return results
