"""A training step's inputs handed out with their arrays already on the step's device.

On the CPU nothing moves: the prefetcher passes its source's items through as they are
asked for (a rank that builds its next batch while it waits for the others relies on
that: see loop.training_batches). On a GPU it keeps one item ahead: while step k runs,
the arrays of item k+1 are copied host to device on a side stream, from pinned (page-
locked) host memory, so the copy neither blocks Python nor waits in the compute
stream's queue; the compute stream waits on the copy's event before it reads them.

What moves is any item with `map_arrays(function)` (a copy with `function` applied to
each of its arrays: loop.StepInputs). `CudaCopy` is the only CuPy code here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from ..backend import check_device, require_cuda


class StayOnHost:
    """The CPU's copier: NumPy arrays are already where the step reads them."""

    ahead = 0  # items fetched before they are asked for

    def start(self, item):
        return item

    def finish(self, started):
        return started


class CudaCopy:
    """Host-to-device copies on a non-blocking side stream, from pinned staging buffers.

    start(item): stage each array in pinned memory, allocate its device array from the
    compute stream's pool, and queue the copy on the side stream; returns the item on
    the device and the copy's event. finish(...): the compute stream waits on that
    event (the host does not), and the item is handed out.
    """

    ahead = 1

    def __init__(self) -> None:
        self.cupy = require_cuda()
        self.stream = self.cupy.cuda.Stream(non_blocking=True)  # not ordered after stream 0
        self._staged: deque = deque()  # (event, pinned buffers) of copies maybe still running

    def start(self, item):
        import cupyx

        cupy = self.cupy
        # the device arrays come from the compute stream's pool, which may hand out memory
        # its queued kernels still read: the copies start after that queue
        self.stream.wait_event(cupy.cuda.get_current_stream().record())
        pinned = []

        def copy(host):  # host: a NumPy array (...), returns its device copy (...)
            staged = cupyx.empty_pinned(host.shape, host.dtype)
            staged[...] = host
            device = cupy.empty(host.shape, host.dtype)
            device.set(staged, stream=self.stream)  # asynchronous: staged is page-locked
            pinned.append(staged)
            return device

        on_device = item.map_arrays(copy)
        copied = self.stream.record()
        self._staged.append((copied, pinned))  # kept until the copy is done reading them
        return on_device, copied

    def finish(self, started):
        on_device, copied = started
        self.cupy.cuda.get_current_stream().wait_event(copied)
        while self._staged and self._staged[0][0].done:  # their copies are over
            self._staged.popleft()
        return on_device


class Prefetcher:
    """The items of `source` in order, each through copier.start then copier.finish, with
    copier.ahead items started before they are asked for.

    An error raised by the source while fetching ahead is raised where the pass-through
    would raise it: after the items before it have been handed out. close() closes the
    source (if it has close) and hands out nothing more.
    """

    def __init__(self, source: Iterator, copier: StayOnHost | CudaCopy) -> None:
        self.source, self.copier = source, copier
        self._started: deque = deque()  # started copies, oldest first
        self._end: BaseException | None = None  # what ended the source: StopIteration or its error

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self):
        self._start_up_to(1 + self.copier.ahead)  # the one to hand out and those ahead
        if self._started:
            return self.copier.finish(self._started.popleft())
        end, self._end = self._end, StopIteration()  # an error is raised once, then the end
        raise end

    def _start_up_to(self, count: int) -> None:
        while len(self._started) < count and self._end is None:
            try:
                item = next(self.source)
            except Exception as error:  # StopIteration included
                self._end = error
            else:
                self._started.append(self.copier.start(item))

    def close(self) -> None:
        for started in self._started:  # the compute stream waits for copies still running,
            self.copier.finish(started)  # so their memory is not reused under them
        self._started.clear()
        self._end = StopIteration()
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


def prefetch_to(device: str, source: Iterator) -> Prefetcher:
    """`source`'s items with their arrays on `device` (see the module's docstring)."""
    copier = CudaCopy() if check_device(device) == "cuda" else StayOnHost()
    return Prefetcher(source, copier)
