"""Scene record -> RGB image and per-object masks, with Pillow.

Each object is drawn SUPERSAMPLE times larger and box-averaged down, which gives
its coverage of every pixel (0..1). The image blends the object's colour over the
background by that coverage; the mask is coverage >= 1/2. Both come from the same
drawing, so the masks match the pixels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from minivlm.data.scenes import Scene, SceneObject
from minivlm.data.vocabulary import COLOUR_RGB, GRID, SIZE_FRACTION

SUPERSAMPLE = 4
STAR_INNER_RATIO = 0.45  # inner / outer radius of the five-pointed star
CROSS_ARM_RATIO = 0.38  # half the arm thickness / the half-extent of the cross


def render_scene(scene: Scene, image_size: int = 64) -> Image.Image:
    """The scene as an RGB image of image_size x image_size pixels."""
    _check_image_size(image_size)
    rng = np.random.default_rng(scene.noise_seed)
    pixels = rng.standard_normal((image_size, image_size, 3), dtype=np.float32)  # (S, S, 3)
    pixels *= scene.noise
    pixels += scene.background  # 0..255 before clipping
    for obj in scene.objects:
        rows, cols, alpha = _object_patch(obj, image_size)  # alpha (h, w): 0 outside the patch
        colour = np.array(COLOUR_RGB[obj.colour], dtype=np.float32)  # (3,)
        patch = pixels[rows, cols]  # (h, w, 3), a view
        patch += alpha[:, :, None] * (colour - patch)  # = patch (1 - alpha) + colour alpha
    np.rint(pixels, out=pixels)
    np.clip(pixels, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def object_masks(scene: Scene, image_size: int = 64) -> np.ndarray:
    """(n_objects, S, S) bool: the pixels each object covers at least half of."""
    return object_coverage(scene, image_size) >= 0.5


def object_coverage(scene: Scene, image_size: int = 64) -> np.ndarray:
    """(n_objects, S, S) float32 in [0, 1]: the fraction of each pixel an object covers."""
    _check_image_size(image_size)
    coverage = np.zeros((len(scene.objects), image_size, image_size), dtype=np.float32)
    for index, obj in enumerate(scene.objects):
        rows, cols, alpha = _object_patch(obj, image_size)
        coverage[index, rows, cols] = alpha
    return coverage


def _object_patch(obj: SceneObject, image_size: int) -> tuple[slice, slice, np.ndarray]:
    """(rows, cols, coverage (h, w) float32): the object's coverage of the pixels in a box
    around it, a pixel wider than its outline on every side; it covers nothing outside.

    Drawn SUPERSAMPLE times larger on a canvas the size of that box only (not the whole
    image), then box-averaged down."""
    big_cell = image_size * SUPERSAMPLE / GRID  # a cell's width on the supersampled grid
    cx, cy = (obj.col + 0.5 + obj.dx) * big_cell, (obj.row + 0.5 + obj.dy) * big_cell
    r = SIZE_FRACTION[obj.size] * big_cell / 2
    x0 = max(0, math.floor((cx - r) / SUPERSAMPLE) - 1)  # the box, in image pixels
    x1 = min(image_size, math.ceil((cx + r) / SUPERSAMPLE) + 1)
    y0 = max(0, math.floor((cy - r) / SUPERSAMPLE) - 1)
    y1 = min(image_size, math.ceil((cy + r) / SUPERSAMPLE) + 1)
    canvas = Image.new("L", ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE), 0)
    origin = (x0 * SUPERSAMPLE, y0 * SUPERSAMPLE)
    _draw_shape(ImageDraw.Draw(canvas), obj, big_cell, origin)
    small = canvas.reduce(SUPERSAMPLE)  # box average of SUPERSAMPLE^2 sub-pixels
    alpha = np.asarray(small, dtype=np.float32) / 255.0
    return slice(y0, y1), slice(x0, x1), alpha


def _check_image_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < GRID:
        raise ValueError(f"image_size: expected an int >= {GRID}, got {image_size!r}")


def _draw_shape(
    draw: ImageDraw.ImageDraw, obj: SceneObject, cell: float, origin: tuple[int, int]
) -> None:
    """Fill the object's shape with 255, in pixel units where a cell is `cell` wide, on a
    canvas whose top-left corner is pixel `origin` of the whole image."""
    cx = (obj.col + 0.5 + obj.dx) * cell - origin[0]
    cy = (obj.row + 0.5 + obj.dy) * cell - origin[1]
    r = SIZE_FRACTION[obj.size] * cell / 2  # half the side of the bounding box
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        points = [(cx + x * r, cy + y * r) for x, y in _UNIT_OUTLINES[obj.shape]]
        draw.polygon(points, fill=255)


def _star_outline() -> list[tuple[float, float]]:
    """Ten points alternating outer radius 1 and inner radius STAR_INNER_RATIO, tip up."""
    points = []
    for k in range(10):
        radius = 1.0 if k % 2 == 0 else STAR_INNER_RATIO
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((radius * math.cos(angle), radius * math.sin(angle)))
    return points


def _cross_outline() -> list[tuple[float, float]]:
    """A plus sign: twelve corners, arms of half-thickness CROSS_ARM_RATIO."""
    t = CROSS_ARM_RATIO
    return [
        (-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t),
        (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t),
    ]  # fmt: skip


# outlines in a box from -1 to 1 (y grows downwards), scaled by the half-extent r
_UNIT_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(0, -1), (1, 1), (-1, 1)],
    "diamond": [(0, -1), (1, 0), (0, 1), (-1, 0)],
    "star": _star_outline(),
    "cross": _cross_outline(),
}
