# cython: language_level=3
"""Transposed 2-D convolution forward: one GEMM per group and band of input rows, then a
scatter (col2im) of the columns into the output.  (Its backward pass is an ordinary
convolution and a convolution weight gradient: the wrapper uses ``cnnkit._ext.conv``.)

Column layout for input rows ``[r0, r1)`` of one image (row-major)::

    col[(co * kh + i) * kw + j, (r - r0) * w + s]  is added to  y[co, r*sh - ph + i*dh, s*sw - pw + j*dw]

``col`` rows of group g are the block ``[g * Kg, (g + 1) * Kg)``, ``Kg = Cout/groups * kh * kw``,
so the block is ``weight[g*Cig:(g+1)*Cig].reshape(Cig, Kg)^T @ x[g*Cig:(g+1)*Cig]``.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid
from libc.string cimport memset
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef inline void _gemm_rm(bint trans_a, int m, int n, int k, const floating* a, int lda,
                          const floating* b, int ldb, floating* c, int ldc) noexcept nogil:
    """Row-major C (m x n) = op(A) @ B through column-major BLAS (C^T = B^T @ op(A)^T)."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'N'
    cdef floating one = 1, zero = 0
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &one, <float*> b, &ldb, <float*> a, &lda, &zero, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &one, <double*> b, &ldb, <double*> a, &lda, &zero, c, &ldc)


cdef void _scatter(const floating* col, Py_ssize_t cout, Py_ssize_t kh, Py_ssize_t kw,
                   Py_ssize_t w, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t sh, Py_ssize_t sw,
                   Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                   Py_ssize_t oh, Py_ssize_t ow, floating* y) noexcept nogil:
    """Add the columns of input rows [r0, r1) into y (cout, oh, ow), dropping the padding."""
    cdef Py_ssize_t co, i, j, r, s, s0, s1, off, out_r, band = (r1 - r0) * w
    cdef const floating* src
    cdef floating* dst
    for co in range(cout):
        for i in range(kh):
            for j in range(kw):
                off = j * dw - pw
                # valid s: 0 <= s*sw + off < ow
                s0 = 0 if off >= 0 else (-off + sw - 1) // sw
                s1 = 0 if ow - 1 - off < 0 else (ow - 1 - off) // sw + 1
                if s1 > w:
                    s1 = w
                src = col + ((co * kh + i) * kw + j) * band
                for r in range(r0, r1):
                    out_r = r * sh - ph + i * dh
                    if out_r < 0 or out_r >= oh:
                        continue
                    dst = y + (co * oh + out_r) * ow + off
                    for s in range(s0, s1):
                        dst[s * sw] += src[(r - r0) * w + s]


def conv_transpose2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] weight,
                             const floating[::1] bias, floating[:, :, :, ::1] y,
                             floating[:, ::1] workspace, int sh, int sw, int ph, int pw,
                             int dh, int dw, int groups, Py_ssize_t rows_per_band,
                             int num_threads):
    """y = conv_transpose2d(x, weight) + bias (``bias`` may be None); ``workspace`` is
    (threads, >= Cout*kh*kw * rows_per_band * W)."""
    cdef Py_ssize_t n_img = x.shape[0], cin = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t cog = weight.shape[1], kh = weight.shape[2], kw = weight.shape[3]
    cdef Py_ssize_t cout = y.shape[1], oh = y.shape[2], ow = y.shape[3]
    cdef Py_ssize_t cig = cin // groups, kg = cog * kh * kw, plane = h * w
    cdef Py_ssize_t n, g, r0, r1, band, co, p
    cdef floating* col = NULL
    cdef floating* yo
    cdef floating bv
    cdef bint has_bias = bias is not None
    cdef int tid = 0
    if rows_per_band < 1:
        raise ValueError("rows_per_band must be positive")
    if n_img == 0 or cout == 0 or oh * ow == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        tid = threadid()
        col = &workspace[tid, 0]
        for n in prange(n_img, schedule="static"):
            memset(&y[n, 0, 0, 0], 0, cout * oh * ow * sizeof(floating))
            r0 = 0
            while r0 < h:
                r1 = r0 + rows_per_band
                if r1 > h:
                    r1 = h
                band = (r1 - r0) * w
                for g in range(groups):
                    # col_g (kg x band) = W_g^T (kg x cig) @ x_g (cig x band)
                    _gemm_rm(True, <int> kg, <int> band, <int> cig, &weight[g * cig, 0, 0, 0],
                             <int> kg, &x[n, g * cig, 0, 0] + r0 * w, <int> plane,
                             col + g * kg * band, <int> band)
                _scatter(col, cout, kh, kw, w, r0, r1, sh, sw, ph, pw, dh, dw, oh, ow,
                         &y[n, 0, 0, 0])
                r0 = r1
            if has_bias:
                for co in range(cout):
                    bv = bias[co]
                    yo = &y[n, co, 0, 0]
                    for p in range(oh * ow):
                        yo[p] = yo[p] + bv
