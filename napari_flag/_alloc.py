"""Keep glibc from unmapping the encoder's activation buffers after every batch.

A convnet forward pass on the CPU allocates tens of MB of activations per
batch and frees them at the end.  glibc serves blocks above its mmap
threshold with fresh ``mmap`` calls and returns the top of the heap to the
kernel once more than the trim threshold is free, so every batch page-faults
its buffers in again: on a 2-core CPU EfficientNet-Lite0 ran at 7-8 ms per
224 px patch with ~3,000 minor faults per patch, and at 4 ms with none once
the buffers stayed mapped (``benchmarks/wsi_profile.py`` measures the whole
path).  Fixing the two thresholds (which also stops glibc's own dynamic
adjustment) keeps freed buffers for the next batch; the encoder's CPU batch
is sized so that its largest activation stays below the mmap threshold.

Threads add to it: glibc gives new threads heaps of their own (arenas), and a
prediction's job, reader and tile threads come and go, so the encoder's
buffers landed in a fresh heap now and then and were faulted in again (1.4 to
7.9 million faults in one whole-slide run instead of 0.17 million, 10% more
wall time).  One arena for the process keeps them in the heap already mapped;
it is set when the package is imported, before any of its threads exist (set
later, the faults came back in 2 runs of 3).
"""
from __future__ import annotations

import ctypes
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_buffers_mapped"]

#: glibc's largest allowed mmap threshold on 64-bit systems
MMAP_THRESHOLD = 32 * 2**20
#: free memory at the top of the heap kept for reuse instead of being returned
TRIM_THRESHOLD = 512 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_applied: bool | None = None


def keep_buffers_mapped() -> bool:
    """Apply the thresholds and one arena once per process (glibc only); ``True`` when they are in force.

    Call it before the threads that allocate are made (a thread keeps the heap it first used).

    Process-wide by nature: the allocator belongs to the process.  The cost is
    that up to :data:`TRIM_THRESHOLD` of freed memory stays with the process.
    """
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL("libc.so.6").mallopt  # glibc's name: no ldconfig lookup at import
            except (OSError, AttributeError):  # musl and other libcs have no mallopt
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(_M_ARENA_MAX, 1))
    return _applied
