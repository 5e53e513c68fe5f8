import json

import numpy as np
import pytest
from PIL import Image

from minivlm.data import CAPTIONS_FILE, FolderDataError, FolderDataset


def write_rows(root, rows):
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    (root / CAPTIONS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


def save_images(root):
    """One small image in each of several modes; returns their file names."""
    base = Image.new("RGB", (24, 16), (200, 60, 30))
    images = {
        "rgb.png": base,
        "grey.png": base.convert("L"),
        "alpha.png": base.convert("RGBA"),
        "palette.gif": base.convert("P"),
        "cmyk.jpg": base.convert("CMYK"),
        "deep.png": Image.fromarray(np.full((16, 24), 50000, dtype=np.uint16)),
        "binary.bmp": base.convert("1"),
    }
    for name, image in images.items():
        image.save(root / name)
    return list(images)


def test_reads_images_of_several_modes_with_captions_and_questions(tmp_path):
    names = save_images(tmp_path)
    rows = [{"image": name, "text": f"picture {name}"} for name in names]
    rows.append({"image": "rgb.png", "question": "什么颜色？", "answer": "红色"})
    write_rows(tmp_path, rows)
    dataset = FolderDataset(tmp_path, image_size=32)
    assert len(dataset) == len(names) + 1
    for index in range(len(dataset)):
        example = dataset[index]
        assert example.image.shape == (3, 32, 32) and example.image.dtype == np.float32
        assert -1.0 <= example.image.min() and example.image.max() <= 1.0
    assert dataset[0].caption == "picture rgb.png" and dataset[0].source == "rgb.png"
    qa = dataset[len(names)]
    assert qa.task == "qa" and dataset.tokenizer.decode(qa.ids[qa.loss_start :]) == "红色"
    assert dataset.skipped == []


def test_a_missing_image_is_reported_with_file_and_line(tmp_path):
    save_images(tmp_path)
    write_rows(
        tmp_path, [{"image": "rgb.png", "text": "ok"}, "", {"image": "gone.png", "text": "no"}]
    )
    with pytest.raises(FolderDataError, match=r"line 3: image 'gone.png' not found") as caught:
        FolderDataset(tmp_path)
    assert caught.value.line == 3
    assert CAPTIONS_FILE in str(caught.value)


def test_an_unreadable_image_is_reported(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    write_rows(tmp_path, [{"image": "broken.png", "text": "x"}])
    with pytest.raises(FolderDataError, match=r"line 1: image 'broken.png' cannot be read"):
        FolderDataset(tmp_path)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"text": "no image"}', "'image'"),
        ('{"image": "rgb.png"}', "either 'text' or 'question' and 'answer'"),
        ('{"image": "rgb.png", "question": "q"}', "'answer'"),
        ('{"image": "rgb.png", "text": 5}', "'text'"),
    ],
)
def test_malformed_lines_are_reported_with_their_line_number(tmp_path, line, reason):
    save_images(tmp_path)
    write_rows(tmp_path, [{"image": "rgb.png", "text": "ok"}, line])
    with pytest.raises(FolderDataError, match=f"line 2: .*{reason}"):
        FolderDataset(tmp_path)


def test_skip_bad_leaves_out_bad_rows_and_counts_them(tmp_path):
    save_images(tmp_path)
    write_rows(
        tmp_path,
        [
            {"image": "rgb.png", "text": "good"},
            {"image": "gone.png", "text": "missing"},
            "{broken",
            {"image": "grey.png", "text": "also good"},
        ],
    )
    dataset = FolderDataset(tmp_path, skip_bad=True)
    assert len(dataset) == 2
    assert [line for line, _ in dataset.skipped] == [2, 3]
    assert "gone.png" in dataset.skipped[0][1]


def test_a_folder_without_captions_or_usable_rows_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=CAPTIONS_FILE):
        FolderDataset(tmp_path)
    write_rows(tmp_path, [{"image": "gone.png", "text": "x"}])
    with pytest.raises(ValueError, match="no usable rows"):
        FolderDataset(tmp_path, skip_bad=True)


def test_the_last_line_is_read_without_a_line_end(tmp_path):
    save_images(tmp_path)
    rows = [json.dumps({"image": "rgb.png", "text": t}) for t in ("first", "last")]
    (tmp_path / CAPTIONS_FILE).write_text("\n".join(rows), encoding="utf-8")  # no final "\n"
    assert [row.caption for row in FolderDataset(tmp_path).rows] == ["first", "last"]


def test_a_truncated_image_is_refused_when_the_folder_is_read(tmp_path):
    save_images(tmp_path)
    whole = (tmp_path / "rgb.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) - 20])  # its last chunks gone
    write_rows(tmp_path, [{"image": "cut.png", "text": "x"}])
    with pytest.raises(FolderDataError, match=r"line 1: image 'cut.png' cannot be read"):
        FolderDataset(tmp_path)
