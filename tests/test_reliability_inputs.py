"""Issue 18, problems 6 and 7: untrusted dataset files and bad flags get one clear error.

6 captions.jsonl rows naming files outside the dataset folder, images that decode to
far more pixels than their file size suggests, lines too long to read whole; 7 the
CLI's bad values. Then Hypothesis fuzzing of the captions reader, the tokenizer and
the config loader: whatever they are given, a clear error or a valid result.
"""

from __future__ import annotations

import json
import os
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from minivlm.cli import main
from minivlm.data import CAPTIONS_FILE, FolderDataError, FolderDataset, Tokenizer
from minivlm.data.folder import MAX_IMAGE_PIXELS
from minivlm.train import TrainConfig
from minivlm.train.config import FLAGS, SECTIONS, _field_names

# 6. untrusted data


def write_rows(root, rows) -> None:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    (root / CAPTIONS_FILE).write_text("\n".join(lines) + "\n")


@pytest.fixture
def dataset_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(root / "ok.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")  # beside the dataset, not in it
    return root


@pytest.mark.parametrize(
    "image",
    [
        "../secret.png",
        "../missing.png",
        "{abs}/secret.png",
        "{abs}/missing.png",
        "sub/../../secret.png",
    ],
)
def test_an_image_path_leading_out_of_the_folder_is_refused_without_saying_if_it_exists(
    dataset_root, image
):
    image = image.format(abs=dataset_root.parent)
    write_rows(dataset_root, [{"image": "ok.png", "text": "fine"}, {"image": image, "text": "x"}])
    with pytest.raises(FolderDataError) as caught:
        FolderDataset(dataset_root)
    assert caught.value.line == 2
    assert caught.value.reason == f"image {image!r}: expected a path inside the dataset folder"


@pytest.mark.parametrize("target", ["secret.png", "missing.png"])
def test_a_symlink_leading_out_of_the_folder_is_refused_alike(dataset_root, target):
    os.symlink(dataset_root.parent / target, dataset_root / "link.png")
    write_rows(dataset_root, [{"image": "link.png", "text": "x"}])
    with pytest.raises(FolderDataError, match="'link.png': expected a path inside the dataset"):
        FolderDataset(dataset_root)


def test_a_symlink_inside_the_folder_is_fine(dataset_root):
    os.symlink(dataset_root / "ok.png", dataset_root / "alias.png")
    write_rows(dataset_root, [{"image": "alias.png", "text": "x"}])
    assert len(FolderDataset(dataset_root)) == 1


def test_an_image_over_the_pixel_budget_is_refused_from_its_header(dataset_root, monkeypatch):
    side = int(MAX_IMAGE_PIXELS**0.5) + 1  # a few kB of PNG, 50 MB decoded
    Image.new("L", (side, side)).save(dataset_root / "bomb.png")
    assert (dataset_root / "bomb.png").stat().st_size < 200_000
    write_rows(dataset_root, [{"image": "bomb.png", "text": "x"}])

    def no_decoding(self, *args):
        raise AssertionError("the image was decoded before its size was checked")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    with pytest.raises(
        FolderDataError,
        match=rf"line 1: .*{side}x{side} pixels, more than the limit of {MAX_IMAGE_PIXELS}",
    ):
        FolderDataset(dataset_root)
    monkeypatch.undo()
    dataset = FolderDataset(dataset_root, max_pixels=side * side)  # configurable
    assert dataset[0].image.shape == (3, 64, 64)


def test_the_cli_applies_the_pixel_budget_to_its_images_too(tmp_path):
    from minivlm.cli.files import read_image

    Image.new("L", (300, 300)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"300x300 pixels, more than the limit of 1000"):
        read_image(tmp_path / "big.png", 32, max_pixels=1000)


def test_a_line_over_the_byte_limit_is_refused_or_skipped_and_counted(dataset_root):
    long_text = "a" * 5000
    rows = [{"image": "ok.png", "text": "one"}, {"image": "ok.png", "text": long_text}]
    write_rows(dataset_root, [*rows, {"image": "ok.png", "text": "three"}])
    with pytest.raises(FolderDataError, match=r"line 2: longer than the limit of 1000 bytes"):
        FolderDataset(dataset_root, max_line_bytes=1000)
    dataset = FolderDataset(dataset_root, max_line_bytes=1000, skip_bad=True)
    assert [row.caption for row in dataset.rows] == ["one", "three"]
    assert [line for line, _ in dataset.skipped] == [2]
    assert len(FolderDataset(dataset_root)) == 3  # under the default limit of 64 KiB


def test_crlf_lines_and_a_byte_order_mark_are_read(dataset_root):
    text = '\ufeff{"image": "ok.png", "text": "one"}\r\n{"image": "ok.png", "text": "two"}\r\n'
    (dataset_root / CAPTIONS_FILE).write_bytes(text.encode())
    assert [row.caption for row in FolderDataset(dataset_root, max_line_bytes=37).rows] == [
        "one",
        "two",
    ]


def test_invalid_utf8_is_named_with_its_line(dataset_root):
    (dataset_root / CAPTIONS_FILE).write_bytes(b'{"image": "ok.png", "text": "\xff"}\n')
    with pytest.raises(FolderDataError, match="line 1: not UTF-8"):
        FolderDataset(dataset_root)


# 7. every bad flag: one line, status 2, before any work


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "scene.png"
    Image.new("RGB", (32, 32)).save(path)
    return str(path)


BAD_COMMANDS = [
    (["train", "--lr", "nan"], "TrainConfig.lr: expected a finite number, got nan"),
    (["train", "--lr", "inf"], "TrainConfig.lr: expected a finite number, got inf"),
    (["train", "--steps", "0"], "TrainConfig.steps: expected at least 1, got 0"),
    (["train", "--steps", "ten"], "argument --steps: invalid int value: 'ten'"),
    (["train", "--grad-clip", "0"], "TrainConfig.grad_clip: expected positive, got 0.0"),
    (["train", "--weight-decay", "-1"], "TrainConfig.weight_decay: expected non-negative"),
    (["train", "--min-lr-ratio", "2"], "TrainConfig.min_lr_ratio: expected a number in [0, 1]"),
    (["train", "--warmup-steps", "30"], "TrainConfig.warmup_steps: expected an int in [0, steps)"),
    (["train", "--seed", "-3"], "TrainConfig.seed: expected an int in [0, 2**32), got -3"),
    (["train", "--eval-batches", "0"], "TrainConfig.eval_batches: expected at least 1, got 0"),
    (["train", "--keep-checkpoints", "0"], "TrainConfig.keep_checkpoints: expected at least 1"),
    (["train", "--skip-nonfinite", "-1"], "TrainConfig.skip_nonfinite: expected an int >= 0"),
    (["train", "--jitter-typo", "1"], "unrecognized arguments: --jitter-typo 1"),
    (["train", "--config", "{missing}"], "cannot read a JSON object"),
    (["train", "--config", "{strings}"], "TrainConfig.steps: expected an int, got '5'"),
    (["train", "--config", "{nan}"], "jitter: expected a number in [0.0, 0.5], got nan"),
    (["train", "--resume", "--overwrite"], "expected one of them, got both"),
    (["eval", "--checkpoint", "{out}", "--captions", "0"], "--captions: expected an int >= 1"),
    (["eval", "--checkpoint", "{out}", "--questions", "-5"], "--questions: expected an int >= 1"),
    (
        ["caption", "{image}", "--checkpoint", "{out}", "--top-p", "0"],
        "--top-p: expected a number in (0, 1]",
    ),
    (
        ["caption", "{image}", "--checkpoint", "{out}", "--temperature", "nan"],
        "--temperature: expected a number >= 0",
    ),
    (
        ["caption", "{image}", "--checkpoint", "{out}", "--top-k", "-1"],
        "--top-k: expected an int >= 0",
    ),
    (
        ["caption", "{image}", "--checkpoint", "{out}", "--seed", "-1"],
        "--seed: expected an int in [0",
    ),
    (["caption", "{image}", "--checkpoint", "{out}"], "no checkpoint to resume from"),
    (["ask", "{image}", " ", "--checkpoint", "{run}"], "question: expected a non-empty question"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from minivlm.train import preset, train

    out = tmp_path_factory.mktemp("run")
    train(preset("tiny", out_dir=str(out), steps=3, checkpoint_every=3))
    return out


@pytest.mark.parametrize("argv, message", BAD_COMMANDS, ids=[" ".join(a) for a, _ in BAD_COMMANDS])
def test_a_bad_value_gets_one_line_naming_it_and_status_2(
    argv, message, tmp_path, image, run, capsys
):
    (tmp_path / "strings.json").write_text('{"steps": "5"}')
    (tmp_path / "nan.json").write_text('{"data": {"jitter": NaN}}')
    (tmp_path / "out" / "checkpoints").mkdir(parents=True)
    places = dict(
        missing=tmp_path / "missing.json",
        strings=tmp_path / "strings.json",
        nan=tmp_path / "nan.json",
        out=tmp_path / "out",
        run=run,
        image=image,
    )
    argv = [a.format(**places) for a in argv]
    if argv[0] == "train":
        argv += ["--preset", "tiny", "--out-dir", str(tmp_path / "train")]
    try:
        status = main(argv)
    except SystemExit as stop:  # argparse's own errors
        status = stop.code
    assert status == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"minivlm {argv[0]}: error: "), captured.err
    assert message in lines[0]
    assert not (tmp_path / "train" / "log.jsonl").exists()  # no work was started


# fuzzing: a clear error or a valid result, never a crash

LINES = st.one_of(
    st.binary(max_size=80),
    st.text(max_size=60).map(str.encode),
    st.fixed_dictionaries(
        {},
        optional={
            "image": st.sampled_from(["ok.png", "../ok.png", "/ok.png", "", "nope.png", 5, None]),
            "text": st.one_of(st.text(max_size=20), st.integers(), st.none()),
            "question": st.one_of(st.text(max_size=20), st.none()),
            "answer": st.one_of(st.text(max_size=20), st.lists(st.integers(), max_size=2)),
        },
    ).map(lambda row: json.dumps(row).encode()),
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(LINES, min_size=1, max_size=6), skip_bad=st.booleans())
def test_fuzzed_captions_files_give_rows_or_a_folder_data_error(dataset_root, lines, skip_bad):
    (dataset_root / CAPTIONS_FILE).write_bytes(b"\n".join(lines))
    try:
        dataset = FolderDataset(dataset_root, skip_bad=skip_bad, max_line_bytes=64)
    except FolderDataError as error:
        assert not skip_bad and error.line >= 1 and str(error).startswith(str(dataset_root))
        return
    except ValueError as error:
        assert "no usable rows" in str(error)
        return
    for index in range(len(dataset)):
        example = dataset[index]
        assert example.image.shape == (3, 64, 64) and example.source == "ok.png"


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(st.text(max_size=30), min_size=1, max_size=5),
    kind=st.sampled_from(["char", "word"]),
    probe=st.text(max_size=40),
)
def test_fuzzed_tokenizer_texts_round_trip_or_map_to_unknown(texts, kind, probe):
    tokenizer = Tokenizer.build(texts, kind)
    assert Tokenizer.from_dict(json.loads(json.dumps(tokenizer.to_dict()))) == tokenizer
    ids = tokenizer.encode(probe)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    if kind == "char" and all(c in "".join(texts) for c in probe):
        assert tokenizer.decode(ids) == probe
    tokenizer.decode([i % tokenizer.vocab_size for i in ids + [0, 1, 2, 3]])


LEAVES = sorted({*FLAGS, *(n for kind in SECTIONS.values() for n in _field_names(kind))})
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=string.ascii_lowercase, max_size=8),
    st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.sampled_from(LEAVES), st.integers(0, 5), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    values=st.dictionaries(
        st.one_of(st.sampled_from([*LEAVES, "data", "model"]), st.text(max_size=5)),
        VALUES,
        max_size=4,
    )
)
def test_fuzzed_config_dicts_give_a_config_or_a_value_error_naming_a_field(values):
    try:
        config = TrainConfig.from_dict(values)
    except ValueError as error:
        assert "TrainConfig" in str(error) or "Config" in str(error), str(error)
        return
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
