"""Timing and memory helpers shared by the benchmarks.

A measurement runs `fn(i)` for i = 0, 1, 2, ...: the benchmark rotates its input sets
with i, so that no repeat finds the previous repeat's data hot in the caches. The first
`warmup` calls are not recorded. A clock turns one call into seconds:

    CPU             time.perf_counter around the call
    CuPy (GPU)      CUDA events recorded on the current stream before and after the call
    PyTorch (GPU)   torch.cuda events, the same way

While the timed calls run, /proc/stat says how busy all CPUs were; minus this process's
own CPU time (all its threads), that is the share of the machine other processes took:
`others_cpu_share`, 0 on an idle machine. On a shared machine it tells which timings
were disturbed.

Peak memory is measured in a separate call, never a timed one (tracing slows NumPy's
allocations down):

    tracemalloc     NumPy reports every array buffer it allocates to tracemalloc, so the
                    traced peak is the peak of Python and NumPy memory allocated during
                    the call (PyTorch's CPU allocator does not report to it)
    RSS delta       the process's peak resident set (VmHWM, reset through
                    /proc/self/clear_refs) minus its resident set before the call; it sees
                    every allocator. Freed memory that the C allocator keeps would be
                    resident already and not counted again, so glibc's malloc_trim hands
                    it back to the OS first
    CuPy pool       bytes the memory pool holds after the call minus the bytes in use
                    before it, with the pool emptied first (it grows to the peak, and keeps it)
    torch.cuda      max_memory_allocated after reset_peak_memory_stats, minus what was
                    allocated before
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

Clock = Callable[[Callable[[], object]], float]


@dataclass(frozen=True)
class Stats:
    """Summary of repeated timings, in seconds."""

    median: float
    min: float
    max: float
    p10: float
    p90: float
    q1: float
    q3: float
    repeats: int
    others_cpu_share: float | None = None  # of all cores' time, during the timed calls
    tries: int = 1  # measurements made; this is the least disturbed one

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def to_json(self) -> dict:
        return {**asdict(self), "unit": "s"}


def summarize(seconds: list[float], others_cpu_share: float | None = None) -> Stats:
    """Median, extremes and percentiles of `seconds` (at least one value)."""
    if not seconds:
        raise ValueError("summarize: needs at least one timing, got none")
    values = np.asarray(seconds, dtype=np.float64)
    p10, q1, median, q3, p90 = np.percentile(values, [10, 25, 50, 75, 90])
    return Stats(
        median=float(median),
        min=float(values.min()),
        max=float(values.max()),
        p10=float(p10),
        p90=float(p90),
        q1=float(q1),
        q3=float(q3),
        repeats=len(seconds),
        others_cpu_share=others_cpu_share,
    )


def cpu_clock(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cupy_clock(fn: Callable[[], object]) -> float:
    """Seconds between CUDA events recorded before and after `fn` on CuPy's stream."""
    import cupy

    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) / 1e3  # ms -> s


def torch_cuda_clock(fn: Callable[[], object]) -> float:
    """Seconds between torch.cuda events recorded before and after `fn`."""
    import torch

    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) / 1e3  # ms -> s


def measure(
    fn: Callable[[int], object],
    *,
    repeats: int,
    warmup: int,
    clock: Clock = cpu_clock,
    settle: float = 0.0,
    retries: int = 0,
    max_others_share: float = 1.0,
) -> Stats:
    """Stats of `repeats` timed calls fn(warmup), fn(warmup + 1), ... after `warmup` calls.

    `settle` seconds of sleep come first: the worker threads of the library that ran
    before (OpenBLAS, OpenMP) spin for a while after their last task and would take
    cores from this measurement. While other processes took more than `max_others_share`
    of the machine, the whole measurement is made again, at most `retries` more times,
    and the least disturbed one is kept.
    """
    if repeats < 1 or warmup < 0 or retries < 0:
        raise ValueError(
            f"measure: repeats must be >= 1, warmup and retries >= 0, got {repeats}, "
            f"{warmup} and {retries}"
        )
    best = _measure_once(fn, repeats, warmup, clock, settle)
    for tries in range(2, retries + 2):
        if best.others_cpu_share is None or best.others_cpu_share <= max_others_share:
            break
        stats = _measure_once(fn, repeats, warmup, clock, settle)
        if stats.others_cpu_share < best.others_cpu_share:
            best = stats
        best = replace(best, tries=tries)
    return best


def settings(config) -> dict:
    """measure()'s keyword arguments from a benchmark config's fields of the same meaning."""
    if not 0.0 <= config.max_others_share <= 1.0:
        raise ValueError(f"max_others_share must be in [0, 1], got {config.max_others_share}")
    return {
        "repeats": config.repeats,
        "warmup": config.warmup,
        "settle": config.settle_seconds,
        "retries": config.retries,
        "max_others_share": config.max_others_share,
    }


def _measure_once(fn, repeats: int, warmup: int, clock: Clock, settle: float) -> Stats:
    time.sleep(settle)
    for index in range(warmup):
        clock(lambda index=index: fn(index))
    contention = Contention()
    seconds = [clock(lambda index=index: fn(index)) for index in range(warmup, warmup + repeats)]
    return summarize(seconds, contention.others_share())


class Contention:
    """How much of the machine's CPU time other processes used since this was made."""

    def __init__(self):
        self.machine_busy = _machine_busy_seconds()
        self.own = time.process_time()  # user + system time of every thread of this process
        self.wall = time.perf_counter()

    def others_share(self) -> float | None:
        """CPU seconds of other processes / (wall seconds x cores), in [0, 1]; None off Linux."""
        machine_busy = _machine_busy_seconds()
        if machine_busy is None or self.machine_busy is None:
            return None
        others = (machine_busy - self.machine_busy) - (time.process_time() - self.own)
        capacity = (time.perf_counter() - self.wall) * (os.cpu_count() or 1)
        return min(max(others / capacity, 0.0), 1.0)


def _machine_busy_seconds() -> float | None:
    """Non-idle CPU seconds of all CPUs since boot, from /proc/stat (None off Linux)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    busy_ticks = user + nice + system + irq + softirq + steal
    return busy_ticks / os.sysconf("SC_CLK_TCK")


# -- memory --------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    """A 'VmRSS'/'VmHWM' line of /proc/self/status, in KiB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Set VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _trim_c_heap() -> None:
    """Return the C heap's free memory to the OS (glibc's malloc_trim; elsewhere nothing)."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def cpu_peak_memory(fn: Callable[[], object]) -> dict:
    """{'tracemalloc_peak_bytes', 'rss_delta_bytes'} of one call of `fn` (None if unknown)."""
    gc.collect()
    _trim_c_heap()
    rss_before = _status_kib("VmRSS")
    can_reset = _reset_rss_peak()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    traced_before = tracemalloc.get_traced_memory()[0]
    fn()
    traced_peak = tracemalloc.get_traced_memory()[1] - traced_before
    if not was_tracing:
        tracemalloc.stop()
    rss_peak = _status_kib("VmHWM")
    rss_delta = None
    if can_reset and rss_before is not None and rss_peak is not None:
        rss_delta = max(rss_peak - rss_before, 0) * 1024
    return {"tracemalloc_peak_bytes": traced_peak, "rss_delta_bytes": rss_delta}


def cupy_peak_memory(fn: Callable[[], object]) -> dict:
    """{'device_peak_bytes'}: growth of CuPy's default pool during one call of `fn`."""
    import cupy

    pool = cupy.get_default_memory_pool()
    cupy.cuda.Device().synchronize()
    pool.free_all_blocks()
    in_use_before = pool.used_bytes()
    fn()
    cupy.cuda.Device().synchronize()
    return {"device_peak_bytes": int(pool.total_bytes() - in_use_before)}


def torch_cuda_peak_memory(fn: Callable[[], object]) -> dict:
    """{'device_peak_bytes'}: torch.cuda's peak allocation during one call beyond the start."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    allocated_before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return {"device_peak_bytes": int(torch.cuda.max_memory_allocated() - allocated_before)}


def format_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.2f}"


def format_mib(size_bytes: int | None) -> str:
    return "-" if size_bytes is None else f"{size_bytes / 2**20:.1f}"


def format_percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f}"
