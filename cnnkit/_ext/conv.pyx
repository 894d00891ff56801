# cython: language_level=3
"""2-D convolution and transposed convolution kernels: im2col / col2im in nogil Cython, the
products in BLAS GEMM.

Work is split over images: each OpenMP thread takes whole images, builds the column matrix of
one image (or of a band of its output rows) in its own slice of a caller-provided workspace, and
calls single-threaded GEMM from ``scipy.linalg.cython_blas`` on it (one GEMM per group).  The
caller limits BLAS to one thread while these loops run, so OpenMP and BLAS never nest.

Column layout (row-major, one image, one band of ``rows`` output rows)::

    col[(c * kh + i) * kw + j, (r - r0) * ow + s] = xpad[c, r * sh + i * dh, s * sw + j * dw]

so the rows of group ``g`` are the contiguous block ``[g * Kg, (g + 1) * Kg)`` with
``Kg = C/groups * kh * kw``, matching ``weight[g*Og:(g+1)*Og].reshape(Og, Kg)``.

Inputs are validated by the Python wrapper (``cnnkit.builtin.cython_variants``): shapes agree,
``workspace`` is (threads, >= K * rows_per_band * ow), ``dw_partial`` is (threads, O, Kg).

Transposed convolution has its own forward kernel (a GEMM per group and band of *input* rows,
then a scatter); its backward pass is an ordinary convolution (input gradient) and the
convolution weight gradient with x and dy swapped, so the wrapper calls the kernels above.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from cnnkit._ext._blas cimport gemm_rm
from cnnkit._ext._omp cimport note_team, omp_last_team, omp_max_threads, omp_set_max_threads


def max_threads():
    """Threads an OpenMP region would use now (1 when built without OpenMP)."""
    return omp_max_threads()


def set_max_threads(int n):
    """``omp_set_num_threads(n)`` for the calling thread, on the OpenMP runtime the kernels
    use only (threadpoolctl's limit reaches every runtime loaded, and costs far more)."""
    if n < 1:
        raise ValueError(f"set_max_threads: expected n >= 1, got {n}")
    omp_set_max_threads(n)


def last_team_size():
    """Threads of the last parallel region a convolution kernel ran (0 before the first)."""
    return omp_last_team()


cdef inline Py_ssize_t _first_valid(Py_ssize_t offset, Py_ssize_t stride) noexcept nogil:
    """Smallest output index o >= 0 with o * stride + offset >= 0."""
    if offset >= 0:
        return 0
    return (-offset + stride - 1) // stride


cdef inline Py_ssize_t _end_valid(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size,
                                  Py_ssize_t out) noexcept nogil:
    """One past the largest output index o < out with o * stride + offset < size."""
    cdef Py_ssize_t e
    if size - 1 - offset < 0:
        return 0
    e = (size - 1 - offset) // stride + 1
    return e if e < out else out


cdef inline floating _sum(const floating* a, Py_ssize_t n) noexcept nogil:
    """Sum of a[0:n] in eight interleaved partial sums: without -ffast-math a single accumulator
    is a serial dependency chain the compiler may not reorder, eight independent lanes it can
    keep in one vector register."""
    cdef floating lane[8]
    cdef Py_ssize_t p, q, n8 = n - n % 8
    cdef floating acc
    for q in range(8):
        lane[q] = 0
    for p in range(0, n8, 8):
        for q in range(8):
            lane[q] = lane[q] + a[p + q]
    acc = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]))
    for p in range(n8, n):
        acc = acc + a[p]
    return acc


cdef void im2col_band(const floating* x, Py_ssize_t c, Py_ssize_t h, Py_ssize_t w,
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                      Py_ssize_t ow, Py_ssize_t r0, Py_ssize_t r1, floating* col) noexcept nogil:
    """Columns of output rows [r0, r1) of one image x (c, h, w) into col (c*kh*kw, (r1-r0)*ow)."""
    cdef Py_ssize_t ch, i, j, r, s, row, src_r, off, s0, s1
    cdef Py_ssize_t band = (r1 - r0) * ow
    cdef floating* dst
    cdef const floating* src
    for ch in range(c):
        for i in range(kh):
            for j in range(kw):
                row = (ch * kh + i) * kw + j
                off = j * dw - pl
                s0 = _first_valid(off, sw)
                s1 = _end_valid(off, sw, w, ow)
                if s1 < s0:
                    s1 = s0
                for r in range(r0, r1):
                    dst = col + row * band + (r - r0) * ow
                    src_r = r * sh - pt + i * dh
                    if src_r < 0 or src_r >= h:
                        memset(dst, 0, ow * sizeof(floating))
                        continue
                    src = x + (ch * h + src_r) * w + off
                    if s0 > 0:
                        memset(dst, 0, s0 * sizeof(floating))
                    if sw == 1:
                        # stride 1: the valid part of the column row is one run of the input row
                        memcpy(dst + s0, src + s0, (s1 - s0) * sizeof(floating))
                    else:
                        for s in range(s0, s1):
                            dst[s] = src[s * sw]
                    if s1 < ow:
                        memset(dst + s1, 0, (ow - s1) * sizeof(floating))


cdef void col2im_band(const floating* col, Py_ssize_t c, Py_ssize_t h, Py_ssize_t w,
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                      Py_ssize_t ow, Py_ssize_t r0, Py_ssize_t r1, floating* dx) noexcept nogil:
    """Adjoint of im2col_band: add the column gradients into dx (c, h, w); padding is dropped."""
    # mirrors im2col_band loop for loop; kept apart because a shared loop would need a
    # copy-or-add branch (and padding zero-fill) in the innermost loop
    cdef Py_ssize_t ch, i, j, r, s, row, dst_r, off, s0, s1
    cdef Py_ssize_t band = (r1 - r0) * ow
    cdef const floating* src
    cdef floating* dst
    for ch in range(c):
        for i in range(kh):
            for j in range(kw):
                row = (ch * kh + i) * kw + j
                off = j * dw - pl
                s0 = _first_valid(off, sw)
                s1 = _end_valid(off, sw, w, ow)
                for r in range(r0, r1):
                    dst_r = r * sh - pt + i * dh
                    if dst_r < 0 or dst_r >= h:
                        continue
                    src = col + row * band + (r - r0) * ow
                    dst = dx + (ch * h + dst_r) * w + off
                    if sw == 1:
                        for s in range(s0, s1):
                            dst[s] += src[s]
                    else:
                        for s in range(s0, s1):
                            dst[s * sw] += src[s]


cdef _check_runs(const int[:, ::1] runs, Py_ssize_t o, Py_ssize_t c, int groups):
    """A connection table's runs: rows (first output, output count, first input, input count),
    sorted by output block; the blocks tile [0, o) in order, every run lies inside [0, c)."""
    cdef Py_ssize_t q, end = 0
    if runs is None:
        return
    if groups != 1:
        raise ValueError("a connection table needs groups=1")
    if runs.shape[1] != 4:
        raise ValueError(f"runs must be shaped (R, 4), got {tuple(runs.shape)[:2]}")
    for q in range(runs.shape[0]):
        if runs[q, 1] < 1 or runs[q, 2] < 0 or runs[q, 3] < 1 or runs[q, 2] + runs[q, 3] > c:
            raise ValueError(f"run {q} (outputs {runs[q, 0]}+{runs[q, 1]}, inputs "
                             f"{runs[q, 2]}+{runs[q, 3]}) is empty or outside the {c} input "
                             "channels")
        if q > 0 and runs[q, 0] == runs[q - 1, 0]:
            if runs[q, 1] != runs[q - 1, 1]:
                raise ValueError(f"runs {q - 1} and {q} give output block {runs[q, 0]} two sizes")
            continue
        if runs[q, 0] != end:
            raise ValueError(f"run {q} starts output block {runs[q, 0]}, expected {end}")
        end = runs[q, 0] + runs[q, 1]
    if end != o:
        raise ValueError(f"runs cover output channels [0, {end}), expected [0, {o})")


cdef _check_cols(const floating[:, :, ::1] cols, Py_ssize_t n, Py_ssize_t k, Py_ssize_t plane):
    if cols is not None and (cols.shape[0] != n or cols.shape[1] != k or cols.shape[2] != plane):
        raise ValueError(f"cols must be shaped (N, C*kh*kw, oh*ow) = ({n}, {k}, {plane}), "
                         f"got {tuple(cols.shape)[:3]}")


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] weight,
                   const floating[::1] bias, floating[:, :, :, ::1] y, floating[:, ::1] workspace,
                   int sh, int sw, int pt, int pl, int dh, int dw, int groups,
                   Py_ssize_t rows_per_band, int num_threads, floating[:, :, ::1] cols=None,
                   bint fuse_relu=False, const int[:, ::1] runs=None):
    """y = conv2d(x, weight) + bias; ``bias`` may be None; ``workspace`` unused for direct 1x1.

    ``runs`` (a connection table, groups 1): rows (first output, output count, first input,
    input count): a block of consecutive output channels reading the same input channels, and
    one run of consecutive input channels it reads.  Each run is one product of the weight's
    block with the matching rows of the columns, so unconnected pairs cost nothing and their
    weights are never read.

    With ``cols`` (N, C*kh*kw, oh*ow) the columns are built there instead of in the workspace
    and stay for :func:`conv2d_backward` to reuse: the columns of image n, band [r0, r1) are
    the (C*kh*kw, (r1-r0)*ow) block at offset C*kh*kw*r0*ow of ``cols[n]``, so the backward call
    must use the same ``rows_per_band``.

    ``fuse_relu``: y = max(y, 0) as ``activation.relu_forward`` computes it (NaN kept), applied
    to each band right after its GEMM and bias, while it is in cache.
    """
    cdef Py_ssize_t n_img = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t o = weight.shape[0], cg = weight.shape[1], kh = weight.shape[2], kw = weight.shape[3]
    cdef Py_ssize_t oh = y.shape[2], ow = y.shape[3]
    cdef Py_ssize_t og = o // groups, kg = cg * kh * kw, plane = oh * ow
    cdef bint has_bias = bias is not None
    cdef bint direct = (kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0
                        and oh == h and ow == w)
    cdef Py_ssize_t n_bands = (oh + rows_per_band - 1) // rows_per_band
    cdef Py_ssize_t task, n, r0, r1, g, oc, p, band, q, kk = kh * kw
    cdef Py_ssize_t n_runs = 0 if runs is None else runs.shape[0]
    cdef Py_ssize_t ch_stride, ldb
    cdef bint keep = cols is not None and not direct
    cdef floating* col = NULL
    cdef floating* colb = NULL
    cdef const floating* bsrc
    cdef floating* yo
    cdef floating bv
    cdef int tid = 0
    if rows_per_band < 1:
        raise ValueError("rows_per_band must be positive")
    _check_cols(cols, n_img, c * kh * kw, plane)
    _check_runs(runs, o, c, groups)
    if n_img == 0 or o == 0 or plane == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        note_team()
        tid = threadid()
        col = &workspace[tid, 0]
        # one task = one band of output rows of one image; tasks write disjoint parts of y
        for task in prange(n_img * n_bands, schedule="static"):
            n = task // n_bands
            r0 = (task % n_bands) * rows_per_band
            r1 = r0 + rows_per_band
            if r1 > oh:
                r1 = oh
            band = (r1 - r0) * ow
            colb = (&cols[n, 0, 0] + c * kh * kw * r0 * ow) if keep else col
            if not direct:
                im2col_band(&x[n, 0, 0, 0], c, h, w, kh, kw, sh, sw, pt, pl, dh, dw, ow, r0, r1, colb)
            if n_runs:
                bsrc = (&x[n, 0, 0, 0] + r0 * ow) if direct else colb
                ch_stride = plane if direct else kk * band
                ldb = plane if direct else band
                for q in range(n_runs):
                    oc = runs[q, 0]
                    # y_block = sum over runs of W[block, run] @ col[run]; the first overwrites
                    gemm_rm(False, False, runs[q, 1], <int> band, <int> (runs[q, 3] * kk),
                            <floating> 1.0, &weight[oc, runs[q, 2], 0, 0], <int> kg,
                            bsrc + runs[q, 2] * ch_stride, <int> ldb,
                            <floating> (0.0 if q == 0 or runs[q - 1, 0] != oc else 1.0),
                            &y[n, oc, 0, 0] + r0 * ow, <int> plane)
            for g in range(groups if n_runs == 0 else 0):
                if direct:
                    bsrc = &x[n, g * cg, 0, 0] + r0 * ow
                    gemm_rm(False, False, <int> og, <int> band, <int> kg, <floating> 1.0,
                            &weight[g * og, 0, 0, 0], <int> kg, bsrc, <int> plane,
                            <floating> 0.0, &y[n, g * og, 0, 0] + r0 * ow, <int> plane)
                else:
                    gemm_rm(False, False, <int> og, <int> band, <int> kg, <floating> 1.0,
                            &weight[g * og, 0, 0, 0], <int> kg, colb + g * kg * band, <int> band,
                            <floating> 0.0, &y[n, g * og, 0, 0] + r0 * ow, <int> plane)
            if has_bias:
                for oc in range(o):
                    bv = bias[oc]
                    yo = &y[n, oc, 0, 0] + r0 * ow
                    for p in range(band):
                        yo[p] = yo[p] + bv
            if fuse_relu:
                for oc in range(o):
                    yo = &y[n, oc, 0, 0] + r0 * ow
                    for p in range(band):
                        bv = yo[p]
                        yo[p] = 0 if bv <= 0 else bv


def conv2d_backward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] weight,
                    const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                    floating[:, :, ::1] dw_partial, floating[:, ::1] db_partial,
                    floating[:, ::1] workspace,
                    int sh, int sw, int pt, int pl, int dh, int dw, int groups,
                    Py_ssize_t rows_per_band, int num_threads, bint compute_dx=True,
                    const floating[:, :, ::1] cols=None, const int[:, ::1] runs=None):
    """dx (overwritten), and per-thread partial sums dw_partial[t] (O, Kg), db_partial[t] (O,).

    The partial sums must be zeroed by the caller, who adds them up over threads.  With
    ``compute_dx`` false (the input needs no gradient, e.g. a network's first layer) ``dx`` may
    be None and the input-gradient GEMM and col2im are skipped.
    ``db_partial`` may be None (no bias).  Each image belongs to one thread, so its dx slice is
    written without races even though bands of output rows overlap in the input.
    ``cols`` are the columns kept by :func:`conv2d_forward` (same ``rows_per_band``): the
    weight gradient reads them instead of rebuilding them, and ``workspace`` only holds the
    column gradients (it may be (threads, 1) when ``compute_dx`` is false).
    ``runs``: the connection table as in :func:`conv2d_forward`; the weight gradient of an
    unconnected pair is never written (stays the caller's zero).
    """
    cdef Py_ssize_t n_img = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t o = weight.shape[0], cg = weight.shape[1], kh = weight.shape[2], kw = weight.shape[3]
    cdef Py_ssize_t oh = dy.shape[2], ow = dy.shape[3]
    cdef Py_ssize_t og = o // groups, kg = cg * kh * kw, plane = oh * ow
    cdef bint has_bias = db_partial is not None
    cdef bint direct = (kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0
                        and oh == h and ow == w)
    cdef bint keep = cols is not None and not direct
    cdef Py_ssize_t n, r0, r1, g, oc, band, q, kk = kh * kw
    cdef Py_ssize_t n_runs = 0 if runs is None else runs.shape[0]
    cdef Py_ssize_t ch_stride, ldb
    cdef floating* col = NULL
    cdef floating* dwt = NULL
    cdef const floating* colb = NULL
    cdef const floating* dyg
    cdef const floating* bsrc
    cdef int tid = 0
    if rows_per_band < 1:
        raise ValueError("rows_per_band must be positive")
    _check_cols(cols, n_img, c * kh * kw, plane)
    _check_runs(runs, o, c, groups)
    if compute_dx and (dx is None or dx.shape[0] != n_img or dx.shape[1] != c
                       or dx.shape[2] != h or dx.shape[3] != w):
        raise ValueError("dx must be an array shaped like x when compute_dx is set")
    if n_img == 0:
        return
    if o == 0 or plane == 0:
        if compute_dx:
            memset(&dx[0, 0, 0, 0], 0, n_img * c * h * w * sizeof(floating))
        return
    with nogil, parallel(num_threads=num_threads):
        note_team()
        tid = threadid()
        col = &workspace[tid, 0]
        dwt = &dw_partial[tid, 0, 0]
        for n in prange(n_img, schedule="static"):
            if compute_dx and (not direct or n_runs):
                memset(&dx[n, 0, 0, 0], 0, c * h * w * sizeof(floating))
            r0 = 0
            while r0 < oh:
                r1 = r0 + rows_per_band
                if r1 > oh:
                    r1 = oh
                band = (r1 - r0) * ow
                if keep:
                    colb = &cols[n, 0, 0] + c * kh * kw * r0 * ow
                elif not direct:
                    im2col_band(&x[n, 0, 0, 0], c, h, w, kh, kw, sh, sw, pt, pl, dh, dw, ow, r0, r1, col)
                    colb = col
                if n_runs:
                    bsrc = (&x[n, 0, 0, 0] + r0 * ow) if direct else colb
                    ch_stride = plane if direct else kk * band
                    ldb = plane if direct else band
                    for q in range(n_runs):
                        oc = runs[q, 0]
                        # dW[block, run] += dy_block (ob x band) @ col[run]^T
                        gemm_rm(False, True, runs[q, 1], <int> (runs[q, 3] * kk), <int> band,
                                <floating> 1.0, &dy[n, oc, 0, 0] + r0 * ow, <int> plane,
                                bsrc + runs[q, 2] * ch_stride, <int> ldb, <floating> 1.0,
                                dwt + oc * kg + runs[q, 2] * kk, <int> kg)
                    if compute_dx:
                        # dcol[run] += W[block, run]^T dy_block, into zeroed column gradients
                        # (or straight into dx for a direct 1x1, zeroed above)
                        if not direct:
                            memset(col, 0, kg * band * sizeof(floating))
                        for q in range(n_runs):
                            oc = runs[q, 0]
                            gemm_rm(True, False, <int> (runs[q, 3] * kk), <int> band, runs[q, 1],
                                    <floating> 1.0, &weight[oc, runs[q, 2], 0, 0], <int> kg,
                                    &dy[n, oc, 0, 0] + r0 * ow, <int> plane, <floating> 1.0,
                                    ((&dx[n, 0, 0, 0] + r0 * ow) if direct else col)
                                    + runs[q, 2] * ch_stride, <int> ldb)
                        if not direct:
                            col2im_band(col, c, h, w, kh, kw, sh, sw, pt, pl, dh, dw, ow, r0, r1,
                                        &dx[n, 0, 0, 0])
                    r0 = r1
                    continue
                for g in range(groups):
                    dyg = &dy[n, g * og, 0, 0] + r0 * ow
                    bsrc = (&x[n, g * cg, 0, 0] + r0 * ow) if direct else (colb + g * kg * band)
                    # dW_g += dy_g (og x band) @ col_g^T (band x kg)
                    gemm_rm(False, True, <int> og, <int> kg, <int> band, <floating> 1.0,
                            dyg, <int> plane, bsrc, <int> (plane if direct else band),
                            <floating> 1.0, dwt + g * og * kg, <int> kg)
                if not compute_dx:
                    r0 = r1
                    continue
                for g in range(groups):
                    dyg = &dy[n, g * og, 0, 0] + r0 * ow
                    # dcol_g (kg x band) = W_g^T (kg x og) @ dy_g (og x band); reuses the columns
                    if direct:
                        gemm_rm(True, False, <int> kg, <int> band, <int> og, <floating> 1.0,
                                &weight[g * og, 0, 0, 0], <int> kg, dyg, <int> plane,
                                <floating> 0.0, &dx[n, g * cg, 0, 0] + r0 * ow, <int> plane)
                    else:
                        gemm_rm(True, False, <int> kg, <int> band, <int> og, <floating> 1.0,
                                &weight[g * og, 0, 0, 0], <int> kg, dyg, <int> plane,
                                <floating> 0.0, col + g * kg * band, <int> band)
                if not direct:
                    col2im_band(col, c, h, w, kh, kw, sh, sw, pt, pl, dh, dw, ow, r0, r1, &dx[n, 0, 0, 0])
                r0 = r1
            if has_bias:
                for oc in range(o):
                    db_partial[tid, oc] += _sum(&dy[n, oc, 0, 0], plane)


# ------------------------------------------------------------------------------------------------
# transposed convolution forward
#
# Column layout for input rows ``[r0, r1)`` of one image (row-major)::
#
#     col[(co * kh + i) * kw + j, (r - r0) * w + s]  is added to  y[co, r*sh - ph + i*dh, s*sw - pw + j*dw]
#
# ``col`` rows of group g are the block ``[g * Kg, (g + 1) * Kg)``, ``Kg = Cout/groups * kh * kw``,
# so the block is ``weight[g*Cig:(g+1)*Cig].reshape(Cig, Kg)^T @ x[g*Cig:(g+1)*Cig]``.
# ------------------------------------------------------------------------------------------------
cdef void _scatter(const floating* col, Py_ssize_t cout, Py_ssize_t kh, Py_ssize_t kw,
                   Py_ssize_t w, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t sh, Py_ssize_t sw,
                   Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                   Py_ssize_t oh, Py_ssize_t ow, floating* y) noexcept nogil:
    """Add the columns of input rows [r0, r1) into y (cout, oh, ow), dropping the padding."""
    # col2im_band's loop with the roles of input and output swapped (its column band is indexed
    # by input positions, the destination is the larger output); merging the two would put the
    # choice of index map in the innermost loop
    cdef Py_ssize_t co, i, j, r, s, s0, s1, off, out_r, band = (r1 - r0) * w
    cdef const floating* src
    cdef floating* dst
    for co in range(cout):
        for i in range(kh):
            for j in range(kw):
                off = j * dw - pw
                # valid s: 0 <= s*sw + off < ow
                s0 = _first_valid(off, sw)
                s1 = _end_valid(off, sw, ow, w)
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
        note_team()
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
                    gemm_rm(True, False, <int> kg, <int> band, <int> cig, <floating> 1.0,
                            &weight[g * cig, 0, 0, 0], <int> kg, &x[n, g * cig, 0, 0] + r0 * w,
                            <int> plane, <floating> 0.0, col + g * kg * band, <int> band)
                _scatter(col, cout, kh, kw, w, r0, r1, sh, sw, ph, pw, dh, dw, oh, ow,
                         &y[n, 0, 0, 0])
                r0 = r1
            if has_bias:
                for co in range(cout):
                    bv = bias[co]
                    yo = &y[n, co, 0, 0]
                    for p in range(oh * ow):
                        yo[p] = yo[p] + bv


def channel_sums(const floating[:, :, :, ::1] a, floating[::1] out, int num_threads):
    """out[c] = sum of a[:, c] (overwritten): the bias gradient of a transposed convolution."""
    cdef Py_ssize_t n_img = a.shape[0], c = a.shape[1], plane = a.shape[2] * a.shape[3]
    cdef Py_ssize_t ch, n
    cdef floating acc
    if out.shape[0] != c:
        raise ValueError(f"out has {out.shape[0]} entries, expected one per channel ({c})")
    if c == 0:
        return
    if n_img == 0 or plane == 0:
        memset(&out[0], 0, c * sizeof(floating))
        return
    with nogil, parallel(num_threads=num_threads):
        note_team()
        for ch in prange(c, schedule="static"):
            acc = 0
            for n in range(n_img):
                acc = acc + _sum(&a[n, ch, 0, 0], plane)
            out[ch] = acc


# ------------------------------------------------------------------------------------------------
# direct convolution (stride 1, dilation 1, groups 1) for the "direct" variants
#
# The output is computed on the padded-width grid: position p = r * wp + s of an image padded to
# (hp, wp) = (oh + kh - 1, ow + kw - 1), for which tap (i, j) reads xp[p + i * wp + j], one
# contiguous run per tap over all output rows at once.  Columns s >= ow of that grid are
# computed and dropped.  The micro-kernel holds a block of 4 output channels x 2 vectors of
# positions in registers across every tap of every input channel (no im2col matrix, no GEMM
# packing), so it runs near the FMA units' rate on the small channel counts where BLAS spends
# its time packing.  The vectors are GCC/Clang vector extensions, as wide as the build's
# instruction set (16 bytes in the portable build, 32 with AVX, 64 with AVX-512F): the ISA
# builds of this module are what make it fast.  Compilers without vector extensions build it
# without the direct kernels (``direct_available()`` is false).
# ------------------------------------------------------------------------------------------------
cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define CK_DIRECT_AVAILABLE 1
    #if defined(__AVX512F__)
    #define CK_VBYTES 64
    #elif defined(__AVX__)
    #define CK_VBYTES 32
    #else
    #define CK_VBYTES 16
    #endif
    /* Keeps a vector in a register: without it the compiler folds each use of a dy vector
       into its multiply-add as a memory operand, 10 loads per 8 multiply-adds, more than the
       load ports serve per cycle. */
    #if defined(__x86_64__) || defined(__i386__)
    #define CK_IN_REGISTER(v) __asm__("" : "+x"(v))
    #else
    #define CK_IN_REGISTER(v) ((void)0)
    #endif
    static inline void ck_next_tap(long* ch, long* i, long* j, long kh, long kw) {
        if (++*j == kw) { *j = 0; if (++*i == kh) { *i = 0; ++*ch; } } }
    #define CK_DEFINE_DIRECT(T, VT, SUF)                                                          \\
    typedef T VT __attribute__((vector_size(CK_VBYTES)));                                       \\
    enum { ck_nv_##SUF = CK_VBYTES / (int)sizeof(T) };                                           \\
    static inline VT ck_ld_##SUF(const T* p) { VT v; __builtin_memcpy(&v, p, sizeof v); return v; } \\
    static inline void ck_st_##SUF(T* p, VT v) { __builtin_memcpy(p, &v, sizeof v); }          \\
    static inline void ck_add4_##SUF(T* p, VT a0, VT a1, VT a2, VT a3) {                        \\
        const long nv = ck_nv_##SUF;                                                            \\
        ck_st_##SUF(p, ck_ld_##SUF(p) + a0); ck_st_##SUF(p + nv, ck_ld_##SUF(p + nv) + a1);     \\
        ck_st_##SUF(p + 2 * nv, ck_ld_##SUF(p + 2 * nv) + a2);                                  \\
        ck_st_##SUF(p + 3 * nv, ck_ld_##SUF(p + 3 * nv) + a3); }                                \\
    static void ck_direct_dw_lanes_##SUF(const T* dwv, long count, T* dwt) {                    \\
        for (long i = 0; i < count; i++) {                                                      \\
            T s = 0;                                                                            \\
            for (int l = 0; l < ck_nv_##SUF; l++) s += dwv[i * ck_nv_##SUF + l];               \\
            dwt[i] += s; } }                                                                    \\
    static void ck_direct_fwd_##SUF(const T* xp, long c, long plane, long wp, const T* wt,       \\
                                   long o4, long kh, long kw, long p2, T* acc) {                \\
        const long nv = ck_nv_##SUF;                                                            \\
        for (long oc = 0; oc < o4; oc += 4)                                                     \\
        for (long p = 0; p < p2; p += 2 * nv) {                                                 \\
            VT a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0};                                      \\
            VT a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};                                      \\
            for (long ch = 0; ch < c; ch++)                                                     \\
            for (long i = 0; i < kh; i++) {                                                     \\
                const T* row = xp + ch * plane + i * wp + p;                                    \\
                const T* wr = wt + ((ch * kh + i) * kw) * o4 + oc;                              \\
                for (long j = 0; j < kw; j++) {                                                 \\
                    VT s0 = ck_ld_##SUF(row + j), s1 = ck_ld_##SUF(row + j + nv);               \\
                    T w0 = wr[j * o4], w1 = wr[j * o4 + 1];                                     \\
                    T w2 = wr[j * o4 + 2], w3 = wr[j * o4 + 3];                                 \\
                    a00 += w0 * s0; a01 += w0 * s1; a10 += w1 * s0; a11 += w1 * s1;             \\
                    a20 += w2 * s0; a21 += w2 * s1; a30 += w3 * s0; a31 += w3 * s1;             \\
                }                                                                               \\
            }                                                                                   \\
            T* d = acc + oc * p2 + p;                                                           \\
            ck_st_##SUF(d, a00); ck_st_##SUF(d + nv, a01); d += p2;                             \\
            ck_st_##SUF(d, a10); ck_st_##SUF(d + nv, a11); d += p2;                             \\
            ck_st_##SUF(d, a20); ck_st_##SUF(d + nv, a21); d += p2;                             \\
            ck_st_##SUF(d, a30); ck_st_##SUF(d + nv, a31);                                      \\
        }                                                                                       \\
    }                                                                                           \\
    static void ck_direct_dw_##SUF(const T* xp, long c, long plane, long wp, const T* dyx,       \\
                                  long o4, long kh, long kw, long p2, T* dwv) {                 \\
        /* 4 output channels x 2 taps per pass: 8 accumulators share each load of dy.  They    \\
           are added as whole vectors into dwv (tap, channel, lane), summed across lanes once  \\
           per thread (ck_direct_dw_lanes): a horizontal sum per image and tap costs as much   \\
           as the products on LeNet-sized images */                                            \\
        const long nv = ck_nv_##SUF, taps = c * kh * kw;                                        \\
        for (long oc = 0; oc < o4; oc += 4) {                                                   \\
            const T* d0 = dyx + oc * p2;                                                        \\
            const T* d1 = d0 + p2;                                                              \\
            const T* d2 = d1 + p2;                                                              \\
            const T* d3 = d2 + p2;                                                              \\
            long ch = 0, i = 0, j = 0;  /* tap t's place, stepped: no divisions per tap */     \\
            for (long t = 0; t < taps; t += 2) {                                                \\
                long u = t + 1 < taps ? t + 1 : t;                                              \\
                const T* sa = xp + ch * plane + i * wp + j;                                     \\
                ck_next_tap(&ch, &i, &j, kh, kw);                                               \\
                const T* sb = u != t ? xp + ch * plane + i * wp + j : sa;                       \\
                ck_next_tap(&ch, &i, &j, kh, kw);                                               \\
                VT a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                      \\
                VT b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};                                      \\
                for (long p = 0; p < p2; p += nv) {                                             \\
                    VT x0 = ck_ld_##SUF(sa + p), x1 = ck_ld_##SUF(sb + p);                      \\
                    VT e0 = ck_ld_##SUF(d0 + p), e1 = ck_ld_##SUF(d1 + p);                      \\
                    VT e2 = ck_ld_##SUF(d2 + p), e3 = ck_ld_##SUF(d3 + p);                      \\
                    CK_IN_REGISTER(e0); CK_IN_REGISTER(e1);                                     \\
                    CK_IN_REGISTER(e2); CK_IN_REGISTER(e3);                                     \\
                    a0 += e0 * x0; a1 += e1 * x0; a2 += e2 * x0; a3 += e3 * x0;                 \\
                    b0 += e0 * x1; b1 += e1 * x1; b2 += e2 * x1; b3 += e3 * x1;                 \\
                }                                                                               \\
                ck_add4_##SUF(dwv + (t * o4 + oc) * nv, a0, a1, a2, a3);                       \\
                if (u != t) ck_add4_##SUF(dwv + (u * o4 + oc) * nv, b0, b1, b2, b3);           \\
            }                                                                                   \\
        }                                                                                       \\
    }                                                                                           \\
    static void ck_direct_dx_##SUF(const T* dyx, long o4, long p2, const T* wt, long c,         \\
                                  long kh, long kw, long plane, long wp, T* dxp) {              \\
        /* the forward loop transposed: dxp[ch, p + tap offset] += sum_oc w * dy[oc, p]; a      \\
           block of 4 output channels x 2 vectors of dy held in registers across every tap */ \\
        const long nv = ck_nv_##SUF;                                                            \\
        for (long oc = 0; oc < o4; oc += 4)                                                     \\
        for (long p = 0; p < p2; p += 2 * nv) {                                                 \\
            const T* d = dyx + oc * p2 + p;                                                     \\
            VT e00 = ck_ld_##SUF(d), e01 = ck_ld_##SUF(d + nv); d += p2;                        \\
            VT e10 = ck_ld_##SUF(d), e11 = ck_ld_##SUF(d + nv); d += p2;                        \\
            VT e20 = ck_ld_##SUF(d), e21 = ck_ld_##SUF(d + nv); d += p2;                        \\
            VT e30 = ck_ld_##SUF(d), e31 = ck_ld_##SUF(d + nv);                                 \\
            /* channels innermost: consecutive read-modify-writes land a plane apart, never \\
               on the vectors just stored (a partial overlap stalls store forwarding) */        \\
            for (long i = 0; i < kh; i++)                                                       \\
            for (long j = 0; j < kw; j++)                                                       \\
            for (long ch = 0; ch < c; ch++) {                                                   \\
                long t = (ch * kh + i) * kw + j;                                                \\
                T* dst = dxp + ch * plane + i * wp + j + p;                                     \\
                const T* w = wt + t * o4 + oc;                                                  \\
                VT s0 = ck_ld_##SUF(dst), s1 = ck_ld_##SUF(dst + nv);                           \\
                s0 += w[0] * e00 + w[1] * e10 + w[2] * e20 + w[3] * e30;                        \\
                s1 += w[0] * e01 + w[1] * e11 + w[2] * e21 + w[3] * e31;                        \\
                ck_st_##SUF(dst, s0); ck_st_##SUF(dst + nv, s1);                                \\
            }                                                                                   \\
        }                                                                                       \\
    }
    CK_DEFINE_DIRECT(float, ck_vf, f)
    CK_DEFINE_DIRECT(double, ck_vd, d)
    #else
    #define CK_DIRECT_AVAILABLE 0
    #define CK_VBYTES 16
    static void ck_direct_fwd_f(const float* xp, long c, long plane, long wp, const float* wt, long o4, long kh, long kw, long p2, float* acc) {}
    static void ck_direct_fwd_d(const double* xp, long c, long plane, long wp, const double* wt, long o4, long kh, long kw, long p2, double* acc) {}
    static void ck_direct_dw_f(const float* xp, long c, long plane, long wp, const float* dyx, long o4, long kh, long kw, long p2, float* dwt) {}
    static void ck_direct_dw_d(const double* xp, long c, long plane, long wp, const double* dyx, long o4, long kh, long kw, long p2, double* dwt) {}
    static void ck_direct_dw_lanes_f(const float* dwv, long count, float* dwt) {}
    static void ck_direct_dw_lanes_d(const double* dwv, long count, double* dwt) {}
    static void ck_direct_dx_f(const float* dyx, long o4, long p2, const float* wt, long c, long kh, long kw, long plane, long wp, float* dxp) {}
    static void ck_direct_dx_d(const double* dyx, long o4, long p2, const double* wt, long c, long kh, long kw, long plane, long wp, double* dxp) {}
    #endif
    """
    int CK_DIRECT_AVAILABLE
    int CK_VBYTES
    void ck_direct_fwd_f(const float* xp, long c, long plane, long wp, const float* wt,
                         long o4, long kh, long kw, long p2, float* acc) noexcept nogil
    void ck_direct_fwd_d(const double* xp, long c, long plane, long wp, const double* wt,
                         long o4, long kh, long kw, long p2, double* acc) noexcept nogil
    void ck_direct_dw_f(const float* xp, long c, long plane, long wp, const float* dyx,
                        long o4, long kh, long kw, long p2, float* dwt) noexcept nogil
    void ck_direct_dw_d(const double* xp, long c, long plane, long wp, const double* dyx,
                        long o4, long kh, long kw, long p2, double* dwt) noexcept nogil
    void ck_direct_dw_lanes_f(const float* dwv, long count, float* dwt) noexcept nogil
    void ck_direct_dw_lanes_d(const double* dwv, long count, double* dwt) noexcept nogil
    void ck_direct_dx_f(const float* dyx, long o4, long p2, const float* wt, long c, long kh,
                        long kw, long plane, long wp, float* dxp) noexcept nogil
    void ck_direct_dx_d(const double* dyx, long o4, long p2, const double* wt, long c, long kh,
                        long kw, long plane, long wp, double* dxp) noexcept nogil


def direct_available():
    """Whether this build has the direct kernels (its compiler has vector extensions)."""
    return bool(CK_DIRECT_AVAILABLE)


def direct_layout(Py_ssize_t c, Py_ssize_t o, Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t kh,
                  Py_ssize_t kw, Py_ssize_t itemsize):
    """(p2, padded-image size, per-thread workspace size) of a direct convolution of ``c`` input
    maps into ``o`` output maps of (oh, ow) with a (kh, kw) kernel: p2 is the padded-width grid
    rounded up to whole register blocks; the padded image has slack so that the last block's
    taps read inside it; the workspace holds the image and the (O rounded to 4, p2) outputs."""
    cdef Py_ssize_t nv = CK_VBYTES // itemsize
    cdef Py_ssize_t wp = ow + kw - 1, hp = oh + kh - 1
    cdef Py_ssize_t grid = oh * wp
    cdef Py_ssize_t p2 = (grid + 2 * nv - 1) // (2 * nv) * (2 * nv)
    cdef Py_ssize_t xsize = c * hp * wp + (p2 - grid) + kw + 2 * nv
    return p2, xsize, xsize + (o + 3) // 4 * 4 * p2


def direct_backward_size(Py_ssize_t c, Py_ssize_t o, Py_ssize_t oh, Py_ssize_t ow,
                         Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t itemsize, bint with_dx):
    """Per-thread workspace of ``conv2d_direct_backward``: the forward's, the padded input
    gradient when ``with_dx``, and the weight gradient's vector accumulators."""
    p2, xsize, size = direct_layout(c, o, oh, ow, kh, kw, itemsize)
    return (size + (xsize if with_dx else 0)
            + c * kh * kw * ((o + 3) // 4 * 4) * (CK_VBYTES // itemsize))


cdef void _shifted_planes(const floating* x, Py_ssize_t c, Py_ssize_t h, Py_ssize_t w,
                          Py_ssize_t top, Py_ssize_t left, Py_ssize_t hp, Py_ssize_t pitch,
                          Py_ssize_t copies, floating* xs) noexcept nogil:
    """xs[e, ch, r, q] = x[ch, r - top, q + e - left] (0 outside x) for e < copies, q < pitch:
    the padded image, and copies of it shifted left by e columns."""
    cdef Py_ssize_t e, ch, r, a, b
    cdef floating* dst
    for e in range(copies):
        # columns q with 0 <= q + e - left < w
        a = left - e if left > e else 0
        b = w + left - e
        if b > pitch:
            b = pitch
        if b < a:
            b = a
        for ch in range(c):
            dst = xs + (e * c + ch) * hp * pitch
            memset(dst, 0, top * pitch * sizeof(floating))
            for r in range(h):
                memset(dst + (top + r) * pitch, 0, a * sizeof(floating))
                if b > a:
                    memcpy(dst + (top + r) * pitch + a, x + (ch * h + r) * w + a + e - left,
                           (b - a) * sizeof(floating))
                memset(dst + (top + r) * pitch + b, 0, (pitch - b) * sizeof(floating))
            memset(dst + (top + h) * pitch, 0, (hp - top - h) * pitch * sizeof(floating))


cdef void _pad_image(const floating* x, Py_ssize_t c, Py_ssize_t h, Py_ssize_t w,
                     Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t hp, Py_ssize_t wp,
                     Py_ssize_t total, floating* xp) noexcept nogil:
    """xp (c, hp, wp) + slack up to ``total`` values, zeroed, with x (c, h, w) at row pt,
    column pl (0 <= pl, pl + w <= wp): the unshifted copy of :func:`_shifted_planes`."""
    _shifted_planes(x, c, h, w, pt, pl, hp, wp, 1, xp)
    memset(xp + c * hp * wp, 0, (total - c * hp * wp) * sizeof(floating))


cdef _check_direct(str what, Py_ssize_t taps, Py_ssize_t o4, Py_ssize_t o, Py_ssize_t c,
                   Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t h, Py_ssize_t w, Py_ssize_t hp,
                   Py_ssize_t wp, int pt, int pl, Py_ssize_t ws_rows, Py_ssize_t ws_cols,
                   Py_ssize_t need, int num_threads, bint rest_ok):
    """The checks both direct kernels make before their nogil loops (``rest_ok``: the
    caller's own)."""
    if not CK_DIRECT_AVAILABLE:
        raise RuntimeError("this build has no direct convolution kernels")
    if (taps != c * kh * kw or o4 != (o + 3) // 4 * 4 or o4 < 4 or hp < h + pt or wp < w + pl
            or pt < 0 or pl < 0 or ws_cols < need or ws_rows < num_threads or not rest_ok):
        raise ValueError(f"{what}: inconsistent shapes or workspace")


cdef void _bias_rows(const floating* acc, Py_ssize_t p2, Py_ssize_t wp, Py_ssize_t o,
                     const floating* bias, floating* y, Py_ssize_t oh, Py_ssize_t ow,
                     bint fuse_relu) noexcept nogil:
    """One image's y (o, oh, ow) = acc + bias from the padded-width grid, max(0, .) with
    ``fuse_relu``."""
    cdef Py_ssize_t oc, r, s
    cdef floating* yo
    cdef const floating* ao
    cdef floating bv, v
    for oc in range(o):
        bv = bias[oc] if bias != NULL else 0
        for r in range(oh):
            yo = y + (oc * oh + r) * ow
            ao = acc + oc * p2 + r * wp
            if fuse_relu:
                for s in range(ow):
                    v = ao[s] + bv
                    yo[s] = 0 if v <= 0 else v
            else:
                for s in range(ow):
                    yo[s] = ao[s] + bv


def conv2d_direct_forward(const floating[:, :, :, ::1] x, const floating[:, ::1] wt,
                          const floating[::1] bias, floating[:, :, :, ::1] y,
                          floating[:, ::1] workspace, int pt, int pl, int kh, int kw,
                          int num_threads, bint fuse_relu=False, bint relu_pool2=False,
                          unsigned char[:, :, :, ::1] argmax=None, int conv_oh=0,
                          int conv_ow=0):
    """y = conv2d(x, w) + bias, stride 1, dilation 1, groups 1, padding (pt, pl) at the top and
    left (the bottom and right follow from the output size); ``bias`` may be None.

    ``wt`` is the weight as (C*kh*kw, O4): ``w.reshape(O, -1).T`` with zero columns up to a
    multiple of 4 output channels.  ``workspace`` is (threads, >= direct_layout(...)[2]).
    The caller checks 0 <= pt, pl and that the padding does not exceed kernel - 1 per side.

    With ``relu_pool2``, y = max_pool2d(relu(conv2d(x, w) + bias), kernel 2, stride 2) without
    storing the convolution's output (conv_oh, conv_ow): each image's maps are pooled from the
    workspace, and ``argmax`` (or None) receives each window's position of its maximum, 0-3 in
    row-major order, for :func:`conv2d_direct_backward`.
    """
    cdef Py_ssize_t n_img = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t o = y.shape[1], o4 = wt.shape[1]
    cdef Py_ssize_t oh = conv_oh if relu_pool2 else y.shape[2]
    cdef Py_ssize_t ow = conv_ow if relu_pool2 else y.shape[3]
    cdef Py_ssize_t oh2 = y.shape[2], ow2 = y.shape[3]
    cdef Py_ssize_t hp = oh + kh - 1, wp = ow + kw - 1
    cdef Py_ssize_t n, p2, xsize, need
    cdef floating* xp = NULL
    cdef floating* acc = NULL
    cdef const floating* bp = &bias[0] if bias is not None else NULL
    cdef unsigned char* a8 = NULL
    cdef int tid = 0
    p2, xsize, need = direct_layout(c, o, oh, ow, kh, kw, sizeof(floating))
    _check_direct("conv2d_direct_forward", wt.shape[0], o4, o, c, kh, kw, h, w, hp, wp, pt, pl,
                  workspace.shape[0], workspace.shape[1], need, num_threads,
                  y.shape[0] == n_img and (bias is None or bias.shape[0] == o)
                  and (not relu_pool2 or (oh >= 2 and ow >= 2 and oh2 == oh // 2
                                          and ow2 == ow // 2))
                  and (argmax is None or (relu_pool2
                                          and tuple(argmax.shape) == tuple(y.shape))))
    if n_img == 0:
        return
    if argmax is not None:
        a8 = &argmax[0, 0, 0, 0]
    with nogil, parallel(num_threads=num_threads):
        note_team()
        tid = threadid()
        xp = &workspace[tid, 0]
        acc = xp + xsize
        for n in prange(n_img, schedule="static"):
            _pad_image(&x[n, 0, 0, 0], c, h, w, pt, pl, hp, wp, xsize, xp)
            if floating is float:
                ck_direct_fwd_f(xp, c, hp * wp, wp, &wt[0, 0], o4, kh, kw, p2, acc)
            else:
                ck_direct_fwd_d(xp, c, hp * wp, wp, &wt[0, 0], o4, kh, kw, p2, acc)
            if relu_pool2:
                _relu_pool2_rows(acc, p2, wp, o, bp, &y[n, 0, 0, 0],
                                 a8 + n * o * oh2 * ow2 if a8 != NULL else NULL, oh2, ow2)
            else:
                _bias_rows(acc, p2, wp, o, bp, &y[n, 0, 0, 0], oh, ow, fuse_relu)


cdef inline bint _pool_takes(floating best, floating v) noexcept nogil:
    """The max-pool kernels' rule (``pool.pyx``): larger, or the first NaN; ties keep the
    first maximum in row-major order."""
    return (v > best) | ((v != v) & (best == best))


cdef floating _grid_sum(const floating* g, Py_ssize_t oh, Py_ssize_t ow,
                        Py_ssize_t wp) noexcept nogil:
    """:func:`_sum` of the (oh, ow) map stored with rows ``wp`` apart, bit for bit: the same
    eight lanes over the same order of elements."""
    cdef floating lane[8]
    cdef Py_ssize_t r, s, q, d = 0, n8 = oh * ow - (oh * ow) % 8
    cdef floating acc = 0
    for q in range(8):
        lane[q] = 0
    for r in range(oh):
        for s in range(ow):
            if d < n8:
                lane[d % 8] = lane[d % 8] + g[r * wp + s]
            d += 1
    acc = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]))
    d = 0
    for r in range(oh):
        for s in range(ow):
            if d >= n8:
                acc = acc + g[r * wp + s]
            d += 1
    return acc


cdef void _relu_pool2_exact(const floating* a0, const floating* a1, floating bv, floating* y,
                            unsigned char* argmax, Py_ssize_t n) noexcept nogil:
    """n windows by the max-pool kernels' rule, one by one (rows that hold a NaN)."""
    cdef Py_ssize_t s
    cdef floating best, v
    cdef unsigned char at
    cdef bint take
    for s in range(n):
        best = a0[2 * s] + bv
        at = 0
        v = a0[2 * s + 1] + bv
        take = _pool_takes(best, v)
        best = v if take else best
        at = 1 if take else at
        v = a1[2 * s] + bv
        take = _pool_takes(best, v)
        best = v if take else best
        at = 2 if take else at
        v = a1[2 * s + 1] + bv
        take = _pool_takes(best, v)
        best = v if take else best
        at = 3 if take else at
        y[s] = 0 if best <= 0 else best
        if argmax != NULL:
            argmax[s] = at


cdef void _relu_pool2_rows(const floating* acc, Py_ssize_t p2, Py_ssize_t wp, Py_ssize_t o,
                           const floating* bias, floating* y, unsigned char* argmax,
                           Py_ssize_t oh2, Py_ssize_t ow2) noexcept nogil:
    """One image's max_pool2d(relu(acc + bias), 2) from the padded-width grid ``acc`` into
    ``y`` (o, oh2, ow2), the window position (0-3, row-major) of each maximum into ``argmax``
    (or NULL).  The maximum is taken before the ReLU: equal to the pool of the ReLU's output
    (max and ReLU commute, NaN included), and where they pick different places the maximum is
    <= 0 and the ReLU passes no gradient to either.

    As in ``pool.pyx``'s dedicated loops: plain ``>`` compares (the earlier of equal values
    stays) and positions kept as floating values, so that GCC vectorises the loop; a chunk
    that met a NaN is redone by the exact rule."""
    cdef floating where[64]
    cdef Py_ssize_t oc, r, s, k, start, m
    cdef const floating* a0
    cdef const floating* a1
    cdef floating bv, v0, v1, v2, v3, top, bottom, best
    cdef bint nan
    for oc in range(o):
        bv = bias[oc] if bias != NULL else 0
        for r in range(oh2):
            a0 = acc + oc * p2 + 2 * r * wp
            a1 = a0 + wp
            k = (oc * oh2 + r) * ow2
            for start in range(0, ow2, 64):
                m = ow2 - start if ow2 - start < 64 else 64
                nan = False
                for s in range(start, start + m):
                    v0 = a0[2 * s] + bv
                    v1 = a0[2 * s + 1] + bv
                    v2 = a1[2 * s] + bv
                    v3 = a1[2 * s + 1] + bv
                    top = v1 if v1 > v0 else v0
                    bottom = v3 if v3 > v2 else v2
                    where[s - start] = ((3 if v3 > v2 else 2) if bottom > top
                                        else (1 if v1 > v0 else 0))
                    best = bottom if bottom > top else top
                    y[k + s] = 0 if best <= 0 else best
                    nan = nan | (v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3)
                if nan:
                    _relu_pool2_exact(a0 + 2 * start, a1 + 2 * start, bv, y + k + start,
                                      argmax + k + start if argmax != NULL else NULL, m)
                elif argmax != NULL:
                    for s in range(m):
                        argmax[k + start + s] = <unsigned char> <int> where[s]


def conv2d_direct_backward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dy,
                           const floating[:, ::1] wt, floating[:, :, :, ::1] dx,
                           floating[:, :, ::1] dw_partial, floating[:, ::1] workspace,
                           int pt, int pl, int kh, int kw, int num_threads,
                           const floating[:, :, :, ::1] pooled_y=None,
                           const unsigned char[:, :, :, ::1] pool_argmax=None,
                           int conv_oh=0, int conv_ow=0, floating[:, ::1] plane_sums=None,
                           floating[::1] bias_grad=None):
    """Backward of the direct convolution above: per-thread partial weight gradients
    dw_partial[t] (C*kh*kw, O4), added to (the caller zeroes them and sums over threads), and,
    unless ``dx`` is None, the input gradient dx (overwritten), by the forward loop transposed
    (``wt`` as for the forward call).  ``workspace`` is (threads, >= direct_backward_size(...)).

    With ``pool_argmax`` this is the backward of :func:`conv2d_direct_forward` with
    ``relu_pool2``: ``dy`` and ``pooled_y`` are the pooled output's gradient and value, ``pool_argmax`` the
    forward's, and (conv_oh, conv_ow) the convolution's output size; each window's gradient
    goes to its maximum's place where the pooled value is > 0 (the ReLU's rule).  Its bias
    gradient, when ``bias_grad`` is given, is summed as :func:`channel_sums` sums the dense
    gradient (``plane_sums``, (N, O), holds each image's part), so it is the same bit for bit.

    The products run over the padded-width grid with dy zero outside its (oh, ow) part, so the
    dropped columns add exact zeros, provided x is finite: the caller routes non-finite inputs
    elsewhere (0 * inf is NaN)."""
    cdef Py_ssize_t n_img = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef bint pooled = pool_argmax is not None
    cdef Py_ssize_t o = dy.shape[1], o4 = dw_partial.shape[2]
    cdef Py_ssize_t oh = conv_oh if pooled else dy.shape[2]
    cdef Py_ssize_t ow = conv_ow if pooled else dy.shape[3]
    cdef Py_ssize_t oh2 = dy.shape[2], ow2 = dy.shape[3]
    cdef Py_ssize_t hp = oh + kh - 1, wp = ow + kw - 1
    cdef Py_ssize_t n, oc, r, ch, p2, xsize, need, dwv_at, s_, k, at
    cdef const unsigned char* a8 = NULL
    cdef const floating* py = NULL
    cdef const floating* dyp = NULL
    cdef floating* dense = NULL
    cdef floating* xp = NULL
    cdef floating* dyx = NULL
    cdef floating* dxp = NULL
    cdef floating* dwv = NULL
    cdef bint want_dx = dx is not None
    cdef int tid = 0
    cdef Py_ssize_t lanes = c * kh * kw * o4
    p2, xsize, need = direct_layout(c, o, oh, ow, kh, kw, sizeof(floating))
    dwv_at = need + (xsize if want_dx else 0)
    need = direct_backward_size(c, o, oh, ow, kh, kw, sizeof(floating), want_dx)
    _check_direct("conv2d_direct_backward", dw_partial.shape[1], o4, o, c, kh, kw, h, w, hp, wp,
                  pt, pl, workspace.shape[0], workspace.shape[1], need, num_threads,
                  dy.shape[0] == n_img and wt.shape[0] == c * kh * kw and wt.shape[1] == o4
                  and dw_partial.shape[0] >= num_threads
                  and (not want_dx or (dx.shape[0] == n_img and dx.shape[1] == c
                                       and dx.shape[2] == h and dx.shape[3] == w))
                  and (not pooled or (pooled_y is not None and oh >= 2 and ow >= 2
                                      and oh2 == oh // 2 and ow2 == ow // 2
                                      and tuple(pooled_y.shape) == tuple(dy.shape)
                                      and tuple(pool_argmax.shape) == tuple(dy.shape)))
                  and (bias_grad is None or (pooled and plane_sums is not None
                                             and bias_grad.shape[0] == o
                                             and plane_sums.shape[0] == n_img
                                             and plane_sums.shape[1] == o)))
    if n_img == 0:
        return
    if pooled:
        a8, py, dyp = &pool_argmax[0, 0, 0, 0], &pooled_y[0, 0, 0, 0], &dy[0, 0, 0, 0]
    with nogil, parallel(num_threads=num_threads):
        note_team()
        tid = threadid()
        xp = &workspace[tid, 0]
        dyx = xp + xsize
        dxp = dyx + o4 * p2
        dwv = xp + dwv_at
        memset(dwv, 0, (need - dwv_at) * sizeof(floating))
        dense = <floating*> malloc(oh * ow * sizeof(floating)) if bias_grad is not None else NULL
        for n in prange(n_img, schedule="static"):
            _pad_image(&x[n, 0, 0, 0], c, h, w, pt, pl, hp, wp, xsize, xp)
            memset(dyx, 0, o4 * p2 * sizeof(floating))
            if pooled:
                for oc in range(o):
                    for r in range(oh2):
                        k = ((n * o + oc) * oh2 + r) * ow2
                        for s_ in range(ow2):
                            if py[k + s_] > 0:
                                at = a8[k + s_] & 3  # the forward wrote 0-3
                                dyx[oc * p2 + (2 * r + at // 2) * wp + 2 * s_ + at % 2] = dyp[k + s_]
                if bias_grad is not None:
                    for oc in range(o):
                        if dense != NULL:  # the map made contiguous, then summed as dense
                            for r in range(oh):
                                memcpy(dense + r * ow, dyx + oc * p2 + r * wp,
                                       ow * sizeof(floating))
                            plane_sums[n, oc] = _sum(dense, oh * ow)
                        else:
                            plane_sums[n, oc] = _grid_sum(dyx + oc * p2, oh, ow, wp)
            else:
                for oc in range(o):
                    for r in range(oh):
                        memcpy(dyx + oc * p2 + r * wp, &dy[n, oc, r, 0], ow * sizeof(floating))
            if floating is float:
                ck_direct_dw_f(xp, c, hp * wp, wp, dyx, o4, kh, kw, p2, dwv)
            else:
                ck_direct_dw_d(xp, c, hp * wp, wp, dyx, o4, kh, kw, p2, dwv)
            if want_dx:
                memset(dxp, 0, xsize * sizeof(floating))
                if floating is float:
                    ck_direct_dx_f(dyx, o4, p2, &wt[0, 0], c, kh, kw, hp * wp, wp, dxp)
                else:
                    ck_direct_dx_d(dyx, o4, p2, &wt[0, 0], c, kh, kw, hp * wp, wp, dxp)
                for ch in range(c):
                    for r in range(h):
                        memcpy(&dx[n, ch, r, 0], dxp + (ch * hp + r + pt) * wp + pl,
                               w * sizeof(floating))
        free(dense)
        if floating is float:
            ck_direct_dw_lanes_f(dwv, lanes, &dw_partial[tid, 0, 0])
        else:
            ck_direct_dw_lanes_d(dwv, lanes, &dw_partial[tid, 0, 0])
    if bias_grad is not None:
        with nogil:
            for oc in range(o):  # in image order, as channel_sums adds them
                bias_grad[oc] = 0
                for n in range(n_img):
                    bias_grad[oc] = bias_grad[oc] + plane_sums[n, oc]



# ------------------------------------------------------------------------------------------------
# Packed products (transposed convolution backward, groups 1)
#
# The backward of a transposed convolution is one column matrix of dy (the columns of the
# convolution dy -> x: im2col of dy with the layer's stride) read by two products: the input
# gradient W (C, K) @ cols (K, positions) and the weight gradient x (C, positions) @ cols^T.
# Through BLAS each product packs the columns again into its own panel layout, and with C (tens
# of channels) as the only reuse of each packed value that packing costs about half as much as
# the products themselves.  Here im2col writes the columns once, straight into the layout the
# register blocks read: panels of NR (two vectors) positions, each panel KP rows of NR values
# (K rounded up to MR = 6 with zero rows).  The input gradient keeps 6 channels x NR positions
# in registers, reading the weight packed as (C/6, KP, 6) (zero rows up to a multiple of 6);
# the weight gradient keeps 6 taps x NR channels, reading x packed per band as
# (C/NR, positions, NR).  Positions go in bands of whole panels, so that a band's columns stay
# in cache while both products read them.
# ------------------------------------------------------------------------------------------------
cdef extern from *:
    """
    #if CK_DIRECT_AVAILABLE
    #define CK_PK_MR 6
    /* rows of B per chunk: a panel's chunk (and the A block's) stays in L1 across the blocks */
    #define CK_PK_CHUNK(T, NR) (16384 / ((NR) * (long)sizeof(T)) > 16 ? 16384 / ((NR) * (long)sizeof(T)) : 16)
    /* out (rows [0, m), row stride ld, positions [0, np)) = A @ B by register blocks of MR rows
       x NV vectors (the loops over the block have constant bounds: fully unrolled, the block
       lives in registers).  A is packed (m/MR, k, MR); row r of B's panel pn is the NR = NV
       vectors of values at bp + pn * pstride + off[r]: packed panels (pstride k*NR,
       off[r] = r*NR), or the rows of an image themselves (pstride NR, off[r] the tap's offset),
       which must then be readable NR values past np.  Rows of B go in chunks that stay in L1;
       a later chunk adds to the block stored by the one before.  Instances: 6 x 2 (ck_pk_dx)
       and 4 x 3 (ck_pk_dx4, for row counts that are a multiple of 4 and not of 6). */
    #define CK_DEFINE_PACKED_DX(NAME, T, VT, SUF, MR, NV)                                        \\
    static void NAME(const T* ap, long m, long k, const T* bp, const long* off, long pstride,   \\
                     long panels, long np, T* out, long ld) {                                   \\
        const long nv = ck_nv_##SUF, nr = NV * nv, kc = CK_PK_CHUNK(T, NV * ck_nv_##SUF);      \\
        for (long pn = 0; pn < panels; pn++)                                                    \\
        for (long k0 = 0; k0 < k; k0 += kc) {                                                   \\
            const T* b = bp + pn * pstride;                                                     \\
            long cols = np - pn * nr < nr ? np - pn * nr : nr;                                  \\
            long k1 = k0 + kc < k ? k0 + kc : k;                                                \\
            for (long m0 = 0; m0 < m; m0 += MR) {                                               \\
                const T* a = ap + m0 * k;                                                       \\
                long rows = m - m0;                                                             \\
                T* d = out + m0 * ld + pn * nr;                                                 \\
                VT c[MR][NV];                                                                   \\
                _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++)                            \\
                    _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++) c[i][j] = (VT){0};     \\
                if (k0 > 0) { /* the block so far, from out (zeros past `cols`) */              \\
                    _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {                      \\
                        if (i >= rows) break;                                                   \\
                        const T* e = d + i * ld;                                                \\
                        T t[NV * ck_nv_##SUF] = {0};                                            \\
                        if (cols < nr) { __builtin_memcpy(t, e, cols * sizeof(T)); e = t; }     \\
                        _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++)                    \\
                            c[i][j] = ck_ld_##SUF(e + j * nv);                                  \\
                    }                                                                           \\
                }                                                                               \\
                for (long r = k0; r < k1; r++) {                                                \\
                    const T* br = b + off[r];                                                   \\
                    const T* ak = a + r * MR;                                                   \\
                    VT bv[NV];                                                                  \\
                    _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++)                        \\
                        bv[j] = ck_ld_##SUF(br + j * nv);                                       \\
                    _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {                      \\
                        T ai = ak[i];                                                           \\
                        _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++)                    \\
                            c[i][j] += ai * bv[j];                                              \\
                    }                                                                           \\
                }                                                                               \\
                _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) { /* the first `cols` */   \\
                    if (i >= rows) break;                                                       \\
                    T* e = d + i * ld;                                                          \\
                    if (cols == nr) {                                                           \\
                        _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++)                    \\
                            ck_st_##SUF(e + j * nv, c[i][j]);                                   \\
                    } else {                                                                    \\
                        T t[NV * ck_nv_##SUF];                                                  \\
                        _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++)                    \\
                            ck_st_##SUF(t + j * nv, c[i][j]);                                   \\
                        __builtin_memcpy(e, t, cols * sizeof(T));                               \\
                    }                                                                           \\
                }                                                                               \\
            }                                                                                   \\
        }                                                                                       \\
    }
    #define CK_PK_ADD(T, SUF, r, a0, a1)                                                        \\
        { T* e_ = d + (r) * ld;                                                                 \\
          ck_st_##SUF(e_, ck_ld_##SUF(e_) + a0);                                                \\
          ck_st_##SUF(e_ + ck_nv_##SUF, ck_ld_##SUF(e_ + ck_nv_##SUF) + a1); }
    #define CK_PK_FMA12(a0, a1, a2, a3, a4, a5, v0, v1)                                         \\
        c00 += a0 * v0; c01 += a0 * v1; c10 += a1 * v0; c11 += a1 * v1;                        \\
        c20 += a2 * v0; c21 += a2 * v1; c30 += a3 * v0; c31 += a3 * v1;                        \\
        c40 += a4 * v0; c41 += a4 * v1; c50 += a5 * v0; c51 += a5 * v1;
    #define CK_DEFINE_PACKED(T, VT, SUF)                                                          \\
    CK_DEFINE_PACKED_DX(ck_pk_dx_##SUF, T, VT, SUF, 6, 2)                                     \\
    CK_DEFINE_PACKED_DX(ck_pk_dx4_##SUF, T, VT, SUF, 4, 3)                                    \\
    static void ck_pk_dw_##SUF(const T* bp, long kp, long panels, const T* xq, long qpanels,    \\
                               T* acc, long ld) {                                               \\
        /* acc (kp, ld) += B X^T: acc[k, c] += sum_p B[k, p] X[c, p]; B packed (panels, kp,    \\
           NR), X packed (qpanels, panels * NR, NR) */                                          \\
        const long nv = ck_nv_##SUF, nr = 2 * nv;                                               \\
        for (long k0 = 0; k0 < kp; k0 += CK_PK_MR)                                              \\
        for (long q = 0; q < qpanels; q++) {                                                    \\
            const T* xs = xq + q * panels * nr * nr;                                            \\
            VT c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};                \\
            VT c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};                \\
            for (long pn = 0; pn < panels; pn++) {                                              \\
                const T* b = bp + (pn * kp + k0) * nr;                                          \\
                const T* xv = xs + pn * nr * nr;                                                \\
                for (long p = 0; p < nr; p++) {                                                 \\
                    VT x0 = ck_ld_##SUF(xv + p * nr), x1 = ck_ld_##SUF(xv + p * nr + nv);       \\
                    CK_PK_FMA12(b[p], b[nr + p], b[2 * nr + p], b[3 * nr + p], b[4 * nr + p],  \\
                                b[5 * nr + p], x0, x1)                                          \\
                }                                                                               \\
            }                                                                                   \\
            T* d = acc + k0 * ld + q * nr;                                                      \\
            CK_PK_ADD(T, SUF, 0, c00, c01) CK_PK_ADD(T, SUF, 1, c10, c11)                       \\
            CK_PK_ADD(T, SUF, 2, c20, c21) CK_PK_ADD(T, SUF, 3, c30, c31)                       \\
            CK_PK_ADD(T, SUF, 4, c40, c41) CK_PK_ADD(T, SUF, 5, c50, c51)                       \\
        }                                                                                       \\
    }
    CK_DEFINE_PACKED(float, ck_vf, f)
    CK_DEFINE_PACKED(double, ck_vd, d)
    #else
    #define CK_PK_MR 6
    static void ck_pk_dx_f(const float* ap, long m, long k, const float* bp, const long* off, long pstride, long panels, long np, float* out, long ld) {}
    static void ck_pk_dx_d(const double* ap, long m, long k, const double* bp, const long* off, long pstride, long panels, long np, double* out, long ld) {}
    static void ck_pk_dx4_f(const float* ap, long m, long k, const float* bp, const long* off, long pstride, long panels, long np, float* out, long ld) {}
    static void ck_pk_dx4_d(const double* ap, long m, long k, const double* bp, const long* off, long pstride, long panels, long np, double* out, long ld) {}
    static void ck_pk_dw_f(const float* bp, long kp, long panels, const float* xq, long qpanels, float* acc, long ld) {}
    static void ck_pk_dw_d(const double* bp, long kp, long panels, const double* xq, long qpanels, double* acc, long ld) {}
    #endif
    """
    int CK_PK_MR
    void ck_pk_dx_f(const float* ap, long m, long k, const float* bp, const long* off,
                    long pstride, long panels, long np, float* out, long ld) noexcept nogil
    void ck_pk_dx_d(const double* ap, long m, long k, const double* bp, const long* off,
                    long pstride, long panels, long np, double* out, long ld) noexcept nogil
    void ck_pk_dx4_f(const float* ap, long m, long k, const float* bp, const long* off,
                     long pstride, long panels, long np, float* out, long ld) noexcept nogil
    void ck_pk_dx4_d(const double* ap, long m, long k, const double* bp, const long* off,
                     long pstride, long panels, long np, double* out, long ld) noexcept nogil
    void ck_pk_dw_f(const float* bp, long kp, long panels, const float* xq, long qpanels,
                    float* acc, long ld) noexcept nogil
    void ck_pk_dw_d(const double* bp, long kp, long panels, const double* xq, long qpanels,
                    double* acc, long ld) noexcept nogil


def packed_available():
    """Whether the transposed convolution should use the packed products in this build: they
    pay where a vector holds 8 floats (AVX2 and up).  The portable build (16-byte vectors,
    no fused multiply-add) keeps BLAS, whose kernels are picked for the CPU at run time."""
    return bool(CK_DIRECT_AVAILABLE) and CK_VBYTES >= 32


def packed_layout(Py_ssize_t itemsize):
    """(MR, NR) of the packed products: rows per register block (the packed weight's and the
    column rows' multiple) and positions per panel (two vectors of this build)."""
    return CK_PK_MR, 2 * CK_VBYTES // itemsize


cdef inline void _copy_panel_row(const floating* src, floating* dst, Py_ssize_t nr) noexcept nogil:
    """dst[:nr] = src[:nr] for the panel width nr of this build: a copy of constant size (two
    vectors) where the compiler inlines it, not a call to memcpy."""
    if nr * sizeof(floating) == 64:
        memcpy(dst, src, 64)
    elif nr * sizeof(floating) == 32:
        memcpy(dst, src, 32)
    elif nr * sizeof(floating) == 128:
        memcpy(dst, src, 128)
    else:
        memcpy(dst, src, nr * sizeof(floating))


cdef void _dy_phases(const floating* dy, Py_ssize_t cout, Py_ssize_t oh, Py_ssize_t ow,
                     Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t hq,
                     Py_ssize_t wq, floating* dq) noexcept nogil:
    """dq[a, b, co, r, s] = dy[co, r*sh + a - ph, s*sw + b - pw] (0 outside dy) for a < sh,
    b < sw, r < hq, s < wq: dy padded and split by phase, so that a tap of the stride-s
    convolution of dy reads consecutive values of one phase plane."""
    cdef Py_ssize_t a, b, co, r, s, src_r, s0, s1
    cdef floating* dst
    cdef const floating* src
    for a in range(sh):
        for b in range(sw):
            # columns s with 0 <= s*sw + b - pw < ow
            s0 = _first_valid(b - pw, sw)
            s1 = _end_valid(b - pw, sw, ow, wq)
            if s1 < s0:
                s1 = s0
            if s0 > wq:
                s0 = s1 = wq
            for co in range(cout):
                dst = dq + ((a * sw + b) * cout + co) * hq * wq
                for r in range(hq):
                    src_r = r * sh + a - ph
                    if src_r < 0 or src_r >= oh:
                        memset(dst + r * wq, 0, wq * sizeof(floating))
                        continue
                    src = dy + (co * oh + src_r) * ow + b - pw
                    memset(dst + r * wq, 0, s0 * sizeof(floating))
                    if sw == 1:
                        memcpy(dst + r * wq + s0, src + s0, (s1 - s0) * sizeof(floating))
                    elif sw == 2:
                        for s in range(s0, s1):
                            dst[r * wq + s] = src[2 * s]
                    else:
                        for s in range(s0, s1):
                            dst[r * wq + s] = src[s * sw]
                    memset(dst + r * wq + s1, 0, (wq - s1) * sizeof(floating))


cdef void _pack_cols(const floating* dq, const long* taps, Py_ssize_t k, Py_ssize_t wq,
                     Py_ssize_t w, Py_ssize_t pos0, Py_ssize_t pos1, Py_ssize_t kp,
                     Py_ssize_t nr, floating* colp) noexcept nogil:
    """Columns of positions [pos0, pos1) of (., w)-wide output planes from the phase planes
    ``dq`` (row pitch ``wq``), packed as (panels, kp, nr): row t of panel P holds
    dq[taps[t] + r * wq + s] for r * w + s = pos0 + P * nr + lane (the planes' padding makes
    every index valid); rows from k to kp and lanes past pos1 are 0.  Where every panel lies
    within one output row (w and pos0 multiples of nr), a panel is filled row by row with one
    copy each, else run by run."""
    cdef Py_ssize_t span = pos1 - pos0
    cdef Py_ssize_t panels = (span + nr - 1) // nr, tail = panels * nr - span
    cdef Py_ssize_t row, r0, s0, r, s, lane, pn, cnt, q
    cdef const floating* base
    cdef floating* dst
    if w % nr == 0 and pos0 % nr == 0:
        for pn in range(panels):
            r = (pos0 + pn * nr) // w
            base = dq + r * wq + (pos0 + pn * nr - r * w)
            dst = colp + pn * kp * nr
            for row in range(k):
                _copy_panel_row(base + taps[row], dst + row * nr, nr)
            memset(dst + k * nr, 0, (kp - k) * nr * sizeof(floating))
        return
    r0 = pos0 // w
    s0 = pos0 - r0 * w
    for row in range(k):
        r, s, pn, lane = r0, s0, 0, 0
        cnt = span
        while cnt > 0:
            # one run: the rest of the output row, the rest of the panel, or of the band
            q = w - s
            if q > nr - lane:
                q = nr - lane
            if q > cnt:
                q = cnt
            memcpy(colp + (pn * kp + row) * nr + lane, dq + taps[row] + r * wq + s,
                   q * sizeof(floating))
            cnt -= q
            s += q
            if s == w:
                s = 0
                r += 1
            lane += q
            if lane == nr:
                lane = 0
                pn += 1
        if tail:
            memset(colp + ((panels - 1) * kp + row) * nr + nr - tail, 0, tail * sizeof(floating))
    for pn in range(panels):
        memset(colp + (pn * kp + k) * nr, 0, (kp - k) * nr * sizeof(floating))


cdef void _pack_x(const floating* x, Py_ssize_t c, Py_ssize_t plane, Py_ssize_t pos0,
                  Py_ssize_t pos1, Py_ssize_t nr, floating* xq) noexcept nogil:
    """x (c, plane) positions [pos0, pos1) packed as (c / nr, panels * nr, nr), zero past c and
    past pos1."""
    cdef Py_ssize_t panels = (pos1 - pos0 + nr - 1) // nr
    cdef Py_ssize_t qpanels = (c + nr - 1) // nr, npb = panels * nr
    cdef Py_ssize_t ch, p
    cdef const floating* src
    cdef floating* dst
    memset(xq, 0, qpanels * npb * nr * sizeof(floating))
    for ch in range(c):
        src = x + ch * plane + pos0
        dst = xq + (ch // nr) * npb * nr + ch % nr
        for p in range(pos1 - pos0):
            dst[p * nr] = src[p]


def packed_backward_size(Py_ssize_t c, Py_ssize_t kp, Py_ssize_t band_panels,
                         Py_ssize_t padded, Py_ssize_t itemsize):
    """Per-thread workspace of :func:`conv_transpose2d_backward` with bands of
    ``band_panels`` panels: a band's packed columns and packed x, and one image's dy phase
    planes (``padded`` values: sh*sw*Cout*hq*wq)."""
    cdef Py_ssize_t nr = 2 * CK_VBYTES // itemsize
    return band_panels * nr * (kp + (c + nr - 1) // nr * nr) + padded + 64 // itemsize


def conv_transpose2d_backward(const floating[:, :, :, ::1] x, const floating[:, :, ::1] wpk,
                              const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                              floating[:, :, ::1] dwt_partial, floating[:, ::1] workspace,
                              int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
                              Py_ssize_t hq, Py_ssize_t wq, Py_ssize_t band_panels,
                              int num_threads):
    """Backward of ``y = conv_transpose2d(x, w)`` (groups 1) by the packed products above.

    ``wpk`` is the weight (C, Cout, kh, kw) as (C, K) packed (ceil(C/6), KP, 6), zero past C
    and K = Cout*kh*kw (KP = K rounded up to 6).  dx (overwritten; None skips it), and the
    per-thread partial weight gradients ``dwt_partial[t]`` (KP, ceil(C/NR)*NR), the gradient
    transposed (tap, channel), which the caller zeroes, sums over threads and crops.
    Each image's dy is split into its sh*sw phase planes (Cout, hq, wq) (``_dy_phases``),
    which must hold every tap of every position: hq >= H + (kh-1)*dh // sh, likewise wq.
    ``workspace`` is (threads, >= packed_backward_size(C, KP, band_panels, sh*sw*Cout*hq*wq,
    itemsize))."""
    cdef Py_ssize_t n_img = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t cout = dy.shape[1], oh = dy.shape[2], ow = dy.shape[3]
    cdef Py_ssize_t nr = 2 * CK_VBYTES // sizeof(floating), mr = CK_PK_MR
    cdef Py_ssize_t k = cout * kh * kw, kp = (k + mr - 1) // mr * mr
    cdef Py_ssize_t qpanels = (c + nr - 1) // nr, npos = h * w
    cdef bint want_dx = dx is not None
    cdef long* offs = NULL
    cdef long* taps = NULL
    cdef Py_ssize_t t, i_, j_
    if not CK_DIRECT_AVAILABLE:
        raise RuntimeError("this build has no packed product kernels")
    if (dy.shape[0] != n_img or wpk.shape[0] != (c + mr - 1) // mr or wpk.shape[1] != kp
            or wpk.shape[2] != mr or dwt_partial.shape[0] < num_threads
            or dwt_partial.shape[1] != kp or dwt_partial.shape[2] != qpanels * nr
            or band_panels < 1 or min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0
            or hq < h + (kh - 1) * dh // sh or wq < w + (kw - 1) * dw // sw
            or workspace.shape[0] < num_threads
            or workspace.shape[1] < packed_backward_size(c, kp, band_panels,
                                                         sh * sw * cout * hq * wq,
                                                         sizeof(floating))
            or (want_dx and (dx.shape[0] != n_img or dx.shape[1] != c or dx.shape[2] != h
                             or dx.shape[3] != w))):
        raise ValueError("conv_transpose2d_backward: inconsistent shapes or workspace")
    if n_img == 0 or npos == 0 or c == 0:
        return
    offs = _row_offsets(kp, nr)
    taps = <long*> malloc(k * sizeof(long))
    try:
        if taps == NULL:
            raise MemoryError()
        for t in range(k):
            # row (co * kh + i) * kw + j of the columns reads dy row r*sh + i*dh - ph: phase
            # (i*dh) % sh, row r + (i*dh) // sh of its plane; likewise the columns
            i_ = (t // kw) % kh * dh
            j_ = t % kw * dw
            taps[t] = ((((i_ % sh) * sw + j_ % sw) * cout + t // (kh * kw)) * hq
                       + i_ // sh) * wq + j_ // sw
        _packed_backward(x, wpk, dy, dx, dwt_partial, workspace, kh, kw, sh, sw, ph, pw, dh, dw,
                         hq, wq, band_panels, num_threads, offs, taps)
    finally:
        free(offs)
        free(taps)


cdef long* _row_offsets(Py_ssize_t rows, Py_ssize_t nr) except NULL:
    """The offsets of the rows of a packed panel, for ck_pk_dx: r * nr."""
    cdef long* offs = <long*> malloc(max(rows, 1) * sizeof(long))
    cdef Py_ssize_t r
    if offs == NULL:
        raise MemoryError()
    for r in range(rows):
        offs[r] = r * nr
    return offs


cdef void _packed_backward(const floating[:, :, :, ::1] x, const floating[:, :, ::1] wpk,
                           const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                           floating[:, :, ::1] dwt_partial, floating[:, ::1] workspace,
                           int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
                           Py_ssize_t hq, Py_ssize_t wq, Py_ssize_t band_panels,
                           int num_threads, const long* offs, const long* taps) noexcept:
    """The loops of conv_transpose2d_backward (which checked the arguments)."""
    cdef Py_ssize_t n_img = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t cout = dy.shape[1], oh = dy.shape[2], ow = dy.shape[3]
    cdef Py_ssize_t nr = 2 * CK_VBYTES // sizeof(floating), mr = CK_PK_MR
    cdef Py_ssize_t k = cout * kh * kw, kp = (k + mr - 1) // mr * mr
    cdef Py_ssize_t qpanels = (c + nr - 1) // nr, npos = h * w
    cdef Py_ssize_t n, pos0, pos1, panels
    cdef bint want_dx = dx is not None
    cdef floating* colp = NULL
    cdef floating* xq = NULL
    cdef floating* dyp = NULL
    cdef int tid = 0
    with nogil, parallel(num_threads=num_threads):
        note_team()
        tid = threadid()
        colp = &workspace[tid, 0]
        colp = colp + (64 - (<size_t> colp) % 64) % 64 // sizeof(floating)  # whole cache lines
        xq = colp + band_panels * nr * kp
        dyp = xq + band_panels * nr * qpanels * nr
        for n in prange(n_img, schedule="static"):
            _dy_phases(&dy[n, 0, 0, 0], cout, oh, ow, sh, sw, ph, pw, hq, wq, dyp)
            pos0 = 0
            while pos0 < npos:
                pos1 = pos0 + band_panels * nr
                if pos1 > npos:
                    pos1 = npos
                panels = (pos1 - pos0 + nr - 1) // nr
                _pack_cols(dyp, taps, k, wq, w, pos0, pos1, kp, nr, colp)
                _pack_x(&x[n, 0, 0, 0], c, npos, pos0, pos1, nr, xq)
                if floating is float:
                    if want_dx:
                        ck_pk_dx_f(&wpk[0, 0, 0], c, kp, colp, offs, kp * nr, panels, pos1 - pos0,
                                   &dx[n, 0, 0, 0] + pos0, npos)
                    ck_pk_dw_f(colp, kp, panels, xq, qpanels, &dwt_partial[tid, 0, 0],
                               qpanels * nr)
                else:
                    if want_dx:
                        ck_pk_dx_d(&wpk[0, 0, 0], c, kp, colp, offs, kp * nr, panels, pos1 - pos0,
                                   &dx[n, 0, 0, 0] + pos0, npos)
                    ck_pk_dw_d(colp, kp, panels, xq, qpanels, &dwt_partial[tid, 0, 0],
                               qpanels * nr)
                pos0 = pos1


# Transposed convolution forward by phases (groups 1, dilation 1).  Output index o gets
# x[i] w[k] where i*s - p + k = o: with q = o + p, only the taps k = q mod s + s*t (t = 0, 1, ...)
# reach it, from x[q // s - t].  So the outputs of one phase (q mod s per axis) are an ordinary
# convolution of x with that phase's taps, turned (t counts backwards), and every output is
# written once, by the packed product, instead of being added up by a scatter of each tap.
cdef enum:  # columns of the phase table handed to conv_transpose2d_forward_phases
    PH_TH, PH_TW, PH_K, PH_WOFF, PH_MH0, PH_NMH, PH_MW0, PH_NMW, PH_OH0, PH_OW0, PH_FIELDS


def phases_size(Py_ssize_t c, Py_ssize_t cout, Py_ssize_t hp, Py_ssize_t pitch,
                Py_ssize_t copies, Py_ssize_t band, Py_ssize_t itemsize):
    """Per-thread workspace of :func:`conv_transpose2d_forward_phases`: one image's padded
    copies of x (``copies`` x (C, hp, pitch)) with the slack its last vectors read, and the
    products of a band of ``band`` positions."""
    return copies * c * hp * pitch + pitch + 4 * CK_VBYTES // itemsize + band * cout + 64 // itemsize


def phases_rows(Py_ssize_t cout):
    """Rows per register block for ``cout`` output channels: 6 (x 2 vectors), or 4 (x 3
    vectors) where that leaves fewer padding rows; the phase weights are packed by it."""
    return 4 if (cout + 3) // 4 * 4 < (cout + 5) // 6 * 6 else CK_PK_MR


def conv_transpose2d_forward_phases(const floating[:, :, :, ::1] x, const floating[::1] wph,
                                    const long long[:, ::1] phases, const floating[::1] bias,
                                    floating[:, :, :, ::1] y, floating[:, ::1] workspace,
                                    int sh, int sw, int top, int left, Py_ssize_t hp,
                                    Py_ssize_t pitch, Py_ssize_t copies, Py_ssize_t band,
                                    int num_threads):
    """y = conv_transpose2d(x, w) + bias (groups 1, dilation 1; ``bias`` may be None).

    Row f of ``phases`` is one phase (rh, rw): its taps per axis (th, tw), K = C*th*tw and the
    offset of its packed weight in ``wph``, its positions (mh0 + a, mw0 + b) for a < nmh,
    b < nmw, written to y[:, :, oh0 + a*sh, ow0 + b*sw].  The weight of the phase is packed
    (ceil(Cout/MR), K, MR), MR = phases_rows(Cout), from the (Cout, K) matrix whose column
    (c*th + i)*tw + j holds w[c, :, rh + sh*(th-1-i), rw + sw*(tw-1-j)].

    Each image is copied into ``copies`` planes sets (C, hp, pitch): x at row ``top``, shifted
    so that column q of copy e holds x's column q + e - ``left`` (zeros around).  Tap (i, j)
    of position (a, b) of a phase reads row mh0 - th + 1 + top + a + i, column
    mw0 - tw + 1 + left + j + b of the padded image: with ``copies`` > 1 (one per column
    shift e = mw0 - tw + 1 + left + j; ``pitch`` >= every nmw) from copy e at column b, so
    that each vector starts where the row does; with one copy (``pitch`` the padded width),
    from column e + b of it.  The product reads the rows in place (no columns): a phase's
    positions run over whole rows of ``pitch``, the columns past nmw are computed and dropped.
    The caller makes the phases tile y and sizes the copies so that every tap of every
    position lies inside them.  ``workspace`` is (threads, >= phases_size(C, Cout, hp, pitch,
    copies, band, itemsize)); ``band`` is a multiple of the register block's width.
    """
    cdef Py_ssize_t n_img = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t cout = y.shape[1], oh = y.shape[2], ow = y.shape[3]
    cdef Py_ssize_t mr = phases_rows(cout)
    cdef Py_ssize_t nr = (3 if mr == 4 else 2) * CK_VBYTES // sizeof(floating)
    cdef Py_ssize_t n_ph = phases.shape[0], covered = 0, total_k = 0
    cdef Py_ssize_t xsize = copies * c * hp * pitch + pitch + 4 * CK_VBYTES // sizeof(floating)
    cdef Py_ssize_t estep = c * hp * pitch if copies > 1 else 1
    cdef Py_ssize_t f, th, tw, kk, i, j, ch, t, row0, e0, grid, last
    cdef const long long* ph
    cdef long* offs = NULL
    cdef long* starts = NULL
    if not CK_DIRECT_AVAILABLE:
        raise RuntimeError("this build has no packed product kernels")
    if (phases.shape[1] != PH_FIELDS or y.shape[0] != n_img or band < nr or band % nr
            or sh < 1 or sw < 1 or copies < 1 or top < 0 or left < 0 or hp < top + h
            or pitch < 1 or (copies == 1 and pitch < left + w)):
        raise ValueError("conv_transpose2d_forward_phases: inconsistent shapes")
    for f in range(n_ph):
        ph = &phases[f, 0]
        th, tw, kk = ph[PH_TH], ph[PH_TW], ph[PH_K]
        row0 = ph[PH_MH0] - th + 1 + top
        e0 = ph[PH_MW0] - tw + 1 + left
        grid = (ph[PH_NMH] - 1) * pitch + ph[PH_NMW]
        # the last value a vector of the phase reads, in the copies
        last = ((e0 + tw - 1) * estep + (c - 1) * hp * pitch + (row0 + th - 1) * pitch
                + (grid + nr - 1) // nr * nr - 1)
        if (th < 0 or tw < 0 or kk != c * th * tw or ph[PH_WOFF] < 0
                or ph[PH_WOFF] + (cout + mr - 1) // mr * mr * kk > wph.shape[0]
                or ph[PH_NMH] < 0 or ph[PH_NMW] < 0 or ph[PH_NMW] > pitch
                or ph[PH_OH0] < 0 or ph[PH_OW0] < 0
                or (ph[PH_NMH] > 0 and ph[PH_OH0] + (ph[PH_NMH] - 1) * sh >= oh)
                or (ph[PH_NMW] > 0 and ph[PH_OW0] + (ph[PH_NMW] - 1) * sw >= ow)
                or (kk > 0 and ph[PH_NMH] > 0 and ph[PH_NMW] > 0
                    and (row0 < 0 or e0 < 0 or (copies > 1 and e0 + tw > copies)
                         or row0 + th - 1 + ph[PH_NMH] > hp or last >= xsize))):
            raise ValueError(f"conv_transpose2d_forward_phases: phase {f} inconsistent")
        covered += ph[PH_NMH] * ph[PH_NMW]
        total_k += kk
    if (covered != oh * ow or (bias is not None and bias.shape[0] != cout)
            or workspace.shape[0] < num_threads
            or workspace.shape[1] < phases_size(c, cout, hp, pitch, copies, band,
                                                sizeof(floating))):
        raise ValueError("conv_transpose2d_forward_phases: inconsistent shapes or workspace")
    if n_img == 0 or cout == 0 or oh * ow == 0:
        return
    # each phase's taps as offsets from the phase's first row in the copies
    offs = <long*> malloc((total_k + 1) * sizeof(long))
    starts = <long*> malloc((n_ph + 1) * sizeof(long))
    if offs == NULL or starts == NULL:
        free(offs)
        free(starts)
        raise MemoryError()
    try:
        t = 0
        for f in range(n_ph):
            starts[f] = t
            th, tw = phases[f, PH_TH], phases[f, PH_TW]
            e0 = phases[f, PH_MW0] - tw + 1 + left
            for ch in range(c):
                for i in range(th):
                    for j in range(tw):
                        offs[t] = (e0 + j) * estep + (ch * hp + i) * pitch
                        t += 1
        _phases_forward(x, wph, phases, bias, y, workspace, sh, sw, top, left, hp, pitch,
                        copies, band, num_threads, offs, starts, mr, nr, xsize)
    finally:
        free(offs)
        free(starts)


cdef void _phases_forward(const floating[:, :, :, ::1] x, const floating[::1] wph,
                          const long long[:, ::1] phases, const floating[::1] bias,
                          floating[:, :, :, ::1] y, floating[:, ::1] workspace,
                          int sh, int sw, int top, int left, Py_ssize_t hp, Py_ssize_t pitch,
                          Py_ssize_t copies, Py_ssize_t band, int num_threads,
                          const long* offs, const long* starts, Py_ssize_t mr, Py_ssize_t nr,
                          Py_ssize_t xsize) noexcept:
    """The loops of conv_transpose2d_forward_phases (which checked the arguments)."""
    cdef Py_ssize_t n_img = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t cout = y.shape[1], n_ph = phases.shape[0]
    cdef Py_ssize_t f, n, g0, g1, panels, kk, nmw, grid, a, b, co, t, cnt, g
    cdef Py_ssize_t planes = copies * c * hp * pitch
    cdef const long long* ph
    cdef floating* xp = NULL
    cdef floating* out = NULL
    cdef const floating* src
    cdef const floating* origin
    cdef const floating* wf = NULL
    cdef floating* yrow
    cdef floating bv
    cdef const floating* bp = &bias[0] if bias is not None else NULL
    cdef int tid = 0
    with nogil, parallel(num_threads=num_threads):
        note_team()
        tid = threadid()
        xp = &workspace[tid, 0]
        xp = xp + (64 - (<size_t> xp) % 64) % 64 // sizeof(floating)  # rows start on lines
        out = xp + xsize
        for n in prange(n_img, schedule="static"):
            _shifted_planes(&x[n, 0, 0, 0], c, h, w, top, left, hp, pitch, copies, xp)
            memset(xp + planes, 0, (xsize - planes) * sizeof(floating))
            for f in range(n_ph):
                ph = &phases[f, 0]
                kk, nmw = ph[PH_K], ph[PH_NMW]
                if ph[PH_NMH] == 0 or nmw == 0:
                    continue
                grid = (ph[PH_NMH] - 1) * pitch + nmw
                origin = xp + (ph[PH_MH0] - ph[PH_TH] + 1 + top) * pitch
                if kk > 0:  # a phase without taps (kernel smaller than the stride) has none
                    wf = &wph[ph[PH_WOFF]]
                g0 = 0
                while g0 < grid:
                    g1 = g0 + band
                    if g1 > grid:
                        g1 = grid
                    cnt = g1 - g0
                    panels = (cnt + nr - 1) // nr
                    if kk > 0:
                        if floating is float:
                            if mr == 4:
                                ck_pk_dx4_f(wf, cout, kk, origin + g0, offs + starts[f], nr,
                                            panels, cnt, out, cnt)
                            else:
                                ck_pk_dx_f(wf, cout, kk, origin + g0, offs + starts[f], nr,
                                           panels, cnt, out, cnt)
                        else:
                            if mr == 4:
                                ck_pk_dx4_d(wf, cout, kk, origin + g0, offs + starts[f], nr,
                                            panels, cnt, out, cnt)
                            else:
                                ck_pk_dx_d(wf, cout, kk, origin + g0, offs + starts[f], nr,
                                           panels, cnt, out, cnt)
                    # out (cout, cnt) + bias to the phase's places in y, dropping the columns
                    # past nmw of each row
                    for co in range(cout):
                        bv = bp[co] if bp != NULL else 0
                        g = g0
                        while g < g1:
                            a = g // pitch
                            b = g - a * pitch
                            t = pitch - b if pitch - b < g1 - g else g1 - g
                            if b < nmw:
                                if t > nmw - b:
                                    t = nmw - b
                                yrow = &y[n, co, ph[PH_OH0] + a * sh, ph[PH_OW0] + b * sw]
                                src = out + co * cnt + g - g0
                                if kk > 0:
                                    for b in range(t):
                                        yrow[b * sw] = src[b] + bv
                                else:
                                    for b in range(t):
                                        yrow[b * sw] = bv
                            g = g + t
                    g0 = g1
