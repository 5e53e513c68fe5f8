"""Kill soak: SIGKILL `minivlm train` at random moments, resume it, and check that the
resumed run ends bit for bit equal to an uninterrupted one.

usage: python benchmarks/kill_soak.py [--trials 40] [--seed 0] [--workdir DIR]

Each trial starts the tiny preset in a fresh folder and kills it (SIGKILL, nothing can
clean up) either after a random time or at a random file-system call of a checkpoint
write (the k-th os.fsync or os.replace: a file written but not renamed, a staging
folder complete but not moved, `latest` not yet replaced). Then `minivlm train --resume`
(or, when no checkpoint was written yet, `--overwrite`) runs it to the end, and its final
weights, optimizer moments, training state and log must equal the uninterrupted run's.
tests/test_reliability_kill.py runs a few trials of this harness; this script, many.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = 8
FLAGS = ["--preset", "tiny", "--steps", str(STEPS), "--checkpoint-every", "2", "--eval-every", "4"]
FLAGS += ["--task", "mix", "--encoder-dropout", "0.1", "--keep-checkpoints", "2"]

# Runs `minivlm` in a process that SIGKILLs itself at its KILL_AT-th os.fsync or os.replace.
KILL_AT_CALL = """
import os, signal, sys
count, target = [0], int(os.environ["KILL_AT"])
def dying(original):
    def call(*args, **kwargs):
        count[0] += 1
        if count[0] == target:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    return call
os.fsync, os.replace = dying(os.fsync), dying(os.replace)
from minivlm.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "minivlm", "train", *FLAGS, "--out-dir", str(out), *extra]


def _run(command: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=environment)


def outcome(out: Path) -> dict:
    """What a finished run leaves, without what may differ (timings, its own folder)."""
    checkpoints = out / "checkpoints"
    final = checkpoints / (checkpoints / "latest").read_text().strip()
    state = json.loads((final / "trainer.json").read_text())
    state["train_config"].pop("out_dir")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for record in log:
        record.pop("samples_per_s")
    return {
        "checkpoint": final.name,
        "weights": (final / "model.safetensors").read_bytes(),
        "optimizer": (final / "optimizer.safetensors").read_bytes(),
        "state": state,
        "log": log,
        "folders": sorted(p.name for p in checkpoints.iterdir()),
    }


def reference(workdir: Path) -> tuple[dict, float]:
    """The uninterrupted run's outcome, and its wall time in seconds."""
    out = workdir / "reference"
    started = time.perf_counter()
    result = _run(_command(out))
    if result.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed: {result.stderr}")
    return outcome(out), time.perf_counter() - started


def _leftovers(out: Path) -> list[str]:
    places = [out, out / "checkpoints"]
    return [p.name for d in places if d.is_dir() for p in d.iterdir() if p.name.startswith(".")]


def trial(
    workdir: Path, name: str, rng: random.Random, expected: dict, mode: str, duration: float
) -> dict:
    """One kill ("time": before `duration` s, or "write"), one resume, one comparison;
    returns what happened."""
    out = workdir / name
    if mode == "write":
        kill_at = rng.randint(1, 60)  # a tiny run of 8 steps makes about 70 such calls
        killed = _run(
            [sys.executable, "-c", KILL_AT_CALL, "train", *FLAGS, "--out-dir", str(out)],
            {"KILL_AT": str(kill_at)},
        )
        where = f"file-system call {kill_at}"
    else:
        process = subprocess.Popen(_command(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        delay = rng.uniform(0.3, 0.95) * duration  # the import takes about half of it
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed = process
        where = f"{delay:.2f} s"
    was_killed = killed.returncode == -signal.SIGKILL
    leftovers = _leftovers(out)
    has_checkpoint = (out / "checkpoints").is_dir() and any(
        p.name.startswith("step_") for p in (out / "checkpoints").iterdir()
    )
    resumed = _run(_command(out, "--resume" if has_checkpoint else "--overwrite"))
    if resumed.returncode != 0:
        raise AssertionError(f"{name}: killed at {where}; the resumed run failed: {resumed.stderr}")
    got = outcome(out)
    differing = [key for key in expected if got[key] != expected[key]]
    if differing:
        raise AssertionError(f"{name}: killed at {where}; after resuming, {differing} differ")
    if _leftovers(out):
        raise AssertionError(f"{name}: leftovers remain after resuming: {_leftovers(out)}")
    return {
        "name": name,
        "mode": mode,
        "where": where,
        "killed": was_killed,
        "mid_write": bool(leftovers) or (mode == "write" and was_killed),
        "leftovers": leftovers,
        "resumed_with": "--resume" if has_checkpoint else "--overwrite",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder, removed")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kill_soak."))
    rng = random.Random(args.seed)
    expected, duration = reference(workdir)
    results = []
    try:
        for index in range(args.trials):
            mode = rng.choice(["time", "write"])
            results.append(trial(workdir, f"trial_{index:03d}", rng, expected, mode, duration))
            r = results[-1]
            print(
                f"{r['name']}: {r['mode']:5s} kill at {r['where']:22s} killed={r['killed']!s:5s} "
                f"mid-write={r['mid_write']!s:5s} {r['resumed_with']}: equal",
                flush=True,
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    kills = sum(r["killed"] for r in results)
    mid_write = sum(r["mid_write"] for r in results)
    print(
        f"{len(results)} trials, {kills} SIGKILLs ({mid_write} during a checkpoint write): "
        "every resumed run equal, bit for bit, to the uninterrupted one"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
