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
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_buffers_mapped"]

#: glibc's largest allowed mmap threshold on 64-bit systems
MMAP_THRESHOLD = 32 * 2**20
#: free memory at the top of the heap kept for reuse instead of being returned
TRIM_THRESHOLD = 512 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_applied: bool | None = None


def keep_buffers_mapped() -> bool:
    """Apply the thresholds once per process (glibc only); ``True`` when they are in force.

    Process-wide by nature: the allocator belongs to the process.  The cost is
    that up to :data:`TRIM_THRESHOLD` of freed memory stays with the process.
    """
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # musl and other libcs have no mallopt
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
