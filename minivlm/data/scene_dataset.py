"""SceneDataset: procedural captioning and question-answering examples, built
deterministically from (split, seed, index)."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from minivlm.data.batching import Example, pixels_to_array
from minivlm.data.captions import caption
from minivlm.data.config import SPLITS, SceneConfig
from minivlm.data.language import lexicon_texts
from minivlm.data.questions import QA, answer_text, sample_balanced_qa, sample_scene_questions
from minivlm.data.render import render_pixels, render_scene
from minivlm.data.scenes import Scene, sample_scene, scene_rng
from minivlm.data.tokenizer import Tokenizer

DATASET_TASKS: tuple[str, ...] = ("caption", "qa", "mix")
QA_FORMATS: tuple[str, ...] = ("direct", "describe")
MAX_QUESTIONS_PER_IMAGE = 8


@dataclass(frozen=True)
class SceneRecord:
    """The text side of an example: its scene and its caption or question-answer."""

    scene: Scene
    task: str  # "caption" or "qa"
    caption: str | None = None
    qa: QA | None = None
    more_qa: tuple[QA, ...] = ()  # asked after `qa` (questions_per_image > 1)


def default_tokenizer(config: SceneConfig) -> Tokenizer:
    """Covers all text the config generates: words for English, characters for Chinese."""
    kind = "word" if config.language == "en" else "char"
    return Tokenizer.build(lexicon_texts(config.language), kind=kind)


class SceneDataset:
    """`size` examples of a split. Example i depends only on (config, split, seed, i).

    task: "caption", "qa", or "mix" (each example is a question with probability
    qa_fraction). qa_format "direct": a question and its answer; "describe": the
    scene's caption first, then the question and answer (the caption is trained,
    the question is not), and with questions_per_image k > 1 the next k - 1 questions
    about the same scene in turn (`sample_scene_questions`). Images are rendered when
    an example is read.
    """

    def __init__(
        self,
        config: SceneConfig,
        split: str = "train",
        size: int = 1000,
        seed: int = 0,
        task: str = "caption",
        qa_fraction: float = 0.5,
        tokenizer: Tokenizer | None = None,
        qa_format: str = "direct",
        questions_per_image: int = 1,
    ) -> None:
        if not isinstance(config, SceneConfig):
            raise TypeError(f"SceneDataset config: expected a SceneConfig, got {type(config)}")
        if split not in SPLITS:
            raise ValueError(f"SceneDataset split: expected one of {SPLITS}, got {split!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"SceneDataset size: expected a non-negative int, got {size!r}")
        if task not in DATASET_TASKS:
            raise ValueError(f"SceneDataset task: expected one of {DATASET_TASKS}, got {task!r}")
        if not 0.0 <= qa_fraction <= 1.0:
            raise ValueError(f"SceneDataset qa_fraction: expected 0..1, got {qa_fraction!r}")
        if qa_format not in QA_FORMATS:
            raise ValueError(
                f"SceneDataset qa_format: expected one of {QA_FORMATS}, got {qa_format!r}"
            )
        if (
            isinstance(questions_per_image, bool)
            or not isinstance(questions_per_image, int)
            or not 1 <= questions_per_image <= MAX_QUESTIONS_PER_IMAGE
        ):
            raise ValueError(
                f"SceneDataset questions_per_image: expected an int in "
                f"[1, {MAX_QUESTIONS_PER_IMAGE}], got {questions_per_image!r}"
            )
        if questions_per_image > 1 and qa_format != "describe":
            raise ValueError(
                f"SceneDataset questions_per_image: {questions_per_image} questions per image "
                f"need qa_format 'describe', got {qa_format!r}"
            )
        scene_rng(split, seed, 0)  # checks the seed
        self.config = config
        self.split = split
        self.size = size
        self.seed = seed
        self.task = task
        self.qa_fraction = qa_fraction
        self.qa_format = qa_format
        self.questions_per_image = questions_per_image
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer(config)

    def __len__(self) -> int:
        return self.size

    def record(self, index: int) -> SceneRecord:
        """The scene and text of example `index`, without rendering the image."""
        index = self._checked_index(index)
        rng = scene_rng(self.split, self.seed, index)
        is_qa = self.task == "qa" or (self.task == "mix" and rng.random() < self.qa_fraction)
        if is_qa:
            scene, qa = sample_balanced_qa(self.config, rng, self.split)
            more = sample_scene_questions(
                scene, self.config, rng, self.questions_per_image - 1, self.split
            )
            return SceneRecord(scene, "qa", qa=qa, more_qa=tuple(more))
        scene = sample_scene(self.config, rng, self.split)
        text = caption(scene, self.config.language, self.config.attribute_order)
        return SceneRecord(scene, "caption", caption=text)

    def image(self, index: int) -> Image.Image:
        return render_scene(self.record(index).scene, self.config.image_size)

    def __getitem__(self, index: int) -> Example:
        record = self.record(index)
        image = pixels_to_array(render_pixels(record.scene, self.config.image_size))
        if record.task == "caption":
            ids, loss_start = self.tokenizer.caption_sequence(record.caption)
            return Example(
                image, tuple(ids), loss_start, "caption", caption=record.caption, scene=record.scene
            )
        qa = record.qa
        untrained, description = (), None
        if self.qa_format == "direct":
            ids, loss_start = self.tokenizer.qa_sequence(qa.question, answer_text(qa, self.config))
        else:
            description = caption(record.scene, self.config.language, self.config.attribute_order)
            asked = [(q.question, answer_text(q, self.config)) for q in (qa, *record.more_qa)]
            ids, loss_start, untrained = self.tokenizer.described_qa_sequence(description, asked)
        return Example(
            image,
            tuple(ids),
            loss_start,
            "qa",
            caption=description,
            question=qa.question,
            answer=qa.answer,
            qa_type=qa.qa_type,
            scene=record.scene,
            untrained=untrained,
        )

    def _checked_index(self, index: int) -> int:
        if not -self.size <= index < self.size:
            raise IndexError(
                f"SceneDataset index: expected -{self.size}..{self.size - 1}, got {index}"
            )
        return index % self.size
