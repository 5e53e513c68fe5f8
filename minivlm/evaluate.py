"""`minivlm eval`: how well a model captions and answers, and whether it uses the image.

Per split ("iid": fresh scenes like the training ones; "heldout": scenes with colour-
shape pairs that training never showed; when the scenes hold a style out, "style":
scenes of training pairs drawn in that style, see minivlm.data.styles, and
"heldout-style": scenes with held-out pairs drawn in that style):
  loss, perplexity         teacher-forced caption loss per token
  image information gain   loss with the images shuffled within the batch minus loss
                           with the true images, in nats per token: what the image tells
  captions                 greedy captions: exact match, per-attribute accuracy, and
                           held-out pair naming (both colour and shape right)
  VQA                      accuracy per question type next to the majority answer,
                           and for counts of one shape ("how many stars?") per true
                           answer ("vqa_shape_count_accuracy/2": when it is two);
                           with qa_format "describe" also the accuracy when the true
                           caption replaces the model's own (teacher forced): it
                           separates describing the scene from answering about it
  pointing                 for each colour or shape word of a caption, the share of
                           cross-attention (mean over heads and blocks, at the position
                           that predicts the word) on that object's patches, vs chance
  per style                with several training styles, each attribute's accuracy in
                           the scenes of each style ("shape_accuracy/outline"), and
                           where they hold held-out pairs, their naming
                           ("held_out_pair_accuracy/outline")
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .autograd import Tensor, no_grad
from .data import (
    QA_FORMATS,
    QA_TYPES,
    SceneConfig,
    SceneDataset,
    Tokenizer,
    caption_with_spans,
    collate,
    get_language,
    object_masks,
)
from .generate import answer_questions, caption_images
from .metrics import CaptionScores, QAScores, patch_masks, pointing_score, token_objects_from_spans
from .models import VLM

# the last two only where the scenes hold a style out
SPLITS = ("iid", "heldout", "style", "heldout-style")


@dataclass
class EvalConfig:
    captions: int = 256  # scenes per split for caption metrics
    questions: int = 512  # questions per split
    batch_size: int = 64
    seed: int = 12345  # scenes nobody trained on
    device: str = "cpu"
    qa_format: str = "direct"  # as the model was trained: "describe" captions first

    def __post_init__(self) -> None:
        if self.qa_format not in QA_FORMATS:
            raise ValueError(
                f"EvalConfig.qa_format: expected one of {QA_FORMATS}, got {self.qa_format!r}"
            )


def evaluated_splits(scenes: SceneConfig) -> tuple[str, ...]:
    """The splits `evaluate` reports for these scenes, in order."""
    return SPLITS if scenes.held_out_style else SPLITS[:2]


def evaluate(
    model: VLM,
    tokenizer: Tokenizer,
    scenes: SceneConfig,
    config: EvalConfig | None = None,
    splits: tuple[str, ...] | None = None,
) -> dict:
    """Every metric above, per split, as a flat dict of floats: {"iid/exact_match": ...}.

    splits: some of `evaluated_splits(scenes)` only (default all). A split's metrics do
    not depend on which others are evaluated, so processes may share the splits out."""
    config = config or EvalConfig()
    known = evaluated_splits(scenes)
    if splits is None:
        splits = known
    elif not set(splits) <= set(known):
        raise ValueError(f"evaluate splits: expected some of {known}, got {tuple(splits)}")
    results = {}
    training_answers = _training_answers(scenes, tokenizer, config)
    for split in splits:
        captions = SceneDataset(
            scenes, split, config.captions, config.seed, task="caption", tokenizer=tokenizer
        )
        results.update(
            {
                f"{split}/{k}": v
                for k, v in _caption_metrics(model, tokenizer, scenes, captions, config).items()
            }
        )
        questions = SceneDataset(
            scenes,
            split,
            config.questions,
            config.seed,
            task="qa",
            tokenizer=tokenizer,
            qa_format=config.qa_format,
        )
        results.update(
            {
                f"{split}/{k}": v
                for k, v in _qa_metrics(
                    model, tokenizer, questions, training_answers, config
                ).items()
            }
        )
    return results


def _batches(dataset: SceneDataset, size: int):
    for first in range(0, len(dataset), size):
        yield [dataset[i] for i in range(first, min(first + size, len(dataset)))]


def _caption_metrics(
    model, tokenizer, scenes: SceneConfig, dataset: SceneDataset, config: EvalConfig
) -> dict:
    scores = CaptionScores()
    by_style = defaultdict(CaptionScores)  # style name -> the scores of its scenes
    true_losses, shuffled_losses, counts = [], [], []
    pointing, chance, pointed = [], [], 0
    model.eval()
    for examples in _batches(dataset, config.batch_size):
        batch = collate(examples)
        with no_grad():
            _, loss = model(Tensor(batch.images).to(config.device), batch.inputs, batch.targets)
            true_losses.append(loss.item())
            shuffled = np.roll(batch.images, 1, axis=0)  # each caption gets another scene's image
            _, loss = model(Tensor(shuffled).to(config.device), batch.inputs, batch.targets)
            shuffled_losses.append(loss.item())
        counts.append(int((batch.targets != -100).sum()))
        for example, generated in zip(
            examples, caption_images(model, tokenizer, batch.images), strict=False
        ):
            scores.add(generated.text, example.caption, example.scene, scenes)
            by_style[example.scene.style].add(
                generated.text, example.caption, example.scene, scenes
            )
        share, base, n = _pointing(model, tokenizer, scenes, examples, batch, config)
        pointing.append(share * n)
        chance.append(base * n)
        pointed += n
    weights = np.array(counts) / sum(counts)
    loss = float(np.dot(true_losses, weights))
    return {
        "loss": loss,
        "perplexity": float(np.exp(loss)),
        "image_information_gain": float(np.dot(shuffled_losses, weights)) - loss,
        "exact_match": scores.exact_match,
        **{
            f"{name}_accuracy": scores.accuracy(name)
            for name in ("colour", "shape", "size", "cell")
        },
        "held_out_pair_accuracy": scores.held_out_pair_accuracy,
        "held_out_objects": scores.held_out_objects,
        "pointing_score": sum(pointing) / max(pointed, 1),
        "pointing_chance": sum(chance) / max(pointed, 1),
        **(_per_style(by_style) if len(scenes.styles) > 1 else {}),
    }


def _per_style(by_style: dict[str, CaptionScores]) -> dict[str, float]:
    """{"shape_accuracy/outline": ...}: each attribute's accuracy in each style's scenes,
    and the held-out pairs named in them where there are any."""
    per_style = {}
    for style, scores in sorted(by_style.items()):
        for name in ("colour", "shape", "size"):
            per_style[f"{name}_accuracy/{style}"] = scores.accuracy(name)
        if scores.held_out_objects:
            per_style[f"held_out_pair_accuracy/{style}"] = scores.held_out_pair_accuracy
    return per_style


def _pointing(model, tokenizer, scenes: SceneConfig, examples, batch, config: EvalConfig):
    """Teacher-forced cross-attention on the reference captions' colour and shape words."""
    with no_grad():
        _, attention = model.decode(
            batch.inputs,
            model.encode_images(Tensor(batch.images).to(config.device)),
            return_attention=True,
        )
    maps = np.mean([w.numpy() for w in attention], axis=0).mean(axis=1)  # (B, T, N)
    patch = model.config.patch_size
    shares, bases, total = [], [], 0
    for b, example in enumerate(examples):
        text, spans = caption_with_spans(example.scene, scenes.language, scenes.attribute_order)
        _, offsets = tokenizer.encode_with_offsets(text)
        owners = token_objects_from_spans(offsets, spans)
        # word j of the caption is ids[j + 2], predicted at input position j + 1
        rows = maps[b, 1 : 1 + len(owners)]
        share, base, n = pointing_score(
            rows, owners, patch_masks(object_masks(example.scene, scenes.image_size), patch)
        )
        shares.append(share * n)
        bases.append(base * n)
        total += n
    if total == 0:
        return 0.0, 0.0, 0
    return sum(shares) / total, sum(bases) / total, total


def _training_answers(scenes: SceneConfig, tokenizer, config: EvalConfig) -> dict[str, list[str]]:
    train = SceneDataset(scenes, "train", 2000, config.seed + 1, task="qa", tokenizer=tokenizer)
    answers = defaultdict(list)
    for i in range(len(train)):
        qa = train.record(i).qa
        answers[qa.qa_type].append(qa.answer)
    return answers


def _qa_metrics(
    model, tokenizer, dataset: SceneDataset, training_answers, config: EvalConfig
) -> dict:
    scores = QAScores()
    shape_counts = QAScores()  # "how many stars?" (not "how many objects?") by true answer
    language = get_language(dataset.config.language)  # a worked answer is scored by its end
    for examples in _batches(dataset, config.batch_size):
        images = np.stack([e.image for e in examples])
        predicted = answer_questions(
            model,
            tokenizer,
            images,
            [e.question for e in examples],
            describe=config.qa_format == "describe",
        )
        for example, answer in zip(examples, predicted, strict=False):
            said = language.final_answer(answer)
            scores.add(example.qa_type, said, example.answer)
            if example.qa_type == "count" and example.question != language.questions["count_all"]:
                shape_counts.add(example.answer, said, example.answer)
    metrics = {
        "vqa_accuracy": scores.accuracy(),
        "vqa_majority_baseline": scores.majority_baseline(training_answers),
    }
    if config.qa_format == "describe":
        metrics["vqa_given_true_caption"] = _teacher_forced_answer_accuracy(model, dataset, config)
    for qa_type in QA_TYPES:
        if scores.total[qa_type]:
            metrics[f"vqa_{qa_type}_accuracy"] = scores.accuracy(qa_type)
            metrics[f"vqa_{qa_type}_baseline"] = scores.majority_baseline(training_answers, qa_type)
    for n, answer in enumerate(language.counts):  # keyed by the number, in any language
        if shape_counts.total[answer]:
            metrics[f"vqa_shape_count_accuracy/{n}"] = shape_counts.accuracy(answer)
    return metrics


def _teacher_forced_answer_accuracy(model, dataset: SceneDataset, config: EvalConfig) -> float:
    """Share of questions whose answer words are all the argmax after the true prompt."""
    right = 0
    with no_grad():
        for examples in _batches(dataset, config.batch_size):
            batch = collate(examples)
            logits = model(Tensor(batch.images).to(config.device), batch.inputs)  # (B, T, V)
            predicted = logits.numpy().argmax(axis=-1)  # (B, T)
            words = batch.answers & (batch.targets != dataset.tokenizer.eos_id)  # (B, T)
            wrong = words & (predicted != batch.targets)
            right += int((~wrong.any(axis=1)).sum())
    return right / max(len(dataset), 1)


def format_table(results: dict) -> str:
    """The metrics as a table: one row a metric, one column a split."""
    splits = [s for s in SPLITS if any(key.startswith(f"{s}/") for key in results)]
    names = sorted({key.split("/", 1)[1] for key in results}, key=_metric_order)
    width = max([12, *(len(split) + 2 for split in splits)])
    lines = [f"{'metric':32s}" + "".join(f"{split:>{width}s}" for split in splits)]
    for name in names:
        cells = []
        for split in splits:
            value = results.get(f"{split}/{name}")
            cells.append(
                f"{'':>{width}s}"
                if value is None
                else f"{value:{width}.3f}"
                if isinstance(value, float)
                else f"{value:{width}d}"
            )
        lines.append(f"{name:32s}" + "".join(cells))
    return "\n".join(lines)


_ORDER = [
    "loss",
    "perplexity",
    "image_information_gain",
    "exact_match",
    "colour_accuracy",
    "shape_accuracy",
    "size_accuracy",
    "cell_accuracy",
    "held_out_pair_accuracy",
    "held_out_objects",
    "pointing_score",
    "pointing_chance",
    "vqa_accuracy",
    "vqa_majority_baseline",
    "vqa_given_true_caption",
]


def _metric_order(name: str):
    return (_ORDER.index(name), name) if name in _ORDER else (len(_ORDER), name)
