"""How scenes are put into words, in English and in Chinese.

Every string that captions and questions are built from lives in one `Language`
table, so the full vocabulary of the generated text is known in advance
(`lexicon_texts`), and parsing can invert it (`Language.lexicon`).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

from minivlm.data.vocabulary import COLOURS, GRID, SHAPES, SIZES

Cell = tuple[int, int]


@dataclass(frozen=True)
class Language:
    """The words and templates of one language. Templates use `str.format` fields."""

    code: str
    unit: str  # "word" or "char": what parsing scans over
    colours: dict[str, str]
    shapes: dict[str, str]
    shape_plurals: dict[str, str]
    sizes: dict[str, str]
    places: dict[Cell, str]  # answers to "where is ...?"
    caption_places: dict[Cell, str]  # the same places inside a caption
    word_gap: str  # between attribute words
    article: str
    vowel_article: str  # English "an "
    definite: str  # English "the "
    object_noun: str  # stands in for the shape when a description leaves it out
    object_phrase: str  # fields: article, attributes, place
    place_description: str  # fields: place, caption_place
    list_separator: str
    last_separator: str
    caption_end: str
    questions: dict[str, str]  # question template by kind
    relations: dict[str, str]  # "left", "right", "above", "below"
    yes: str
    no: str
    columns: tuple[str, str, str]  # a cell's column, left to right (worked relation answers)
    rows: tuple[str, str, str]  # a cell's row, top to bottom
    # fields: first_object, first, second_object, second (a worked relation answer's steps)
    relation_working: str
    worked_answer: str  # fields: working, answer
    answer_marker: str  # the word in worked_answer that comes just before the answer
    counts: tuple[str, ...]  # counts[n] answers "how many" with n
    extra_places: dict[str, Cell] = field(default_factory=dict)  # accepted when parsing

    def units(self, text: str) -> list[str]:
        """Split text into the pieces parsing matches: words, or characters."""
        if self.unit == "word":
            return re.findall(r"\w+", text.lower())
        return [ch for ch in text if not ch.isspace()]

    def final_answer(self, text: str) -> str:
        """What follows the last answer marker of a worked answer ("red circle left to
        blue square right so yes" -> "yes"); a text without the marker is returned
        whole, stripped."""
        marker = re.escape(self.answer_marker)
        if self.unit == "word":
            marker = rf"\b{marker}\b"
        return re.split(marker, text)[-1].strip()

    def lexicon(self) -> dict[tuple[str, ...], tuple[str, object]]:
        """Unit sequence -> (field, value), for every word that names an attribute."""
        entries: dict[tuple[str, ...], tuple[str, object]] = {}
        named = (("colour", self.colours), ("shape", self.shapes), ("size", self.sizes))
        for field_name, words in named:
            for value, word in words.items():
                entries[tuple(self.units(word))] = (field_name, value)
        places = [*self.places.items(), *self.caption_places.items()]
        for cell, phrase in places:
            entries[tuple(self.units(phrase))] = ("cell", cell)
        for phrase, cell in self.extra_places.items():
            entries[tuple(self.units(phrase))] = ("cell", cell)
        return entries


def _cells(names: list[str]) -> dict[Cell, str]:
    """Row-major names of the GRID x GRID cells."""
    return {(index // GRID, index % GRID): name for index, name in enumerate(names)}


ENGLISH = Language(
    code="en",
    unit="word",
    colours={colour: colour for colour in COLOURS},
    shapes={shape: shape for shape in SHAPES},
    shape_plurals={
        "circle": "circles",
        "square": "squares",
        "triangle": "triangles",
        "diamond": "diamonds",
        "star": "stars",
        "cross": "crosses",
    },
    sizes={size: size for size in SIZES},
    places=_cells(
        [
            "top left",
            "top",
            "top right",
            "left",
            "centre",
            "right",
            "bottom left",
            "bottom",
            "bottom right",
        ]
    ),  # fmt: skip
    caption_places=_cells(
        [
            "at the top left",
            "at the top",
            "at the top right",
            "on the left",
            "in the centre",
            "on the right",
            "at the bottom left",
            "at the bottom",
            "at the bottom right",
        ]
    ),  # fmt: skip
    word_gap=" ",
    article="a ",
    vowel_article="an ",
    definite="the ",
    object_noun="object",
    object_phrase="{article}{attributes} {place}",
    place_description="the object {caption_place}",
    list_separator=", ",
    last_separator=" and ",
    caption_end="",
    questions={
        "colour": "what colour is {desc}?",
        "shape": "what shape is {desc}?",
        "size": "what size is {desc}?",
        "position": "where is {desc}?",
        "exists": "is there {indefinite}?",
        "count_all": "how many objects are there?",
        "count_shape": "how many {plural} are there?",
        "relation": "is {desc_a} {relation} {desc_b}?",
    },
    relations={"left": "left of", "right": "right of", "above": "above", "below": "below"},
    yes="yes",
    no="no",
    columns=("left", "middle", "right"),
    rows=("top", "middle", "bottom"),
    relation_working="{first_object} {first} to {second_object} {second}",
    worked_answer="{working} so {answer}",
    answer_marker="so",
    counts=("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    extra_places={"center": (1, 1), "middle": (1, 1)},
)

CHINESE = Language(
    code="zh",
    unit="char",
    colours={
        "red": "红色",
        "green": "绿色",
        "blue": "蓝色",
        "yellow": "黄色",
        "purple": "紫色",
        "orange": "橙色",
    },
    shapes={
        "circle": "圆形",
        "square": "正方形",
        "triangle": "三角形",
        "diamond": "菱形",
        "star": "星形",
        "cross": "十字形",
    },
    shape_plurals={},  # Chinese nouns do not inflect: the shape word is used
    sizes={"small": "小的", "large": "大的"},
    places=_cells(["左上角", "上方", "右上角", "左边", "中间", "右边", "左下角", "下方", "右下角"]),
    caption_places=_cells(
        ["左上角", "上方", "右上角", "左边", "中间", "右边", "左下角", "下方", "右下角"]
    ),
    word_gap="",
    article="",
    vowel_article="",
    definite="",
    object_noun="物体",
    object_phrase="{place}有一个{attributes}",
    place_description="{place}的物体",
    list_separator="，",
    last_separator="，",
    caption_end="。",
    questions={
        "colour": "{desc}是什么颜色？",
        "shape": "{desc}是什么形状？",
        "size": "{desc}是大的还是小的？",
        "position": "{desc}在哪里？",
        "exists": "有{indefinite}吗？",
        "count_all": "有几个物体？",
        "count_shape": "有几个{plural}？",
        "relation": "{desc_a}在{desc_b}的{relation}吗？",
    },
    relations={"left": "左边", "right": "右边", "above": "上方", "below": "下方"},
    yes="是",
    no="否",
    columns=("左", "中", "右"),
    rows=("上", "中", "下"),
    relation_working="{first_object}{first}到{second_object}{second}",
    worked_answer="{working}，所以{answer}",
    answer_marker="所以",
    counts=("零个", "一个", "两个", "三个", "四个", "五个", "六个", "七个", "八个", "九个"),
    extra_places={"中央": (1, 1)},
)

LANGUAGES: dict[str, Language] = {"en": ENGLISH, "zh": CHINESE}


def get_language(code: str) -> Language:
    """The table for a language code ("en" or "zh")."""
    if code not in LANGUAGES:
        raise ValueError(f"language: expected one of {sorted(LANGUAGES)}, got {code!r}")
    return LANGUAGES[code]


def shape_plural(language: Language, shape: str) -> str:
    return language.shape_plurals.get(shape, language.shapes[shape])


def _template_literals(template: str) -> str:
    """A template with its {fields} removed: the words it always contributes."""
    return " ".join(literal for literal, *_ in string.Formatter().parse(template))


def lexicon_texts(code: str) -> list[str]:
    """Every string captions and questions in a language are built from.

    A tokenizer built on these covers all generated text of that language.
    """
    language = get_language(code)
    texts: list[str] = []
    for table in (
        language.colours,
        language.shapes,
        language.shape_plurals,
        language.sizes,
        language.places,
        language.caption_places,
        language.relations,
    ):
        texts.extend(table.values())
    texts.extend(_template_literals(t) for t in language.questions.values())
    templates = (
        language.object_phrase,
        language.place_description,
        language.relation_working,
        language.worked_answer,
    )
    texts.extend(_template_literals(t) for t in templates)
    texts.extend(
        [
            language.article,
            language.vowel_article,
            language.definite,
            language.object_noun,
            language.list_separator,
            language.last_separator,
            language.caption_end,
            language.yes,
            language.no,
            *language.counts,
            *language.columns,
            *language.rows,
        ]
    )
    return [text for text in texts if text.strip()]
