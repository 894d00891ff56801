"""Process-level tuning applied when cnnkit is imported.

glibc returns freed blocks above its (dynamic) mmap threshold straight to the kernel, so every
new activation array of a training step is fresh memory that page-faults in again; on the
LeNet-5 step that is several hundred page faults and a third of the time.  Raising the mmap
and trim thresholds keeps such blocks in the heap for reuse, as PyTorch's caching allocator
does for its tensors.  Set ``CNNKIT_MALLOC_TUNING=0`` to leave the allocator alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 * 2**20
TRIM_THRESHOLD_BYTES = 256 * 2**20

applied = False


def tune_malloc() -> bool:
    """Raise glibc's mmap/trim thresholds; returns True if they were changed."""
    global applied
    if applied or os.environ.get("CNNKIT_MALLOC_TUNING", "1") in ("0", "", "false", "no"):
        return applied
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    applied = ok
    return ok
