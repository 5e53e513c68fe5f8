"""Scene records: which objects stand where, drawn from a seeded generator.

A scene is only data; the image, the masks, the caption and the questions are all
derived from it (`render.py`, `captions.py`, `questions.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minivlm.data.config import (
    PAIR_HELD_OUT_SPLITS,
    SPLITS,
    STYLE_HELD_OUT_SPLITS,
    SceneConfig,
)
from minivlm.data.styles import DEFAULT_STYLE, STYLES
from minivlm.data.vocabulary import ALL_PAIRS, COLOURS, GRID, SHAPES, SIZE_FRACTION, SIZES


@dataclass(frozen=True)
class SceneObject:
    """One object. dx, dy shift its centre, as fractions of a cell; angle turns it
    clockwise, in degrees."""

    colour: str
    shape: str
    size: str
    row: int
    col: int
    dx: float = 0.0
    dy: float = 0.0
    angle: float = 0.0

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("colour", self.colour, COLOURS),
            ("shape", self.shape, SHAPES),
            ("size", self.size, SIZES),
            ("row", self.row, range(GRID)),
            ("col", self.col, range(GRID)),
        ):
            if value not in allowed:
                raise ValueError(f"SceneObject.{name}: expected one of {allowed}, got {value!r}")
        limit = (1.0 - SIZE_FRACTION[self.size]) / 2
        if abs(self.dx) > limit or abs(self.dy) > limit:
            raise ValueError(
                f"SceneObject dx, dy: a {self.size} object stays in its cell only with "
                f"|dx|, |dy| <= {limit:.3f}, got ({self.dx}, {self.dy})"
            )

    @property
    def cell(self) -> tuple[int, int]:
        return (self.row, self.col)

    @property
    def pair(self) -> tuple[str, str]:
        return (self.colour, self.shape)


@dataclass(frozen=True)
class Scene:
    """Objects in row-major cell order, over a grey background with noise, drawn in a style
    (minivlm.data.styles)."""

    objects: tuple[SceneObject, ...]
    background: int = 40  # grey level 0..255
    noise: float = 0.0  # standard deviation of the background noise
    noise_seed: int = 0
    style: str = DEFAULT_STYLE

    def __post_init__(self) -> None:
        objects = tuple(self.objects)
        if not objects:
            raise ValueError("Scene.objects: expected at least one object, got none")
        cells = [obj.cell for obj in objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"Scene.objects: one object per cell, got cells {cells}")
        if not 0 <= self.background <= 255:
            raise ValueError(f"Scene.background: expected 0..255, got {self.background!r}")
        if self.style not in STYLES:
            raise ValueError(f"Scene.style: expected one of {sorted(STYLES)}, got {self.style!r}")
        object.__setattr__(self, "objects", tuple(sorted(objects, key=lambda o: o.cell)))


def is_held_out(obj: SceneObject, config: SceneConfig) -> bool:
    """Whether the object's (colour, shape) pair is one the training split never shows."""
    return obj.pair in config.held_out_pairs


def scene_rng(split: str, seed: int, index: int) -> np.random.Generator:
    """The generator for example `index` of a split: splits and seeds never share streams."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    for name, value in (("seed", seed), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}: expected a non-negative int, got {value!r}")
    return np.random.default_rng([SPLITS.index(split), int(seed), int(index)])


def make_scene(config: SceneConfig, split: str = "train", seed: int = 0, index: int = 0) -> Scene:
    """Scene number `index` of a split for a seed; the same arguments give the same scene."""
    return sample_scene(config, scene_rng(split, seed, index), split)


def sample_scene(config: SceneConfig, rng: np.random.Generator, split: str = "train") -> Scene:
    """Draw a scene. "heldout" and "heldout-style" scenes hold at least one held-out pair;
    the others none. "style" and "heldout-style" scenes are drawn in the held-out style,
    the others in one of `config.styles` (with one style, nothing is drawn for it: the
    scenes are those of before styles)."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    style_name = _draw_style(config, rng, split)
    style = STYLES[style_name]
    n_objects = int(rng.integers(1, config.max_objects + 1))
    cells = np.sort(rng.choice(GRID * GRID, size=n_objects, replace=False))
    pairs = _draw_pairs(config, rng, split, n_objects)
    objects = [
        _draw_object(config, rng, pair, int(cell) // GRID, int(cell) % GRID, style.rotation)
        for pair, cell in zip(pairs, cells, strict=True)
    ]
    background = int(rng.integers(style.background[0], style.background[1] + 1))
    noise_seed = int(rng.integers(2**31))
    noise = float(config.noise * style.noise_scale)
    return Scene(tuple(objects), background, noise, noise_seed, style_name)


def _draw_style(config: SceneConfig, rng: np.random.Generator, split: str) -> str:
    if split in STYLE_HELD_OUT_SPLITS:
        if not config.held_out_style:
            raise ValueError(f"split={split!r} needs SceneConfig.held_out_style, which is ''")
        return config.held_out_style
    if len(config.styles) == 1:
        return config.styles[0]
    return config.styles[int(rng.integers(len(config.styles)))]


def _draw_pairs(
    config: SceneConfig, rng: np.random.Generator, split: str, n_objects: int
) -> list[tuple[str, str]]:
    if split not in PAIR_HELD_OUT_SPLITS:
        allowed = config.training_pairs
        return [allowed[i] for i in rng.integers(len(allowed), size=n_objects)]
    if not config.held_out_pairs:
        raise ValueError(f"split={split!r} needs SceneConfig.held_out_pairs, which is empty")
    pairs = [ALL_PAIRS[i] for i in rng.integers(len(ALL_PAIRS), size=n_objects)]
    novel = config.held_out_pairs[int(rng.integers(len(config.held_out_pairs)))]
    pairs[int(rng.integers(n_objects))] = novel
    return pairs


def _draw_object(
    config: SceneConfig,
    rng: np.random.Generator,
    pair: tuple[str, str],
    row: int,
    col: int,
    rotation: float = 0.0,
) -> SceneObject:
    size = SIZES[int(rng.integers(len(SIZES)))]
    limit = min(config.jitter, (1.0 - SIZE_FRACTION[size]) / 2)
    dx, dy = rng.uniform(-limit, limit, size=2)
    angle = float(rng.uniform(-rotation, rotation)) if rotation else 0.0
    return SceneObject(pair[0], pair[1], size, row, col, float(dx), float(dy), angle)
