"""NumPy work shared out among one thread per CPU core.

NumPy releases the GIL inside ufuncs, reductions and matrix products, so threads that
each work on their own slice of the arrays run side by side. Two kinds of callers:

- the fused attention kernel (flash_attention.py) gives each thread a run of (batch,
  head) pairs;
- ops that work row by row (layer norm, ReLU) give each thread a run of rows, through
  `split_rows`, when the arrays are large enough to pay for waking a thread.

Each share writes only its own slices of the outputs, so the result does not depend on
thread timing.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
from threadpoolctl import ThreadpoolController

from ..backend import usable_cores

# Waking a worker thread and waiting for it costs about 60 us on the 2-core development
# machine, against about 0.2 ns an element for each pass of an elementwise op over arrays
# that fit the caches: split only work of at least this many element-passes (rows x
# columns x passes over them). Layer norm's forward of (4096, 128), about 4.7 M, ran
# 0.87 -> 0.59 ms on two threads; of (1536, 128) it would run 0.27 -> 0.31 ms.
SPLIT_MIN_WORK = 3_000_000


def run_shares(work: Callable, shares: Sequence) -> None:
    """work(share) for every share, the first on this thread, the others on the pool.

    BLAS is held to one thread meanwhile (threadpoolctl): each thread multiplies its own
    slices, where OpenBLAS's own threads would split every small product and wait for
    each other (on a busy machine, 10x slower than one thread). NumPy's error state is per
    thread (a context variable): each task runs in a copy of the caller's context, so
    np.errstate reaches it.
    """
    with _BLAS_LOCK, _blas_controller().limit(limits=1, user_api="blas"):
        if len(shares) == 1:
            work(shares[0])
            return
        pool = _pool(len(shares) - 1)
        tasks = [pool.submit(contextvars.copy_context().run, work, s) for s in shares[1:]]
        try:
            work(shares[0])
        finally:
            wait(tasks)
        for task in tasks:
            task.result()  # re-raises a worker's exception here


def split_rows(work: Callable, array, passes: int) -> None:
    """work(rows) over the rows (first axis) of `array`: one run of rows (a slice) a core
    for a NumPy array of at least SPLIT_MIN_WORK element-passes, else work(...) here, the
    Ellipsis standing for the whole array of any shape.

    `passes`: about how many times the work reads or writes an array of `array`'s size.
    A row's result does not depend on the other rows, but a row sum taken by BLAS may
    differ in its last bit with the cut (BLAS takes rows in blocks): results are
    deterministic for a given number of cores.
    """
    count = min(usable_cores(), array.shape[0] if array.ndim else 1)
    if not isinstance(array, np.ndarray) or count < 2 or array.size * passes < SPLIT_MIN_WORK:
        work(...)
        return
    rows = array.shape[0]
    run_shares(work, [slice(i * rows // count, (i + 1) * rows // count) for i in range(count)])


# One caller at a time changes the process-wide BLAS thread count and restores it (a
# second thread calling in waits for the first).
_BLAS_LOCK = threading.Lock()


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="minivlm-cpu")


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()
