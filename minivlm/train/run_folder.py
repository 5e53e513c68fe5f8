"""A run's folder: one writer at a time, no run started over another by mistake, and a
log that matches the checkpoint a run resumes from.

    OUT/run.lock        the pid of the run that holds the folder (an fcntl lock on it,
                        which the kernel releases when that process dies, even by kill -9)
    OUT/log.jsonl       one JSON record a logged step
    OUT/checkpoints/    see minivlm.train.checkpoint
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..checkpoint import atomic_write_bytes
from .checkpoint import checkpoint_root, clean_leftovers, remove_folder, step_folders

LOCK_FILE = "run.lock"
LOG_FILE = "log.jsonl"


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (in use, or holding another run)."""


class RunLock:
    """Hold OUT/run.lock while a run writes to OUT; a second writer gets RunFolderError.

    A lock left by a killed run is stale: its process is gone, so the kernel has dropped
    the lock, and the file's pid is only reported (`stale_pid`)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / LOCK_FILE
        self.handle: int | None = None
        self.stale_pid: str | None = None

    def __enter__(self) -> RunLock:
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(handle)
        except OSError:
            holder = os.read(handle, 64).decode(errors="replace").strip() or "unknown"
            os.close(handle)
            raise RunFolderError(
                f"--out-dir {self.path.parent}: in use by another run (pid {holder}, "
                f"{self.path}); wait for it to end or choose another --out-dir"
            ) from None
        self.stale_pid = os.read(handle, 64).decode(errors="replace").strip() or None
        os.ftruncate(handle, 0)
        os.lseek(handle, 0, os.SEEK_SET)
        os.write(handle, f"{os.getpid()}\n".encode())
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        os.ftruncate(self.handle, 0)  # an empty lock file: the last run ended cleanly
        os.close(self.handle)  # releases the lock
        self.handle = None


def _lock(handle: int) -> None:
    if os.name == "posix":
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:  # Windows: lock the first byte
        import msvcrt

        msvcrt.locking(handle, msvcrt.LK_NBLCK, 1)


def holds_a_run(out_dir: Path) -> list[str]:
    """What of a run `out_dir` holds: its log and checkpoint folders (empty: none)."""
    out = Path(out_dir)
    found = [f.name for f in step_folders(out)]
    if (checkpoint_root(out) / "latest").exists():
        found.append("checkpoints/latest")
    if (out / LOG_FILE).exists():
        found.append(LOG_FILE)
    return found


def prepare(out_dir: Path, resume: bool, overwrite: bool, lock: RunLock) -> None:
    """Check the (locked) folder against what was asked and tidy it: leftovers of
    interrupted writes removed, and with `overwrite` the previous run's log and
    checkpoints too."""
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite: expected one of them, got both")
    say = _notice
    if lock.stale_pid is not None:
        say(f"{lock.path}: stale lock of pid {lock.stale_pid} (that run was killed); taken over")
    removed = clean_leftovers(out_dir)
    if removed:
        say(f"removed leftovers of interrupted writes: {removed}")
    existing = holds_a_run(out_dir)
    if not existing or resume:
        return
    if not overwrite:
        raise RunFolderError(
            f"--out-dir {out_dir} already holds a run ({', '.join(existing[:4])}); "
            "pass --overwrite to replace it (or, with `minivlm train`, --resume to continue it)"
        )
    if checkpoint_root(out_dir).exists():
        remove_folder(checkpoint_root(out_dir))
    (Path(out_dir) / LOG_FILE).unlink(missing_ok=True)
    say(f"--overwrite: removed the previous run's {', '.join(existing[:4])}")


def truncate_log(out_dir: Path, step: int) -> int:
    """Keep the log's records up to `step` (a resumed checkpoint's), dropping the later
    ones and a line torn by a kill; returns how many lines were dropped."""
    path = Path(out_dir) / LOG_FILE
    if not path.exists():
        return 0
    lines = path.read_bytes().split(b"\n")
    kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
    dropped = sum(1 for line in lines if line.strip()) - len(kept)
    if dropped:
        atomic_write_bytes(path, b"".join(line + b"\n" for line in kept))
    return dropped


def _step_of(line: bytes) -> int | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if type(step) is int else None


def _notice(text: str) -> None:
    print(f"minivlm train: {text}", file=sys.stderr, flush=True)
