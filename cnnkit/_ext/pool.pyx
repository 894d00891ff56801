# cython: language_level=3
"""Max and average 2-D pooling, PyTorch semantics, direct loops parallel over (image, channel).

Window (r, s) of a plane covers input rows ``[r*sh - ph, r*sh - ph + kh)`` clipped to the input
(max pooling treats the padding as -inf, average pooling as zeros).  The output size, including
ceil_mode, is decided by the Python wrapper; the loops only clip.  Max pooling records the
argmax as a flat index ``row * W + col`` inside the plane (int32; the wrapper refuses planes
too large for it), the first maximum on ties and any NaN winning, like PyTorch.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel
from libc.math cimport INFINITY
from libc.string cimport memset

from cnnkit._ext._omp cimport note_team, omp_last_team

# below this many input elements one thread beats waking the OpenMP team; each family module
# keeps its own threshold and team-size probe, so these few lines recur per module by design
cdef Py_ssize_t _PARALLEL_MIN = 16384
PARALLEL_MIN = _PARALLEL_MIN


def last_team_size():
    """Threads of the last parallel region a pooling kernel ran (0 before the first)."""
    return omp_last_team()


def maxpool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, int[:, :, :, ::1] argmax,
                      int kh, int kw, int sh, int sw, int ph, int pw):
    """y = max over windows; ``argmax`` (same shape as y, int32) is filled unless it is None."""
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t oh = y.shape[2], ow = y.shape[3]
    cdef bint keep = argmax is not None
    cdef Py_ssize_t pidx, r, s, i, j, r0, r1, s0, s1, best_i, idx
    cdef const floating* src
    cdef floating best, v
    cdef bint take
    if planes == 0 or oh == 0 or ow == 0:
        return
    with nogil, parallel(use_threads_if=planes * h * w >= _PARALLEL_MIN):
        note_team()
        for pidx in prange(planes, schedule="static"):
            src = &x[pidx // c, pidx % c, 0, 0]
            for r in range(oh):
                r0 = r * sh - ph
                r1 = r0 + kh
                if r0 < 0:
                    r0 = 0
                if r1 > h:
                    r1 = h
                for s in range(ow):
                    s0 = s * sw - pw
                    s1 = s0 + kw
                    if s0 < 0:
                        s0 = 0
                    if s1 > w:
                        s1 = w
                    best_i = r0 * w + s0
                    best = -INFINITY
                    for i in range(r0, r1):
                        for j in range(s0, s1):
                            idx = i * w + j
                            v = src[idx]
                            # larger, or the first NaN; written as selects, not branches
                            take = (v > best) | ((v != v) & (best == best))
                            best = v if take else best
                            best_i = idx if take else best_i
                    y[pidx // c, pidx % c, r, s] = best
                    if keep:
                        argmax[pidx // c, pidx % c, r, s] = <int> best_i


def maxpool2d_backward(const floating[:, :, :, ::1] dy, const int[:, :, :, ::1] argmax,
                       floating[:, :, :, ::1] dx):
    """dx = 0, then dy of every window added at its recorded argmax."""
    cdef Py_ssize_t planes = dx.shape[0] * dx.shape[1]
    cdef Py_ssize_t c = dx.shape[1], hw = dx.shape[2] * dx.shape[3]
    cdef Py_ssize_t oplane = dy.shape[2] * dy.shape[3]
    cdef Py_ssize_t pidx, p
    cdef floating* dst
    cdef const floating* g
    cdef const int* a
    if planes == 0:
        return
    with nogil, parallel(use_threads_if=planes * hw >= _PARALLEL_MIN):
        note_team()
        for pidx in prange(planes, schedule="static"):
            dst = &dx[pidx // c, pidx % c, 0, 0]
            memset(dst, 0, hw * sizeof(floating))
            if oplane == 0:
                continue
            g = &dy[pidx // c, pidx % c, 0, 0]
            a = &argmax[pidx // c, pidx % c, 0, 0]
            for p in range(oplane):
                dst[a[p]] += g[p]


cdef inline Py_ssize_t _divisor(Py_ssize_t r0, Py_ssize_t k, Py_ssize_t size, Py_ssize_t pad,
                                bint count_include_pad) noexcept nogil:
    """Window length along one axis, PyTorch's rule (r0 = window start, may be negative)."""
    cdef Py_ssize_t r1 = r0 + k
    if count_include_pad:
        if r1 > size + pad:
            r1 = size + pad
        return r1 - r0
    if r1 > size:
        r1 = size
    if r0 < 0:
        r0 = 0
    return r1 - r0


def avgpool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                      int kh, int kw, int sh, int sw, int ph, int pw, bint count_include_pad):
    """y = sum over each window / its divisor (PyTorch's count_include_pad rule)."""
    # the same window walk as maxpool2d_forward; not shared, since a max-or-sum choice (and
    # the argmax bookkeeping) would sit in the innermost loop
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t oh = y.shape[2], ow = y.shape[3]
    cdef Py_ssize_t pidx, r, s, i, j, r0, r1, s0, s1, div
    cdef const floating* src
    cdef floating acc
    if planes == 0 or oh == 0 or ow == 0:
        return
    with nogil, parallel(use_threads_if=planes * h * w >= _PARALLEL_MIN):
        note_team()
        for pidx in prange(planes, schedule="static"):
            src = &x[pidx // c, pidx % c, 0, 0]
            for r in range(oh):
                r0 = r * sh - ph
                r1 = r0 + kh
                if r1 > h:
                    r1 = h
                for s in range(ow):
                    s0 = s * sw - pw
                    s1 = s0 + kw
                    if s1 > w:
                        s1 = w
                    div = _divisor(r0, kh, h, ph, count_include_pad) * _divisor(s0, kw, w, pw, count_include_pad)
                    acc = 0
                    for i in range(r0 if r0 > 0 else 0, r1):
                        for j in range(s0 if s0 > 0 else 0, s1):
                            acc = acc + src[i * w + j]
                    y[pidx // c, pidx % c, r, s] = acc / div


def avgpool2d_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                       int kh, int kw, int sh, int sw, int ph, int pw, bint count_include_pad):
    """dx = 0, then dy / divisor spread evenly over each window's in-input positions."""
    # mirror image of avgpool2d_forward; one shared loop would branch on gather/scatter innermost
    cdef Py_ssize_t planes = dx.shape[0] * dx.shape[1]
    cdef Py_ssize_t c = dx.shape[1], h = dx.shape[2], w = dx.shape[3]
    cdef Py_ssize_t oh = dy.shape[2], ow = dy.shape[3]
    cdef Py_ssize_t pidx, r, s, i, j, r0, r1, s0, s1, div
    cdef floating* dst
    cdef floating g
    if planes == 0:
        return
    with nogil, parallel(use_threads_if=planes * h * w >= _PARALLEL_MIN):
        note_team()
        for pidx in prange(planes, schedule="static"):
            dst = &dx[pidx // c, pidx % c, 0, 0]
            memset(dst, 0, h * w * sizeof(floating))
            for r in range(oh):
                r0 = r * sh - ph
                r1 = r0 + kh
                if r1 > h:
                    r1 = h
                for s in range(ow):
                    s0 = s * sw - pw
                    s1 = s0 + kw
                    if s1 > w:
                        s1 = w
                    div = _divisor(r0, kh, h, ph, count_include_pad) * _divisor(s0, kw, w, pw, count_include_pad)
                    g = dy[pidx // c, pidx % c, r, s] / div
                    for i in range(r0 if r0 > 0 else 0, r1):
                        for j in range(s0 if s0 > 0 else 0, s1):
                            dst[i * w + j] += g


def global_avgpool2d_forward(const floating[:, :, :, ::1] x, floating[:, ::1] y):
    """y[n, c] = mean of plane (n, c), summed in double."""
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t c = x.shape[1], hw = x.shape[2] * x.shape[3]
    cdef Py_ssize_t pidx, p
    cdef const floating* src
    cdef double acc
    if planes == 0 or hw == 0:
        return
    with nogil, parallel(use_threads_if=planes * hw >= _PARALLEL_MIN):
        note_team()
        for pidx in prange(planes, schedule="static"):
            src = &x[pidx // c, pidx % c, 0, 0]
            acc = 0
            for p in range(hw):
                acc = acc + src[p]
            y[pidx // c, pidx % c] = <floating> (acc / hw)


def global_avgpool2d_backward(const floating[:, ::1] dy, floating[:, :, :, ::1] dx):
    """dx[n, c, :, :] = dy[n, c] / (H * W)."""
    # mirror image of global_avgpool2d_forward; one shared loop would branch on reduce/broadcast
    cdef Py_ssize_t planes = dx.shape[0] * dx.shape[1]
    cdef Py_ssize_t c = dx.shape[1], hw = dx.shape[2] * dx.shape[3]
    cdef Py_ssize_t pidx, p
    cdef floating* dst
    cdef floating g
    if planes == 0 or hw == 0:
        return
    with nogil, parallel(use_threads_if=planes * hw >= _PARALLEL_MIN):
        note_team()
        for pidx in prange(planes, schedule="static"):
            dst = &dx[pidx // c, pidx % c, 0, 0]
            g = dy[pidx // c, pidx % c] / hw
            for p in range(hw):
                dst[p] = g


def subsampling_forward(const floating[:, :, :, ::1] x, const floating[::1] weight,
                        const floating[::1] bias, floating[:, :, :, ::1] y,
                        floating[:, :, :, ::1] sums, int kh, int kw, bint average):
    """LeNet-5 subsampling: y = weight[c] * S + bias[c] with S the sum (or mean) of the
    non-overlapping kh x kw window; ``sums`` (or None) receives S for the backward pass;
    ``bias`` may be None."""
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t c = x.shape[1], w = x.shape[3]
    cdef Py_ssize_t oh = y.shape[2], ow = y.shape[3]
    cdef bint keep = sums is not None, has_bias = bias is not None
    cdef Py_ssize_t pidx, ch, r, s, i, j
    cdef const floating* src
    cdef floating acc, coef, b, inv = <floating> (1.0 / (kh * kw)) if average else 1
    if planes == 0 or oh == 0 or ow == 0:
        return
    with nogil, parallel(use_threads_if=planes * oh * ow * kh * kw >= _PARALLEL_MIN):
        note_team()
        for pidx in prange(planes, schedule="static"):
            ch = pidx % c
            src = &x[pidx // c, ch, 0, 0]
            coef = weight[ch]
            b = bias[ch] if has_bias else 0
            for r in range(oh):
                for s in range(ow):
                    acc = 0
                    for i in range(r * kh, r * kh + kh):
                        for j in range(s * kw, s * kw + kw):
                            acc = acc + src[i * w + j]
                    acc = acc * inv
                    if keep:
                        sums[pidx // c, ch, r, s] = acc
                    y[pidx // c, ch, r, s] = coef * acc + b


def subsampling_backward(const floating[:, :, :, ::1] dy, const floating[::1] weight,
                         floating[:, :, :, ::1] dx, int kh, int kw, bint average):
    """dx = weight[c] * dy (/ kh*kw for the average) spread over each window; rows and
    columns outside every window get 0."""
    # mirror image of subsampling_forward; one shared loop would branch on gather/scatter innermost
    cdef Py_ssize_t planes = dx.shape[0] * dx.shape[1]
    cdef Py_ssize_t c = dx.shape[1], h = dx.shape[2], w = dx.shape[3]
    cdef Py_ssize_t oh = dy.shape[2], ow = dy.shape[3]
    cdef Py_ssize_t pidx, ch, r, s, i, j
    cdef floating* dst
    cdef floating g, inv = <floating> (1.0 / (kh * kw)) if average else 1
    if planes == 0:
        return
    with nogil, parallel(use_threads_if=planes * h * w >= _PARALLEL_MIN):
        note_team()
        for pidx in prange(planes, schedule="static"):
            ch = pidx % c
            dst = &dx[pidx // c, ch, 0, 0]
            if oh * kh < h or ow * kw < w:
                memset(dst, 0, h * w * sizeof(floating))
            for r in range(oh):
                for s in range(ow):
                    g = dy[pidx // c, ch, r, s] * weight[ch] * inv
                    for i in range(r * kh, r * kh + kh):
                        for j in range(s * kw, s * kw + kw):
                            dst[i * w + j] = g
