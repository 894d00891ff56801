# cython: language_level=3
"""Batch normalisation over an (N, C, M) view (M = every axis after the channels), parallel
over channels, statistics accumulated in double.

Forward normalises with the batch mean and biased variance (two passes: mean, then squared
deviations, which stays accurate when the mean is large) and returns them with 1/sqrt(var+eps)
so the caller can update running statistics and run the backward pass without keeping x-hat.

Each channel is N contiguous planes of M values.  A channel's later passes re-read what its
first pass brought into the core's cache (a (32, 64, 32, 32) float32 channel is 128 KiB), and
its first passes ask for each next plane ahead (``_prefetch``), so most of the time goes into
arithmetic, every float converted to double.  The sums over a plane are kept in LANES
independent double accumulators: one running sum is a chain of dependent additions, one per
value, which the compiler may not reorder without -ffast-math; LANES of them are a fixed
summation order that it turns into vector additions, with the same result on every build.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel
from libc.math cimport sqrt

from cnnkit._ext._omp cimport note_team, omp_last_team

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define cnnkit_prefetch_read(p) __builtin_prefetch((p), 0)
    #define cnnkit_prefetch_write(p) __builtin_prefetch((p), 1)
    #else
    #define cnnkit_prefetch_read(p) ((void)(p))
    #define cnnkit_prefetch_write(p) ((void)(p))
    #endif
    """
    void prefetch_read "cnnkit_prefetch_read"(const void* p) noexcept nogil
    void prefetch_write "cnnkit_prefetch_write"(const void* p) noexcept nogil

# below this many elements a single thread is faster than waking the OpenMP team; each family module
# keeps its own threshold and team-size probe, so these few lines recur per module by design
cdef Py_ssize_t _PARALLEL_MIN = 16384
PARALLEL_MIN = _PARALLEL_MIN

# independent accumulators per plane sum (a multiple of every vector width in doubles)
cdef enum:
    LANES = 8


def last_team_size():
    """Threads of the last parallel region a batch-norm kernel ran (0 before the first)."""
    return omp_last_team()


cdef inline double _lanes_total(const double* acc) noexcept nogil:
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef inline double _plane_sum(const floating* p, Py_ssize_t m) noexcept nogil:
    """sum(p[:m]) in double."""
    cdef double acc[LANES]
    cdef Py_ssize_t j, k, body = m - m % LANES
    cdef double tail = 0
    for k in range(LANES):
        acc[k] = 0
    for j in range(0, body, 8):  # LANES
        for k in range(LANES):
            acc[k] = acc[k] + p[j + k]
    for j in range(body, m):
        tail = tail + p[j]
    return _lanes_total(acc) + tail


cdef inline double _plane_sq_dev(const floating* p, Py_ssize_t m, double mu) noexcept nogil:
    """sum((p[:m] - mu)**2) in double."""
    cdef double acc[LANES]
    cdef Py_ssize_t j, k, body = m - m % LANES
    cdef double d, tail = 0
    for k in range(LANES):
        acc[k] = 0
    for j in range(0, body, 8):  # LANES
        for k in range(LANES):
            d = p[j + k] - mu
            acc[k] = acc[k] + d * d
    for j in range(body, m):
        d = p[j] - mu
        tail = tail + d * d
    return _lanes_total(acc) + tail


cdef inline double _plane_dot_dev(const floating* dy, const floating* x, Py_ssize_t m,
                                   double mu) noexcept nogil:
    """sum(dy[:m] * (x[:m] - mu)) in double.  (Summed apart from sum(dy), which the same loop
    could add up: GCC 12 does not vectorise a loop whose loaded float feeds two sums.)"""
    cdef double acc[LANES]
    cdef Py_ssize_t j, k, body = m - m % LANES
    cdef double tail = 0
    for k in range(LANES):
        acc[k] = 0
    for j in range(0, body, 8):  # LANES
        for k in range(LANES):
            acc[k] = acc[k] + <double> dy[j + k] * (x[j + k] - mu)
    for j in range(body, m):
        tail = tail + <double> dy[j] * (x[j] - mu)
    return _lanes_total(acc) + tail


cdef enum:
    LINE = 64  # bytes per cache line
    PREFETCH_BYTES = 4096  # asked for ahead of each plane: one page


cdef inline void _prefetch(const void* p, Py_ssize_t nbytes, bint write) noexcept nogil:
    """Asks for the first lines of the plane after the one being processed.  A channel's
    planes lie a whole image apart, each one starting a new page, where the hardware
    prefetchers start learning again (the kernels ran about 10% faster on (32, 64, 32, 32))."""
    cdef const char* b = <const char*> p
    cdef Py_ssize_t off
    if nbytes > PREFETCH_BYTES:
        nbytes = PREFETCH_BYTES
    for off in range(0, nbytes, 64):  # LINE
        if write:
            prefetch_write(b + off)
        else:
            prefetch_read(b + off)


def batchnorm_forward(const floating[:, :, ::1] x, const floating[::1] weight,
                      const floating[::1] bias, floating[:, :, ::1] y, double eps,
                      double[::1] mean, double[::1] var, double[::1] invstd):
    """y = (x - mean) * invstd * weight + bias per channel; ``weight``/``bias`` may be None
    (both or neither).  ``mean``, ``var`` (biased) and ``invstd`` (C,) are outputs."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], m = x.shape[2]
    cdef Py_ssize_t ch, i, j
    cdef double acc, mu, inv, scale, shift, count = <double> (n * m)
    cdef const floating* xp
    cdef floating* yp
    cdef bint affine = weight is not None
    if n == 0 or c == 0 or m == 0:
        return
    with nogil, parallel(use_threads_if=n * c * m >= _PARALLEL_MIN):
        note_team()
        for ch in prange(c, schedule="static"):
            acc = 0
            for i in range(n):
                if i + 1 < n:
                    _prefetch(&x[i + 1, ch, 0], m * sizeof(floating), False)
                acc = acc + _plane_sum(&x[i, ch, 0], m)
            mu = acc / count
            acc = 0
            for i in range(n):
                acc = acc + _plane_sq_dev(&x[i, ch, 0], m, mu)
            mean[ch] = mu
            var[ch] = acc / count
            inv = 1.0 / sqrt(acc / count + eps)
            invstd[ch] = inv
            scale = inv * weight[ch] if affine else inv
            # centred first: x * scale + (bias - mu * scale) cancels when the mean is large
            shift = bias[ch] if affine else 0.0
            for i in range(n):
                if i + 1 < n:
                    _prefetch(&y[i + 1, ch, 0], m * sizeof(floating), True)
                xp = &x[i, ch, 0]
                yp = &y[i, ch, 0]
                for j in range(m):
                    yp[j] = <floating> ((xp[j] - mu) * scale + shift)


def batchnorm_backward(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                       const floating[::1] weight, const double[::1] mean,
                       const double[::1] invstd, floating[:, :, ::1] dx,
                       floating[::1] dweight, floating[::1] dbias):
    """dx = weight * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)); dweight = sum(dy * xhat),
    dbias = sum(dy) (both None without affine parameters)."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], m = x.shape[2]
    cdef Py_ssize_t ch, i, j
    cdef double sdy, sdyx, mu, inv, g, k, shift, count = <double> (n * m)
    cdef const floating* xp
    cdef const floating* gp
    cdef floating* dxp
    cdef bint affine = weight is not None
    if n == 0 or c == 0 or m == 0:
        return
    with nogil, parallel(use_threads_if=n * c * m >= _PARALLEL_MIN):
        note_team()
        for ch in prange(c, schedule="static"):
            mu = mean[ch]
            inv = invstd[ch]
            sdy = 0
            sdyx = 0
            for i in range(n):
                if i + 1 < n:
                    _prefetch(&dy[i + 1, ch, 0], m * sizeof(floating), False)
                    _prefetch(&x[i + 1, ch, 0], m * sizeof(floating), False)
                # the plane is in cache for the second sum
                sdy = sdy + _plane_sum(&dy[i, ch, 0], m)
                sdyx = sdyx + _plane_dot_dev(&dy[i, ch, 0], &x[i, ch, 0], m, mu)
            sdyx = sdyx * inv
            if affine:
                dweight[ch] = <floating> sdyx
                dbias[ch] = <floating> sdy
            g = inv * weight[ch] if affine else inv
            # dx = g * (dy - sdy / count - (x - mu) * inv * sdyx / count)
            k = g * inv * (sdyx / count)
            shift = g * (sdy / count)
            for i in range(n):
                if i + 1 < n:
                    _prefetch(&dx[i + 1, ch, 0], m * sizeof(floating), True)
                xp = &x[i, ch, 0]
                gp = &dy[i, ch, 0]
                dxp = &dx[i, ch, 0]
                for j in range(m):
                    dxp[j] = <floating> (g * gp[j] - shift - k * (xp[j] - mu))
