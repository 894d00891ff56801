"""Process-level tuning applied when cnnkit is imported.

OpenMP waiting (:func:`openmp_wait_policy`): after a parallel region libgomp's idle threads
spin, by default for 300000 iterations (about 5 ms on the CPUs measured), before they sleep.
A training step runs a region every few hundred microseconds, so the team's helper threads
never sleep: on an idle machine they spin on idle cores, but beside a busy process they take
its core and the Python thread's time, and a LeNet-5 step went from 5 ms to 30 ms.  Spinning
about 0.3 ms (``GOMP_SPINCOUNT=10000``) still bridges the gap between consecutive kernels of a
step, and stops soon after.  libgomp reads the setting once, when it is loaded (by cnnkit's
kernels), so it is set just for that moment and removed again: child processes and other
OpenMP runtimes loaded later (PyTorch ships its own) do not inherit it.  A user who sets
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` keeps that; ``CNNKIT_OMP_TUNING=0`` leaves libgomp
alone.

glibc returns freed blocks above its (dynamic) mmap threshold straight to the kernel, so every
new activation array of a training step is fresh memory that page-faults in again; on the
LeNet-5 step that is several hundred page faults and a third of the time.  Raising the mmap
and trim thresholds keeps such blocks in the heap for reuse, as PyTorch's caching allocator
does for its tensors.  Set ``CNNKIT_MALLOC_TUNING=0`` to leave the allocator alone.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 * 2**20
TRIM_THRESHOLD_BYTES = 256 * 2**20

applied = False

#: GOMP_SPINCOUNT cnnkit's OpenMP runtime is loaded with, unless the user chose a wait policy
SPIN_COUNT = "10000"
_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _off(var):
    return os.environ.get(var, "1").strip().lower() in ("0", "", "false", "no")


@contextlib.contextmanager
def openmp_wait_policy():
    """Context around the first load of the kernels (and so of libgomp): a short spin before
    idle OpenMP threads sleep, unless the user set a wait policy or ``CNNKIT_OMP_TUNING=0``."""
    if _off("CNNKIT_OMP_TUNING") or any(v in os.environ for v in _WAIT_VARS):
        yield
        return
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    try:
        yield
    finally:
        os.environ.pop("GOMP_SPINCOUNT", None)


def tune_malloc() -> bool:
    """Raise glibc's mmap/trim thresholds; returns True if they were changed."""
    global applied
    if applied or _off("CNNKIT_MALLOC_TUNING"):
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
