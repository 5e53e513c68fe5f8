"""Line charts as PNG files, drawn with Pillow (no plotting library needed).

A figure is a row of panels; each panel plots named series of (x, y) points on
log-scaled axes (sizes and times of benchmarks span decades), with its legend to the
right of the plot area, where it cannot hide a line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PANEL_SIZE = (680, 420)
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 160, 40, 50
COLOURS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
    (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
)  # fmt: skip
BACKGROUND, INK, GRID = (255, 255, 255), (30, 30, 30), (225, 225, 225)


@dataclass
class Panel:
    """One chart: a title, axis labels and series {label: [(x, y), ...]} with x, y > 0."""

    title: str
    x_label: str
    y_label: str
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def save_figure(panels: list[Panel], path: str | Path, title: str = "") -> Path:
    """Draw the panels side by side under `title` and write them to the PNG at `path`."""
    if not panels:
        raise ValueError("save_figure: needs at least one panel, got none")
    width, height = PANEL_SIZE
    title_height = 30 if title else 0
    image = Image.new("RGB", (width * len(panels), height + title_height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font(13)
    if title:
        draw.text((10, 8), title, fill=INK, font=_font(15))
    for index, panel in enumerate(panels):
        _draw_panel(draw, panel, (index * width, title_height), font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    return path


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _log_range(values: list[float]) -> tuple[float, float]:
    """Log10 bounds, padded, that contain every value (all > 0)."""
    low, high = math.log10(min(values)), math.log10(max(values))
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    pad = 0.05 * (high - low)
    return low - pad, high + pad


def _ticks(low: float, high: float) -> list[float]:
    """Tick values 1, 2, 5 x 10^k inside [10^low, 10^high] (fewer when they crowd)."""
    ticks = []
    for exponent in range(math.floor(low), math.ceil(high) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0**exponent
            if low <= math.log10(value) <= high:
                ticks.append(value)
    if len(ticks) > 8:
        ticks = [t for t in ticks if f"{t:.0e}".startswith("1")]
    return ticks


def _label(value: float) -> str:
    return f"{value:g}" if 1e-3 <= value < 1e5 else f"{value:.0e}"


def _draw_panel(draw: ImageDraw.ImageDraw, panel: Panel, origin: tuple[int, int], font) -> None:
    left, top = origin[0] + MARGIN_LEFT, origin[1] + MARGIN_TOP
    right = origin[0] + PANEL_SIZE[0] - MARGIN_RIGHT
    bottom = origin[1] + PANEL_SIZE[1] - MARGIN_BOTTOM
    draw.text((left, origin[1] + 10), panel.title, fill=INK, font=font)
    points = [p for series in panel.series.values() for p in series if p[0] > 0 and p[1] > 0]
    draw.rectangle((left, top, right, bottom), outline=INK)
    if not points:
        draw.text((left + 10, top + 10), "no data", fill=INK, font=font)
        return
    x_low, x_high = _log_range([x for x, _ in points])
    y_low, y_high = _log_range([y for _, y in points])

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        fx = (math.log10(x) - x_low) / (x_high - x_low)
        fy = (math.log10(y) - y_low) / (y_high - y_low)
        return left + fx * (right - left), bottom - fy * (bottom - top)

    xs = sorted({x for x, _ in points})
    for x in xs:  # benchmark sizes are the natural x ticks
        px, _ = to_pixel(x, 10**y_low)
        draw.line((px, top, px, bottom), fill=GRID)
        draw.text((px - 12, bottom + 5), _label(x), fill=INK, font=font)
    for y in _ticks(y_low, y_high):
        _, py = to_pixel(xs[0], y)
        draw.line((left, py, right, py), fill=GRID)
        draw.text((origin[0] + 5, py - 7), _label(y), fill=INK, font=font)
    draw.text(((left + right) // 2 - 20, bottom + 25), panel.x_label, fill=INK, font=font)
    draw.text((origin[0] + 5, top - 18), panel.y_label, fill=INK, font=font)

    for index, (label, series) in enumerate(panel.series.items()):
        colour = COLOURS[index % len(COLOURS)]
        pixels = [to_pixel(x, y) for x, y in sorted(series) if x > 0 and y > 0]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
        legend_y = top + 4 + 18 * index
        draw.line((right + 10, legend_y + 7, right + 30, legend_y + 7), fill=colour, width=3)
        draw.text((right + 36, legend_y), label, fill=INK, font=font)
