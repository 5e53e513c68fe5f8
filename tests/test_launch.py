"""--ranks of `minivlm demo` and `minivlm train`: how many ranks a command starts.

The start itself (mpiexec) is tested in test_distributed.py, where MPI is installed.
"""

from __future__ import annotations

import pytest

from minivlm.cli import launch
from minivlm.cli.main import main
from minivlm.train.distributed import SIZE_VARIABLES


@pytest.fixture
def machine(monkeypatch):
    """Set the cores, whether MPI is installed, and whether a launcher started us."""

    def set_up(cores: int, mpi: bool, launched: int = 1) -> None:
        monkeypatch.setattr(launch, "usable_cores", lambda: cores)
        monkeypatch.setattr(launch, "mpiexec_path", lambda: "/usr/bin/mpiexec" if mpi else None)
        for name in SIZE_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        if launched > 1:
            monkeypatch.setenv("PMI_SIZE", str(launched))

    return set_up


@pytest.mark.parametrize(
    ("cores", "mpi", "device", "batch", "ranks"),
    [
        (2, True, "cpu", 64, 2),
        (16, True, "cpu", 64, 2),  # auto takes what was measured, no more
        (1, True, "cpu", 64, 1),
        (2, True, "cuda", 64, 1),
        (2, True, "cpu", 7, 1),
        (2, False, "cpu", 64, 1),
    ],
)
def test_auto_takes_two_ranks_on_two_cores_with_mpi(machine, cores, mpi, device, batch, ranks):
    machine(cores, mpi)
    assert launch.ranks_to_start("auto", batch, device) == ranks


def test_auto_without_mpi_says_how_to_get_the_second_rank(machine, capsys):
    machine(2, mpi=False)
    assert launch.ranks_to_start("auto", 64, "cpu") == 1
    assert 'pip install "minivlm[mpi]"' in capsys.readouterr().out


def test_an_explicit_count_is_checked_against_the_batch_and_mpi(machine):
    machine(2, mpi=True)
    assert launch.ranks_to_start(4, 64, "cpu") == 4
    assert launch.ranks_to_start(None, 64, "cpu") == 1
    with pytest.raises(ValueError, match="--ranks 3: .*divides the batch size 64"):
        launch.ranks_to_start(3, 64, "cpu")
    machine(2, mpi=False)
    with pytest.raises(ValueError, match=r"--ranks 2: needs MPI .*minivlm\[mpi\]"):
        launch.ranks_to_start(2, 64, "cpu")


def test_a_rank_started_by_a_launcher_starts_no_more(machine):
    machine(2, mpi=True, launched=2)
    assert launch.ranks_to_start("auto", 64, "cpu") == 1
    assert launch.ranks_to_start(2, 64, "cpu") == 1
    with pytest.raises(ValueError, match="--ranks 4: this process is one of 2 ranks"):
        launch.ranks_to_start(4, 64, "cpu")


@pytest.mark.parametrize("text", ["0", "-1", "two", ""])
def test_a_bad_ranks_flag_is_named(text, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--preset", "tiny", "--ranks", text])
    assert stopped.value.code == 2
    assert f"argument --ranks: expected 'auto' or a positive integer, got {text!r}" in (
        capsys.readouterr().err
    )
