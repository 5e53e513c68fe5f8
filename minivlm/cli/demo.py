"""`minivlm demo`: build the scenes, train the default model on the CPU, evaluate it,
print the metrics and a few captions and answers, and draw the pictures.

Everything lands in the output folder (demo_out/ by default): the run's log and
checkpoints, metrics.json, loss_curves.png, samples.png and attention_*.png.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write_bytes
from ..data import SceneDataset
from ..evaluate import EvalConfig, evaluate, evaluated_splits, format_table
from ..generate import answer_questions, caption_images
from ..train.config import TrainConfig
from ..train.distributed import process_group
from ..train.loop import Trainer, train
from ..viz import array_to_image, attention_grid, line_chart, sample_sheet


def run_demo(
    config: TrainConfig, eval_config: EvalConfig | None = None, overwrite: bool = False
) -> dict:
    out = Path(config.out_dir)
    started, model = time.perf_counter(), config.model
    group = process_group(config.device, config.rank_timeout)  # mpiexec -n P minivlm demo
    lead = group.rank == 0  # the other ranks train and evaluate alongside rank 0
    ranks = f" on {group.size} ranks" if group.size > 1 else ""
    if lead:
        _say(
            f"minivlm demo: training a {model.d_model}-wide VLM ({model.fusion} fusion) for "
            f"{config.steps} steps of {config.batch_size} procedural scenes on "
            f"{config.device}{ranks}; output in {out}/"
        )
    trainer = train(config, overwrite=overwrite, group=group)
    trained = time.perf_counter()
    style = config.data.held_out_style
    if lead:
        _say(
            f"trained in {trained - started:.0f} s; evaluating on fresh scenes (iid, held-out "
            f"colour-shape pairs{f', the held-out style {style!r}' if style else ''}){ranks}"
        )
    eval_config = eval_config or EvalConfig(device=config.device, qa_format=config.qa_format)
    results = evaluate_on_ranks(trainer, eval_config, group)
    if not lead:
        return {}
    _say(additions_to_the_tutorial(config))
    _say(format_table(results))
    show_examples(trainer, eval_config.seed)
    pictures = draw_pictures(trainer, out, eval_config.seed)
    summary = {
        "metrics": results,
        "train_seconds": trained - started,
        "total_seconds": time.perf_counter() - started,
        "config": config.to_dict(),
        "pictures": [str(p) for p in pictures],
    }
    atomic_write_bytes(out / "metrics.json", json.dumps(summary, indent=1).encode())
    _say(
        f"demo finished in {summary['total_seconds']:.0f} s; "
        f"pictures: {', '.join(p.name for p in pictures)}"
    )
    return summary


def evaluate_on_ranks(trainer: Trainer, eval_config: EvalConfig, group) -> dict | None:
    """`evaluate`'s metrics, the splits shared out among the ranks (rank r takes splits r,
    r + P, ...; every rank holds the same weights), gathered on rank 0 in the splits'
    order: the same dict one process would compute. None on the other ranks."""
    splits = evaluated_splits(trainer.config.data)
    mine = splits[group.rank :: group.size]
    results = evaluate(trainer.model, trainer.tokenizer, trainer.config.data, eval_config, mine)
    parts = group.gather(results, "the evaluation's results")
    if parts is None:
        return None
    merged = {}
    for index, split in enumerate(splits):  # rank index % P holds the split's metrics
        part = parts[index % group.size]
        merged.update({k: v for k, v in part.items() if k.startswith(f"{split}/")})
    return merged


def additions_to_the_tutorial(config: TrainConfig) -> str:
    """One line naming what this run adds to the tutorial's model and answers."""
    added = []
    if config.model.token_lags:
        added.append(
            f"lagged token embeddings (each position also embeds the "
            f"{config.model.token_lags} tokens before it)"
        )
    if config.data.worked_answers:
        added.append("worked answers ('red circle left to blue square right so yes')")
    if not added:
        return "the tutorial's model, plain answers"
    return (
        "added to the tutorial's model: "
        + "; ".join(added)
        + " (--token-lags 0 --no-worked-answers gives the tutorial's own; the README compares)"
    )


def _say(text: str) -> None:
    print(text, flush=True)


def show_examples(trainer: Trainer, seed: int, count: int = 4) -> None:
    scenes = trainer.config.data
    for split in ("iid", "heldout"):
        data = SceneDataset(
            scenes, split, count, seed + 7, task="caption", tokenizer=trainer.tokenizer
        )
        examples = [data[i] for i in range(count)]
        generated = caption_images(
            trainer.model, trainer.tokenizer, np.stack([e.image for e in examples])
        )
        _say(f"\ncaptions ({split}):")
        for example, result in zip(examples, generated, strict=False):
            mark = "ok " if result.text == example.caption else "   "
            _say(f"  {mark}{result.text}\n     true: {example.caption}")
        questions = SceneDataset(
            scenes, split, count, seed + 8, task="qa", tokenizer=trainer.tokenizer
        )
        qa = [questions[i] for i in range(count)]
        answers = answer_questions(
            trainer.model,
            trainer.tokenizer,
            np.stack([e.image for e in qa]),
            [e.question for e in qa],
            describe=trainer.config.qa_format == "describe",
        )
        _say(f"answers ({split}):")
        for example, answer in zip(qa, answers, strict=False):
            _say(f"  {example.question} -> {answer} (true: {example.answer})")


def draw_pictures(trainer: Trainer, out: Path, seed: int, count: int = 8) -> list[Path]:
    scenes = trainer.config.data
    paths = [draw_loss_curves(out / "log.jsonl", out / "loss_curves.png")]
    data = SceneDataset(
        scenes, "heldout", count, seed + 9, task="caption", tokenizer=trainer.tokenizer
    )
    examples = [data[i] for i in range(count)]
    generated = caption_images(
        trainer.model,
        trainer.tokenizer,
        np.stack([e.image for e in examples]),
        return_attention=True,
    )
    images = [array_to_image(e.image) for e in examples]
    paths.append(
        sample_sheet(
            images,
            [g.text for g in generated],
            out / "samples.png",
            references=[e.caption for e in examples],
        )
    )
    for i in range(min(3, count)):
        tokens = [trainer.tokenizer.tokens[t] for t in generated[i].ids]
        maps = generated[i].attention.mean(axis=(1, 2))  # (steps, patches)
        paths.append(attention_grid(images[i], tokens, maps, out / f"attention_{i}.png"))
    return paths


def draw_loss_curves(log_path: Path, path: Path) -> Path:
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    trained = [r for r in records if r["loss"] is not None]  # not the skipped non-finite steps
    series = {"train": ([r["step"] for r in trained], [r["loss"] for r in trained])}
    for split in ("iid", "heldout"):
        points = [(r["step"], r[f"{split}_loss"]) for r in records if f"{split}_loss" in r]
        if points:
            series[f"validation ({split})"] = tuple(zip(*points, strict=False))
    return line_chart(
        series,
        path,
        "loss per token (train: captions, then captions + QA; validation: captions)",
        log_y=True,
    )
