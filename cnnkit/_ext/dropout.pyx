# cython: language_level=3
"""Inverted dropout on flat (1-D, contiguous) views, GIL released.

The mask is counter-based: element i keeps its value when the splitmix64 hash of
``seed + (i + 1) * golden`` (as a uniform in [0, 1)) is at least p, so any thread can draw
element i's number without shared state, and the NumPy reference
(``cnnkit.builtin``'s dropout variant) draws the same numbers.  Arrays shorter than
``PARALLEL_MIN`` (forward, which hashes every element: a quarter of it) run on one thread.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel
from libc.stdint cimport uint64_t, uint8_t

from cnnkit._ext._omp cimport note_team, omp_last_team

cdef Py_ssize_t _PARALLEL_MIN = 32768
PARALLEL_MIN = _PARALLEL_MIN


def last_team_size():
    """Threads of the last parallel region a dropout kernel ran (0 before the first)."""
    return omp_last_team()


cdef inline double _uniform(uint64_t seed, uint64_t i) noexcept nogil:
    cdef uint64_t z = seed + (i + 1) * <uint64_t> 0x9E3779B97F4A7C15ULL
    z = (z ^ (z >> 30)) * <uint64_t> 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t> 0x94D049BB133111EBULL
    z = z ^ (z >> 31)
    return <double> (z >> 11) * (1.0 / 9007199254740992.0)


def dropout_forward(const floating[::1] x, floating[::1] y, uint8_t[::1] keep, uint64_t seed,
                    double p):
    """y = x / (1 - p) where the element's uniform is >= p, else 0; ``keep`` (or None) gets the
    mask."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef bint record = keep is not None
    cdef floating scale = <floating> (1.0 / (1.0 - p))
    cdef bint k
    with nogil, parallel(use_threads_if=n >= _PARALLEL_MIN // 4):
        note_team()
        for i in prange(n, schedule="static"):
            k = _uniform(seed, <uint64_t> i) >= p
            y[i] = x[i] * scale if k else 0
            if record:
                keep[i] = k


def dropout_backward(const floating[::1] dy, const uint8_t[::1] keep, floating[::1] dx, double p):
    cdef Py_ssize_t i, n = dy.shape[0]
    cdef floating scale = <floating> (1.0 / (1.0 - p))
    with nogil, parallel(use_threads_if=n >= _PARALLEL_MIN):
        note_team()
        for i in prange(n, schedule="static"):
            dx[i] = dy[i] * scale if keep[i] else 0
