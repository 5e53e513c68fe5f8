"""TrainConfig: every knob of a training run, as one dataclass; presets; file + flags.

A run is described by a preset, then a JSON file, then command-line flags, each
overriding the one before: `minivlm train --preset demo --config my.json --steps 500`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..data.scene_dataset import MAX_QUESTIONS_PER_IMAGE, QA_FORMATS

LOSS_WEIGHTINGS: tuple[str, ...] = ("token", "sequence")  # see minivlm.train.target_weights


@dataclass
class TrainConfig:
    # data: procedural scenes (see minivlm.data.SceneConfig)
    image_size: int = 64
    max_objects: int = 3
    language: str = "en"
    attribute_order: tuple[str, ...] = ("size", "colour", "shape")
    task: str = "caption"  # "caption", "qa" or "mix"
    qa_fraction: float = 0.3  # with task "mix": the share of question-answer examples
    qa_start: float = 0.0  # with task "mix": QA joins after this fraction of the steps
    qa_format: str = "direct"  # "direct" or "describe": caption first, then answer
    worked_answers: bool = False  # "red circle left to ... so yes", "star so two" (SceneConfig)
    questions_per_image: int = 1  # with qa_format "describe": questions asked in turn
    corrupt_attributes: float = (
        0.0  # chance that a colour/shape word in the decoder's input is replaced
    )
    # share of caption examples shown in greyscale, colour words untrained (minivlm.augment)
    greyscale_captions: float = 0.0
    loss_weighting: str = "token"  # "token" or "sequence" (see minivlm.train.target_weights)
    answer_weight: float = 1.0  # an answer token's weight in the loss, a caption token's is 1
    # model (see minivlm.models.VLMConfig)
    patch_size: int = 8
    d_model: int = 128
    n_heads: int = 4
    n_encoder_layers: int = 2
    n_blocks: int = 2
    encoder_dropout: float = 0.0
    max_len: int = 64
    fusion: str = "cross"
    norm: str = "post"
    token_lags: int = 0  # each text position also embeds the tokens this far before it
    # optimisation
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # bookkeeping
    seed: int = 0
    device: str = "cpu"
    data_workers: int = 0  # processes that render batches ahead of the step (0: inline)
    out_dir: str = "runs/train"
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 2
    checkpoint_every: int = 500
    progress: bool = True
    extra: dict = field(default_factory=dict)  # free-form notes kept with the run

    def __post_init__(self) -> None:
        self.attribute_order = tuple(self.attribute_order)
        checks = [
            ("task", self.task in ("caption", "qa", "mix"), "one of 'caption', 'qa', 'mix'"),
            ("qa_fraction", 0.0 <= self.qa_fraction <= 1.0, "a number in [0, 1]"),
            ("qa_format", self.qa_format in QA_FORMATS, f"one of {QA_FORMATS}"),
            ("qa_start", 0.0 <= self.qa_start < 1.0, "a number in [0, 1)"),
            ("worked_answers", isinstance(self.worked_answers, bool), "a bool"),
            (
                "questions_per_image",
                type(self.questions_per_image) is int
                and 1 <= self.questions_per_image <= MAX_QUESTIONS_PER_IMAGE
                and (self.questions_per_image == 1 or self.qa_format == "describe"),
                f"an int in [1, {MAX_QUESTIONS_PER_IMAGE}], above 1 only with qa_format 'describe'",
            ),
            ("loss_weighting", self.loss_weighting in LOSS_WEIGHTINGS, f"one of {LOSS_WEIGHTINGS}"),
            ("answer_weight", self.answer_weight > 0, "positive"),
            ("corrupt_attributes", 0.0 <= self.corrupt_attributes < 1.0, "a number in [0, 1)"),
            ("greyscale_captions", 0.0 <= self.greyscale_captions <= 1.0, "a number in [0, 1]"),
            ("token_lags", 0 <= self.token_lags < self.max_len, "an int in [0, max_len)"),
            ("steps", self.steps >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("lr", self.lr > 0, "positive"),
            ("warmup_steps", 0 <= self.warmup_steps, "non-negative"),
            ("data_workers", self.data_workers >= 0, "an int >= 0"),
            ("device", self.device in ("cpu", "cuda"), "'cpu' or 'cuda'"),
            ("log_every", self.log_every >= 1, "at least 1"),
            ("eval_every", self.eval_every >= 1, "at least 1"),
            ("checkpoint_every", self.checkpoint_every >= 1, "at least 1"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(
                    f"TrainConfig.{name}: expected {expected}, got {getattr(self, name)!r}"
                )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["attribute_order"] = list(self.attribute_order)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})


PRESETS: dict[str, dict] = {
    # The README's `minivlm demo`: about 10 minutes on 2 CPU cores.
    "demo": dict(
        image_size=64,
        patch_size=8,
        d_model=128,
        n_heads=4,
        n_encoder_layers=2,
        n_blocks=2,
        task="mix",
        qa_fraction=0.5,
        qa_start=0.0,
        qa_format="describe",
        questions_per_image=2,
        worked_answers=True,
        max_len=80,
        corrupt_attributes=0.5,
        greyscale_captions=0.5,
        token_lags=6,
        steps=1700,
        batch_size=64,
        lr=2e-3,
        warmup_steps=80,
        out_dir="demo_out",
        eval_every=500,
        checkpoint_every=500,
    ),
    # The reference tutorial's model: 224 px images, 16 px patches, 4 heads, 2 + 2 layers.
    "reference": dict(
        image_size=224,
        patch_size=16,
        d_model=128,
        n_heads=4,
        n_encoder_layers=2,
        n_blocks=2,
        encoder_dropout=0.1,
        max_len=64,
        batch_size=16,
        max_objects=1,
    ),
    # A few seconds: for tests and smoke runs.
    "tiny": dict(
        image_size=32,
        patch_size=8,
        d_model=32,
        n_heads=2,
        n_encoder_layers=1,
        n_blocks=1,
        steps=20,
        batch_size=8,
        warmup_steps=2,
        log_every=1,
        eval_every=10,
        eval_batches=1,
        checkpoint_every=10,
        max_objects=2,
        progress=False,
    ),
}


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return TrainConfig.from_dict({**PRESETS[name], **overrides})


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --config FILE, and one --flag per TrainConfig field."""
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    parser.add_argument("--config", type=Path, help="a JSON file of TrainConfig fields")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None
            )
        elif f.name == "attribute_order":
            parser.add_argument(flag, dest=f.name, nargs=3, default=None)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, dest=f.name, type=kind, default=None)


def config_from_arguments(args: argparse.Namespace) -> TrainConfig:
    data = dict(PRESETS[args.preset])
    if args.config is not None:
        try:
            data.update(json.loads(Path(args.config).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"--config {args.config}: cannot read a JSON object ({err})") from err
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            data[f.name] = value
    return TrainConfig.from_dict(data)
