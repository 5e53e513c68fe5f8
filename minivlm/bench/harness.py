"""What the benchmarks share: check, then time; the machine; the report and its key check.

Check, then time: each implementation first computes the benchmark's results on input
set 0, and every result is compared with a reference (max |got - want| / max |want|);
only those that pass are timed. Timing interleaves them: round r runs each once, in
turn, on input set r mod S, so a machine that slows down for a while slows all alike;
the first `warmup` rounds are not recorded, and a row reports the median (and p10, p90)
of the rest. Implementations on different thread pools (NumPy's BLAS, PyTorch's OpenMP)
are not interleaved call by call: a pool's threads spin for a while after their last
task and would take the cores from the other. Each pool is timed in a block of its own
after SETTLE_S of idle, and the blocks alternate: `blocks` rounds of (pool A's block,
pool B's block, ...), the first `warmup` calls of each block unrecorded, the median
taken over all blocks, so a drift of the machine's speed reaches both alike.

Clocks: time.perf_counter on the CPU; on the GPU, CUDA events (CuPy's or torch.cuda's)
recorded around the call, so the time is the GPU's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..backend import usable_cores

Clock = Callable[[Callable[[], object]], float]
SETTLE_S = 0.2  # idle before each pool's timing, for the previous pool's threads to sleep


def cpu_clock(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def cupy_clock(call: Callable[[], object]) -> float:
    import cupy

    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    call()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) / 1e3  # ms -> s


def torch_cuda_clock(call: Callable[[], object]) -> float:
    import torch

    start, stop = (torch.cuda.Event(enable_timing=True) for _ in range(2))
    start.record()
    call()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) / 1e3  # ms -> s


class Candidate(NamedTuple):
    """An implementation: `results()` gives what is checked ({name: array}, input set 0);
    each of `runs` {phase: call} is timed, call(i) on input set i, by `clock`."""

    results: Callable[[], dict]
    runs: dict[str, Callable[[int], object]]
    clock: Clock = cpu_clock
    pool: str = "numpy"  # the thread pool it runs on
    tolerance: float | None = None  # its own, looser than check_then_time's (e.g. TF32)


def own_tolerance(candidate: Candidate, tolerance: dict) -> dict:
    """The candidate's tolerance for every reference entry: its own, or the shared one."""
    if candidate.tolerance is None:
        return tolerance
    return dict.fromkeys(tolerance, candidate.tolerance)


def relative_error(got, want: np.ndarray, floor: float = 1e-30) -> float:
    """max |got - want| / max(max |want|, floor); inf where got has NaN or inf."""
    got = np.asarray(got, dtype=np.float64)
    if got.shape != want.shape:
        raise ValueError(f"a result has shape {got.shape}, its reference {want.shape}")
    if not np.isfinite(got).all():
        return math.inf
    return float(np.abs(got - want).max(initial=0) / max(np.abs(want).max(initial=0), floor))


def row(name: str, status: str = "ok", reason: str | None = None, check=None, **fields) -> dict:
    """A report row: status ok, wrong, error or unavailable; why it was not timed; its check."""
    return {"implementation": name, "status": status, "reason": reason, "check": check, **fields}


def check(name: str, candidate: Candidate, reference: dict, tolerance: dict, floor: float):
    """The candidate's row after its check: ok, wrong (naming the worst entry) or error."""
    try:
        got = candidate.results()
        errors = {key: relative_error(got[key], want, floor) for key, want in reference.items()}
    except Exception as err:  # report it, go on with the others
        return row(name, "error", f"{type(err).__name__}: {err}")
    record = {"tolerance": max(tolerance.values()), "relative_errors": errors}
    wrong = [key for key in errors if not errors[key] <= tolerance[key]]
    if not wrong:
        return row(name, check=record)
    key = max(wrong, key=lambda k: errors[k] / tolerance[k])
    reason = f"{key}: relative error {errors[key]:.2e} > tolerance {tolerance[key]:.0e}"
    return row(name, "wrong", reason, record)


def time_interleaved(calls: dict, repeats: int, warmup: int) -> tuple[dict, dict]:
    """({name: [seconds]}, {name: error}) of `calls` {name: (call, clock)} timed in
    `repeats` interleaved rounds after `warmup`; a call that raises leaves the rounds."""
    seconds, errors = {name: [] for name in calls}, {}
    for index in range(warmup + repeats):
        for name, (call, clock) in calls.items():
            try:
                if name not in errors:
                    seconds[name].append(clock(lambda call=call, i=index: call(i)))
            except Exception as err:
                errors[name] = f"{type(err).__name__}: {err}"
    timings = {name: values[warmup:] for name, values in seconds.items() if name not in errors}
    return timings, errors


def summarize(seconds: Sequence[float]) -> dict:
    """Median, p10 and p90 of the timings, in seconds."""
    p10, median, p90 = np.percentile(seconds, [10, 50, 90]).tolist()
    return {"median": median, "p10": p10, "p90": p90, "repeats": len(seconds)}


def check_then_time(
    candidates: dict[str, Candidate],
    reference: dict[str, np.ndarray],
    tolerance: float | dict[str, float],
    repeats: int,
    warmup: int,
    floor: float = 1e-30,
    settle: float = SETTLE_S,
    blocks: int = 3,
) -> dict[str, dict]:
    """{name: row}: every candidate checked; then, phase by phase and pool by pool, the
    ones that passed timed, interleaved; row[phase] the summary (None where not timed).
    `tolerance` is one number or one per reference entry; `floor` keeps an entry whose
    reference is 0 from being judged against its own rounding noise."""
    if not isinstance(tolerance, dict):
        tolerance = dict.fromkeys(reference, tolerance)
    rows = {
        name: check(name, c, reference, own_tolerance(c, tolerance), floor)
        for name, c in candidates.items()
    }
    pools = list(dict.fromkeys(c.pool for c in candidates.values()))
    for phase in dict.fromkeys(phase for c in candidates.values() for phase in c.runs):
        seconds = {name: [] for name in candidates}
        for _ in range(blocks if len(pools) > 1 else 1):
            for pool in pools:
                calls = {name: (c.runs[phase], c.clock) for name, c in candidates.items()
                         if c.pool == pool and rows[name]["status"] == "ok"}  # fmt: skip
                time.sleep(settle if calls else 0)
                timings, errors = time_interleaved(calls, repeats, warmup)
                for name in calls:
                    seconds[name] += timings.get(name, [])
                    if name in errors:
                        rows[name].update(status="error", reason=errors[name])
        for name, result in rows.items():
            timed = seconds[name] and result["status"] == "ok"
            result[phase] = summarize(seconds[name]) if timed else None
    return rows


# -- what runs here, and the machine ----------------------------------------------------


def why_no_cuda() -> str | None:
    """None when CuPy can use a GPU here, else why not."""
    from ..backend import DeviceError, require_cuda

    try:
        require_cuda()
    except DeviceError as err:
        return str(err)
    return None


def why_no_torch(device: str = "cpu") -> str | None:
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if device == "cuda" and not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} sees no CUDA GPU"
    return None


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def blas_pools() -> list[dict] | None:
    """threadpoolctl's view of NumPy's BLAS (library, version, threads); None without it."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    keys = ("internal_api", "version", "num_threads", "architecture")
    pools = threadpoolctl.threadpool_info()
    return [{key: p.get(key) for key in keys} for p in pools if p.get("user_api") == "blas"]


def machine_facts() -> dict:
    """Everything a reader needs to judge or repeat a run. PyTorch (when installed) is
    given as many threads as NumPy's BLAS has."""
    from .. import __version__

    blas = blas_pools()
    blas_threads = blas[0]["num_threads"] if blas else None
    torch_threads = None
    if why_no_torch() is None:
        import torch

        torch.set_num_threads(blas_threads or torch.get_num_threads())
        torch_threads = torch.get_num_threads()
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for package in ("pillow", "torch", "cupy", "cupy-cuda12x", "cupy-cuda13x"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    gpu = None
    if why_no_cuda() is None:
        import cupy

        properties = cupy.cuda.runtime.getDeviceProperties(0)
        gpu = {key: properties[key] for key in ("name", "totalGlobalMem", "major", "minor")}
        gpu["name"] = gpu["name"].decode() if isinstance(gpu["name"], bytes) else gpu["name"]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["minivlm", *sys.argv[1:]]) if "bench" in sys.argv else "(python)",
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_cores": usable_cores(),
        "blas_threads": blas_threads,
        "blas": blas,
        "torch_threads": torch_threads,
        "gpu": gpu,
        "versions": {**versions, "minivlm": __version__},
    }


def describe(machine: dict) -> str:
    """The machine in one line, for the top of a table."""
    gpu = machine["gpu"]["name"] if machine["gpu"] else "no GPU"
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
    return (
        f"{machine['cpu_model']}, {machine['cpu_cores']} cores, BLAS threads "
        f"{machine['blas_threads']}, torch threads {machine['torch_threads']}; {gpu}; "
        f"{versions}; {machine['date']}"
    )


# -- options, the report and the table --------------------------------------------------


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def with_defaults(args: argparse.Namespace, defaults: dict, quick: dict) -> argparse.Namespace:
    """`args` with each option left None set to its default, or its --quick default."""
    chosen = {**defaults, **(quick if args.quick else {})}
    given = {
        key: value for key, value in vars(args).items() if value is not None or key not in chosen
    }
    return argparse.Namespace(**{**chosen, **given})


def options(name: str, add_arguments, argv, defaults: dict, quick: dict) -> argparse.Namespace:
    """The settings of a run, as `minivlm bench NAME ARGV` takes them."""
    parser = argparse.ArgumentParser(prog=f"minivlm bench {name}")
    add_arguments(parser)
    return with_defaults(parser.parse_args(argv), defaults, quick)


def settings(args: argparse.Namespace) -> dict:
    """The options of a run, for its report."""
    return {key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items() if not callable(value)}  # fmt: skip


def report_problems(report: dict, timed: Sequence[str]) -> list[str]:
    """The keys a report lacks or has of the wrong type ([] when none). Every row whose
    status is ok has a timing summary with a positive median in each field of `timed`."""
    none = type(None)
    shape = {
        "report": {"benchmark": str, "machine": dict, "config": dict, "results": list,
                   "ratios": list},
        "machine": {"date": str, "command": str, "cpu_model": str, "cpu_cores": int,
                    "blas_threads": (int, none), "gpu": (dict, none), "versions": dict},
        "row": {"implementation": str, "status": str, "reason": (str, none),
                "check": (dict, none)},
    }  # fmt: skip

    def problems(where: str, value, kind: str) -> list[str]:
        if not isinstance(value, dict):
            return [f"{where}: expected a dict, got {type(value).__name__}"]
        return [f"{where}: {key!r} missing or not {types}" for key, types in shape[kind].items()
                if not isinstance(value.get(key, ...), types)]  # fmt: skip

    found = problems("report", report, "report")
    if found:
        return found
    found += problems("machine", report["machine"], "machine")
    for index, result in enumerate(report["results"]):
        where = f"results[{index}]"
        found += problems(where, result, "row")
        if isinstance(result, dict) and result.get("status") == "ok":
            found += [f"{where}: {field!r} has no positive median" for field in timed
                      if not (result.get(field) or {}).get("median", 0) > 0]  # fmt: skip
    return found


def _finite(value):
    """The report with NaN and inf as None (JSON has neither)."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value.item() if isinstance(value, np.generic) else value


def write_report(report: dict, path: str | Path, timed: Sequence[str]) -> Path:
    """Check the report's keys, then write it as JSON, atomically (temporary file, rename)."""
    found = report_problems(report, timed)
    if found:
        raise ValueError("benchmark report is incomplete:\n" + "\n".join(found[:20]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as file:
        json.dump(_finite(report), file, indent=1)
    os.replace(temporary, path)
    return path


def ratios(results: list[dict], pairs, keys: Sequence[str], fields: Sequence[str]) -> list[dict]:
    """ours / theirs for each (ours, theirs) of `pairs` and each case (the values of `keys`)
    where both were timed: every field's ratio, of medians or of plain numbers (None
    where one is missing). Below 1 means ours is faster (or smaller)."""

    def value(field):
        return field["median"] if isinstance(field, dict) else field

    ok = {(r["implementation"], *(r[k] for k in keys)): r for r in results if r["status"] == "ok"}
    found = []
    for ours, theirs in pairs:
        for (name, *case), mine in ok.items():
            other = ok.get((theirs, *case))
            if name == ours and other:
                entry = {"ours": ours, "theirs": theirs, **dict(zip(keys, case, strict=True))}
                for field in fields:
                    both = value(mine[field]), value(other[field])
                    entry[field] = both[0] / both[1] if all(both) else None
                found.append(entry)
    return found


def spread(summary: dict | None, unit: float = 1e3, digits: int = 2) -> str:
    """'median [p10, p90]' in ms (unit 1e3) or us (1e6)."""
    if summary is None:
        return "-"
    median, p10, p90 = (unit * summary[key] for key in ("median", "p10", "p90"))
    return f"{median:.{digits}f} [{p10:.{digits}f}, {p90:.{digits}f}]"


def cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def results_table(results: list[dict], label: tuple, columns: dict) -> str:
    """A line per row: label (header, row -> text), then each of `columns` {header: row ->
    text}; rows not timed say why instead, those unavailable once at the end."""
    body, unavailable = [], {}
    for r in results:
        if r["status"] == "unavailable":
            unavailable[r["implementation"]] = not_timed(r)
        else:
            cells = [f(r) for f in columns.values()] if r["status"] == "ok" else [not_timed(r)]
            body.append([label[1](r), *cells])
    lines = [table([label[0], *columns], body)]
    return "\n".join(lines + [f"{name}: {why}" for name, why in unavailable.items()])


def ratios_table(entries: list[dict], keys: Sequence[str], fields: Sequence[str]) -> str:
    """ratios() as a table: ours/theirs and the case, then each field."""
    body = [[f"{e['ours']}/{e['theirs']}", *(e[k] for k in keys), *(cell(e[f]) for f in fields)]
            for e in entries]  # fmt: skip
    return table(["ours/theirs", *keys, *fields], body)


def not_timed(result: dict) -> str:
    """'WRONG: ...', 'ERROR: ...' or 'not available: ...' for a row that was not timed."""
    if result["status"] == "unavailable":
        return f"not available: {result['reason']}"
    return f"{result['status'].upper()}: {result['reason']}"


def table(header: Sequence[str], lines: Sequence[Sequence[object]]) -> str:
    """Columns as wide as their widest cell, the first left-aligned. A shorter line (what
    was not timed, and why) is written as it is and sets no width."""
    cells = [[str(item) for item in line] for line in [header, *lines]]
    full = [line for line in cells if len(line) == len(header)]
    widths = [max(len(line[i]) for line in full) for i in range(len(header))]

    def join(line):
        if len(line) < len(header):
            return "  ".join([line[0].ljust(widths[0]), *line[1:]])
        padded = [text.rjust(width) for text, width in zip(line, widths, strict=True)]
        return "  ".join([line[0].ljust(widths[0]), *padded[1:]])

    rule = "-" * len(join(cells[0]))
    return "\n".join([join(cells[0]), rule] + [join(line) for line in cells[1:]])


def log(line: str) -> None:
    """Progress goes to stderr, so stdout holds the table."""
    print(line, file=sys.stderr, flush=True)
