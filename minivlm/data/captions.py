"""Captions of a scene, the character spans naming each object, and the inverse parse.

English: "a small red circle at the top left and a large blue square in the centre".
Chinese: "左上角有一个小的红色圆形，中间有一个大的蓝色正方形。"
Objects come in row-major cell order; `attribute_order` orders the size, colour
and shape words.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from minivlm.data.language import Language, get_language
from minivlm.data.scenes import Scene, SceneObject
from minivlm.data.vocabulary import ATTRIBUTES, check_attribute_order

Span = tuple[int, int]  # [start, end) character offsets

_PIECE_SEPARATORS = {"en": r",|\band\b|\.|;", "zh": r"[，,。.；;、]"}


@dataclass(frozen=True)
class ObjectSpans:
    """Where one object's words sit in its caption, as [start, end) character ranges."""

    size: Span
    colour: Span
    shape: Span


@dataclass(frozen=True)
class ParsedObject:
    """What a caption says about one object; None where it says nothing."""

    colour: str | None
    shape: str | None
    size: str | None
    row: int | None
    col: int | None

    @classmethod
    def of(cls, obj: SceneObject) -> ParsedObject:
        return cls(obj.colour, obj.shape, obj.size, obj.row, obj.col)


def attribute_words(
    obj: SceneObject, fields: Sequence[str], language: Language
) -> list[tuple[str, str]]:
    """(field, word) for the named fields of an object, in the order given."""
    tables = {"size": language.sizes, "colour": language.colours, "shape": language.shapes}
    return [(name, tables[name][getattr(obj, name)]) for name in fields]


def article_for(first_word: str, language: Language) -> str:
    return language.vowel_article if first_word[:1] in "aeiou" else language.article


def caption(scene: Scene, language: str = "en", attribute_order: Sequence[str] = ATTRIBUTES) -> str:
    """The caption of a scene."""
    return caption_with_spans(scene, language, attribute_order)[0]


def caption_with_spans(
    scene: Scene, language: str = "en", attribute_order: Sequence[str] = ATTRIBUTES
) -> tuple[str, list[ObjectSpans]]:
    """The caption and, for each object in order, the spans of its size, colour, shape words."""
    table = get_language(language)
    order = check_attribute_order(attribute_order)
    parts: list[str] = []
    spans: list[ObjectSpans] = []
    length = 0

    def add(text: str) -> Span:
        nonlocal length
        parts.append(text)
        length += len(text)
        return (length - len(text), length)

    last = len(scene.objects) - 1
    for index, obj in enumerate(scene.objects):
        if index > 0:
            add(table.last_separator if index == last else table.list_separator)
        words = attribute_words(obj, order, table)
        found: dict[str, Span] = {}
        for literal, name, _, _ in string.Formatter().parse(table.object_phrase):
            add(literal)
            if name == "article":
                add(article_for(words[0][1], table))
            elif name == "place":
                add(table.caption_places[obj.cell])
            elif name == "attributes":
                for position, (field, word) in enumerate(words):
                    if position > 0:
                        add(table.word_gap)
                    found[field] = add(word)
        spans.append(ObjectSpans(found["size"], found["colour"], found["shape"]))
    add(table.caption_end)
    return "".join(parts), spans


def parse_caption(text: str, language: str = "en") -> list[ParsedObject]:
    """The objects a caption names, in the order it names them.

    The text is cut into one piece per object (at commas, "and", full stops); in
    each piece the longest known phrase is matched at each point and unknown
    words are passed over. A piece that names nothing, or names one attribute
    twice with different values, is skipped.
    """
    table = get_language(language)
    lexicon = table.lexicon()
    longest = max(len(key) for key in lexicon)
    parsed = []
    for piece in re.split(_PIECE_SEPARATORS[table.code], text.lower()):
        found = _scan(table.units(piece), lexicon, longest)
        if found is not None:
            cell = found.get("cell")
            parsed.append(
                ParsedObject(
                    found.get("colour"),
                    found.get("shape"),
                    found.get("size"),
                    cell[0] if cell else None,
                    cell[1] if cell else None,
                )
            )
    return parsed


def _scan(
    units: list[str], lexicon: dict[tuple[str, ...], tuple[str, object]], longest: int
) -> dict | None:
    """field -> value for the phrases in a piece; None if it names nothing or contradicts."""
    found: dict = {}
    start = 0
    while start < len(units):
        for width in range(min(longest, len(units) - start), 0, -1):
            entry = lexicon.get(tuple(units[start : start + width]))
            if entry is not None:
                field, value = entry
                if found.setdefault(field, value) != value:
                    return None
                start += width
                break
        else:
            start += 1
    return found or None
