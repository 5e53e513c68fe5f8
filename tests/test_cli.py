"""The command line: gradcheck tables, train/caption/ask/eval on a tiny run, and errors."""

from __future__ import annotations

import inspect
import json
import shutil

import numpy as np
import pytest

import minivlm.functional as functional
from minivlm import Function
from minivlm.checks import CASES
from minivlm.cli import main
from minivlm.cli.files import load_checkpoint
from minivlm.cli.main import build_parser
from minivlm.data import SceneConfig, SceneDataset, render_scene
from minivlm.train import config_from_arguments, latest_checkpoint
from minivlm.train.config import FLAGS


def _function_classes() -> set[str]:
    modules = [m for _, m in inspect.getmembers(functional, inspect.ismodule)]
    return {
        name
        for module in modules
        for name, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, Function) and cls is not Function and cls.__module__ == module.__name__
    }


def test_every_op_with_a_backward_has_a_gradcheck_case():
    covered = {name for case in CASES for name in case.covers}
    # AsType's backward is a cast, checked exactly in test_autograd (finite differences
    # through a float32 round trip would only measure float32 rounding).
    missing = _function_classes() - covered - {"AsType"}
    assert not missing, f"ops without a case in minivlm/checks/op_cases.py: {sorted(missing)}"


def test_gradcheck_table_passes_every_op(capsys):
    assert main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    assert f"{len(CASES)} passed, 0 failed" in out
    assert "attention_fused" in out and "layer_norm" in out


def test_gradcheck_selects_by_prefix(capsys):
    assert main(["gradcheck", "cross_entropy"]) == 0
    rows = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("cross_entropy")
    ]
    assert len(rows) == 3


def test_gradcheck_table_fails_on_a_broken_backward(capsys, monkeypatch):
    from minivlm.functional.softmax import Softmax

    monkeypatch.setattr(
        Softmax, "backward", lambda self, dy: self.saved[0] * dy
    )  # ignores the coupling
    assert main(["gradcheck", "softmax"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "0 passed, 1 failed" in out and "largest error at" in out


def test_gradcheck_unknown_op_lists_the_known_ones(capsys):
    assert main(["gradcheck", "convolution"]) == 2
    assert "unknown op(s) ['convolution']" in capsys.readouterr().out


def test_model_gradcheck_with_lagged_embeddings_checks_their_tables(capsys):
    from minivlm.checks import tiny_model

    assert main(["gradcheck", "--model", "--fusion", "cross", "--token-lags", "2"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[0] == "cross" and row[-1] == "pass"
    plain = len(list(tiny_model("cross").parameters()))
    assert int(row[1]) == plain + 2  # one table per lag


def test_model_gradcheck_refuses_more_lags_than_positions(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["gradcheck", "--model", "--token-lags", "8"])
    assert exit_info.value.code == 2
    assert "--token-lags" in capsys.readouterr().err


def test_gradcheck_on_cuda_without_a_gpu_says_why(capsys):
    from minivlm.backend import cuda_available

    if cuda_available():
        pytest.skip("a GPU is present")
    assert main(["gradcheck", "add", "--device", "cuda"]) == 2
    assert "device 'cuda'" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert (
        main(
            [
                "train",
                "--preset",
                "tiny",
                "--out-dir",
                str(out),
                "--steps",
                "4",
                "--checkpoint-every",
                "2",
            ]
        )
        == 0
    )
    image = tmp_path_factory.mktemp("img") / "scene.png"
    scene = SceneDataset(SceneConfig(image_size=32), "iid", 1, 0).record(0).scene
    render_scene(scene, 48).convert("RGBA").save(image)  # other size and mode than training
    return out, image


def test_train_then_caption_ask_and_eval_from_the_command_line(tiny_run, tmp_path, capsys):
    out, image = tiny_run
    assert (
        main(
            [
                "caption",
                str(image),
                "--checkpoint",
                str(out),
                "--attention",
                str(tmp_path / "att.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "att.png").stat().st_size > 0
    assert (
        main(
            [
                "ask",
                str(image),
                "how many objects are there?",
                "--checkpoint",
                str(out),
                "--temperature",
                "0.8",
                "--top-k",
                "3",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(out / "checkpoints" / "step_000004"),
                "--captions",
                "4",
                "--questions",
                "4",
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {
        "iid/exact_match",
        "heldout/held_out_pair_accuracy",
        "iid/image_information_gain",
    } <= set(metrics)
    assert np.isfinite(metrics["heldout/loss"])
    capsys.readouterr()


def test_eval_style_adds_a_column_for_scenes_drawn_in_another_style(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    flags = ["--captions", "4", "--questions", "4", "--json", str(tmp_path / "m.json")]
    assert main(["eval", "--checkpoint", str(out), "--style", "plain", *flags]) == 0
    assert "style" in capsys.readouterr().out.splitlines()[0]
    assert "style/shape_accuracy" in json.loads((tmp_path / "m.json").read_text())
    assert main(["eval", "--checkpoint", str(out), "--style", "soft", *flags]) == 2
    assert "--style soft: SceneConfig.held_out_style" in capsys.readouterr().err


def test_train_resume_continues_from_the_latest_checkpoint(tiny_run, capsys):
    out, _ = tiny_run
    assert (
        main(
            [
                "train",
                "--preset",
                "tiny",
                "--out-dir",
                str(out),
                "--steps",
                "4",
                "--checkpoint-every",
                "2",
                "--resume",
            ]
        )
        == 0
    )
    assert "trained to step 4" in capsys.readouterr().out


def _one_error_line(capsys, command: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"minivlm {command}: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def test_caption_names_a_missing_checkpoint(tmp_path, tiny_run, capsys):
    _, image = tiny_run
    assert main(["caption", str(image), "--checkpoint", str(tmp_path)]) == 2
    assert "lacks" in _one_error_line(capsys, "caption")
    with pytest.raises(FileNotFoundError, match="lacks"):  # the traceback with --debug
        main(["caption", str(image), "--checkpoint", str(tmp_path), "--debug"])


def test_caption_names_an_unreadable_image(tmp_path, tiny_run, capsys):
    out, _ = tiny_run
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    assert main(["caption", str(bad), "--checkpoint", str(out)]) == 2
    assert "not_an_image.png" in _one_error_line(capsys, "caption")


def test_a_checkpoint_saved_with_a_flat_train_config_still_captions_and_answers(
    tmp_path, tiny_run, capsys
):
    """Runs saved before TrainConfig nested the data's and the model's configs."""
    out, image = tiny_run
    folder = tmp_path / "step_000004"
    shutil.copytree(latest_checkpoint(out), folder)
    state = json.loads((folder / "trainer.json").read_text())
    nested = state["train_config"]
    flat = {**nested.pop("data"), **nested.pop("model"), **nested}
    state["train_config"] = {k: v for k, v in flat.items() if k in FLAGS or k == "extra"}
    (folder / "trainer.json").write_text(json.dumps(state))
    (folder / "manifest.json").unlink()  # such runs had no manifests either
    assert main(["caption", str(image), "--checkpoint", str(folder)]) == 0
    from_flat = capsys.readouterr().out
    assert main(["caption", str(image), "--checkpoint", str(out)]) == 0
    assert capsys.readouterr().out == from_flat
    assert load_checkpoint(folder).scenes == load_checkpoint(out).scenes


@pytest.mark.parametrize(
    "file",
    [
        {"model": {"d_model": 48, "n_heads": 3}, "data": {"jitter": 0.1}, "steps": 7},
        {"d_model": 48, "n_heads": 3, "jitter": 0.1, "steps": 7},
    ],
    ids=["nested", "flat"],
)
def test_config_file_nested_or_flat_overrides_the_preset_and_flags_override_it(tmp_path, file):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(file))
    flags = ["--preset", "demo", "--config", str(path), "--steps", "9", "--no-worked-answers"]
    flags += ["--warmup-steps", "3"]  # the demo's 80 would not fit in 9 steps
    config = config_from_arguments(build_parser().parse_args(["train", *flags]))
    assert (config.model.d_model, config.model.n_heads, config.data.jitter) == (48, 3, 0.1)
    assert (config.steps, config.data.worked_answers) == (9, False)
    assert (config.model.token_lags, config.lr) == (6, 1.5e-3)  # the demo preset's


def test_config_file_that_is_not_an_object_is_named(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"--config .*list.json: expected a JSON object"):
        config_from_arguments(build_parser().parse_args(["train", "--config", str(path)]))
