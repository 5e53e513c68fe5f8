"""Data-parallel training: P processes ("ranks"), one batch, one allreduce a step.

    mpiexec -n P minivlm train ...        (MPI through mpi4py: pip install "minivlm[mpi]")

Every rank builds the same global batch of B rows (a batch is a function of its step)
and the same augmentations and per-target loss weights w (summing to 1 over the whole
batch). Rank r trains on rows r*B/P .. (r+1)*B/P - 1, so its loss is its share of the
global loss and its gradient g_r the share of the global gradient:

    loss = sum_r loss_r,    g = sum_r g_r        (one allreduce, SUM, over a flat buffer)

After the allreduce every rank holds g (to float32 rounding: the sum is taken in another
order than one process takes it) and takes the same clipped AdamW step, so the weights
stay equal without being sent; rank 0's are broadcast once at the start. Only rank 0
writes logs and checkpoints; a checkpoint holds no trace of P, so a run resumes under
any P' that divides B. Dropout draws from a generator seeded by (seed, step, rank).

With --device cuda the gradients are allreduced on the GPUs with NCCL through CuPy
(cupy.cuda.nccl), one process a GPU, MPI only telling the ranks NCCL's id.

A rank that dies ends the job (mpiexec stops the others). A rank that hangs is noticed
by the others: each waits at most `rank_timeout` seconds for a step's allreduce, then
says so and aborts the job, instead of waiting for ever.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import numpy as np

from ..backend import get_array_module

# what the launchers of MPICH (Hydra), Open MPI and Slurm set in each rank's environment
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS")


class RankTimeout(RuntimeError):
    """The other ranks did not join a collective within the timeout."""


class SingleProcess:
    """P = 1: every collective is the identity."""

    rank, size = 0, 1
    local_rank, local_size = 0, 1  # on this machine

    def allreduce_sum(self, buffer, what: str) -> None:
        pass

    def broadcast(self, buffer, what: str) -> None:
        pass

    def barrier(self, what: str) -> None:
        pass

    def gather(self, value, what: str) -> list:
        return [value]

    def abort(self, message: str) -> None:
        raise RuntimeError(message)


class MPIGroup:
    """The ranks of MPI's COMM_WORLD. Every collective first waits, with a timeout, for
    all ranks to arrive (a non-blocking barrier, polled): a blocking call would wait for
    a hung rank for ever.

    Then the collective itself is MPI's blocking one. Its non-blocking twin, polled, is
    no alternative: MPICH moves a non-blocking collective on only inside MPI calls, so a
    large allreduce that goes in several rounds waits a poll's pause between rounds (a
    2-rank sum of the demo's 1.04 M gradients on 2 cores: 8.3 ms polled every 2 ms,
    1.6 ms blocking)."""

    def __init__(self, timeout: float) -> None:
        from mpi4py import MPI

        self.MPI, self.comm, self.timeout = MPI, MPI.COMM_WORLD, timeout
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this machine
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        # work to do while waiting for the other ranks, a piece a call (False: none left);
        # training sets it to BatchBuilder.build_one
        self.while_waiting: Callable[[], bool] | None = None

    def allreduce_sum(self, buffer: np.ndarray, what: str) -> None:
        """buffer (n,) float32, in place: the sum over the ranks."""
        self.barrier(what)
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)

    def broadcast(self, buffer: np.ndarray, what: str) -> None:
        """buffer, in place: rank 0's."""
        self.barrier(what)
        self.comm.Bcast(buffer, root=0)

    def barrier(self, what: str) -> None:
        """Return once every rank has called barrier; RankTimeout after `timeout` s."""
        self._wait(self.comm.Ibarrier(), what)

    def gather(self, value, what: str) -> list | None:
        """Every rank's `value` (any picklable object), in rank order, on rank 0; None on
        the others."""
        self.barrier(what)
        return self.comm.gather(value, root=0)

    def abort(self, message: str) -> None:
        """Say why, then leave at once with status 1; mpiexec then stops the other ranks.
        Not MPI_Abort, whose kill can overtake the message on its way out through
        mpiexec (seen: a job that ended with status 1 and printed nothing), and not a
        normal exit, whose MPI_Finalize would wait on the collective that never ends."""
        print(f"minivlm train (rank {self.rank}): error: {message}", file=sys.stderr, flush=True)
        os._exit(1)

    def _wait(self, request, what: str) -> None:
        """Poll until done; between polls, do a piece of `while_waiting`'s work, or when
        there is none, sleep (from 20 us up to 0.5 ms) to leave the cores to the other
        ranks, which share them on a small machine."""
        started, pause = time.monotonic(), 2e-5
        while not request.Test():
            if time.monotonic() - started > self.timeout:
                raise RankTimeout(
                    f"rank {self.rank} of {self.size}: the other ranks did not join {what} "
                    f"within {self.timeout:g} s (--rank-timeout); one has hung or died"
                )
            if self.while_waiting is not None and self.while_waiting():
                continue
            time.sleep(pause)
            pause = min(2 * pause, 5e-4)


class NCCLGroup(MPIGroup):
    """MPI's ranks, each on its own GPU, reducing device buffers with NCCL."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        import cupy
        from cupy.cuda import nccl

        cupy.cuda.Device(self.local_rank % cupy.cuda.runtime.getDeviceCount()).use()  # a GPU a rank
        unique_id = nccl.get_unique_id() if self.rank == 0 else None
        unique_id = self.comm.bcast(unique_id, root=0)
        self.nccl, self.cupy = nccl, cupy
        self.nccl_comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)

    def allreduce_sum(self, buffer, what: str) -> None:
        """buffer (n,) float32 on the GPU, in place: the sum over the ranks."""
        stream = self.cupy.cuda.get_current_stream()
        self.nccl_comm.allReduce(
            buffer.data.ptr, buffer.data.ptr, buffer.size,
            self.nccl.NCCL_FLOAT32, self.nccl.NCCL_SUM, stream.ptr,
        )  # fmt: skip
        stream.synchronize()

    def broadcast(self, buffer, what: str) -> None:
        stream = self.cupy.cuda.get_current_stream()
        self.nccl_comm.bcast(buffer.data.ptr, buffer.size, self.nccl.NCCL_FLOAT32, 0, stream.ptr)
        stream.synchronize()


ProcessGroup = SingleProcess | MPIGroup  # NCCLGroup is an MPIGroup


def launched_ranks() -> int:
    """How many ranks the launcher started (1 when run on its own)."""
    for name in SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def process_group(device: str = "cpu", timeout: float = 300.0) -> ProcessGroup:
    """The group this process belongs to: SingleProcess, MPIGroup or, on GPUs, NCCLGroup."""
    if launched_ranks() == 1:
        return SingleProcess()
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise ValueError(
            f"started as one of {launched_ranks()} ranks, but mpi4py is not installed: "
            'pip install "minivlm[mpi]"'
        ) from None
    group = NCCLGroup(timeout) if device == "cuda" else MPIGroup(timeout)
    if device == "cpu":
        _share_cores(group.local_rank, group.local_size)
    return group


def _share_cores(local_rank: int, local_size: int) -> None:
    """Give each of the machine's `local_size` ranks its own share of the cores this
    process may use (unless the launcher has bound it already: `-bind-to core`), and BLAS
    one thread per core of the share. Otherwise every rank's BLAS and attention threads
    would run on every core, P times as many threads as cores."""
    from threadpoolctl import threadpool_limits

    if not hasattr(os, "sched_getaffinity"):
        threadpool_limits(max(1, (os.cpu_count() or 1) // local_size), user_api="blas")
        return
    available = sorted(os.sched_getaffinity(0))
    per_rank = max(1, len(available) // local_size)
    if len(available) > per_rank and len(available) >= local_size:  # not bound yet
        os.sched_setaffinity(0, available[local_rank * per_rank : (local_rank + 1) * per_rank])
    threadpool_limits(per_rank, user_api="blas")


class FlatGradients:
    """The parameters' gradients copied into one flat float32 buffer, reduced there in one
    collective, and handed back as views of it; two more slots carry the step's loss and
    its weight total (see Trainer.train_step)."""

    def __init__(self, params: list) -> None:
        self.params = params
        self.sizes = [p.data.size for p in params]
        self.ends = np.cumsum(self.sizes)  # (n_params,)
        xp = get_array_module(params[0].data)
        self.buffer = xp.zeros(int(self.ends[-1]) + 2, dtype=np.float32)  # (total + 2,)

    def allreduce(self, group, loss: float, total: float, step: int) -> tuple[float, float]:
        """Sum every parameter's gradient, `loss` and `total` over the ranks; returns the
        summed loss and total.
        A gradient that is None on this rank counts as 0; it stays None when it is 0 on
        every rank (no rank's loss reached the parameter)."""
        flat, start = self.buffer, 0
        for param, end in zip(self.params, self.ends, strict=True):
            if param.grad is None:
                flat[start:end] = 0
            else:
                flat[start:end] = param.grad.ravel()
            start = int(end)
        flat[-2], flat[-1] = loss, total
        group.allreduce_sum(flat, f"step {step}'s gradient allreduce")
        start = 0
        for param, end in zip(self.params, self.ends, strict=True):
            piece = flat[start : int(end)]
            if param.grad is not None or piece.any():
                param.grad = piece.reshape(param.data.shape).astype(param.data.dtype, copy=False)
            start = int(end)
        return float(flat[-2]), float(flat[-1])

    def broadcast_weights(self, group) -> None:
        """Every rank's parameters become rank 0's."""
        xp = get_array_module(self.params[0].data)
        flat = xp.concatenate([p.data.ravel().astype(np.float32) for p in self.params])
        group.broadcast(flat, "the start's weight broadcast")
        start = 0
        for param, end in zip(self.params, self.ends, strict=True):
            param.data[...] = flat[start : int(end)].reshape(param.data.shape)
            start = int(end)
