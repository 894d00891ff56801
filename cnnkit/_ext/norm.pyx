# cython: language_level=3
"""Batch normalisation over an (N, C, M) view (M = every axis after the channels), parallel
over channels, statistics accumulated in double.

Forward normalises with the batch mean and biased variance (two passes: mean, then squared
deviations, which stays accurate when the mean is large) and returns them with 1/sqrt(var+eps)
so the caller can update running statistics and run the backward pass without keeping x-hat.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel
from libc.math cimport sqrt

from cnnkit._ext._omp cimport note_team, omp_last_team

# below this many elements a single thread is faster than waking the OpenMP team; each family module
# keeps its own threshold and team-size probe, so these few lines recur per module by design
cdef Py_ssize_t _PARALLEL_MIN = 16384
PARALLEL_MIN = _PARALLEL_MIN


def last_team_size():
    """Threads of the last parallel region a batch-norm kernel ran (0 before the first)."""
    return omp_last_team()


def batchnorm_forward(const floating[:, :, ::1] x, const floating[::1] weight,
                      const floating[::1] bias, floating[:, :, ::1] y, double eps,
                      double[::1] mean, double[::1] var, double[::1] invstd):
    """y = (x - mean) * invstd * weight + bias per channel; ``weight``/``bias`` may be None
    (both or neither).  ``mean``, ``var`` (biased) and ``invstd`` (C,) are outputs."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], m = x.shape[2]
    cdef Py_ssize_t ch, i, j
    cdef double acc, d, mu, inv, scale, shift, count = <double> (n * m)
    cdef bint affine = weight is not None
    if n == 0 or c == 0 or m == 0:
        return
    with nogil, parallel(use_threads_if=n * c * m >= _PARALLEL_MIN):
        note_team()
        for ch in prange(c, schedule="static"):
            acc = 0
            for i in range(n):
                for j in range(m):
                    acc = acc + x[i, ch, j]
            mu = acc / count
            acc = 0
            for i in range(n):
                for j in range(m):
                    d = x[i, ch, j] - mu
                    acc = acc + d * d
            mean[ch] = mu
            var[ch] = acc / count
            inv = 1.0 / sqrt(acc / count + eps)
            invstd[ch] = inv
            scale = inv * weight[ch] if affine else inv
            shift = (bias[ch] if affine else 0.0) - mu * scale
            for i in range(n):
                for j in range(m):
                    y[i, ch, j] = <floating> (x[i, ch, j] * scale + shift)


def batchnorm_backward(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                       const floating[::1] weight, const double[::1] mean,
                       const double[::1] invstd, floating[:, :, ::1] dx,
                       floating[::1] dweight, floating[::1] dbias):
    """dx = weight * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)); dweight = sum(dy * xhat),
    dbias = sum(dy) (both None without affine parameters)."""
    # walks each channel like batchnorm_forward; the two passes differ in what they sum, so a
    # shared loop would branch per element
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], m = x.shape[2]
    cdef Py_ssize_t ch, i, j
    cdef double sdy, sdyx, mu, inv, g, xh, count = <double> (n * m)
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
                for j in range(m):
                    sdy = sdy + dy[i, ch, j]
                    sdyx = sdyx + dy[i, ch, j] * (x[i, ch, j] - mu)
            sdyx = sdyx * inv
            if affine:
                dweight[ch] = <floating> sdyx
                dbias[ch] = <floating> sdy
            g = inv * weight[ch] if affine else inv
            sdy = sdy / count
            sdyx = sdyx / count
            for i in range(n):
                for j in range(m):
                    xh = (x[i, ch, j] - mu) * inv
                    dx[i, ch, j] = <floating> (g * (dy[i, ch, j] - sdy - xh * sdyx))
