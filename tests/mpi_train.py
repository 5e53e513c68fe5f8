"""Run by tests/test_distributed.py under mpiexec: a tiny training run, optionally one
that a rank leaves at a given step by hanging or by dying.

    mpiexec -n P python tests/mpi_train.py OUT [--stop-at S] [--resume]
        [--fault hang|die --fault-rank R --fault-step S] [--rank-timeout T]
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from minivlm.train import Trainer, preset, train
from minivlm.train.distributed import process_group


def config(out: str, timeout: float):
    return preset(
        "tiny", out_dir=out, steps=6, checkpoint_every=2, eval_every=2, rank_timeout=timeout
    )


def install_fault(kind: str, step: int) -> None:
    """This rank hangs (sleeps for good) or dies (kill -9) before step `step`."""
    real = Trainer.train_step

    def faulty(self, *args, **kwargs):
        if self.step + 1 == step:
            if kind == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            while True:
                time.sleep(60)
        return real(self, *args, **kwargs)

    Trainer.train_step = faulty


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--stop-at", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--fault", choices=["hang", "die"])
    parser.add_argument("--fault-rank", type=int, default=1)
    parser.add_argument("--fault-step", type=int, default=3)
    parser.add_argument("--rank-timeout", type=float, default=120.0)
    args = parser.parse_args()
    settings = config(args.out, args.rank_timeout)
    group = process_group(settings.device, settings.rank_timeout)
    if args.fault and group.rank == args.fault_rank:
        install_fault(args.fault, args.fault_step)
    train(settings, resume=args.resume, stop_at=args.stop_at, group=group)


if __name__ == "__main__":
    main()
