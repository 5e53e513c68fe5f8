"""Every example runs, in its quick form, as a reader would run it: a fresh Python process
with the repository on PYTHONPATH. Each must exit 0 and print the lines it is about."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minivlm.backend import cuda_available

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
TIMEOUT_S = 60  # each one takes a few seconds in quick mode

# file -> (arguments, lines its output must contain)
RUNS = {
    "backprop_by_hand.py": (
        ["--quick"],
        [
            "max |difference|",
            "dQ",
            "dK",
            "dV",
            "D = rowsum(dP * P) vs rowsum(dO * O)",
            "all three agree",
        ],
    ),
    "gradcheck_tour.py": (
        [],
        [
            "-> passed: True",
            "-> passed: False",
            "-> blamed: x",
            "passes (fooled)",
            "every output is a scalar",
            "culprit: #0 SoftmaxIgnoringDy(x (3, 5))",
            "-> culprit: SoftmaxIgnoringDy",
        ],
    ),
    "train_captioner.py": (
        ["--quick"],
        ["trained 6 steps", "validation loss iid", "(iid):", "(heldout):", "exact captions:"],
    ),
    "attention_maps.py": (
        ["--quick"],
        ["training a small captioner", "attention on them per word", "wrote "],
    ),
    "cpu_vs_gpu_attention.py": (["--quick"], ["numpy-naive", "numpy-fused", "kept for backward"]),
    "function_graph.py": ([], ["wrote ", "function_graph.png", "bottom-up for the backward"]),
    "make_image_folder.py": (["--images", "4"], ["wrote 4 images and ", "captions.jsonl"]),
}


def run_example(name: str, *extra: str) -> str:
    """Run an example with its RUNS arguments (and `extra`); check its exit code and lines."""
    arguments = [*extra, *RUNS[name][0]]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *arguments],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 0, (
        f"{name} {' '.join(arguments)} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    missing = [line for line in RUNS[name][1] if line not in result.stdout]
    assert not missing, f"{name} did not print {missing}; it printed:\n{result.stdout}"
    return result.stdout


def test_every_example_is_run_here_and_says_what_it_teaches():
    files = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert files == sorted(RUNS), f"examples without a smoke run: {set(files) - set(RUNS)}"
    for name in files:
        docstring = ast.get_docstring(ast.parse((EXAMPLES / name).read_text())) or ""
        assert "What it teaches:" in docstring, (
            f"{name}: its docstring does not say what it teaches"
        )


@pytest.mark.parametrize("name", ["backprop_by_hand.py", "gradcheck_tour.py"])
def test_example_runs_and_prints_its_key_lines(name):
    run_example(name)


def test_train_captioner_trains_captions_and_leaves_a_checkpoint(tmp_path):
    out = run_example("train_captioner.py", "--out", str(tmp_path))
    assert f"checkpoint: {tmp_path}" in out
    assert (tmp_path / "log.jsonl").is_file() and (tmp_path / "checkpoints").is_dir()


def test_attention_maps_trains_briefly_and_writes_one_png_per_caption(tmp_path):
    run_example("attention_maps.py", str(tmp_path))
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["attention_0.png", "attention_1.png"], pngs
    assert all((tmp_path / p).read_bytes().startswith(b"\x89PNG") for p in pngs)


def test_cpu_vs_gpu_attention_checks_times_and_says_plainly_whether_there_is_a_gpu():
    out = run_example("cpu_vs_gpu_attention.py")
    if cuda_available():
        assert "a GPU is here" in out and "cupy-fused" in out
    else:
        assert "no GPU here, so NumPy only" in out


def test_function_graph_writes_a_png_and_dot_text_of_one_sublayer(tmp_path):
    run_example("function_graph.py", str(tmp_path))
    assert (tmp_path / "function_graph.png").read_bytes().startswith(b"\x89PNG")
    dot = (tmp_path / "function_graph.dot").read_text()
    assert 'label="Attention\\n(1, 2, 3, 2)"' in dot and 'label="LayerNorm\\n(3, 4)"' in dot
