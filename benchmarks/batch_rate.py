"""How fast batches of the demo preset are built: in this process, and ahead by worker
processes (what a GPU run needs: the step there takes less than building its batch).

usage: python benchmarks/batch_rate.py [--batches 12] [--workers 1 2] [--preset demo]

"in process" times Trainer's prepared stream (scenes drawn and rendered, captions and
questions, collated, augmented, weighed and split: what a data worker does) batch by
batch. "N workers" times stream_batches with N spawned workers from the first batch
handed out to the last (start-up not counted), in samples/s. Prints the CPU.
"""

from __future__ import annotations

import minivlm  # before NumPy: the allocator and thread settings come first

minivlm.backend.keep_freed_memory()

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from minivlm.bench.harness import cpu_model  # noqa: E402
from minivlm.data.stream import stream_batches  # noqa: E402
from minivlm.train import Trainer, preset  # noqa: E402
from minivlm.train.loop import PreparedStream  # noqa: E402


def in_process_rate(prepared: PreparedStream, batch_size: int, batches: int) -> float:
    """Samples/s of building one batch after another here (median over the batches)."""
    prepared.batch(0)  # first-use costs (fonts, caches)
    seconds = []
    for step in range(1, batches + 1):
        started = time.perf_counter()
        prepared.batch(step)
        seconds.append(time.perf_counter() - started)
    return batch_size / statistics.median(seconds)


def worker_rate(prepared: PreparedStream, batch_size: int, batches: int, workers: int) -> float:
    """Samples/s of `workers` processes building batches ahead, after the first arrives."""
    built = stream_batches(prepared, 0, batches + 1, workers)
    try:
        next(built)  # start-up: spawning and importing
        started = time.perf_counter()
        for _ in built:
            pass
        return batch_size * batches / (time.perf_counter() - started)
    finally:
        built.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    trainer = Trainer.create(preset(args.preset, progress=False))
    prepared = PreparedStream(trainer.stream(), trainer.preparation())
    size = trainer.config.batch_size
    print(f"{args.preset} preset, batches of {size}; CPU: {cpu_model()}")
    print(f"  in process   {in_process_rate(prepared, size, args.batches):7.0f} samples/s")
    for workers in args.workers:
        rate = worker_rate(prepared, size, args.batches, workers)
        print(f"  {workers} worker{'s' if workers > 1 else ' '}    {rate:7.0f} samples/s")


if __name__ == "__main__":
    main()
