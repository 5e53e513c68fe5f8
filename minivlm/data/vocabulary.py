"""What a scene can hold: colours, shapes, sizes, the grid, the held-out pairs.

These are language-free names; `language.py` says how each is written in
English and Chinese.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

# name -> RGB, chosen far apart so a 64x64 render keeps them distinct
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 50),
    "purple": (150, 70, 200),
    "orange": (245, 140, 30),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
SIZES: tuple[str, ...] = ("small", "large")
# an object's extent (side of its bounding box) as a fraction of a grid cell
SIZE_FRACTION: dict[str, float] = {"small": 0.42, "large": 0.75}

GRID = 3  # the scene is a GRID x GRID board, one object per cell at most
ATTRIBUTES: tuple[str, ...] = ("size", "colour", "shape")  # the default attribute order

ALL_PAIRS: tuple[tuple[str, str], ...] = tuple(itertools.product(COLOURS, SHAPES))
# one pair per colour and per shape, so every colour and every shape keeps
# five training partners
DEFAULT_HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "star"),
    ("blue", "circle"),
    ("yellow", "square"),
    ("purple", "cross"),
    ("orange", "diamond"),
)


def check_attribute_order(order: Sequence[str], name: str = "attribute_order") -> tuple[str, ...]:
    """The order as a tuple, after checking it is a permutation of ATTRIBUTES."""
    if not isinstance(order, (tuple, list)) or sorted(order) != sorted(ATTRIBUTES):
        raise ValueError(f"{name}: expected an ordering of {ATTRIBUTES}, got {order!r}")
    return tuple(order)
