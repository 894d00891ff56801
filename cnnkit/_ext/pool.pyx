# cython: language_level=3
"""Max and average 2-D pooling, PyTorch semantics, direct loops parallel over (image, channel).

Window (r, s) of a plane covers input rows ``[r*sh - ph, r*sh - ph + kh)`` clipped to the input
(max pooling treats the padding as -inf, average pooling as zeros).  The output size, including
ceil_mode, is decided by the Python wrapper; the loops only clip.

2x2 and 3x3 windows at stride 2, the shapes CNNs pool with, have row loops of their own for the
windows wholly inside the input: one pass over two (three) input rows per output row, written
for the compiler to vectorise, no per-tap window bookkeeping.  Max pooling goes further: an
explicit vector kernel (``ckp_max_windows``) takes the interior windows of a plane a vector of
windows at a time, and leaves the row loops only rows shorter than a vector.  The windows that
touch the padding or the ceil-mode overhang, and every other geometry, take the generic window
walk.

Max pooling records where each window's maximum sits inside the window, ``i * kw + j`` from its
unclipped corner: one byte (uint8) for windows of up to 256 elements, so backward reads a byte
per output, int32 beyond.  The first maximum in row-major order wins ties and the first NaN
beats every number, like PyTorch.  "First maximum, NaN above all" is associative, so the
dedicated loops may reduce each row of a window before combining the rows in order.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel
from libc.math cimport INFINITY
from libc.string cimport memset

import numpy as np

from cnnkit._ext._omp cimport note_team, omp_last_team

# below this many input elements one thread beats waking the OpenMP team; each family module
# keeps its own threshold and team-size probe, so these few lines recur per module by design
cdef Py_ssize_t _PARALLEL_MIN = 16384
PARALLEL_MIN = _PARALLEL_MIN


def last_team_size():
    """Threads of the last parallel region a pooling kernel ran (0 before the first)."""
    return omp_last_team()


# the argmax is stored as one byte per output for windows of at most this many elements
MAX_UINT8_WINDOW = 256

ctypedef fused index_t:
    unsigned char
    int


cdef inline bint _takes(floating best, floating v) noexcept nogil:
    """Does ``v`` replace the running maximum?  Larger, or the first NaN; the window is scanned
    in row-major order, so ties keep the first maximum (selects, not branches)."""
    return (v > best) | ((v != v) & (best == best))


cdef inline index_t* _shift(index_t* p, Py_ssize_t offset) noexcept nogil:
    """``p + offset``, or NULL for an argmax that is not kept."""
    return p + offset if p != NULL else NULL


cdef inline (Py_ssize_t, Py_ssize_t) _interior(Py_ssize_t size, Py_ssize_t out, Py_ssize_t k,
                                               Py_ssize_t stride, Py_ssize_t pad) noexcept nogil:
    """[lo, hi): the output positions along one axis whose window lies wholly inside the
    input (no padding, no ceil-mode overhang); empty when there is none."""
    cdef Py_ssize_t lo = (pad + stride - 1) // stride, hi = 0
    if size + pad >= k:
        hi = (size + pad - k) // stride + 1
    lo = lo if lo < out else out
    hi = hi if hi < out else out
    return lo, (hi if hi > lo else lo)


cdef inline bint _dedicated(Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw) noexcept nogil:
    """2x2 or 3x3 windows at stride 2: the geometries with their own row loops."""
    return sh == 2 and sw == 2 and kh == kw and (kh == 2 or kh == 3)


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


# ---------------------------------------------------------------------------------------------
# forward: one output row at a time
# ---------------------------------------------------------------------------------------------
cdef void _max_windows(const floating* src, floating* y, unsigned char* a8, int* a32,
                       Py_ssize_t h, Py_ssize_t w, Py_ssize_t r, Py_ssize_t s_from, Py_ssize_t s_to,
                       Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                       Py_ssize_t pw) noexcept nogil:
    """Windows (r, s_from) .. (r, s_to - 1) walked one tap at a time, clipped to the input;
    ``y``, ``a8``, ``a32`` point at output row r (the argmax pointers may be NULL)."""
    cdef Py_ssize_t s, i, j, wc, j0, j1, best_i
    cdef Py_ssize_t wr = r * sh - ph
    cdef Py_ssize_t i0 = wr if wr > 0 else 0, i1 = wr + kh if wr + kh < h else h
    cdef floating best, v
    cdef bint take
    for s in range(s_from, s_to):
        wc = s * sw - pw
        j0 = wc if wc > 0 else 0
        j1 = wc + kw if wc + kw < w else w
        best = -INFINITY
        best_i = (i0 - wr) * kw + (j0 - wc)
        for i in range(i0, i1):
            for j in range(j0, j1):
                v = src[i * w + j]
                take = _takes(best, v)
                best = v if take else best
                best_i = (i - wr) * kw + (j - wc) if take else best_i
        y[s] = best
        if a8 != NULL:
            a8[s] = <unsigned char> best_i
        elif a32 != NULL:
            a32[s] = <int> best_i


# The dedicated max loops compare with a plain ``>`` (the earlier of equal values stays) and
# track positions as floating values: written so, GCC vectorises them, while the NaN-aware
# comparison and integer positions mixed with the float compares defeat it.  They report
# whether a window held a NaN, and such a row is redone by the generic walk.
cdef inline floating _max_2x2(const floating* p, Py_ssize_t w, floating* where) noexcept nogil:
    """The first maximum of the NaN-free 2x2 window at ``p``, its position into ``where``."""
    cdef floating top = p[1] if p[1] > p[0] else p[0]
    cdef floating bottom = p[w + 1] if p[w + 1] > p[w] else p[w]
    cdef floating top_at = 1 if p[1] > p[0] else 0
    cdef floating bottom_at = 3 if p[w + 1] > p[w] else 2
    where[0] = bottom_at if bottom > top else top_at
    return bottom if bottom > top else top


cdef inline floating _max_of_3(const floating* p, floating first, floating* where) noexcept nogil:
    """The first maximum of the NaN-free p[0], p[1], p[2]; ``where`` = first + its position."""
    cdef floating best = p[0], at = first
    at = first + 1 if p[1] > best else at
    best = p[1] if p[1] > best else best
    where[0] = first + 2 if p[2] > best else at
    return p[2] if p[2] > best else best


cdef inline floating _max_3x3(const floating* p, Py_ssize_t w, floating* where) noexcept nogil:
    """The first maximum of the NaN-free 3x3 window at ``p``, its position into ``where``:
    each row reduced first, then the rows combined in order."""
    cdef floating at, at1, at2
    cdef floating best = _max_of_3(p, 0, &at)
    cdef floating mid = _max_of_3(p + w, 3, &at1)
    cdef floating bottom = _max_of_3(p + 2 * w, 6, &at2)
    at = at1 if mid > best else at
    best = mid if mid > best else best
    where[0] = at2 if bottom > best else at
    return bottom if bottom > best else best


cdef inline bint _has_nan(const floating* p, Py_ssize_t w, Py_ssize_t k) noexcept nogil:
    """Does the k x k window at ``p`` (k = 2 or 3) hold a NaN?"""
    cdef bint nan = (p[0] != p[0]) | (p[1] != p[1]) | (p[w] != p[w]) | (p[w + 1] != p[w + 1])
    if k == 3:
        nan = nan | (p[2] != p[2]) | (p[w + 2] != p[w + 2]) | (p[2 * w] != p[2 * w])
        nan = nan | (p[2 * w + 1] != p[2 * w + 1]) | (p[2 * w + 2] != p[2 * w + 2])
    return nan


# 2x2 and 3x3 stride-2 max pooling a vector of windows at a time.  Two vectors of each input row
# are split into their even and odd columns (shuffles; 3x3 windows also take the even columns
# moved on by one), each row's columns reduced in order and then the rows, "later wins only if
# strictly greater": the first maximum in row-major order, argmax included.  The NaN test runs
# on the loaded vectors; a plane holding a NaN is done again by the scalar loops, which give the
# NaN rows to the walk.  The vectors are GCC/Clang vector extensions as wide as the build's
# instruction set (16 bytes in the portable build, 32 with AVX, 64 with AVX-512F); on x86 the
# max, the NaN test and the narrowing of the argmax to bytes use SSE2 / AVX intrinsics of the
# same semantics, which GCC does not derive from the generic selects.  Other compilers build
# without it (the scalar row loops do the work).
# For testing the generic code on an x86 machine: CFLAGS="-DCNNKIT_POOL_GENERIC" (no
# intrinsics) and "-DCNNKIT_POOL_VBYTES=64" (AVX-512's lane counts, split by the compiler).
cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #if defined(CNNKIT_POOL_VBYTES)
    #define CKP_VBYTES CNNKIT_POOL_VBYTES
    #elif defined(__AVX512F__)
    #define CKP_VBYTES 64
    #elif defined(__AVX__)
    #define CKP_VBYTES 32
    #else
    #define CKP_VBYTES 16
    #endif
    #if CKP_VBYTES == 64
    #define CKP_NF 16
    #define CKP_ND 8
    #elif CKP_VBYTES == 32
    #define CKP_NF 8
    #define CKP_ND 4
    #else
    #define CKP_NF 4
    #define CKP_ND 2
    #endif
    #if !defined(CNNKIT_POOL_GENERIC) && (defined(__x86_64__) || defined(__i386__)) \\
        && ((CKP_VBYTES == 16 && defined(__SSE2__)) || (CKP_VBYTES == 32 && defined(__AVX__)))
    #include <immintrin.h>
    #define CKP_X86 CKP_VBYTES
    #else
    #define CKP_X86 0
    #endif
    typedef float ckp_vf __attribute__((vector_size(CKP_VBYTES)));
    typedef int ckp_vfi __attribute__((vector_size(CKP_VBYTES)));
    typedef double ckp_vd __attribute__((vector_size(CKP_VBYTES)));
    typedef long long ckp_vdi __attribute__((vector_size(CKP_VBYTES)));

    /* the even and the odd lanes of two vectors of n lanes, concatenated */
    #define CKP_EVEN_2 0, 2
    #define CKP_ODD_2 1, 3
    #define CKP_EVEN_4 0, 2, 4, 6
    #define CKP_ODD_4 1, 3, 5, 7
    #define CKP_EVEN_8 0, 2, 4, 6, 8, 10, 12, 14
    #define CKP_ODD_8 1, 3, 5, 7, 9, 11, 13, 15
    #define CKP_EVEN_16 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
    #define CKP_ODD_16 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31
    /* lanes 1.. of a vector, then lane 0 of a second one: the even lanes moved on by one */
    #define CKP_NEXT_2 1, 2
    #define CKP_NEXT_4 1, 2, 3, 4
    #define CKP_NEXT_8 1, 2, 3, 4, 5, 6, 7, 8
    #define CKP_NEXT_16 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16
    #define CKP_CAT_(a, b) a##b
    #define CKP_CAT(a, b) CKP_CAT_(a, b)
    #if defined(__clang__) || __GNUC__ >= 12
    #define CKP_SHUFFLE(a, b, VI, lanes) __builtin_shufflevector(a, b, lanes)
    #else
    #define CKP_SHUFFLE(a, b, VI, lanes) __builtin_shuffle(a, b, (VI){lanes})
    #endif

    /* ckp_max(a, b) = a > b ? a : b (b on a tie), as x86's maxps; ckp_unord: lanes where a or
       b is a NaN; ckp_put_idx: the argmax lanes (0..3) stored as bytes */
    #if CKP_X86 == 16
    static inline ckp_vf ckp_max_f(ckp_vf a, ckp_vf b) { return (ckp_vf)_mm_max_ps((__m128)a, (__m128)b); }
    static inline ckp_vd ckp_max_d(ckp_vd a, ckp_vd b) { return (ckp_vd)_mm_max_pd((__m128d)a, (__m128d)b); }
    static inline ckp_vfi ckp_unord_f(ckp_vf a, ckp_vf b) { return (ckp_vfi)_mm_cmpunord_ps((__m128)a, (__m128)b); }
    static inline ckp_vdi ckp_unord_d(ckp_vd a, ckp_vd b) { return (ckp_vdi)_mm_cmpunord_pd((__m128d)a, (__m128d)b); }
    static inline void ckp_put_idx_f(unsigned char* p, ckp_vfi i) {
        __m128i q = _mm_packs_epi32((__m128i)i, (__m128i)i);
        int u = _mm_cvtsi128_si32(_mm_packus_epi16(q, q));
        __builtin_memcpy(p, &u, sizeof u);
    }
    #elif CKP_X86 == 32
    static inline ckp_vf ckp_max_f(ckp_vf a, ckp_vf b) { return (ckp_vf)_mm256_max_ps((__m256)a, (__m256)b); }
    static inline ckp_vd ckp_max_d(ckp_vd a, ckp_vd b) { return (ckp_vd)_mm256_max_pd((__m256d)a, (__m256d)b); }
    static inline ckp_vfi ckp_unord_f(ckp_vf a, ckp_vf b) { return (ckp_vfi)_mm256_cmp_ps((__m256)a, (__m256)b, _CMP_UNORD_Q); }
    static inline ckp_vdi ckp_unord_d(ckp_vd a, ckp_vd b) { return (ckp_vdi)_mm256_cmp_pd((__m256d)a, (__m256d)b, _CMP_UNORD_Q); }
    static inline void ckp_put_idx_f(unsigned char* p, ckp_vfi i) {
        __m128i q = _mm_packs_epi32(_mm256_castsi256_si128((__m256i)i), _mm256_extractf128_si256((__m256i)i, 1));
        _mm_storel_epi64((__m128i*)p, _mm_packus_epi16(q, q));
    }
    #else
    static inline ckp_vf ckp_max_f(ckp_vf a, ckp_vf b) { ckp_vfi c = a > b; return (ckp_vf)((c & (ckp_vfi)a) | (~c & (ckp_vfi)b)); }
    static inline ckp_vd ckp_max_d(ckp_vd a, ckp_vd b) { ckp_vdi c = a > b; return (ckp_vd)((c & (ckp_vdi)a) | (~c & (ckp_vdi)b)); }
    static inline ckp_vfi ckp_unord_f(ckp_vf a, ckp_vf b) { return (a != a) | (b != b); }
    static inline ckp_vdi ckp_unord_d(ckp_vd a, ckp_vd b) { return (a != a) | (b != b); }
    static inline void ckp_put_idx_f(unsigned char* p, ckp_vfi i) {
        for (int l = 0; l < CKP_NF; l++) p[l] = (unsigned char)i[l];
    }
    #endif
    static inline void ckp_put_idx_d(unsigned char* p, ckp_vdi i) {
        for (int l = 0; l < CKP_ND; l++) p[l] = (unsigned char)i[l];
    }

    /* rows x n windows (n >= NV): output row r from input rows 2r, 2r + 1 (and 2r + 2) of x
       (rows of w), into y and, unless NULL, a (rows of ow); returns whether a NaN was read.
       The last vector of a row that does not fill one ends at the row's end, overlapping the
       one before: those windows are computed twice, to the same values, and no scalar tail
       is left over. */
    #define CKP_BLOCK(s0, n, NV) ((s0) + (NV) <= (n) ? (s0) : (n) - (NV))
    #define CKP_DEFINE_MAX(T, VT, VI, NV, SUF)                                                  \\
    static inline VT ckp_ld_##SUF(const T* p) { VT v; __builtin_memcpy(&v, p, sizeof v); return v; } \\
    static int ckp_max2x2_##SUF(const T* x, Py_ssize_t w, Py_ssize_t rows, Py_ssize_t n, T* y, \\
                                Py_ssize_t ow, unsigned char* a) {                              \\
        VI nan = {0};                                                                           \\
        for (Py_ssize_t r = 0; r < rows; r++) {                                                 \\
            const T* x0 = x + 2 * r * w;                                                        \\
            const T* x1 = x0 + w;                                                               \\
            for (Py_ssize_t s0 = 0; s0 < n; s0 += NV) {                                         \\
                Py_ssize_t s = CKP_BLOCK(s0, n, NV);                                            \\
                VT t0 = ckp_ld_##SUF(x0 + 2 * s), t1 = ckp_ld_##SUF(x0 + 2 * s + NV);           \\
                VT b0 = ckp_ld_##SUF(x1 + 2 * s), b1 = ckp_ld_##SUF(x1 + 2 * s + NV);           \\
                nan |= ckp_unord_##SUF(t0, b0) | ckp_unord_##SUF(t1, b1);                       \\
                VT te = CKP_SHUFFLE(t0, t1, VI, CKP_CAT(CKP_EVEN_, NV));                        \\
                VT to = CKP_SHUFFLE(t0, t1, VI, CKP_CAT(CKP_ODD_, NV));                         \\
                VT be = CKP_SHUFFLE(b0, b1, VI, CKP_CAT(CKP_EVEN_, NV));                        \\
                VT bo = CKP_SHUFFLE(b0, b1, VI, CKP_CAT(CKP_ODD_, NV));                         \\
                VT top = ckp_max_##SUF(to, te), bottom = ckp_max_##SUF(bo, be);                 \\
                VT m = ckp_max_##SUF(bottom, top);                                              \\
                __builtin_memcpy(y + r * ow + s, &m, sizeof m);                                 \\
                if (a) {                                                                        \\
                    VI ct = to > te, cb = bo > be, c = bottom > top;                            \\
                    ckp_put_idx_##SUF(a + r * ow + s, (c & (2 - cb)) | (~c & -ct));             \\
                }                                                                               \\
            }                                                                                   \\
        }                                                                                       \\
        for (int l = 0; l < NV; l++)                                                            \\
            if (nan[l]) return 1;                                                               \\
        return 0;                                                                               \\
    }                                                                                           \\
    /* 3x3: each row's three columns (even, odd, next even) reduced in order, then the rows */ \\
    static int ckp_max3x3_##SUF(const T* x, Py_ssize_t w, Py_ssize_t rows, Py_ssize_t n, T* y, \\
                                Py_ssize_t ow, unsigned char* a) {                              \\
        VI nan = {0};                                                                           \\
        for (Py_ssize_t r = 0; r < rows; r++)                                                   \\
        for (Py_ssize_t s0 = 0; s0 < n; s0 += NV) {                                             \\
            Py_ssize_t s = CKP_BLOCK(s0, n, NV);                                                \\
            VT best = {0};                                                                      \\
            VI at = {0};                                                                        \\
            for (int i = 0; i < 3; i++) {                                                       \\
                const T* p = x + (2 * r + i) * w + 2 * s;                                       \\
                VT v0 = ckp_ld_##SUF(p), v1 = ckp_ld_##SUF(p + NV), last = {0};                 \\
                last[0] = p[2 * NV];  /* the last window's third column */                      \\
                VT e = CKP_SHUFFLE(v0, v1, VI, CKP_CAT(CKP_EVEN_, NV));                         \\
                VT o = CKP_SHUFFLE(v0, v1, VI, CKP_CAT(CKP_ODD_, NV));                          \\
                VT e2 = CKP_SHUFFLE(e, last, VI, CKP_CAT(CKP_NEXT_, NV));                       \\
                nan |= ckp_unord_##SUF(v0, v1) | ckp_unord_##SUF(e2, e2);                       \\
                VI c1 = o > e;                                                                  \\
                VT m = ckp_max_##SUF(o, e);                                                     \\
                VI c2 = e2 > m;                                                                 \\
                m = ckp_max_##SUF(e2, m);                                                       \\
                VI j = (c2 & 2) | (~c2 & -c1);                                                  \\
                if (i == 0) {                                                                   \\
                    best = m;                                                                   \\
                    at = j;                                                                     \\
                } else {                                                                        \\
                    VI c = m > best;                                                            \\
                    best = ckp_max_##SUF(m, best);                                              \\
                    at = (c & (j + 3 * i)) | (~c & at);                                         \\
                }                                                                               \\
            }                                                                                   \\
            __builtin_memcpy(y + r * ow + s, &best, sizeof best);                               \\
            if (a)                                                                              \\
                ckp_put_idx_##SUF(a + r * ow + s, at);                                          \\
        }                                                                                       \\
        for (int l = 0; l < NV; l++)                                                            \\
            if (nan[l]) return 1;                                                               \\
        return 0;                                                                               \\
    }                                                                                           \\
    static int ckp_max_windows_##SUF(int k, const T* x, Py_ssize_t w, Py_ssize_t rows,         \\
                                     Py_ssize_t n, T* y, Py_ssize_t ow, unsigned char* a) {     \\
        return k == 2 ? ckp_max2x2_##SUF(x, w, rows, n, y, ow, a)                               \\
                      : ckp_max3x3_##SUF(x, w, rows, n, y, ow, a);                              \\
    }
    CKP_DEFINE_MAX(float, ckp_vf, ckp_vfi, CKP_NF, f)
    CKP_DEFINE_MAX(double, ckp_vd, ckp_vdi, CKP_ND, d)
    #else
    #define CKP_VBYTES 0
    static int ckp_max_windows_f(int k, const float* x, Py_ssize_t w, Py_ssize_t rows, Py_ssize_t n, float* y, Py_ssize_t ow, unsigned char* a) { return 1; }
    static int ckp_max_windows_d(int k, const double* x, Py_ssize_t w, Py_ssize_t rows, Py_ssize_t n, double* y, Py_ssize_t ow, unsigned char* a) { return 1; }
    #endif
    """
    int CKP_VBYTES
    bint ckp_max_windows_f(int k, const float* x, Py_ssize_t w, Py_ssize_t rows, Py_ssize_t n,
                           float* y, Py_ssize_t ow, unsigned char* a) noexcept nogil
    bint ckp_max_windows_d(int k, const double* x, Py_ssize_t w, Py_ssize_t rows, Py_ssize_t n,
                           double* y, Py_ssize_t ow, unsigned char* a) noexcept nogil


def vector_bytes():
    """Width in bytes of the vectors of the max-pool kernels in this build (0: none)."""
    return CKP_VBYTES


cdef inline Py_ssize_t _vector_windows(floating* like, Py_ssize_t n) noexcept nogil:
    """The windows of a row of n that the vector kernel takes: all of them, or none when they
    fill less than one vector."""
    cdef Py_ssize_t lanes = CKP_VBYTES // sizeof(floating)
    return n if 0 < lanes <= n else 0


cdef inline bint _max_vectors(int k, const floating* x, Py_ssize_t w, Py_ssize_t rows,
                              Py_ssize_t n, floating* y, Py_ssize_t ow,
                              unsigned char* a) noexcept nogil:
    """``ckp_max_windows`` of this type: rows x n k x k windows (k = 2 or 3) at stride 2, n
    from ``_vector_windows``."""
    if floating is float:
        return ckp_max_windows_f(k, x, w, rows, n, y, ow, a)
    else:
        return ckp_max_windows_d(k, x, w, rows, n, y, ow, a)


cdef bint _max_row(const floating* x0, Py_ssize_t w, floating* y, unsigned char* a, Py_ssize_t n,
                   Py_ssize_t k) noexcept nogil:
    """n k x k windows (k = 2 or 3), stride 2, wholly inside the input: ``x0`` is the first
    window's corner, ``w`` the row length; ``a`` (or NULL) receives the argmax.  Returns
    whether a window held a NaN (then y and a are not to be trusted)."""
    # positions of a chunk of windows, turned into bytes by a loop of their own: a byte store
    # in the main loop would make it step 16 windows at a time, leaving most rows to the tail
    cdef floating where[64]
    cdef Py_ssize_t s, start, m
    cdef bint nan = False
    for start in range(0, n, 64):
        m = n - start if n - start < 64 else 64
        if k == 2:
            for s in range(start, start + m):
                y[s] = _max_2x2(x0 + 2 * s, w, &where[s - start])
                nan = nan | _has_nan(x0 + 2 * s, w, 2)
        else:
            for s in range(start, start + m):
                y[s] = _max_3x3(x0 + 2 * s, w, &where[s - start])
                nan = nan | _has_nan(x0 + 2 * s, w, 3)
        if a != NULL:
            for s in range(m):
                a[start + s] = <unsigned char> <int> where[s]
    return nan


cdef void _avg_windows(const floating* src, floating* y, Py_ssize_t h, Py_ssize_t w,
                       Py_ssize_t r, Py_ssize_t s_from, Py_ssize_t s_to, Py_ssize_t kh,
                       Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                       bint count_pad) noexcept nogil:
    """Windows (r, s_from) .. (r, s_to - 1): sum of the in-input taps / PyTorch's divisor;
    ``y`` points at output row r."""
    cdef Py_ssize_t s, i, j, wc, j0, j1
    cdef Py_ssize_t wr = r * sh - ph
    cdef Py_ssize_t i0 = wr if wr > 0 else 0, i1 = wr + kh if wr + kh < h else h
    cdef Py_ssize_t dh = _divisor(wr, kh, h, ph, count_pad)
    cdef floating acc
    for s in range(s_from, s_to):
        wc = s * sw - pw
        j0 = wc if wc > 0 else 0
        j1 = wc + kw if wc + kw < w else w
        acc = 0
        for i in range(i0, i1):
            for j in range(j0, j1):
                acc = acc + src[i * w + j]
        y[s] = acc / (dh * _divisor(wc, kw, w, pw, count_pad))


cdef void _avg_row(const floating* x0, Py_ssize_t w, floating* y, Py_ssize_t n,
                   Py_ssize_t k) noexcept nogil:
    """n k x k windows (k = 2 or 3), stride 2, wholly inside the input (divisor k * k whatever
    count_include_pad says); taps summed in row-major order like the generic walk."""
    cdef const floating* x1 = x0 + w
    cdef const floating* x2 = x1 + w
    cdef Py_ssize_t s
    cdef floating div = k * k
    if k == 2:
        for s in range(n):
            y[s] = (x0[2 * s] + x0[2 * s + 1] + x1[2 * s] + x1[2 * s + 1]) / div
        return
    for s in range(n):
        y[s] = (x0[2 * s] + x0[2 * s + 1] + x0[2 * s + 2] + x1[2 * s] + x1[2 * s + 1]
                + x1[2 * s + 2] + x2[2 * s] + x2[2 * s + 1] + x2[2 * s + 2]) / div


cdef void _pool_plane(const floating* src, floating* y, unsigned char* a8, int* a32,
                      Py_ssize_t h, Py_ssize_t w, Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t kh,
                      Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                      bint average, bint count_pad) noexcept nogil:
    """One plane, max or average: the dedicated row loops over the interior windows of a 2x2
    or 3x3 stride-2 geometry (for max pooling, the rows the vector kernel left), the generic
    walk for the rest."""
    cdef Py_ssize_t r, o, s_lo, s_hi, s_mid, r_lo = 0, r_hi = 0, c_lo = 0, c_hi = 0
    cdef Py_ssize_t v_hi  # windows [c_lo, v_hi) of the interior rows: done by the vector kernel
    if _dedicated(kh, kw, sh, sw) and a32 == NULL:
        r_lo, r_hi = _interior(h, oh, kh, 2, ph)
        c_lo, c_hi = _interior(w, ow, kw, 2, pw)
    v_hi = c_lo
    if not average and r_hi > r_lo:  # a dedicated geometry with interior windows
        v_hi = c_lo + _vector_windows(y, c_hi - c_lo)
        if v_hi > c_lo and _max_vectors(<int> kh, src + (2 * r_lo - ph) * w + (2 * c_lo - pw), w,
                                        r_hi - r_lo, v_hi - c_lo, y + r_lo * ow + c_lo, ow,
                                        _shift(a8, r_lo * ow + c_lo)):
            v_hi = c_lo  # a NaN: the plane again by the row loops, which see which rows
    for r in range(oh):
        o = r * ow
        s_lo = s_mid = s_hi = ow  # a whole row of generic windows, unless it is an interior row
        if r_lo <= r < r_hi:
            s_lo, s_mid, s_hi = c_lo, v_hi, c_hi
        if average:
            _avg_windows(src, y + o, h, w, r, 0, s_lo, kh, kw, sh, sw, ph, pw, count_pad)
            if s_hi > s_lo:
                _avg_row(src + (2 * r - ph) * w + (2 * s_lo - pw), w, y + o + s_lo,
                         s_hi - s_lo, kh)
            _avg_windows(src, y + o, h, w, r, s_hi, ow, kh, kw, sh, sw, ph, pw, count_pad)
        else:
            if s_lo > 0:
                _max_windows(src, y + o, _shift(a8, o), _shift(a32, o), h, w, r, 0, s_lo,
                             kh, kw, sh, sw, ph, pw)
            if s_hi > s_mid and _max_row(src + (2 * r - ph) * w + (2 * s_mid - pw), w,
                                         y + o + s_mid, _shift(a8, o + s_mid), s_hi - s_mid, kh):
                s_hi = s_mid  # a NaN: those windows again, by the NaN-aware walk
            if s_hi < ow:
                _max_windows(src, y + o, _shift(a8, o), _shift(a32, o), h, w, r, s_hi, ow,
                             kh, kw, sh, sw, ph, pw)


# ---------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------
cdef inline floating _grad2(const floating* g, const unsigned char* a, Py_ssize_t ow,
                            Py_ssize_t u, int di, Py_ssize_t dh, Py_ssize_t w, Py_ssize_t pw,
                            bint count_pad) noexcept nogil:
    """dx at padded column ``u`` of an input row whose one 2x2 window row is ``g`` (its argmax
    ``a``, NULL for the average); ``di`` = 2 * the row's place in its windows."""
    cdef Py_ssize_t s = u >> 1
    if s >= ow:  # right of the last window (floor mode)
        return 0
    if a != NULL:
        return g[s] if a[s] == di + (u & 1) else 0
    return g[s] / (dh * _divisor(2 * s - pw, 2, w, pw, count_pad))


cdef void _backward2_row(const floating* g, const unsigned char* a, floating* d, Py_ssize_t n,
                         int di, floating div) noexcept nogil:
    """dx over n whole 2x2 windows of one input row: dy to the argmax (``a``) or dy / div."""
    cdef Py_ssize_t s
    cdef floating v, at, left = di, right = di + 1  # compared as floating: see _max_2x2
    if a == NULL:
        for s in range(n):
            v = g[s] / div
            d[2 * s] = v
            d[2 * s + 1] = v
        return
    for s in range(n):
        at = a[s]
        v = g[s]  # loaded unconditionally, so the selects below need no branch
        d[2 * s] = v if at == left else 0
        d[2 * s + 1] = v if at == right else 0


cdef void _backward2_plane(const floating* g, const unsigned char* a, floating* dst,
                           Py_ssize_t h, Py_ssize_t w, Py_ssize_t oh, Py_ssize_t ow,
                           Py_ssize_t ph, Py_ssize_t pw, bint count_pad) noexcept nogil:
    """2x2 windows at stride 2 cover each input at most once, so each dx row is written whole
    from the one output row over it, with no zero fill first: max pooling routes dy to the
    argmax ``a``, average pooling (``a`` NULL) divides it by the window's divisor."""
    cdef Py_ssize_t i, j, t, r, dh, c_lo, c_hi
    cdef int di
    cdef floating* row
    cdef const floating* gr
    cdef const unsigned char* ar = NULL
    c_lo, c_hi = _interior(w, ow, 2, 2, pw)
    for i in range(h):
        t = i + ph
        r = t >> 1
        row = dst + i * w
        if r >= oh:  # below the last window (floor mode)
            memset(row, 0, w * sizeof(floating))
            continue
        gr = g + r * ow
        if a != NULL:
            ar = a + r * ow
        di = 2 * (t & 1)
        dh = _divisor(2 * r - ph, 2, h, ph, count_pad)
        for j in range(2 * c_lo - pw):
            row[j] = _grad2(gr, ar, ow, j + pw, di, dh, w, pw, count_pad)
        if c_hi > c_lo:
            _backward2_row(gr + c_lo, ar + c_lo if ar != NULL else NULL, row + 2 * c_lo - pw,
                           c_hi - c_lo, di, <floating> (2 * dh))
        for j in range(2 * c_hi - pw, w):
            row[j] = _grad2(gr, ar, ow, j + pw, di, dh, w, pw, count_pad)


cdef void _max_scatter_plane(const floating* g, const unsigned char* a8, const int* a32,
                             floating* dst, Py_ssize_t h, Py_ssize_t w, Py_ssize_t oh,
                             Py_ssize_t ow, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                             Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw) noexcept nogil:
    """dx = 0, then dy of every window added at its argmax (overlapping windows)."""
    cdef Py_ssize_t offset[256]  # window position -> offset from the window's corner
    cdef Py_ssize_t r, s, k, p, corner
    memset(dst, 0, h * w * sizeof(floating))
    if a8 != NULL:
        for k in range(kh * kw):
            offset[k] = (k // kw) * w + k % kw
    for r in range(oh):
        corner = (r * sh - ph) * w - pw
        for s in range(ow):
            p = r * ow + s
            if a8 != NULL:
                k = offset[a8[p]]
            else:
                k = (a32[p] // kw) * w + a32[p] % kw
            dst[corner + s * sw + k] += g[p]


cdef void _avg_scatter_plane(const floating* g, floating* dst, Py_ssize_t h, Py_ssize_t w,
                             Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t kh, Py_ssize_t kw,
                             Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                             bint count_pad) noexcept nogil:
    """dx = 0, then dy / divisor spread evenly over each window's in-input taps."""
    cdef Py_ssize_t r, s, i, j, r0, r1, s0, s1, dh
    cdef floating v
    memset(dst, 0, h * w * sizeof(floating))
    for r in range(oh):
        r0 = r * sh - ph
        r1 = r0 + kh if r0 + kh < h else h
        dh = _divisor(r0, kh, h, ph, count_pad)
        for s in range(ow):
            s0 = s * sw - pw
            s1 = s0 + kw if s0 + kw < w else w
            v = g[r * ow + s] / (dh * _divisor(s0, kw, w, pw, count_pad))
            for i in range(r0 if r0 > 0 else 0, r1):
                for j in range(s0 if s0 > 0 else 0, s1):
                    dst[i * w + j] += v


# ---------------------------------------------------------------------------------------------
# entry points: shapes checked here, then OpenMP over (image, channel) planes
# ---------------------------------------------------------------------------------------------
cdef int _argmax_pointer(object argmax, tuple shape, Py_ssize_t window, unsigned char** a8,
                         int** a32) except -1:
    """Point ``a8`` (uint8) or ``a32`` (int32) at ``argmax``'s data; both stay NULL for None."""
    cdef unsigned char[:, :, :, ::1] bytes_view
    cdef int[:, :, :, ::1] ints_view
    if argmax is None:
        return 0
    if not isinstance(argmax, np.ndarray) or argmax.shape != shape:
        raise ValueError(f"maxpool2d: argmax must be an array of shape {shape}")
    if argmax.dtype == np.uint8 and window <= MAX_UINT8_WINDOW:
        bytes_view = argmax
        a8[0] = &bytes_view[0, 0, 0, 0]
    elif argmax.dtype == np.intc:
        ints_view = argmax
        a32[0] = &ints_view[0, 0, 0, 0]
    else:
        raise ValueError(f"maxpool2d: argmax of a {window}-element window must be "
                         f"{'uint8 or ' if window <= MAX_UINT8_WINDOW else ''}int32, "
                         f"got {argmax.dtype}")
    return 0


cdef tuple _shape4(Py_ssize_t* shape):
    return (shape[0], shape[1], shape[2], shape[3])


cdef int _check_planes(tuple a, tuple b, str what) except -1:
    if a[:2] != b[:2]:
        raise ValueError(f"{what}: arrays of shapes {a} and {b} hold different planes")
    return 0


def maxpool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, argmax,
                      int kh, int kw, int sh, int sw, int ph, int pw):
    """y = max over windows; ``argmax`` (None, or y's shape in uint8 for windows of up to 256
    elements, int32 for any) receives the first maximum's position inside each window."""
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t oh = y.shape[2], ow = y.shape[3]
    cdef Py_ssize_t pidx
    cdef unsigned char* a8 = NULL
    cdef int* a32 = NULL
    _check_planes(_shape4(x.shape), _shape4(y.shape), "maxpool2d")
    if planes == 0 or oh == 0 or ow == 0:
        return
    _argmax_pointer(argmax, _shape4(y.shape), kh * kw, &a8, &a32)
    with nogil, parallel(use_threads_if=planes * h * w >= _PARALLEL_MIN):
        note_team()
        for pidx in prange(planes, schedule="static"):
            _pool_plane(&x[pidx // c, pidx % c, 0, 0], &y[pidx // c, pidx % c, 0, 0],
                        _shift(a8, pidx * oh * ow), _shift(a32, pidx * oh * ow),
                        h, w, oh, ow, kh, kw, sh, sw, ph, pw, False, False)


def maxpool2d_backward(const floating[:, :, :, ::1] dy, argmax, floating[:, :, :, ::1] dx,
                       int kh, int kw, int sh, int sw, int ph, int pw):
    """dx = dy of every window routed to its recorded argmax (``maxpool2d_forward``'s)."""
    cdef Py_ssize_t planes = dx.shape[0] * dx.shape[1]
    cdef Py_ssize_t c = dx.shape[1], h = dx.shape[2], w = dx.shape[3]
    cdef Py_ssize_t oh = dy.shape[2], ow = dy.shape[3]
    cdef Py_ssize_t pidx, o
    cdef unsigned char* a8 = NULL
    cdef int* a32 = NULL
    cdef floating* dst
    _check_planes(_shape4(dy.shape), _shape4(dx.shape), "maxpool2d backward")
    if planes == 0:
        return
    if oh == 0 or ow == 0:
        dx[...] = 0
        return
    _argmax_pointer(argmax, _shape4(dy.shape), kh * kw, &a8, &a32)
    if a8 == NULL and a32 == NULL:
        raise ValueError("maxpool2d backward: the forward pass kept no argmax")
    with nogil, parallel(use_threads_if=planes * h * w >= _PARALLEL_MIN):
        note_team()
        for pidx in prange(planes, schedule="static"):
            o = pidx * oh * ow
            dst = &dx[pidx // c, pidx % c, 0, 0]
            if a8 != NULL and kh == 2 and kw == 2 and sh == 2 and sw == 2:
                _backward2_plane(&dy[pidx // c, pidx % c, 0, 0], a8 + o, dst, h, w, oh, ow,
                                 ph, pw, False)
            else:
                _max_scatter_plane(&dy[pidx // c, pidx % c, 0, 0], _shift(a8, o),
                                   _shift(a32, o), dst, h, w, oh, ow, kh, kw, sh, sw, ph, pw)


def avgpool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                      int kh, int kw, int sh, int sw, int ph, int pw, bint count_include_pad):
    """y = sum over each window / its divisor (PyTorch's count_include_pad rule)."""
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t oh = y.shape[2], ow = y.shape[3]
    cdef Py_ssize_t pidx
    _check_planes(_shape4(x.shape), _shape4(y.shape), "avgpool2d")
    if planes == 0 or oh == 0 or ow == 0:
        return
    with nogil, parallel(use_threads_if=planes * h * w >= _PARALLEL_MIN):
        note_team()
        for pidx in prange(planes, schedule="static"):
            _pool_plane(&x[pidx // c, pidx % c, 0, 0], &y[pidx // c, pidx % c, 0, 0], NULL, NULL,
                        h, w, oh, ow, kh, kw, sh, sw, ph, pw, True, count_include_pad)


def avgpool2d_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                       int kh, int kw, int sh, int sw, int ph, int pw, bint count_include_pad):
    """dx = dy / divisor spread evenly over each window's in-input positions."""
    cdef Py_ssize_t planes = dx.shape[0] * dx.shape[1]
    cdef Py_ssize_t c = dx.shape[1], h = dx.shape[2], w = dx.shape[3]
    cdef Py_ssize_t oh = dy.shape[2], ow = dy.shape[3]
    cdef Py_ssize_t pidx
    cdef floating* dst
    _check_planes(_shape4(dy.shape), _shape4(dx.shape), "avgpool2d backward")
    if planes == 0:
        return
    with nogil, parallel(use_threads_if=planes * h * w >= _PARALLEL_MIN):
        note_team()
        for pidx in prange(planes, schedule="static"):
            dst = &dx[pidx // c, pidx % c, 0, 0]
            if kh == 2 and kw == 2 and sh == 2 and sw == 2 and oh > 0 and ow > 0:
                _backward2_plane(&dy[pidx // c, pidx % c, 0, 0], NULL, dst, h, w, oh, ow,
                                 ph, pw, count_include_pad)
            else:
                _avg_scatter_plane(&dy[pidx // c, pidx % c, 0, 0], dst, h, w, oh, ow, kh, kw,
                                   sh, sw, ph, pw, count_include_pad)


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
