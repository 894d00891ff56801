# cython: language_level=3
"""Mish, y = x * tanh(softplus(x)), forward and backward on flat contiguous arrays.

``floating`` is Cython's fused type: each function is compiled once for float32 and once for
float64 and the right one is picked from the arrays passed in.  The maths runs in double
either way (the accuracy of float32 results then depends only on the final rounding).  Loops
release the GIL and run on the OpenMP team when the array is large enough for threads to pay.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp

#: Below this many elements one thread is faster than waking the OpenMP team.
cdef Py_ssize_t PARALLEL_MIN = 32768


cdef inline double _tanh_softplus(double v, double *sig) noexcept nogil:
    """tanh(log(1 + e^v)) and, in ``sig``, the logistic sigmoid of v.

    With e = e^v, tanh(log(1 + e)) = ((1 + e)^2 - 1) / ((1 + e)^2 + 1) = n / (n + 2) with
    n = e (e + 2): no log, no tanh, and no overflow as long as v <= 20, past which the result
    is 1 to double precision (and the sigmoid is 1 - e^-v).
    """
    cdef double e, n
    if v > 20.0:
        e = exp(-v)
        sig[0] = 1.0 / (1.0 + e)
        return 1.0
    e = exp(v)
    n = e * (e + 2.0)
    sig[0] = e / (1.0 + e)
    return n / (n + 2.0)


def mish_forward(const floating[::1] x, floating[::1] y):
    """y = x * tanh(softplus(x))."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef double v, s
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n >= PARALLEL_MIN):
        v = x[i]
        y[i] = <floating>(v * _tanh_softplus(v, &s))


def mish_backward(const floating[::1] dy, const floating[::1] x, floating[::1] dx):
    """dx = dy * (t + x * sigmoid(x) * (1 - t^2)) with t = tanh(softplus(x))."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef double v, t, s
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n >= PARALLEL_MIN):
        v = x[i]
        t = _tanh_softplus(v, &s)
        dx[i] = <floating>(dy[i] * (t + v * s * (1.0 - t * t)))
