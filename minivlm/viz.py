"""Pictures drawn with Pillow: attention maps over the image, loss curves, sample sheets.

Every PNG is written atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
SERIES_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(handle)
    image.save(temporary, format="PNG")
    os.replace(temporary, path)
    return path


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def array_to_image(image: np.ndarray) -> Image.Image:
    """(3, S, S) float in [-1, 1] (as the model sees it) -> RGB Pillow image."""
    pixels = ((np.clip(image, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    return Image.fromarray(pixels.transpose(1, 2, 0), "RGB")


def attention_overlay(image: Image.Image, weights: np.ndarray, size: int = 128) -> Image.Image:
    """The image with one token's attention over its patches (grid (r, c)) laid over it in red."""
    heat = weights / max(float(weights.max()), 1e-12)  # (r, c) in [0, 1]
    heat_image = Image.fromarray((heat * 255).astype(np.uint8), "L").resize(
        (size, size), Image.Resampling.NEAREST
    )
    base = image.convert("RGB").resize((size, size), Image.Resampling.NEAREST)
    red = Image.new("RGB", (size, size), (255, 0, 0))
    mask = heat_image.point(lambda v: int(v * 0.65))
    return Image.composite(red, base, mask)


def attention_grid(
    image: Image.Image, tokens: Sequence[str], maps: np.ndarray, path, cell: int = 128
) -> Path:
    """One panel per generated token: its cross-attention over the image, captioned.

    maps (T, n_patches): attention per token, averaged over heads and blocks.
    """
    side = int(math.isqrt(maps.shape[1]))
    columns = min(6, len(tokens) + 1)
    rows = math.ceil((len(tokens) + 1) / columns)
    label = 18
    sheet = Image.new("RGB", (columns * cell, rows * (cell + label)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    panels = [("image", image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST))]
    panels += [
        (tok, attention_overlay(image, maps[t].reshape(side, side), cell))
        for t, tok in enumerate(tokens)
    ]
    for i, (text, panel) in enumerate(panels):
        x, y = (i % columns) * cell, (i // columns) * (cell + label)
        sheet.paste(panel, (x, y + label))
        draw.text((x + 4, y + 2), text, fill=INK, font=_font(13))
    return save_png(sheet, path)


def line_chart(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path,
    title: str,
    x_label: str = "step",
    y_label: str = "loss",
    size=(720, 420),
    log_y: bool = False,
    log_x: bool = False,
) -> Path:
    """Curves {name: (xs, ys)} on shared axes, with ticks, a legend and a title; log_x and
    log_y put that axis on a log10 scale (values must then be positive)."""
    width, height = size
    left, right, top, bottom = 64, 20, 36, 48
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    all_x = [_scaled(x, log_x) for xs, _ in series.values() for x in xs]
    all_y = [_scaled(y, log_y) for _, ys in series.values() for y in ys]
    if not all_x:
        raise ValueError(f"line_chart {title!r}: no points to draw")
    x0, x1 = min(all_x), max(all_x) if max(all_x) > min(all_x) else min(all_x) + 1
    y0, y1 = min(all_y), max(all_y) if max(all_y) > min(all_y) else min(all_y) + 1

    def to_pixel(x, y):
        px = left + (_scaled(x, log_x) - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - (_scaled(y, log_y) - y0) / (y1 - y0) * (height - top - bottom)
        return px, py

    draw.rectangle([left, top, width - right, height - bottom], outline=INK)
    font = _font(12)
    for k in range(5):
        fx, fy = x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4
        px = left + (width - left - right) * k / 4
        py = height - bottom - (height - top - bottom) * k / 4
        draw.line([px, height - bottom, px, height - bottom + 4], fill=INK)
        x_text = f"{10**fx:.3g}" if log_x else f"{fx:g}"
        draw.text((px - 12, height - bottom + 6), x_text, fill=INK, font=font)
        draw.line([left - 4, py, left, py], fill=INK)
        draw.text((4, py - 7), f"{(10**fy if log_y else fy):.3g}", fill=INK, font=font)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        points = [to_pixel(x, y) for x, y in zip(xs, ys, strict=False)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points if len(points) < 40 else []:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        draw.text((width - right - 170, top + 6 + 16 * i), f"-- {name}", fill=colour, font=font)
    draw.text((left, 10), title, fill=INK, font=_font(14))
    draw.text(((width - left) // 2, height - 20), x_label, fill=INK, font=font)
    draw.text((4, top - 20), y_label, fill=INK, font=font)
    return save_png(image, path)


def _scaled(value: float, log: bool) -> float:
    return math.log10(max(value, 1e-12)) if log else value


def sample_sheet(
    images: Sequence[Image.Image],
    captions: Sequence[str],
    path,
    cell: int = 160,
    references: Sequence[str] | None = None,
) -> Path:
    """A grid of images, each with its generated caption (and the reference, if given)."""
    columns = min(4, len(images))
    rows = math.ceil(len(images) / columns)
    text_height = 64
    sheet = Image.new("RGB", (columns * cell, rows * (cell + text_height)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font(11)
    for i, image in enumerate(images):
        x, y = (i % columns) * cell, (i // columns) * (cell + text_height)
        sheet.paste(image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        lines = _wrap(captions[i], 28)
        if references is not None and references[i] != captions[i]:
            lines = lines[:2] + [f"(true: {line})" for line in _wrap(references[i], 22)[:2]]
        for j, line in enumerate(lines[:4]):
            draw.text((x + 4, y + cell + 2 + 14 * j), line, fill=INK, font=font)
    return save_png(sheet, path)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in (
        text.split(" ")
        if " " in text
        else [text[i : i + width] for i in range(0, len(text), width)]
    ):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])
