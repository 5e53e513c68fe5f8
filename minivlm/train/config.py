"""TrainConfig: a training run as one dataclass: the scenes (`data`, a SceneConfig), the
model (`model`, a VLMConfig) and the knobs only training has; presets; file + flags.

With `data_dir` the run trains on a folder of your own images (minivlm.data.FolderDataset)
instead of the scenes: the vocabulary is the folder's (its tokenizer is built from the
rows' texts and saved with every checkpoint), and of `data` only image_size is used.

A run is described by a preset, then a JSON file, then command-line flags, each
overriding the one before, field by field: `minivlm train --preset demo --config my.json
--steps 500`. Flags and `preset(...)` overrides name leaf fields (`--d-model 64`,
`d_model=64`). A JSON file may be nested, as `to_dict` writes it
({"model": {"d_model": 64}, "steps": 500}), or flat, as runs saved before the configs
were nested wrote it ({"d_model": 64, "steps": 500}).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..backend import usable_cores
from ..data import SceneConfig, default_tokenizer
from ..data.scene_dataset import MAX_QUESTIONS_PER_IMAGE, QA_FORMATS
from ..models import VLMConfig

LOSS_WEIGHTINGS: tuple[str, ...] = ("token", "sequence")  # see minivlm.train.target_weights
SECTIONS: dict[str, type] = {"data": SceneConfig, "model": VLMConfig}
# The model's fields that follow from the data: the size of the images it renders and
# the vocabulary of its language's tokenizer. `to_dict` leaves them out and `from_dict`
# fills them in; a value given anyway must agree.
FROM_DATA: tuple[str, ...] = ("image_size", "vocab_size")
# The model a config gets for the fields it does not set (VLMConfig's defaults otherwise).
DEFAULT_MODEL = dict(
    patch_size=8, d_model=128, n_heads=4, n_encoder_layers=2, n_blocks=2, encoder_dropout=0.0
)
# One command-line flag per leaf field, in the order `--help` lists them (the flat
# TrainConfig's before the nesting). The scenes' held_out_pairs, jitter and noise and
# the model's ffn_mult have no flag: set them in a --config file.
FLAGS: tuple[str, ...] = tuple(
    """
    image_size max_objects language attribute_order
    task qa_fraction qa_start qa_format worked_answers count_working count_weight
    shape_count_share questions_per_image
    corrupt_attributes greyscale_captions loss_weighting answer_weight
    patch_size d_model n_heads n_encoder_layers n_blocks encoder_dropout max_len fusion norm
    token_lags
    steps batch_size lr warmup_steps min_lr_ratio weight_decay grad_clip
    seed device data_workers cuda_graph out_dir log_every eval_every eval_batches
    checkpoint_every progress
    keep_checkpoints skip_nonfinite detect_anomaly rank_timeout
    data_dir val_data_dir val_fraction
    """.split()
)
# data_workers "auto": on a GPU, the cores this process may use less one (the training
# process's), shared among the ranks on the machine, at most AUTO_WORKERS_MAX; on the CPU
# none, the cores train. One worker builds 1,000-1,600 demo samples/s on one core of the
# 2-core AMD EPYC machine (README, "Data workers"), so 4 give at least 2.4x what an H200
# trains (1,640 samples/s); more would only hold memory and take longer to start.
AUTO_WORKERS = "auto"
AUTO_WORKERS_MAX = 4
# Flags named otherwise than their field.
FLAG_NAMES: dict[str, str] = {"data_dir": "--data", "val_data_dir": "--val-data"}


@dataclass
class TrainConfig:
    data: SceneConfig  # the procedural scenes and their text
    # the model; its image_size and vocab_size follow from `data` (FROM_DATA): from_dict
    # fills them in, __post_init__ checks them
    model: VLMConfig
    # the task mix, training's alone (see minivlm.data.stream.TrainingStream)
    task: str = "caption"  # "caption", "qa" or "mix"
    qa_fraction: float = 0.3  # with task "mix": the share of question-answer examples
    qa_start: float = 0.0  # with task "mix": QA joins after this fraction of the steps
    qa_format: str = "direct"  # "direct" or "describe": caption first, then answer
    questions_per_image: int = 1  # with qa_format "describe": questions asked in turn
    # augmentation (see minivlm.train.augment)
    # chance that a colour/shape word in the decoder's input is replaced
    corrupt_attributes: float = 0.0
    greyscale_captions: float = 0.0  # share of caption examples in greyscale, colours untrained
    # the loss
    loss_weighting: str = "token"  # "token" or "sequence" (see minivlm.train.target_weights)
    answer_weight: float = 1.0  # an answer token's weight in the loss, a caption token's is 1
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
    # processes that build batches ahead of the step (0: in the training process);
    # "auto": some on a GPU, none on the CPU (see data_workers_for)
    data_workers: int | str = AUTO_WORKERS
    # on a GPU: each step's kernels captured once as a CUDA graph and replayed
    # (minivlm.train.graph_step); one process, no detect_anomaly
    cuda_graph: bool = False
    out_dir: str = "runs/train"
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 2
    checkpoint_every: int = 500
    progress: bool = True
    keep_checkpoints: int = 3  # checkpoints kept, newest first (the one `latest` names always)
    skip_nonfinite: int = 0  # steps with a NaN or inf loss or gradient skipped before stopping
    detect_anomaly: bool = False  # check every op for NaN or inf, to name the one that made it
    # with several processes (mpiexec -n P): seconds a rank waits for the others to join a
    # step's allreduce before it stops the run (see minivlm.train.distributed)
    rank_timeout: float = 300.0
    # your own images instead of the scenes (see minivlm.train.folder_data)
    data_dir: str = ""  # a folder holding captions.jsonl; "" trains on the scenes
    val_data_dir: str = ""  # validation rows from this folder; "" holds out val_fraction
    val_fraction: float = 0.1  # with data_dir and no val_data_dir: rows held out, by seed
    extra: dict = field(default_factory=dict)  # free-form notes kept with the run

    def __post_init__(self) -> None:
        for name, kind in SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, kind):
                raise ValueError(f"TrainConfig.{name}: expected a {kind.__name__}, got {value!r}")
        check_field_types("TrainConfig", TrainConfig, dataclasses.asdict(self))
        for name, (value, source) in _from_data(self.data, self.data_dir, self.model).items():
            if getattr(self.model, name) != value:
                raise ValueError(
                    f"TrainConfig.model.{name}: expected {value!r} ({source}), "
                    f"got {getattr(self.model, name)!r}"
                )
        checks = [
            ("task", self.task in ("caption", "qa", "mix"), "one of 'caption', 'qa', 'mix'"),
            ("qa_fraction", 0.0 <= self.qa_fraction <= 1.0, "a number in [0, 1]"),
            ("qa_format", self.qa_format in QA_FORMATS, f"one of {QA_FORMATS}"),
            ("qa_start", 0.0 <= self.qa_start < 1.0, "a number in [0, 1)"),
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
            ("steps", self.steps >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("lr", self.lr > 0, "positive"),
            ("warmup_steps", 0 <= self.warmup_steps < self.steps, "an int in [0, steps)"),
            ("min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0, "a number in [0, 1]"),
            ("weight_decay", self.weight_decay >= 0, "non-negative"),
            ("grad_clip", self.grad_clip > 0, "positive"),
            ("seed", 0 <= self.seed < 2**32, "an int in [0, 2**32)"),
            ("eval_batches", self.eval_batches >= 1, "at least 1"),
            ("keep_checkpoints", self.keep_checkpoints >= 1, "at least 1"),
            ("skip_nonfinite", self.skip_nonfinite >= 0, "an int >= 0"),
            ("out_dir", self.out_dir.strip() != "", "a folder name"),
            ("data_workers", _is_worker_count(self.data_workers), "an int >= 0 or 'auto'"),
            ("device", self.device in ("cpu", "cuda"), "'cpu' or 'cuda'"),
            ("cuda_graph", not self.cuda_graph or self.device == "cuda", "false unless device "
             "is 'cuda'"),
            ("cuda_graph", not (self.cuda_graph and self.detect_anomaly), "false with "
             "detect_anomaly (it reads every op's output back to the host)"),
            ("log_every", self.log_every >= 1, "at least 1"),
            ("eval_every", self.eval_every >= 1, "at least 1"),
            ("checkpoint_every", self.checkpoint_every >= 1, "at least 1"),
            ("rank_timeout", self.rank_timeout > 0, "a positive number of seconds"),
            ("val_fraction", 0.0 <= self.val_fraction < 1.0, "a number in [0, 1)"),
            ("val_data_dir", not self.val_data_dir or self.data_dir, "'' without data_dir"),
        ]
        if self.data_dir:  # the scenes' own augmentations and question formats
            checks += [
                (name, getattr(self, name) == 0.0, "0 with data_dir (it edits scene captions)")
                for name in ("corrupt_attributes", "greyscale_captions")
            ]
            checks.append(("qa_format", self.qa_format == "direct", "'direct' with data_dir"))
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(
                    f"TrainConfig.{name}: expected {expected}, got {getattr(self, name)!r}"
                )

    def to_dict(self) -> dict:
        """Nested, {"data": {...}, "model": {...}, "task": ..., ...}, without the model's
        FROM_DATA fields (they follow from the data)."""
        values = dataclasses.asdict(self)
        kept = ("vocab_size",) if self.data_dir else ()  # a folder's vocabulary is kept
        values["model"] = {
            k: v for k, v in values["model"].items() if k not in FROM_DATA or k in kept
        }
        return values

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """From a nested dict (as `to_dict` writes it), a flat one (as runs saved before
        the nesting wrote theirs) or a mix; the fields not given keep their defaults."""
        values = _nested(values)
        data = _section("data", values.pop("data"))
        given = values.pop("model")
        derived = _from_data(data, values.get("data_dir", ""), given)
        derived = {name: value for name, (value, _) in derived.items()}
        model = _section("model", {**DEFAULT_MODEL, **derived, **given})
        return cls(data, model, **values)

    def replace(self, **changes) -> TrainConfig:
        """A copy with `changes` (leaf names, or sections as dicts of fields) applied."""
        return TrainConfig.from_dict(_merged(self.to_dict(), changes))


def _is_worker_count(value) -> bool:
    return value == AUTO_WORKERS or (type(value) is int and value >= 0)


def data_workers_for(value: int | str, device: str, local_ranks: int = 1) -> int:
    """The data workers a process starts for TrainConfig.data_workers `value` on `device`,
    one of `local_ranks` training processes on this machine ("auto": see AUTO_WORKERS)."""
    if not _is_worker_count(value):
        raise ValueError(
            f"TrainConfig.data_workers: expected an int >= 0 or {AUTO_WORKERS!r}, got {value!r}"
        )
    if value != AUTO_WORKERS:
        return value
    if device == "cpu":
        return 0
    spare = usable_cores() // max(local_ranks, 1) - 1  # a core for each training process
    return max(0, min(AUTO_WORKERS_MAX, spare))


def parse_data_workers(text: str) -> int | str:
    """--data-workers: "auto" or an int >= 0."""
    if text == AUTO_WORKERS:
        return text
    if text.isascii() and text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"expected {AUTO_WORKERS!r} or an int >= 0, got {text!r}")


# What each simple annotation accepts; other annotations are left to the class itself.
_SIMPLE_TYPES = {
    "int": "an int",
    "float": "a finite number",
    "str": "a string",
    "bool": "true or false",
    "dict": "a JSON object",
}


def _fits(value, type_name: str) -> bool:
    if type_name == "int":
        return type(value) is int
    if type_name == "float":
        return type(value) in (int, float) and math.isfinite(value)
    return type(value) is {"str": str, "bool": bool, "dict": dict}[type_name]


def check_field_types(owner: str, kind: type, values: dict) -> None:
    """ValueError naming the first of `values` (fields of dataclass `kind`) whose type
    does not fit its annotation: ints are not bools or floats, floats are finite."""
    for f in dataclasses.fields(kind):
        if f.name in values and f.type in _SIMPLE_TYPES and not _fits(values[f.name], f.type):
            raise ValueError(
                f"{owner}.{f.name}: expected {_SIMPLE_TYPES[f.type]}, got {values[f.name]!r}"
            )


def _section(name: str, values: dict):
    """SECTIONS[name] from `values`: its own checks first, then the types of its fields."""
    kind = SECTIONS[name]
    try:
        section = kind(**values)
    except TypeError as error:  # a comparison of a wrong type inside the class's checks
        check_field_types(f"TrainConfig.{name}", kind, values)
        raise ValueError(f"TrainConfig.{name}: {error}") from None
    check_field_types(f"TrainConfig.{name}", kind, values)
    return section


def _from_data(data: SceneConfig, data_dir: str = "", model=None) -> dict[str, tuple[int, str]]:
    """The model's FROM_DATA fields for these scenes, each with where it comes from.

    A folder's vocabulary is read from the folder only when the model (a VLMConfig or a
    dict of its fields) does not give it: once a run has started, its checkpoints carry
    the vocabulary, and the folder need not be there to use them."""
    fields = {"image_size": (data.image_size, "data.image_size")}
    if not isinstance(data_dir, str):
        raise ValueError(f"TrainConfig.data_dir: expected a string, got {data_dir!r}")
    if not data_dir:
        fields["vocab_size"] = (
            default_tokenizer(data).vocab_size,
            f"the size of the {data.language!r} tokenizer's vocabulary",
        )
    elif model is None or "vocab_size" not in _as_dict(model):
        from .folder_data import folder_tokenizer

        fields["vocab_size"] = (
            folder_tokenizer(data_dir, data.image_size).vocab_size,
            f"the size of the vocabulary of {data_dir}'s texts",
        )
    return fields


def _as_dict(model) -> dict:
    return model if isinstance(model, dict) else dataclasses.asdict(model)


def _field_names(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(kind))


def _section_of(name: str) -> str | None:
    """The section that holds leaf field `name` (the data's for image_size, which both
    have); None for TrainConfig's own fields."""
    for section, kind in SECTIONS.items():
        if name in _field_names(kind):
            return section
    known = set(_field_names(TrainConfig)) - set(SECTIONS)
    if name not in known:
        leaves = {n for kind in SECTIONS.values() for n in _field_names(kind)}
        raise ValueError(
            f"TrainConfig: unknown field {name!r}; known: {list(SECTIONS)} and the leaf "
            f"fields {sorted(known | leaves)}"
        )
    return None


def _nested(values: dict) -> dict:
    """`values`, nested, flat or a mix, as {"data": {...}, "model": {...}, other fields}.
    A leaf name given flat goes to its section and overrides the section's own entry."""
    if not isinstance(values, dict):
        raise ValueError(f"TrainConfig: expected a dict of fields, got {values!r}")
    nested: dict = {}
    for section, kind in SECTIONS.items():
        given = values.get(section, {})
        if not isinstance(given, dict):
            raise ValueError(
                f"TrainConfig.{section}: expected a dict of {kind.__name__} fields, got {given!r}"
            )
        unknown = sorted(set(given) - set(_field_names(kind)))
        if unknown:
            raise ValueError(
                f"TrainConfig.{section}: unknown field(s) {unknown}; "
                f"known: {sorted(_field_names(kind))}"
            )
        nested[section] = dict(given)
    for name, value in values.items():
        if name in SECTIONS:
            continue
        section = _section_of(name)
        (nested if section is None else nested[section])[name] = value
    return nested


def _merged(*layers: dict) -> dict:
    """The layers (each nested, flat or a mix), each overriding the one before, field by
    field, as one nested dict."""
    merged: dict = {section: {} for section in SECTIONS}
    for layer in layers:
        nested = _nested(layer)
        for section in SECTIONS:
            merged[section].update(nested.pop(section))
        merged.update(nested)
    return merged


PRESETS: dict[str, dict] = {
    # The README's `minivlm demo`: about 10 minutes on 2 CPU cores (2 MPI ranks).
    "demo": dict(
        data=dict(
            image_size=64,
            worked_answers=True,
            # counts asked three times as often as each other type, 6 in 7 of one shape
            count_weight=3.0,
            shape_count_share=0.85,
            # a thinner cross and no anti-aliasing each in a third of the scenes; "plain"
            # (both, thinner still, on a flat background) is evaluated only
            styles=["soft", "thin", "aliased"],
            held_out_style="plain",
        ),
        model=dict(
            patch_size=8,
            d_model=128,
            n_heads=4,
            n_encoder_layers=2,
            n_blocks=2,
            max_len=80,
            token_lags=6,
        ),
        task="mix",
        qa_fraction=0.5,
        qa_start=0.0,
        qa_format="describe",
        questions_per_image=2,
        corrupt_attributes=0.5,
        # 0.5 named fewer held-out pairs over four seeds, 0.85 counted worse (README)
        greyscale_captions=0.7,
        steps=2500,  # 2,200 counted worse and named fewer held-out pairs (README)
        batch_size=64,
        lr=1.5e-3,  # 2e-3 and 3e-3 named fewer held-out pairs, 1e-3 answered worse (README)
        warmup_steps=80,
        out_dir="demo_out",
        eval_every=500,
        checkpoint_every=500,
    ),
    # The reference tutorial's model: 224 px images, 16 px patches, 4 heads, 2 + 2 layers.
    "reference": dict(
        data=dict(image_size=224, max_objects=1),
        model=dict(
            patch_size=16,
            d_model=128,
            n_heads=4,
            n_encoder_layers=2,
            n_blocks=2,
            encoder_dropout=0.1,
            max_len=64,
        ),
        batch_size=16,
    ),
    # `minivlm train --data DIR`: the demo's model on your own images, characters as tokens.
    "folder": dict(
        data=dict(image_size=64),
        model=dict(
            patch_size=8, d_model=128, n_heads=4, n_encoder_layers=2, n_blocks=2, max_len=128
        ),
        steps=600,
        batch_size=32,
        lr=1e-3,
        warmup_steps=40,
        out_dir="runs/folder",
        eval_every=100,
        checkpoint_every=100,
    ),
    # A few seconds: for tests and smoke runs.
    "tiny": dict(
        data=dict(image_size=32, max_objects=2),
        model=dict(patch_size=8, d_model=32, n_heads=2, n_encoder_layers=1, n_blocks=1),
        steps=20,
        batch_size=8,
        warmup_steps=2,
        log_every=1,
        eval_every=10,
        eval_batches=1,
        checkpoint_every=10,
        progress=False,
    ),
}


def preset(name: str, **overrides) -> TrainConfig:
    """A preset with `overrides` (leaf names, or sections as dicts of fields) applied."""
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return TrainConfig.from_dict(_merged(PRESETS[name], overrides))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --config FILE, and one --flag per leaf field in FLAGS."""
    parser.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help="default: folder with --data, demo otherwise",
    )
    parser.add_argument("--config", type=Path, help="a JSON file of TrainConfig fields")
    for name in FLAGS:
        section = _section_of(name)
        owner = TrainConfig if section is None else SECTIONS[section]
        type_name = str(next(f.type for f in dataclasses.fields(owner) if f.name == name))
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        if type_name == "bool":
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None
            )
        elif name == "attribute_order":
            parser.add_argument(flag, dest=name, nargs=3, default=None)
        elif name == "data_workers":
            parser.add_argument(
                flag,
                dest=name,
                type=parse_data_workers,
                default=None,
                help=f"{AUTO_WORKERS!r} (default: {AUTO_WORKERS_MAX} at most on a GPU, 0 on the "
                "CPU) or how many processes build batches ahead of the step",
            )
        else:
            kind = {"int": int, "float": float}.get(type_name, str)
            parser.add_argument(flag, dest=name, type=kind, default=None)


def config_from_arguments(args: argparse.Namespace) -> TrainConfig:
    """The preset, then the --config file, then the flags given."""
    name = args.preset or ("folder" if getattr(args, "data_dir", None) else "demo")
    layers = [PRESETS[name]]
    if args.config is not None:
        try:
            layers.append(json.loads(Path(args.config).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"--config {args.config}: cannot read a JSON object ({err})") from err
        if not isinstance(layers[-1], dict):
            raise ValueError(f"--config {args.config}: expected a JSON object, got {layers[-1]!r}")
    flags = {name: getattr(args, name, None) for name in FLAGS}
    layers.append({name: value for name, value in flags.items() if value is not None})
    return TrainConfig.from_dict(_merged(*layers))
