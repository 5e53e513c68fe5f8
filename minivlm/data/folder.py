"""FolderDataset: your own images and texts, listed in root/captions.jsonl.

Each line is {"image": "file.png", "text": "..."} or
{"image": "file.png", "question": "...", "answer": "..."}. Every row is checked
when the dataset is made (the JSON, the fields, that the image's header reads and its
file's structure verifies, without decoding its pixels); a bad row raises
FolderDataError naming the line and the file, or with skip_bad=True is left out and
listed in `skipped`. Pixels are decoded when an example is first asked for, and the
`cache_images` most recently used images are kept, resized, in memory.

The file and its images are untrusted: an image path must stay inside the root (no
absolute paths, no "..", no symlink leading out; such a row is refused without saying
whether the file exists), an image's width x height is checked from its header against
`max_pixels` before it is decoded, and a line longer than `max_line_bytes` is refused
without being read whole.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from minivlm.data.batching import Example, image_to_array
from minivlm.data.tokenizer import KINDS, Tokenizer

CAPTIONS_FILE = "captions.jsonl"
MAX_IMAGE_PIXELS = 4096 * 4096  # decoded RGB: 48 MiB
MAX_LINE_BYTES = 64 * 1024
CACHE_IMAGES = 1024  # resized images kept in memory: 48 KiB each at 64 x 64


class FolderDataError(ValueError):
    """A bad row of captions.jsonl; `line` is its 1-based line number."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        super().__init__(f"{path}, line {line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class FolderRow:
    line: int
    image: str  # path relative to the root, as written in captions.jsonl
    caption: str | None = None
    question: str | None = None
    answer: str | None = None

    def texts(self) -> list[str]:
        return [text for text in (self.caption, self.question, self.answer) if text is not None]


class FolderDataset:
    """Examples from root/captions.jsonl. Without a tokenizer, one is built from the
    rows' texts (character level by default: it suits any script)."""

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 64,
        skip_bad: bool = False,
        tokenizer: Tokenizer | None = None,
        tokenizer_kind: str = "char",
        max_pixels: int = MAX_IMAGE_PIXELS,
        max_line_bytes: int = MAX_LINE_BYTES,
        cache_images: int = CACHE_IMAGES,
    ) -> None:
        for name, value in (
            ("image_size", image_size),
            ("max_pixels", max_pixels),
            ("max_line_bytes", max_line_bytes),
            ("cache_images", cache_images),
        ):
            if type(value) is not int or value < 1:
                raise ValueError(f"FolderDataset {name}: expected a positive int, got {value!r}")
        if tokenizer is None and tokenizer_kind not in KINDS:
            raise ValueError(
                f"FolderDataset tokenizer_kind: expected one of {KINDS}, got {tokenizer_kind!r}"
            )
        self.root = Path(root)
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.max_line_bytes = max_line_bytes
        self.cache_images = cache_images
        self._arrays: OrderedDict[str, np.ndarray] = OrderedDict()  # image -> (3, S, S)
        self.captions_path = self.root / CAPTIONS_FILE
        if not self.captions_path.is_file():
            raise FileNotFoundError(f"FolderDataset: no {CAPTIONS_FILE} at {self.captions_path}")
        self.skipped: list[tuple[int, str]] = []
        self.rows: list[FolderRow] = []
        with open(self.captions_path, "rb") as file:
            for line_number, line in enumerate(_lines(file, max_line_bytes), start=1):
                try:
                    if line is None:
                        raise FolderDataError(
                            self.captions_path,
                            line_number,
                            f"longer than the limit of {max_line_bytes} bytes",
                        )
                    if line_number == 1:
                        line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
                    if line.strip():
                        self.rows.append(self._checked_row(line_number, line))
                except FolderDataError as error:
                    if not skip_bad:
                        raise
                    self.skipped.append((error.line, error.reason))
        if not self.rows:
            raise ValueError(
                f"FolderDataset: {self.captions_path} has no usable rows "
                f"({len(self.skipped)} skipped)"
            )
        texts = [text for row in self.rows for text in row.texts()]
        self.tokenizer = (
            tokenizer if tokenizer is not None else Tokenizer.build(texts, tokenizer_kind)
        )

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, index: int) -> Image.Image:
        """Row `index`'s image, decoded; a file that fails to decode raises FolderDataError."""
        row = self.rows[index]

        def bad(reason: str) -> FolderDataError:
            return FolderDataError(self.captions_path, row.line, reason)

        try:
            with Image.open(self.root / row.image) as image:
                self._check_pixels(image, row.image, bad)
                image.load()
                return image
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            if isinstance(error, FolderDataError):
                raise
            raise bad(f"image {row.image!r} cannot be decoded ({error})") from None

    def image_array(self, index: int) -> np.ndarray:
        """Row `index`'s image as the model's input (3, S, S), from the cache if it is there."""
        name = self.rows[index].image
        array = self._arrays.pop(name, None)
        if array is None:
            array = image_to_array(self.image(index), self.image_size)
            if len(self._arrays) >= self.cache_images:
                self._arrays.popitem(last=False)  # the least recently used
        self._arrays[name] = array
        return array

    def __getitem__(self, index: int) -> Example:
        row = self.rows[index]
        array = self.image_array(index)
        if row.caption is not None:
            ids, loss_start = self.tokenizer.caption_sequence(row.caption)
            return Example(
                array, tuple(ids), loss_start, "caption", caption=row.caption, source=row.image
            )
        ids, loss_start = self.tokenizer.qa_sequence(row.question, row.answer)
        return Example(
            array,
            tuple(ids),
            loss_start,
            "qa",
            question=row.question,
            answer=row.answer,
            source=row.image,
        )

    def _checked_row(self, line_number: int, line: bytes) -> FolderRow:
        def bad(reason: str) -> FolderDataError:
            return FolderDataError(self.captions_path, line_number, reason)

        try:
            entry = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise bad(f"not UTF-8 text ({error.reason} at byte {error.start})") from None
        except json.JSONDecodeError as error:
            raise bad(f"not valid JSON ({error.msg})") from None
        except RecursionError:
            raise bad("not valid JSON (nested too deeply)") from None
        if not isinstance(entry, dict):
            raise bad(f"expected a JSON object, got {type(entry).__name__}")
        image = entry.get("image")
        if not isinstance(image, str) or not image:
            raise bad(f"expected an 'image' file name, got {image!r}")
        has_text = "text" in entry
        has_qa = "question" in entry or "answer" in entry
        if has_text == has_qa:
            raise bad(f"image {image!r}: expected either 'text' or 'question' and 'answer'")
        fields = ("text",) if has_text else ("question", "answer")
        for name in fields:
            if not isinstance(entry.get(name), str) or not entry[name]:
                raise bad(f"image {image!r}: expected {name!r} to be a non-empty string")
        self._check_image(image, bad)
        if has_text:
            return FolderRow(line_number, image, caption=entry["text"])
        return FolderRow(line_number, image, question=entry["question"], answer=entry["answer"])

    def _check_image(self, image: str, bad: Callable[[str], FolderDataError]) -> None:
        if "\x00" in image or Path(image).is_absolute() or ".." in Path(image).parts:
            raise bad(f"image {image!r}: expected a path inside the dataset folder")
        path = self.root / image
        try:
            inside = path.resolve().is_relative_to(self.root.resolve())
        except (OSError, RuntimeError):  # a symlink loop
            inside = False
        if not inside:  # a symlink leading out: not a word on what lies there
            raise bad(f"image {image!r}: expected a path inside the dataset folder")
        if not path.is_file():
            raise bad(f"image {image!r} not found at {path}")
        try:
            with Image.open(path) as opened:
                self._check_pixels(opened, image, bad)
                opened.verify()  # the file's structure (PNG: every chunk's CRC), no pixels
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            if isinstance(error, FolderDataError):
                raise
            raise bad(f"image {image!r} cannot be read ({error})") from None

    def _check_pixels(
        self, image: Image.Image, name: str, bad: Callable[[str], FolderDataError]
    ) -> None:
        """From the header alone, before decoding."""
        if image.width * image.height > self.max_pixels:
            raise bad(
                f"image {name!r}: {image.width}x{image.height} pixels, more than the limit "
                f"of {self.max_pixels} (max_pixels)"
            )


def _lines(file, limit: int):
    """The file's lines (bytes, line end dropped), each read up to `limit` bytes: None for
    a longer one, whose rest is skipped without being held in memory."""
    while True:
        line = file.readline(limit + 2)
        if not line:
            return
        complete = line.endswith(b"\n") or len(line) < limit + 2  # the last line may lack \n
        rest = line
        while not complete and rest and not rest.endswith(b"\n"):  # too long: skip to its end
            rest = file.readline(1 << 16)
        content = line.rstrip(b"\r\n") if complete else None
        yield content if content is not None and len(content) <= limit else None
