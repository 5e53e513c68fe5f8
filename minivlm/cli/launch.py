"""`--ranks` of `minivlm demo` and `minivlm train`: start the run under mpiexec.

`minivlm demo --ranks 2` is `mpiexec -n 2 minivlm demo`: this process starts mpiexec on
the same command line and waits for it; the ranks it starts see that a launcher started
them (distributed.launched_ranks) and train together (see train/distributed.py).

"auto" takes 2 ranks on a CPU run where this process may use 2 or more cores, the batch
divides by 2 and MPI is installed (`pip install "minivlm[mpi]"`: mpi4py, and the mpich
wheel's mpiexec), else 1. Each rank of a 2-core machine then keeps one core busy with
its half of the batch: the elementwise NumPy work that one process runs on one core
runs on both (1.41x the samples/s of one process on the 2-core AMD EPYC machine,
`minivlm bench train --ranks 1,2`). A run's numbers follow from its seed, commit and
number of ranks: 1 and 2 ranks agree to float32 rounding, then drift apart as any two
roundings of a long run do.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

from ..backend import usable_cores
from ..train.distributed import launched_ranks

AUTO = "auto"
AUTO_RANKS = 2  # the most ranks "auto" takes: what was measured (2-core machines)


def parse_ranks(text: str) -> str | int:
    """--ranks: "auto" or a positive int."""
    if text == AUTO:
        return AUTO
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ValueError(f"--ranks: expected 'auto' or a positive integer, got {text!r}")


def mpiexec_path() -> str | None:
    """The mpiexec beside this Python (the mpich wheel's), else the first on PATH;
    None without mpi4py, which the ranks need to talk."""
    if importlib.util.find_spec("mpi4py") is None:
        return None
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.is_file() else shutil.which("mpiexec")


def ranks_to_start(requested: str | int | None, batch_size: int, device: str) -> int:
    """How many ranks this command should start (1: train in this process; so does
    None, --ranks not given to `minivlm train`).

    Under a launcher already, none are started: an explicit N must match its count.
    "auto" says so when only the lack of MPI keeps it to one process."""
    launched = launched_ranks()
    if launched > 1 or requested is None:
        if requested not in (None, AUTO, launched):
            raise ValueError(
                f"--ranks {requested}: this process is one of {launched} ranks that a "
                f"launcher started; leave --ranks out, or give {launched}"
            )
        return 1
    if requested == AUTO:
        enough = device == "cpu" and usable_cores() >= AUTO_RANKS and batch_size % AUTO_RANKS == 0
        if not enough:
            return 1
        if mpiexec_path() is None:
            print(
                f'minivlm: training in one process; with MPI (pip install "minivlm[mpi]") '
                f"--ranks auto would start {AUTO_RANKS}, about 1.4x as fast on 2 cores",
                flush=True,
            )
            return 1
        return AUTO_RANKS
    if batch_size % requested:
        raise ValueError(
            f"--ranks {requested}: expected a number of ranks that divides the batch size "
            f"{batch_size}"
        )
    if requested > 1 and mpiexec_path() is None:
        raise ValueError(
            f"--ranks {requested}: needs MPI (mpi4py and an mpiexec): "
            'pip install "minivlm[mpi]", or --ranks 1'
        )
    return requested


def run_ranks(ranks: int, argv: list[str]) -> int:
    """Run `minivlm ARGV` as `ranks` MPI ranks on this machine; their exit status."""
    command = [mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "minivlm", *argv]
    print(f"minivlm: {ranks} ranks: {' '.join(command)}", flush=True)
    return subprocess.run(command).returncode
