"""Scene record -> RGB image and per-object masks, with Pillow.

Each object is drawn `supersample` times larger (its scene's style's; 4 unless the style
turns anti-aliasing off) and box-averaged down, which gives its coverage of every pixel
(0..1). The image blends the object's colour over the background by that coverage; the
mask is coverage >= 1/2. Both come from the same drawing, so the masks match the pixels.
The style also sets the star's and the cross's proportions, rounded corners, outlines
and rotations (minivlm.data.styles).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from minivlm.data.scenes import Scene, SceneObject
from minivlm.data.styles import STYLES, DrawingStyle
from minivlm.data.vocabulary import COLOUR_RGB, GRID, SIZE_FRACTION


def render_scene(scene: Scene, image_size: int = 64) -> Image.Image:
    """The scene as an RGB image of image_size x image_size pixels."""
    return Image.fromarray(render_pixels(scene, image_size), "RGB")


def render_pixels(scene: Scene, image_size: int = 64) -> np.ndarray:
    """render_scene's pixels, (S, S, 3) uint8, without the Pillow image around them."""
    _check_image_size(image_size)
    rng = np.random.default_rng(scene.noise_seed)
    pixels = rng.standard_normal((image_size, image_size, 3), dtype=np.float32)  # (S, S, 3)
    pixels *= scene.noise
    pixels += scene.background  # 0..255 before clipping
    for obj in scene.objects:
        rows, cols, alpha = _object_patch(obj, image_size, STYLES[scene.style])  # alpha (h, w)
        colour = np.array(COLOUR_RGB[obj.colour], dtype=np.float32)  # (3,)
        patch = pixels[rows, cols]  # (h, w, 3), a view
        patch += alpha[:, :, None] * (colour - patch)  # = patch (1 - alpha) + colour alpha
    np.rint(pixels, out=pixels)
    np.clip(pixels, 0, 255, out=pixels)
    return pixels.astype(np.uint8)


def object_masks(scene: Scene, image_size: int = 64) -> np.ndarray:
    """(n_objects, S, S) bool: the pixels each object covers at least half of."""
    return object_coverage(scene, image_size) >= 0.5


def object_coverage(scene: Scene, image_size: int = 64) -> np.ndarray:
    """(n_objects, S, S) float32 in [0, 1]: the fraction of each pixel an object covers."""
    _check_image_size(image_size)
    coverage = np.zeros((len(scene.objects), image_size, image_size), dtype=np.float32)
    for index, obj in enumerate(scene.objects):
        rows, cols, alpha = _object_patch(obj, image_size, STYLES[scene.style])
        coverage[index, rows, cols] = alpha
    return coverage


def _object_patch(
    obj: SceneObject, image_size: int, style: DrawingStyle
) -> tuple[slice, slice, np.ndarray]:
    """(rows, cols, coverage (h, w) float32): the object's coverage of the pixels in a box
    around it, a pixel wider than its outline on every side; it covers nothing outside.

    Drawn `style.supersample` times larger on a canvas the size of that box only (not the
    whole image), then box-averaged down."""
    scale = style.supersample
    big_cell = image_size * scale / GRID  # a cell's width on the supersampled grid
    cx, cy = (obj.col + 0.5 + obj.dx) * big_cell, (obj.row + 0.5 + obj.dy) * big_cell
    r = SIZE_FRACTION[obj.size] * big_cell / 2
    reach = r * math.sqrt(2) if obj.angle else r  # a turned square's corners reach r * sqrt 2
    reach += style.outline * r  # a stroke stands out of the outline by up to its width
    x0 = max(0, math.floor((cx - reach) / scale) - 1)  # the box, in image pixels
    x1 = min(image_size, math.ceil((cx + reach) / scale) + 1)
    y0 = max(0, math.floor((cy - reach) / scale) - 1)
    y1 = min(image_size, math.ceil((cy + reach) / scale) + 1)
    canvas = Image.new("L", ((x1 - x0) * scale, (y1 - y0) * scale), 0)
    origin = (x0 * scale, y0 * scale)
    _draw_shape(ImageDraw.Draw(canvas), obj, big_cell, origin, style)
    small = canvas.reduce(scale) if scale > 1 else canvas  # box average of scale^2 sub-pixels
    alpha = np.asarray(small, dtype=np.float32) / 255.0
    return slice(y0, y1), slice(x0, x1), alpha


def _check_image_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < GRID:
        raise ValueError(f"image_size: expected an int >= {GRID}, got {image_size!r}")


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    obj: SceneObject,
    cell: float,
    origin: tuple[int, int],
    style: DrawingStyle,
) -> None:
    """Draw the object's shape in 255 (filled, or outlined with style.outline), in pixel
    units where a cell is `cell` wide, on a canvas whose top-left corner is pixel
    `origin` of the whole image."""
    cx = (obj.col + 0.5 + obj.dx) * cell - origin[0]
    cy = (obj.row + 0.5 + obj.dy) * cell - origin[1]
    r = SIZE_FRACTION[obj.size] * cell / 2  # half the side of the bounding box
    width = max(1, round(style.outline * r)) if style.outline else 0
    fill, stroke = (None, 255) if width else (255, None)
    box = (cx - r, cy - r, cx + r, cy + r)
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill, outline=stroke, width=width or 1)
    elif obj.shape == "square" and style.corner and not obj.angle:
        draw.rounded_rectangle(box, style.corner * r, fill=fill, outline=stroke, width=width or 1)
    else:
        turn = math.radians(obj.angle)
        cos, sin = math.cos(turn), math.sin(turn)
        points = [
            (cx + (x * cos - y * sin) * r, cy + (x * sin + y * cos) * r)
            for x, y in unit_outline(obj.shape, style)
        ]
        if width:
            draw.line([*points, points[0], points[1]], fill=255, width=width, joint="curve")
        else:
            draw.polygon(points, fill=255)


def unit_outline(shape: str, style: DrawingStyle) -> list[tuple[float, float]]:
    """The shape's corners in a box from -1 to 1 (y grows downwards), as `style` draws it."""
    if shape == "star":
        return _star_outline(style.star_points, style.star_inner)
    if shape == "cross":
        return _cross_outline(style.cross_arm)
    return _UNIT_OUTLINES[shape]


def _star_outline(points: int, inner: float) -> list[tuple[float, float]]:
    """2 * points corners alternating outer radius 1 and inner radius `inner`, tip up."""
    corners = []
    for k in range(2 * points):
        radius = 1.0 if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / points
        corners.append((radius * math.cos(angle), radius * math.sin(angle)))
    return corners


def _cross_outline(t: float) -> list[tuple[float, float]]:
    """A plus sign: twelve corners, arms of half-thickness t."""
    return [
        (-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t),
        (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t),
    ]  # fmt: skip


# outlines of the shapes that no style changes
_UNIT_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(0, -1), (1, 1), (-1, 1)],
    "diamond": [(0, -1), (1, 0), (0, 1), (-1, 0)],
}
