"""Write a small folder of your-own-style images for `minivlm train --data`.

What it teaches: the layout `minivlm train --data DIR` reads. DIR holds the images and
one file, captions.jsonl, a JSON object per line: {"image": "0001.png", "text": "a red
circle"} for a caption, {"image": "0001.png", "question": "what colour is it?",
"answer": "red"} for a question. One image may have several lines. The drawings here
are plain Pillow shapes (one per image, in one of four colours, at a random place and
size), not the scene renderer's, so the folder stands for any images of your own.

    python examples/make_image_folder.py [DIR] [--images 96] [--seed 0]
    minivlm train --data DIR --steps 300 --out-dir runs/mine
    minivlm eval --checkpoint runs/mine --data DIR
    minivlm caption DIR/0000.png --checkpoint runs/mine
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 200, 30),
}
SHAPES = ("circle", "square", "triangle")
SIZE = 64  # pixels a side


def draw(shape: str, colour: tuple[int, int, int], rng: np.random.Generator) -> Image.Image:
    """One shape on a light background; its half-width r and centre (x, y) are random."""
    image = Image.new("RGB", (SIZE, SIZE), (235, 235, 235))
    r = int(rng.integers(10, 20))
    x, y = (int(v) for v in rng.integers(r + 2, SIZE - r - 2, size=2))
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif shape == "square":
        pen.rectangle((x - r, y - r, x + r, y + r), fill=colour)
    else:
        pen.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=colour)
    return image


def write_folder(root: Path, images: int, seed: int = 0) -> Path:
    """`images` PNGs and captions.jsonl (a caption and a question for each) under root."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(images):
        colour = list(COLOURS)[index % len(COLOURS)]
        shape = SHAPES[(index // len(COLOURS)) % len(SHAPES)]
        name = f"{index:04d}.png"
        draw(shape, COLOURS[colour], rng).save(root / name)
        rows.append({"image": name, "text": f"a {colour} {shape}"})
        if rng.random() < 0.5:
            rows.append({"image": name, "question": "what colour is it?", "answer": colour})
        else:
            rows.append({"image": name, "question": "what shape is it?", "answer": shape})
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    (root / "captions.jsonl").write_text(lines)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "root", type=Path, nargs="?", help="the folder to write (default: a new temporary one)"
    )
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.images < 1:
        parser.error(f"--images: expected an int >= 1, got {args.images}")
    root = write_folder(args.root or Path(tempfile.mkdtemp()), args.images, args.seed)
    print(f"wrote {args.images} images and {root / 'captions.jsonl'}")


if __name__ == "__main__":
    main()
