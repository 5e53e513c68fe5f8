"""`minivlm bench train --ranks 1,2`: training samples per second on 1, 2, ... MPI ranks
of one machine, and the scaling efficiency.

Each count P runs `mpiexec -n P` real training steps of a preset (its own batches, built
by every rank as training builds them, the allreduce, AdamW) and rank 0 times them after
a warm-up. All counts share the machine's cores: 1 rank uses all of them (BLAS and the
attention kernel one thread a core); P ranks get cores // P cores each (see
minivlm.train.distributed) and one thread a core. The counts run in alternating blocks
(1, 2, 1, 2, ...) and each reports its median block.

    efficiency(P) = samples/s(P) / samples/s(1)        on the same cores

so 1.0 means P processes use the cores as well as one process's threads do.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ..backend import usable_cores


def mpiexec() -> str:
    """The mpiexec next to this Python (the mpich wheel's), else the one on PATH."""
    found = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which(
        "mpiexec"
    )
    if found is None:
        raise ValueError('--ranks: needs mpiexec and mpi4py: pip install "minivlm[mpi]"')
    return found


def run_once(ranks: int, model: str, steps: int, warmup: int) -> dict:
    """One `mpiexec -n ranks` run of the worker below: its rank 0's timing."""
    threads = str(max(1, usable_cores() // ranks))
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_"))}
    environment |= {"OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
    worker = [sys.executable, "-m", "minivlm.bench.ranks", model, str(steps), str(warmup)]
    result = subprocess.run(
        [mpiexec(), "-n", str(ranks), *worker],
        env=environment, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"{ranks} ranks exited {result.returncode}: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_ranks(counts: list[int], model: str, steps: int, warmup: int, blocks: int, log) -> dict:
    runs: dict[int, list[dict]] = {p: [] for p in counts}
    for block in range(blocks):
        for p in counts:
            runs[p].append(run_once(p, model, steps, warmup))
            log(f"block {block + 1}/{blocks}, {p} rank(s): {runs[p][-1]['samples_per_s']:.1f}/s")
    rows = []
    for p in counts:
        rates = [r["samples_per_s"] for r in runs[p]]
        median = sorted(runs[p], key=lambda r: r["samples_per_s"])[(len(rates) - 1) // 2]
        rows.append(
            {
                "ranks": p,
                "samples_per_s": statistics.median(rates),
                "blocks": rates,
                "rank0_ms": median["rank0_ms"],  # the median block's (the lower of two)
            }
        )
    base = rows[0]["samples_per_s"] if counts[0] == 1 else None
    for row in rows:
        row["efficiency"] = base and row["samples_per_s"] / base
    return {"model": model, "steps": steps, "warmup": warmup, "cores": usable_cores(), "rows": rows}


def format_ranks_table(report: dict, machine: str) -> str:
    lines = [
        machine,
        f"{report['model']} preset, {report['steps']} training steps after {report['warmup']} "
        f"warm-up, {report['cores']} cores shared by the ranks; median of "
        f"{len(report['rows'][0]['blocks'])} alternating blocks",
        f"{'ranks':>5}  {'samples/s':>10}  {'blocks':>24}  {'efficiency':>10}  "
        f"{'rank 0, ms a step: build / compute / allreduce':>46}",
    ]
    for row in report["rows"]:
        blocks = ", ".join(f"{r:.1f}" for r in row["blocks"])
        efficiency = "" if row["efficiency"] is None else f"{row['efficiency']:.2f}"
        ms = row["rank0_ms"]
        parts = f"{ms['build']:.1f} / {ms['compute']:.1f} / {ms['allreduce']:.1f}"
        lines.append(
            f"{row['ranks']:>5}  {row['samples_per_s']:>10.1f}  {blocks:>24}  {efficiency:>10}  "
            f"{parts:>46}"
        )
    lines.append(
        "build: what is left of this rank's rows when the step starts; compute: forward, "
        "backward, clipping, AdamW; allreduce: waiting for the other ranks (building the "
        "next batch meanwhile) and the sum"
    )
    return "\n".join(lines)


def _worker(model: str, steps: int, warmup: int) -> None:
    """Under mpiexec: train `warmup` + `steps` steps of preset `model` as training does
    (each rank its rows, its next batch built while it waits at the allreduce); rank 0
    prints JSON: samples/s and where its time went, in ms a step."""
    from ..train import Trainer, preset
    from ..train.distributed import process_group
    from ..train.loop import training_batches

    config = preset(model, steps=steps + warmup, warmup_steps=1, progress=False)
    group = process_group(config.device, config.rank_timeout)
    trainer = Trainer.create(config, group)
    trainer.share_weights()
    clock = time.perf_counter
    parts = {"build": 0.0, "allreduce": 0.0, "step": 0.0}
    allreduce = group.allreduce_sum

    def timed_allreduce(buffer, what: str) -> None:  # the waiting, and building meanwhile
        began = clock()
        allreduce(buffer, what)
        parts["allreduce"] += clock() - began

    group.allreduce_sum = timed_allreduce
    with training_batches(trainer, config.steps) as batches:
        for step in range(warmup + steps):
            if step == warmup:
                group.barrier("the timing's start")
                started = clock()
                parts = dict.fromkeys(parts, 0.0)
            began = clock()
            batch = next(batches)
            built = clock()
            trainer.train_step(batch)
            parts["build"] += built - began
            parts["step"] += clock() - built
    seconds = clock() - started
    if group.rank == 0:
        rate = steps * config.batch_size / seconds
        ms = {name: 1e3 * value / steps for name, value in parts.items()}
        ms["compute"] = ms.pop("step") - ms["allreduce"]  # forward, backward, clip, AdamW
        print(json.dumps({"ranks": group.size, "samples_per_s": rate, "seconds": seconds,
                          "rank0_ms": ms}))  # fmt: skip


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
