"""Let large freed arrays stay in the process heap, to be reused by the next step.

glibc returns every block above 128 KiB-32 MiB (its adaptive mmap threshold) to the
operating system when it is freed, so each training step maps its large temporaries
afresh and pays a page fault per 4 KiB page on first touch: about a quarter of a
step's CPU time for the reference model here. Raising the mmap and trim thresholds
keeps those pages mapped between steps. This only changes where memory comes from,
never a result; on a C library without mallopt it does nothing.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds; True when the C library took both."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)
    )
