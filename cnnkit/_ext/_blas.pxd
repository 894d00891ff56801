# cython: language_level=3
"""Row-major GEMM over ``scipy.linalg.cython_blas`` for the kernels, float or double.

BLAS is column-major and a row-major matrix is its own transpose read column-major, so the
row-major product C = op(A) @ op(B) is the column-major C^T = op(B)^T @ op(A)^T: the same call
with the operands (and their sizes) swapped, as scikit-learn's ``_cython_blas`` does.  Inline,
so every kernel module gets its own copy and no module has to export it at run time.
"""
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef inline void gemm_rm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                         const floating* a, int lda, const floating* b, int ldb, floating beta,
                         floating* c, int ldc) noexcept nogil:
    """Row-major C (m x n) = alpha * op(A) @ op(B) + beta * C."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*> b, &ldb, <float*> a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*> b, &ldb, <double*> a, &lda, &beta, c, &ldc)
