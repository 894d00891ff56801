# cython: language_level=3
"""Elementwise activations on flat (1-D, contiguous) views, GIL released.

Arrays shorter than ``PARALLEL_MIN`` run on one thread: below that, waking the OpenMP team
costs more than the loop.  The backward passes only need the forward output ``y``.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel
from libc.math cimport erf, erff, exp, expf, expm1, expm1f, fabs, fabsf, log, tanh, tanhf
from libc.stdlib cimport malloc, free

from cnnkit._ext._omp cimport note_team, omp_last_team, omp_max_threads

cdef Py_ssize_t _PARALLEL_MIN = 32768
PARALLEL_MIN = _PARALLEL_MIN


def last_team_size():
    """Threads of the last parallel region an activation kernel ran (0 before the first)."""
    return omp_last_team()


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
    with nogil, parallel(use_threads_if=n >= _PARALLEL_MIN):
        note_team()
        for i in prange(n, schedule="static"):
            v = x[i]
            y[i] = 0 if v <= 0 else v


def relu_backward(const floating[::1] dy, const floating[::1] y, floating[::1] dx):
    """dx = dy where y > 0, else 0 (the gradient at 0 is 0, as in PyTorch)."""
    cdef Py_ssize_t i, n = dy.shape[0]
    cdef floating g
    with nogil, parallel(use_threads_if=n >= _PARALLEL_MIN):
        note_team()
        for i in prange(n, schedule="static"):
            g = dy[i]  # loaded unconditionally so the select compiles without a branch
            dx[i] = g if y[i] > 0 else 0


def sigmoid_forward(const floating[::1] x, floating[::1] y):
    cdef Py_ssize_t i, n = x.shape[0]
    with nogil, parallel(use_threads_if=n >= _PARALLEL_MIN // 4):
        note_team()
        for i in prange(n, schedule="static"):
            y[i] = _sigmoid(x[i])


def sigmoid_backward(const floating[::1] dy, const floating[::1] y, floating[::1] dx):
    """dx = dy * y * (1 - y)."""
    cdef Py_ssize_t i, n = dy.shape[0]
    with nogil, parallel(use_threads_if=n >= _PARALLEL_MIN):
        note_team()
        for i in prange(n, schedule="static"):
            dx[i] = dy[i] * y[i] * (1 - y[i])


# tanh_forward/backward repeat sigmoid_forward/backward loop for loop; not merged because a shared
# loop would choose the function per element (a branch or indirect call in the innermost loop)
def tanh_forward(const floating[::1] x, floating[::1] y):
    cdef Py_ssize_t i, n = x.shape[0]
    with nogil, parallel(use_threads_if=n >= _PARALLEL_MIN // 4):
        note_team()
        for i in prange(n, schedule="static"):
            if floating is float:
                y[i] = tanhf(x[i])
            else:
                y[i] = tanh(x[i])


def tanh_backward(const floating[::1] dy, const floating[::1] y, floating[::1] dx):
    """dx = dy * (1 - y^2)."""
    cdef Py_ssize_t i, n = dy.shape[0]
    with nogil, parallel(use_threads_if=n >= _PARALLEL_MIN):
        note_team()
        for i in prange(n, schedule="static"):
            dx[i] = dy[i] * (1 - y[i] * y[i])


# ------------------------------------------------------------------------------------------------
# activations with hyper-parameters; their backward passes read the input x
# ------------------------------------------------------------------------------------------------
cdef double SQRT_HALF = 0.7071067811865476
cdef double SQRT_2_OVER_PI = 0.7978845608028654
cdef double INV_SQRT_2PI = 0.3989422804014327
cdef double GELU_CUBIC = 0.044715


def leaky_relu_forward(const floating[::1] x, floating[::1] y, double negative_slope):
    cdef Py_ssize_t i, n = x.shape[0]
    cdef floating v, a = <floating> negative_slope
    with nogil, parallel(use_threads_if=n >= _PARALLEL_MIN):
        note_team()
        for i in prange(n, schedule="static"):
            v = x[i]
            y[i] = v if v > 0 else v * a


def leaky_relu_backward(const floating[::1] dy, const floating[::1] x, floating[::1] dx,
                        double negative_slope):
    """dx = dy where x > 0, else slope * dy (the gradient at 0 is the slope, as in PyTorch)."""
    cdef Py_ssize_t i, n = dy.shape[0]
    cdef floating g, a = <floating> negative_slope
    with nogil, parallel(use_threads_if=n >= _PARALLEL_MIN):
        note_team()
        for i in prange(n, schedule="static"):
            g = dy[i]
            dx[i] = g if x[i] > 0 else g * a


def elu_forward(const floating[::1] x, floating[::1] y, double alpha):
    """y = x for x > 0, alpha * expm1(x) otherwise."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef floating v, a = <floating> alpha
    with nogil, parallel(use_threads_if=n >= _PARALLEL_MIN // 4):
        note_team()
        for i in prange(n, schedule="static"):
            v = x[i]
            if v > 0:
                y[i] = v
            elif floating is float:
                y[i] = a * expm1f(v)
            else:
                y[i] = a * expm1(v)


def elu_backward(const floating[::1] dy, const floating[::1] x, floating[::1] dx, double alpha):
    cdef Py_ssize_t i, n = dy.shape[0]
    cdef floating v, a = <floating> alpha
    with nogil, parallel(use_threads_if=n >= _PARALLEL_MIN // 4):
        note_team()
        for i in prange(n, schedule="static"):
            v = x[i]
            if v > 0:
                dx[i] = dy[i]
            elif floating is float:
                dx[i] = dy[i] * a * expf(v)
            else:
                dx[i] = dy[i] * a * exp(v)


cdef inline double _gelu_tanh_t(double v) noexcept nogil:
    return tanh(SQRT_2_OVER_PI * (v + GELU_CUBIC * v * v * v))


def gelu_forward(const floating[::1] x, floating[::1] y, bint tanh_form):
    """x * Phi(x) with erf, or PyTorch's tanh approximation; computed in double."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef double v
    cdef float vf
    with nogil, parallel(use_threads_if=n >= _PARALLEL_MIN // 8):
        note_team()
        for i in prange(n, schedule="static"):
            if floating is float and not tanh_form:
                vf = x[i]  # single-precision erf: accurate to a few ulp, much faster than double
                y[i] = 0.5 * vf * (1 + erff(vf * <float> SQRT_HALF))
                continue
            v = x[i]
            if tanh_form:
                y[i] = <floating> (0.5 * v * (1 + _gelu_tanh_t(v)))
            else:
                y[i] = <floating> (0.5 * v * (1 + erf(v * SQRT_HALF)))


def gelu_backward(const floating[::1] dy, const floating[::1] x, floating[::1] dx, bint tanh_form):
    cdef Py_ssize_t i, n = dy.shape[0]
    cdef double v, t, g
    cdef float vf
    with nogil, parallel(use_threads_if=n >= _PARALLEL_MIN // 8):
        note_team()
        for i in prange(n, schedule="static"):
            if floating is float and not tanh_form:
                vf = x[i]
                dx[i] = dy[i] * (0.5 * (1 + erff(vf * <float> SQRT_HALF))
                                 + vf * <float> INV_SQRT_2PI * expf(-0.5 * vf * vf))
                continue
            v = x[i]
            if tanh_form:
                t = _gelu_tanh_t(v)
                g = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * GELU_CUBIC * v * v)
            else:
                g = 0.5 * (1 + erf(v * SQRT_HALF)) + v * INV_SQRT_2PI * exp(-0.5 * v * v)
            dx[i] = <floating> (dy[i] * g)


def scaled_tanh_forward(const floating[::1] x, floating[::1] y, double amplitude, double slope):
    """y = amplitude * tanh(slope * x)."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef floating a = <floating> amplitude, s = <floating> slope
    with nogil, parallel(use_threads_if=n >= _PARALLEL_MIN // 4):
        note_team()
        for i in prange(n, schedule="static"):
            if floating is float:
                y[i] = a * tanhf(s * x[i])
            else:
                y[i] = a * tanh(s * x[i])


def scaled_tanh_backward(const floating[::1] dy, const floating[::1] y, floating[::1] dx,
                         double amplitude, double slope):
    """dx = dy * slope * (amplitude - y^2 / amplitude), from the output alone."""
    cdef Py_ssize_t i, n = dy.shape[0]
    cdef floating a = <floating> amplitude, s = <floating> slope
    cdef floating inv_a = <floating> (1.0 / amplitude) if amplitude != 0 else 0
    with nogil, parallel(use_threads_if=n >= _PARALLEL_MIN):
        note_team()
        for i in prange(n, schedule="static"):
            dx[i] = dy[i] * s * (a - y[i] * y[i] * inv_a) if inv_a != 0 else 0


# ------------------------------------------------------------------------------------------------
# softmax / log-softmax along the middle axis of an (outer, C, inner) array
# ------------------------------------------------------------------------------------------------
def softmax_forward(const floating[:, :, ::1] x, floating[:, :, ::1] y, bint log_form):
    """Softmax (or log-softmax) over axis 1, parallel over the outer axis.  Each (outer) block
    is walked row by row (channel k, then the contiguous inner positions), so the loops stream
    through memory; per-position maxima and sums are kept in double in a per-thread buffer."""
    cdef Py_ssize_t outer = x.shape[0], c = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t o, i, k
    cdef double* m
    cdef double* total
    if outer == 0 or c == 0 or inner == 0:
        return
    with nogil, parallel(num_threads=1 if outer * c * inner < _PARALLEL_MIN // 4 or outer < 2
                                    else omp_max_threads()):
        note_team()
        m = <double*> malloc(2 * inner * sizeof(double))
        total = m + inner
        for o in prange(outer, schedule="static"):
            for i in range(inner):
                m[i] = x[o, 0, i]
                total[i] = 0
            for k in range(1, c):
                for i in range(inner):
                    if x[o, k, i] > m[i]:
                        m[i] = x[o, k, i]
            # y holds exp(x - max) for a moment: one exponential per element
            for k in range(c):
                for i in range(inner):
                    if floating is float:
                        y[o, k, i] = expf(<float> (x[o, k, i] - m[i]))
                    else:
                        y[o, k, i] = exp(x[o, k, i] - m[i])
                    total[i] += y[o, k, i]
            if log_form:
                for i in range(inner):
                    m[i] = m[i] + log(total[i])
                for k in range(c):
                    for i in range(inner):
                        y[o, k, i] = <floating> (x[o, k, i] - m[i])
            else:
                for i in range(inner):
                    total[i] = 1.0 / total[i]
                for k in range(c):
                    for i in range(inner):
                        y[o, k, i] = <floating> (y[o, k, i] * total[i])
        free(m)


def softmax_backward(const floating[:, :, ::1] dy, const floating[:, :, ::1] y,
                     floating[:, :, ::1] dx, bint log_form):
    """softmax: dx = y * (dy - sum(dy * y)); log-softmax: dx = dy - exp(y) * sum(dy)."""
    cdef Py_ssize_t outer = dy.shape[0], c = dy.shape[1], inner = dy.shape[2]
    cdef Py_ssize_t o, i, k
    cdef double* acc
    if outer == 0 or c == 0 or inner == 0:
        return
    with nogil, parallel(num_threads=1 if outer * c * inner < _PARALLEL_MIN // 4 or outer < 2
                                    else omp_max_threads()):
        note_team()
        acc = <double*> malloc(inner * sizeof(double))
        for o in prange(outer, schedule="static"):
            for i in range(inner):
                acc[i] = 0
            if log_form:
                for k in range(c):
                    for i in range(inner):
                        acc[i] += dy[o, k, i]
                for k in range(c):
                    for i in range(inner):
                        if floating is float:
                            dx[o, k, i] = <floating> (dy[o, k, i] - expf(y[o, k, i]) * acc[i])
                        else:
                            dx[o, k, i] = dy[o, k, i] - exp(y[o, k, i]) * acc[i]
            else:
                for k in range(c):
                    for i in range(inner):
                        acc[i] += <double> dy[o, k, i] * y[o, k, i]
                for k in range(c):
                    for i in range(inner):
                        dx[o, k, i] = <floating> (y[o, k, i] * (dy[o, k, i] - acc[i]))
        free(acc)
