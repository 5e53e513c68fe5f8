"""Data-parallel training on 2 MPI ranks (`mpiexec -n 2`): the same weights as one process
with the whole batch, checkpoints that resume under 1 and 2 ranks, and a rank that hangs
or dies stopping the run instead of leaving it waiting.

Skipped where mpi4py or mpiexec is missing (`pip install "minivlm[mpi]"` brings both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minivlm.checkpoint import load_weights
from minivlm.train import latest_checkpoint
from minivlm.train.distributed import FlatGradients, MPIGroup, SingleProcess, launched_ranks

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec (the mpich wheel)")

SCRIPT = Path(__file__).parent / "mpi_train.py"
# The ranks sum each gradient in another order than one process, so gradients differ by
# float32 rounding and the weights by as little: measured at most 4e-7 after 6 steps (tiny
# preset, AMD EPYC). Keys' biases are the exception: a bias on the keys adds q.b to all
# of a query's scores, which softmax ignores, so their gradient is rounding noise, which
# Adam scales up to steps of about lr: they are held to steps * lr * 4 instead.
WEIGHT_BOUND = 1e-6
KEY_BIAS_BOUND = 6 * 1e-3 * 4


def _key_bias_part(name: str, shape: tuple[int, ...]) -> slice | None:
    """The elements of parameter `name` that are biases of the keys, if any."""
    if name.endswith("k_linear.bias"):
        return slice(None)
    if name.endswith("in_proj_bias"):  # packed (q, k, v) biases, (3 d,)
        return slice(shape[0] // 3, 2 * shape[0] // 3)
    return None


def _launch(
    ranks: int, out: Path, *flags: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_"))}
    environment["OPENBLAS_NUM_THREADS"] = "1"
    command = [sys.executable, str(SCRIPT), str(out), *flags]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout)


def _weights(out: Path) -> dict[str, np.ndarray]:
    return load_weights(latest_checkpoint(out) / "model.safetensors")


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def _assert_close(a: Path, b: Path) -> None:
    first, second = _weights(a), _weights(b)
    assert first.keys() == second.keys()
    for name in first:
        difference = np.abs(first[name] - second[name])
        keys = _key_bias_part(name, difference.shape)
        if keys is not None:
            assert difference[keys].max() <= KEY_BIAS_BOUND, name
            difference[keys] = 0
        assert difference.max() <= WEIGHT_BOUND, f"{name} differs by {difference.max():.2e}"
    np.testing.assert_allclose(_losses(a), _losses(b), rtol=1e-6)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    result = _launch(1, out)
    assert result.returncode == 0, result.stderr
    return out


def test_two_ranks_give_the_weights_of_one_process_with_the_whole_batch(one_process, tmp_path):
    result = _launch(2, tmp_path / "two")
    assert result.returncode == 0, result.stderr
    _assert_close(tmp_path / "two", one_process)


@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_under_another_number_of_ranks(one_process, tmp_path, first, then):
    out = tmp_path / "run"
    assert _launch(first, out, "--stop-at", "4").returncode == 0
    result = _launch(then, out, "--resume")
    assert result.returncode == 0, result.stderr
    _assert_close(out, one_process)


def test_a_rank_that_hangs_stops_the_others_with_a_message(tmp_path):
    flags = ["--fault", "hang", "--fault-rank", "1", "--rank-timeout", "10"]  # > start-up skew
    result = _launch(2, tmp_path / "run", *flags, timeout=90)
    assert result.returncode != 0
    expected = "rank 0 of 2: the other ranks did not join step 3's gradient allreduce"
    assert expected in result.stderr, result.stderr
    assert "one has hung or died" in result.stderr
    assert latest_checkpoint(tmp_path / "run").name == "step_000002"  # kept, resumable


def test_a_rank_that_dies_ends_the_job(tmp_path):
    result = _launch(2, tmp_path / "run", "--fault", "die", "--fault-rank", "1", timeout=90)
    assert result.returncode != 0
    said = result.stdout + result.stderr  # mpiexec's own report, on stdout
    assert "BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES" in said
    assert "Killed (signal 9)" in said


def test_one_process_is_its_own_group_and_the_flat_buffer_round_trips():
    from minivlm.models import VLM
    from minivlm.train import preset

    assert launched_ranks() == 1 or os.environ.get("PMI_SIZE")
    model = VLM(preset("tiny").model)
    params = list(model.parameters())
    rng = np.random.default_rng(0)
    for p in params[1:]:
        p.grad = rng.standard_normal(p.data.shape).astype(np.float32)
    params[0].grad = None  # a parameter no loss reached
    gradients = [None if p.grad is None else p.grad.copy() for p in params]
    loss, total = FlatGradients(params).allreduce(SingleProcess(), 2.5, 700.0, step=1)
    assert (loss, total) == (2.5, 700.0) and params[0].grad is None
    for p, g in zip(params[1:], gradients[1:], strict=True):
        np.testing.assert_array_equal(p.grad, g)


def test_the_ranks_benchmark_reports_samples_per_second_and_efficiency(tmp_path, capsys):
    from minivlm.cli.main import main

    report = tmp_path / "train.json"
    assert main(["bench", "train", "--ranks", "1,2", "--quick", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "ranks   samples/s" in printed and "efficiency" in printed
    rows = json.loads((tmp_path / "train_ranks.json").read_text())["rows"]
    assert [row["ranks"] for row in rows] == [1, 2]
    assert rows[0]["efficiency"] == 1.0 and rows[1]["samples_per_s"] > 0
    # where rank 0's step went: one process sums nothing; two ranks wait and sum
    assert "build / compute / allreduce" in printed
    assert rows[0]["rank0_ms"]["allreduce"] == 0 < rows[1]["rank0_ms"]["allreduce"]
    assert all(row["rank0_ms"]["build"] >= 0 and row["rank0_ms"]["compute"] > 0 for row in rows)


def test_the_demo_on_two_ranks_trains_together_and_rank_0_alone_reports(tmp_path):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_"))}
    out = tmp_path / "demo"
    command = "from minivlm.cli.main import main; raise SystemExit(main())"
    result = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, "-c", command,
         "demo", "--preset", "tiny", "--out-dir", str(out)],
        env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("minivlm demo: training") == 1  # rank 0 speaks, once
    assert "on 2 ranks" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    # rank 0 evaluated iid, rank 1 heldout: both reach rank 0's report
    assert metrics["iid/exact_match"] >= 0 and metrics["heldout/exact_match"] >= 0


def test_ranks_2_starts_mpiexec_itself_and_trains_as_two_ranks(one_process, tmp_path):
    """`minivlm train --ranks 2` is `mpiexec -n 2 minivlm train` (mpi_train.py's run, from
    the command line): the weights of one process, to float32 rounding."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_"))}
    environment["OPENBLAS_NUM_THREADS"] = "1"
    out = tmp_path / "two"
    flags = ["--preset", "tiny", "--steps", "6", "--checkpoint-every", "2", "--eval-every", "2"]
    result = subprocess.run(
        [sys.executable, "-m", "minivlm", "train", "--ranks", "2", *flags, "--out-dir", str(out)],
        env=environment, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "minivlm: 2 ranks: " in result.stdout and "on 2 ranks" in result.stdout
    _assert_close(out, one_process)


class _DoneAfter:
    """A request that completes at its n-th Test()."""

    def __init__(self, polls: int):
        self.polls = polls

    def Test(self) -> bool:  # noqa: N802 (mpi4py's name)
        self.polls -= 1
        return self.polls <= 0


def test_a_rank_that_waits_works_while_it_waits_and_sleeps_only_when_work_runs_out():
    group = MPIGroup.__new__(MPIGroup)  # the polling alone: no MPI needed
    group.rank, group.size, group.timeout = 0, 2, 10.0
    pieces = iter(range(3))  # three pieces of work, then none
    group.while_waiting = lambda: next(pieces, None) is not None
    request = _DoneAfter(polls=6)
    group._wait(request, "a test")
    assert request.polls == 0 and next(pieces, None) is None  # all three done, then polled on
