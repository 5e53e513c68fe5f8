"""Facts about the machine a benchmark ran on: CPU, BLAS, GPU, library versions, date.

The BLAS facts come from threadpoolctl when it is installed; otherwise from the OpenBLAS
library that NumPy loaded (found in /proc/self/maps and asked through ctypes for its
thread count, configuration and the core type it picked at run time).
"""

from __future__ import annotations

import ctypes
import datetime
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

# the environment variables that change how the BLAS libraries behave
BLAS_ENVIRONMENT = (
    "OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
    "CUPY_TF32", "NVIDIA_TF32_OVERRIDE",
)  # fmt: skip


_c_heap = {"keeps_freed_memory": False}


def keep_freed_memory() -> bool:
    """Apply minivlm's C-heap setting, as the `minivlm` command does before any command
    (large freed arrays stay mapped for the next step: see minivlm/backend.py), and
    remember it for the report. True when the C library took it."""
    from minivlm.backend import keep_freed_memory as raise_malloc_thresholds

    _c_heap["keeps_freed_memory"] = raise_malloc_thresholds()
    return _c_heap["keeps_freed_memory"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _openblas_library():
    """(ctypes library, symbol prefix) of the OpenBLAS that NumPy loaded, or None."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = sorted({line.split()[-1] for line in maps.splitlines() if "openblas" in line.lower()})
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas_", "64_"), ("openblas_", "64_"), ("openblas_", "")):
            if hasattr(library, f"{prefix}get_num_threads{suffix}"):
                return library, prefix, suffix, path
    return None


def _openblas_facts() -> dict | None:
    found = _openblas_library()
    if found is None:
        return None
    library, prefix, suffix, path = found

    def call(name: str, restype):
        function = getattr(library, f"{prefix}{name}{suffix}", None)
        if function is None:
            return None
        function.restype = restype
        value = function()
        return value.decode() if isinstance(value, bytes) else value

    return {
        "library": path,
        "threads": call("get_num_threads", ctypes.c_int),
        "config": call("get_config", ctypes.c_char_p),
        "core": call("get_corename", ctypes.c_char_p),
    }


def _threadpoolctl_facts() -> list[dict] | None:
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl.threadpool_info()


def blas_threads() -> int:
    """The number of threads NumPy's BLAS runs a matmul on."""
    pools = _threadpoolctl_facts()
    if pools:
        blas = [pool for pool in pools if pool.get("user_api") == "blas"]
        if blas:
            return int(blas[0]["num_threads"])
    openblas = _openblas_facts()
    if openblas and openblas["threads"]:
        return int(openblas["threads"])
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return usable_cores()


def numpy_build_blas() -> dict | None:
    """The BLAS section of numpy.show_config(), as a dict (NumPy >= 1.25)."""
    try:
        config = np.show_config(mode="dicts")
    except TypeError:  # older NumPy prints only
        return None
    return config.get("Build Dependencies", {}).get("blas")


def gpu_facts() -> dict | None:
    """Name, memory and compute capability of GPU 0 as CuPy sees it; None without one."""
    from minivlm.backend import DeviceError, require_cuda

    try:
        cupy = require_cuda()
    except DeviceError:
        return None
    properties = cupy.cuda.runtime.getDeviceProperties(0)
    name = properties["name"]
    return {
        "name": name.decode() if isinstance(name, bytes) else name,
        "memory_bytes": int(properties["totalGlobalMem"]),
        "compute_capability": f"{properties['major']}.{properties['minor']}",
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
    }


def library_versions() -> dict:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for package in ("pillow", "torch", "cupy", "cupy-cuda12x", "cupy-cuda13x", "minivlm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    if "minivlm" not in versions:  # run from a checkout, not installed
        import minivlm

        versions["minivlm"] = minivlm.__version__
    return versions


def machine_facts(command: str) -> dict:
    """Everything a reader needs to reproduce or judge a benchmark run."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_cores": usable_cores(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "blas_threads": blas_threads(),
        "blas": {
            "numpy_build": numpy_build_blas(),
            "openblas_runtime": _openblas_facts(),
            "threadpoolctl": _threadpoolctl_facts(),
        },
        "environment": {name: os.environ[name] for name in BLAS_ENVIRONMENT if name in os.environ},
        "c_heap_keeps_freed_memory": _c_heap["keeps_freed_memory"],
        "gpu": gpu_facts(),
        "versions": library_versions(),
        "python_executable": sys.executable,
    }


def describe(facts: dict) -> str:
    """Two lines for the top of a terminal table (three when the CPU was busy)."""
    runtime = facts["blas"]["openblas_runtime"] or {}
    blas = runtime.get("config") or (facts["blas"]["numpy_build"] or {}).get("name", "unknown BLAS")
    gpu = facts["gpu"]["name"] if facts["gpu"] else "no GPU"
    versions = ", ".join(f"{name} {version}" for name, version in facts["versions"].items())
    heap = "; freed memory kept in the C heap" if facts["c_heap_keeps_freed_memory"] else ""
    text = (
        f"{facts['cpu_model']}, {facts['cpu_cores']} cores, BLAS {blas} "
        f"({facts['blas_threads']} threads); {gpu}{heap}\n{versions}; {facts['date']}"
    )
    load = facts["load_average"]
    if load and load[0] > 0.5 * facts["cpu_cores"]:
        text += (
            f"\nwarning: load average {load[0]:.1f} on {facts['cpu_cores']} cores when the run "
            "started: other processes took CPU time, so the timings are noisy"
        )
    return text
