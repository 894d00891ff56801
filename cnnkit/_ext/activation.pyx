# cython: language_level=3
"""Elementwise activations on flat (1-D, contiguous) views, GIL released.

Arrays shorter than ``PARALLEL_MIN`` run on one thread: below that, waking the OpenMP team
costs more than the loop.  The backward passes only need the forward output ``y``.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, expf, tanh, tanhf, fabs, fabsf

cdef Py_ssize_t PARALLEL_MIN = 32768


cdef inline floating _sigmoid(floating v) noexcept nogil:
    """Logistic without overflow: exp only ever sees a non-positive argument."""
    cdef floating e, r
    if floating is float:
        e = expf(-fabsf(v))
    else:
        e = exp(-fabs(v))
    r = 1 / (1 + e)
    # both branches computed, then selected: signs are random in practice, a branch mispredicts
    return r if v >= 0 else e * r


def relu_forward(const floating[::1] x, floating[::1] y):
    """y = max(x, 0); NaN propagates."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef floating v
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n >= PARALLEL_MIN):
        v = x[i]
        y[i] = 0 if v <= 0 else v


def relu_backward(const floating[::1] dy, const floating[::1] y, floating[::1] dx):
    """dx = dy where y > 0, else 0 (the gradient at 0 is 0, as in PyTorch)."""
    cdef Py_ssize_t i, n = dy.shape[0]
    cdef floating g
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n >= PARALLEL_MIN):
        g = dy[i]  # loaded unconditionally so the select compiles without a branch
        dx[i] = g if y[i] > 0 else 0


def sigmoid_forward(const floating[::1] x, floating[::1] y):
    cdef Py_ssize_t i, n = x.shape[0]
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n >= PARALLEL_MIN // 4):
        y[i] = _sigmoid(x[i])


def sigmoid_backward(const floating[::1] dy, const floating[::1] y, floating[::1] dx):
    """dx = dy * y * (1 - y)."""
    cdef Py_ssize_t i, n = dy.shape[0]
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n >= PARALLEL_MIN):
        dx[i] = dy[i] * y[i] * (1 - y[i])


def tanh_forward(const floating[::1] x, floating[::1] y):
    cdef Py_ssize_t i, n = x.shape[0]
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n >= PARALLEL_MIN // 4):
        if floating is float:
            y[i] = tanhf(x[i])
        else:
            y[i] = tanh(x[i])


def tanh_backward(const floating[::1] dy, const floating[::1] y, floating[::1] dx):
    """dx = dy * (1 - y^2)."""
    cdef Py_ssize_t i, n = dy.shape[0]
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n >= PARALLEL_MIN):
        dx[i] = dy[i] * (1 - y[i] * y[i])
