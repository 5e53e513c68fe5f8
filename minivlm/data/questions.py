"""Question-answer pairs about a scene, and a sampler balanced over answers.

Types: colour, shape, size, position of a described object; exists (yes/no);
count; relation (is A left of / right of / above / below B, yes/no). An object is
described only in ways that pick it out alone in its scene.

Worked answers (`SceneConfig.worked_answers`): a relation is answered by first naming
each object and its column or row, then the answer: "is the red circle left of the
blue square?" -> "red circle left to blue square right so yes", "is the blue square
right of the red circle?" -> the same. Each column is then one look-up in the caption
or the image, keyed by the words just said, and the yes/no compares two words just
said, not two places found far apart. A count of one shape first says the shape in
the singular, the word the caption uses: "how many stars are there?" -> "star so
two"; the count then looks up the word just said, not the plural.

Balance: `sample_balanced_qa` first picks the answer uniformly from the type's
answer space, then draws scenes until one has a question with that answer, so
within each type the answers are uniform.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from minivlm.data.captions import article_for, attribute_words
from minivlm.data.config import PAIR_HELD_OUT_SPLITS, SceneConfig
from minivlm.data.language import Language, get_language, shape_plural
from minivlm.data.scenes import Scene, SceneObject, sample_scene
from minivlm.data.vocabulary import ATTRIBUTES, COLOURS, SHAPES, SIZES, check_attribute_order

QA_TYPES: tuple[str, ...] = ("colour", "shape", "size", "position", "exists", "count", "relation")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")

# descriptions tried in turn to name an object without the asked attribute
_DESCRIPTIONS: dict[str, tuple[tuple[str, ...], ...]] = {
    "colour": (("shape",), ("size", "shape")),
    "shape": (("colour",), ("size", "colour")),
    "size": (("colour", "shape"),),
    "position": (("colour", "shape"), ("size", "colour", "shape")),
    "relation": (("colour", "shape"), ("size", "colour", "shape")),
}
_PLACE_FALLBACK = ("colour", "shape", "size")  # these may also name an object by its cell


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    qa_type: str
    # what a worked answer says first: a relation's two columns or rows, a count's shape
    working: str = ""
    # a count of one shape's other working: each object of that shape, colour and shape
    # ("red star, blue star"), or the shape alone when there is none
    listed: str = ""


def answer_text(qa: QA, config: SceneConfig) -> str:
    """The answer as trained: with config.worked_answers and a working, the working and
    then the answer ("red circle left to blue square right so yes"), else the answer alone.
    A count of one shape's working is the shape ("star so two"), or with
    config.count_working "objects" each object counted ("red star, blue star so two")."""
    if not (config.worked_answers and qa.working):
        return qa.answer
    table = get_language(config.language)
    working = qa.listed if qa.listed and config.count_working == "objects" else qa.working
    return table.worked_answer.format(working=working, answer=qa.answer)


def available_qa_types(config: SceneConfig) -> tuple[str, ...]:
    """Question types a config's scenes can answer (relations need two objects)."""
    return tuple(t for t in QA_TYPES if t != "relation" or config.max_objects >= 2)


def answer_space(qa_type: str, config: SceneConfig) -> tuple[str, ...]:
    """Every answer a question of this type can have under the config."""
    table = get_language(config.language)
    spaces = {
        "colour": tuple(table.colours[c] for c in COLOURS),
        "shape": tuple(table.shapes[s] for s in SHAPES),
        "size": tuple(table.sizes[s] for s in SIZES),
        "position": tuple(table.places.values()),
        "exists": (table.yes, table.no),
        "count": table.counts[: config.max_objects + 1],
        "relation": (table.yes, table.no),
    }
    _check_type(qa_type)
    return spaces[qa_type]


def questions_of_type(
    scene: Scene,
    qa_type: str,
    language: str = "en",
    attribute_order: Sequence[str] = ATTRIBUTES,
    excluded_pairs: Sequence[tuple[str, str]] = (),
) -> list[QA]:
    """Every question of one type the scene answers unambiguously.

    excluded_pairs: (colour, shape) pairs no question may name (the held-out
    pairs, for training questions).
    """
    _check_type(qa_type)
    table = get_language(language)
    order = check_attribute_order(attribute_order)
    if qa_type in ("colour", "shape", "size", "position"):
        return _attribute_questions(scene, qa_type, table, order)
    if qa_type == "exists":
        phrases = _exists_phrases(language, order)
        return _exists_questions(scene, table, phrases, set(excluded_pairs))
    if qa_type == "count":
        return _count_questions(scene, table)
    return _relation_questions(scene, table, order)


def all_questions(
    scene: Scene,
    language: str = "en",
    attribute_order: Sequence[str] = ATTRIBUTES,
    excluded_pairs: Sequence[tuple[str, str]] = (),
) -> list[QA]:
    return [
        qa
        for qa_type in QA_TYPES
        for qa in questions_of_type(scene, qa_type, language, attribute_order, excluded_pairs)
    ]


def sample_balanced_qa(
    config: SceneConfig,
    rng: np.random.Generator,
    split: str = "train",
    qa_type: str | None = None,
    max_tries: int = 1000,
) -> tuple[Scene, QA]:
    """A scene and one of its questions; the answer is uniform over the type's answer space.

    qa_type None picks a type uniformly from `available_qa_types(config)`.
    """
    types = available_qa_types(config)
    if qa_type is None:
        qa_type = types[int(rng.integers(len(types)))]
    elif qa_type not in types:
        raise ValueError(f"qa_type: expected one of {types} for this config, got {qa_type!r}")
    answers = answer_space(qa_type, config)
    wanted = answers[int(rng.integers(len(answers)))]
    excluded = () if split in PAIR_HELD_OUT_SPLITS else config.held_out_pairs
    for _ in range(max_tries):
        scene = sample_scene(config, rng, split)
        candidates = [
            qa
            for qa in questions_of_type(
                scene, qa_type, config.language, config.attribute_order, excluded
            )
            if qa.answer == wanted
        ]
        if candidates:
            return scene, candidates[int(rng.integers(len(candidates)))]
    raise RuntimeError(
        f"sample_balanced_qa: no {split!r} scene in {max_tries} tries had a {qa_type!r} "
        f"question answered {wanted!r}"
    )


def sample_scene_questions(
    scene: Scene, config: SceneConfig, rng: np.random.Generator, count: int, split: str = "train"
) -> list[QA]:
    """`count` more questions about a scene already drawn: each picks a type among those
    the scene answers (uniformly, a count with weight config.count_weight), then an
    answer uniformly among that type's answers in this scene, then a question with that
    answer.

    Balanced per scene, the counts are lopsided: "how many objects?" is a third of them
    (it always has its own answer) and "two" of one shape is rare (one scene in five has
    a shape twice), yet both count the same in `minivlm eval`, whose answers are uniform.
    So a share config.shape_count_share of the counts ask about one shape: the answer
    is drawn among the scene's counts of one shape only."""
    if count == 0:
        return []
    excluded = () if split in PAIR_HELD_OUT_SPLITS else config.held_out_pairs
    by_type = {}
    for qa_type in available_qa_types(config):
        found = questions_of_type(scene, qa_type, config.language, config.attribute_order, excluded)
        if found:
            by_type[qa_type] = found
    types = sorted(by_type)
    picked = []
    for _ in range(count):
        qa_type = _pick_type(types, config.count_weight, rng)
        candidates = by_type[qa_type]
        share = config.shape_count_share  # 0: no draw, the questions of before the knob
        if qa_type == "count" and share > 0 and rng.random() < share:
            candidates = [qa for qa in candidates if qa.working]  # "how many stars?"
        answers = sorted({qa.answer for qa in candidates})
        wanted = answers[int(rng.integers(len(answers)))]
        matching = [qa for qa in candidates if qa.answer == wanted]
        picked.append(matching[int(rng.integers(len(matching)))])
    return picked


def _pick_type(types: list[str], count_weight: float, rng: np.random.Generator) -> str:
    """One of `types`, uniformly but for "count", which weighs count_weight."""
    if count_weight == 1.0 or "count" not in types:
        return types[int(rng.integers(len(types)))]
    weights = np.array([count_weight if t == "count" else 1.0 for t in types])
    return types[int(rng.choice(len(types), p=weights / weights.sum()))]


def _check_type(qa_type: str) -> None:
    if qa_type not in QA_TYPES:
        raise ValueError(f"qa_type: expected one of {QA_TYPES}, got {qa_type!r}")


def _matches(obj: SceneObject, other: SceneObject, fields: Sequence[str]) -> bool:
    return all(getattr(obj, name) == getattr(other, name) for name in fields)


def _describe(
    obj: SceneObject, fields: Sequence[str], table: Language, order: tuple[str, ...]
) -> str:
    """ "the large red object" / "大的红色物体": the named fields in attribute order."""
    words = [word for _, word in attribute_words(obj, [f for f in order if f in fields], table)]
    if "shape" not in fields:
        words.append(table.object_noun)
    return table.definite + table.word_gap.join(words)


def _unique_description(
    obj: SceneObject, scene: Scene, qa_type: str, table: Language, order: tuple[str, ...]
) -> str | None:
    """The first description of `obj` that fits no other object; None if none does."""
    for fields in _DESCRIPTIONS[qa_type]:
        if sum(_matches(obj, other, fields) for other in scene.objects) == 1:
            return _describe(obj, fields, table, order)
    if qa_type in _PLACE_FALLBACK:
        return table.place_description.format(
            place=table.places[obj.cell], caption_place=table.caption_places[obj.cell]
        )
    return None


def _attribute_questions(
    scene: Scene, qa_type: str, table: Language, order: tuple[str, ...]
) -> list[QA]:
    answers = {
        "colour": lambda obj: table.colours[obj.colour],
        "shape": lambda obj: table.shapes[obj.shape],
        "size": lambda obj: table.sizes[obj.size],
        "position": lambda obj: table.places[obj.cell],
    }
    questions = []
    for obj in scene.objects:
        desc = _unique_description(obj, scene, qa_type, table, order)
        if desc is not None:
            text = table.questions[qa_type].format(desc=desc)
            questions.append(QA(text, answers[qa_type](obj), qa_type))
    return questions


@cache
def _exists_phrases(
    language: str, order: tuple[str, ...]
) -> tuple[tuple[tuple[str, str], str], ...]:
    """((colour, shape), "is there a red circle?") for every pair: the same for every
    scene, so built once per language and attribute order."""
    table = get_language(language)
    fields = [f for f in order if f != "size"]
    phrases = []
    for colour in COLOURS:
        for shape in SHAPES:
            probe = SceneObject(colour, shape, SIZES[0], 0, 0)
            words = [word for _, word in attribute_words(probe, fields, table)]
            indefinite = article_for(words[0], table) + table.word_gap.join(words)
            phrases.append(
                ((colour, shape), table.questions["exists"].format(indefinite=indefinite))
            )
    return tuple(phrases)


def _exists_questions(
    scene: Scene, table: Language, phrases: tuple, excluded: set[tuple[str, str]]
) -> list[QA]:
    """One yes/no question per (colour, shape) pair not excluded; phrases from _exists_phrases."""
    present = {obj.pair for obj in scene.objects}
    return [
        QA(text, table.yes if pair in present else table.no, "exists")
        for pair, text in phrases
        if pair not in excluded
    ]


def _count_questions(scene: Scene, table: Language) -> list[QA]:
    questions = [QA(table.questions["count_all"], table.counts[len(scene.objects)], "count")]
    for shape in SHAPES:
        n = sum(obj.shape == shape for obj in scene.objects)
        text = table.questions["count_shape"].format(plural=shape_plural(table, shape))
        objects = [
            table.word_gap.join((table.colours[obj.colour], table.shapes[shape]))
            for obj in scene.objects
            if obj.shape == shape
        ]
        listed = table.list_separator.join(objects) or table.shapes[shape]
        questions.append(QA(text, table.counts[n], "count", table.shapes[shape], listed))
    return questions


def _holds(relation: str, a: SceneObject, b: SceneObject) -> bool:
    """Whether a stands `relation` of b, by grid cell (same column is not left of)."""
    return {
        "left": a.col < b.col,
        "right": a.col > b.col,
        "above": a.row < b.row,
        "below": a.row > b.row,
    }[relation]


def _relation_working(
    relation: str, a: SceneObject, b: SceneObject, descs: tuple[str, str], table: Language
) -> str:
    """Each object as the question named it, then its column (left of, right of) or row
    (above, below), in the order that makes the answer "is the first before the
    second?": "red circle left to blue square right" says yes to "is the red circle left
    of the blue square?" and to "is the blue square right of the red circle?". A column
    is looked up right after the words that name its object, and the yes/no follows
    from two words just said, both in the answer position's lag window."""
    axis = table.columns if relation in ("left", "right") else table.rows
    index = (lambda obj: obj.col) if relation in ("left", "right") else (lambda obj: obj.row)
    named = ((a, descs[0]), (b, descs[1]))  # (object, its description) in question order
    (first, first_desc), (second, second_desc) = (
        named if relation in ("left", "above") else named[::-1]
    )
    return table.relation_working.format(
        first_object=first_desc.removeprefix(table.definite),
        first=axis[index(first)],
        second_object=second_desc.removeprefix(table.definite),
        second=axis[index(second)],
    )


def _relation_questions(scene: Scene, table: Language, order: tuple[str, ...]) -> list[QA]:
    descs = [_unique_description(obj, scene, "relation", table, order) for obj in scene.objects]
    questions = []
    for a, desc_a in zip(scene.objects, descs, strict=True):
        for b, desc_b in zip(scene.objects, descs, strict=True):
            if a is b or desc_a is None or desc_b is None:
                continue
            for relation in RELATIONS:
                text = table.questions["relation"].format(
                    desc_a=desc_a, desc_b=desc_b, relation=table.relations[relation]
                )
                answer = table.yes if _holds(relation, a, b) else table.no
                questions.append(
                    QA(
                        text,
                        answer,
                        "relation",
                        _relation_working(relation, a, b, (desc_a, desc_b), table),
                    )
                )
    return questions
