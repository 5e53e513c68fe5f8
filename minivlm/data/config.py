"""SceneConfig: every knob of the procedural scenes, checked when it is made."""

from __future__ import annotations

from dataclasses import dataclass

from minivlm.data.language import LANGUAGES
from minivlm.data.styles import DEFAULT_STYLE, STYLES
from minivlm.data.vocabulary import (
    ALL_PAIRS,
    ATTRIBUTES,
    COLOURS,
    DEFAULT_HELD_OUT_PAIRS,
    GRID,
    SHAPES,
    check_attribute_order,
)

# "heldout": scenes with a held-out colour-shape pair; "style": training pairs drawn in the
# held-out style (see minivlm.data.styles); "heldout-style": held-out pairs in that style
SPLITS: tuple[str, ...] = ("train", "iid", "heldout", "style", "heldout-style")
PAIR_HELD_OUT_SPLITS: tuple[str, ...] = ("heldout", "heldout-style")
STYLE_HELD_OUT_SPLITS: tuple[str, ...] = ("style", "heldout-style")
COUNT_WORKINGS: tuple[str, ...] = ("shape", "objects")  # see questions.answer_text


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn and described.

    jitter: largest shift of an object's centre, as a fraction of a cell (it is
        also clipped so the object stays inside its cell).
    noise: standard deviation of the background noise, in 0..255 levels.
    attribute_order: the order of the size, colour and shape words.
    held_out_pairs: (colour, shape) pairs kept out of the "train" and "iid" splits.
    worked_answers: relation answers name each object and its column or row before the
        yes/no, counts of one shape the shape (see minivlm.data.questions.answer_text).
    styles: the drawing styles (minivlm.data.styles.STYLES) scenes are drawn in, one
        picked per scene; held_out_style: one that only the "style" split shows ("": none).
    """

    image_size: int = 64
    max_objects: int = 3
    held_out_pairs: tuple[tuple[str, str], ...] = DEFAULT_HELD_OUT_PAIRS
    jitter: float = 0.08
    noise: float = 6.0
    language: str = "en"
    attribute_order: tuple[str, ...] = ATTRIBUTES
    worked_answers: bool = False
    count_working: str = "shape"  # with worked_answers: "shape" or "objects" (questions.py)
    # a scene's follow-up questions (sample_scene_questions): a count's weight when the
    # type is picked (each other type's is 1), and the share of counts that ask about one
    # shape whatever the scene's other count answers
    count_weight: float = 1.0
    shape_count_share: float = 0.0
    styles: tuple[str, ...] = (DEFAULT_STYLE,)
    held_out_style: str = ""

    def __post_init__(self) -> None:
        _check_int("image_size", self.image_size, low=24, high=2048)
        _check_int("max_objects", self.max_objects, low=1, high=GRID * GRID)
        _check_float("jitter", self.jitter, low=0.0, high=0.5)
        _check_float("noise", self.noise, low=0.0, high=128.0)
        _check_float("count_weight", self.count_weight, low=0.0, high=100.0)
        _check_float("shape_count_share", self.shape_count_share, low=0.0, high=1.0)
        if self.language not in LANGUAGES:
            raise ValueError(
                f"SceneConfig.language: expected one of {sorted(LANGUAGES)}, got {self.language!r}"
            )
        if self.count_working not in COUNT_WORKINGS:
            raise ValueError(
                f"SceneConfig.count_working: expected one of {COUNT_WORKINGS}, "
                f"got {self.count_working!r}"
            )
        if not isinstance(self.worked_answers, bool):
            raise ValueError(
                f"SceneConfig.worked_answers: expected a bool, got {self.worked_answers!r}"
            )
        order = check_attribute_order(self.attribute_order, "SceneConfig.attribute_order")
        object.__setattr__(self, "attribute_order", order)
        object.__setattr__(self, "held_out_pairs", _checked_pairs(self.held_out_pairs))
        object.__setattr__(self, "styles", _checked_styles(self.styles, self.held_out_style))

    @property
    def training_pairs(self) -> tuple[tuple[str, str], ...]:
        """The (colour, shape) pairs the "train" and "iid" splits draw from."""
        held_out = set(self.held_out_pairs)
        return tuple(pair for pair in ALL_PAIRS if pair not in held_out)


def _is_sequence(value: object) -> bool:
    return isinstance(value, (tuple, list))


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"SceneConfig.{name}: expected an int in [{low}, {high}], got {value!r}")


def _check_float(name: str, value: object, low: float, high: float) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not low <= value <= high:
        raise ValueError(f"SceneConfig.{name}: expected a number in [{low}, {high}], got {value!r}")


def _checked_styles(styles: object, held_out: object) -> tuple[str, ...]:
    """The styles as a tuple of known names, none repeated, the held-out one not among them."""
    known = [isinstance(s, str) and s in STYLES for s in styles] if _is_sequence(styles) else []
    if not known or not all(known):
        raise ValueError(
            f"SceneConfig.styles: expected a non-empty list of {sorted(STYLES)}, got {styles!r}"
        )
    if len(set(styles)) != len(styles):
        raise ValueError(f"SceneConfig.styles: expected each style once, got {styles!r}")
    if held_out != "" and (
        not isinstance(held_out, str) or held_out not in STYLES or held_out in styles
    ):
        raise ValueError(
            f"SceneConfig.held_out_style: expected '' or a style of {sorted(STYLES)} not in "
            f"styles {list(styles)}, got {held_out!r}"
        )
    return tuple(styles)


def _checked_pairs(pairs: object) -> tuple[tuple[str, str], ...]:
    """Held-out pairs as a tuple of tuples, each known, none repeated, none orphaning."""
    name = "SceneConfig.held_out_pairs"
    if not _is_sequence(pairs):
        raise ValueError(f"{name}: expected a sequence of (colour, shape) pairs, got {pairs!r}")
    checked: list[tuple[str, str]] = []
    for pair in pairs:
        if not _is_sequence(pair) or len(pair) != 2:
            raise ValueError(f"{name}: expected (colour, shape) pairs, got {pair!r}")
        colour, shape = pair
        if colour not in COLOURS or shape not in SHAPES:
            raise ValueError(
                f"{name}: {tuple(pair)!r} is not a (colour, shape) pair; colours are "
                f"{COLOURS}, shapes are {SHAPES}"
            )
        if (colour, shape) in checked:
            raise ValueError(f"{name}: {tuple(pair)!r} is listed twice")
        checked.append((colour, shape))
    kept = set(ALL_PAIRS) - set(checked)
    for colour in COLOURS:
        if not any(c == colour for c, _ in kept):
            raise ValueError(f"{name}: holds out every shape of colour {colour!r}")
    for shape in SHAPES:
        if not any(s == shape for _, s in kept):
            raise ValueError(f"{name}: holds out every colour of shape {shape!r}")
    return tuple(checked)
