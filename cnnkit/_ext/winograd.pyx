# cython: language_level=3
"""Winograd F(4x4, 3x3) convolution kernels (3x3, stride 1, dilation 1, groups 1): the tile
transforms in nogil Cython, the elementwise stage as 36 GEMMs through BLAS.

The output is cut into 4x4 tiles; tile (ty, tx) of image n reads the 6x6 input patch whose top
left corner is ``(4*ty - pt, 4*tx - pl)`` (zeros outside the input, so any padding and partial
tiles at the bottom/right edges need no special case).  With the transforms of Lavin & Gray
(interpolation points 0, +-1, +-2, infinity)::

    U[xi] = (G g G^T)[xi]         filter, per (out, in) channel pair     (36, O, C)
    V[xi] = (B^T d B)[xi]         input patch, per channel and tile      (36, C, tiles)
    M[xi] = U[xi] @ V[xi]         36 GEMMs (O x C) @ (C x tiles)         (36, O, tiles)
    y     = A^T M A               per output channel and tile, cropped to the output

Backward, with dM = A dY A^T (dY the tile's 4x4 output gradient, zeros past the edge):
``dU[xi] += dM[xi] @ V[xi]^T`` (summed over tiles, then ``dg = G^T dU G``) and
``dV[xi] = U[xi]^T @ dM[xi]``, whose ``B dV B^T`` is added into the overlapping input patches.

Tiles are processed in blocks (flattened over images, tile rows, tile columns) so the workspace
of one call stays bounded: each thread owns one slice of ``workspace`` holding V and M of its
current block, :func:`workspace_size` values (``36 * (C + O) * block`` and a little padding).  Forward splits the blocks over an OpenMP team;
backward splits whole images (neighbouring tiles of an image overlap in the input gradient, so
one image belongs to one thread).  The caller limits BLAS to one thread meanwhile.

Inputs are validated by the Python wrapper (``cnnkit.builtin.conv.Conv2dWinograd``); the
shape checks here only keep a wrong call from reading out of bounds.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid
from libc.string cimport memcpy, memset

from cnnkit._ext._blas cimport gemm_rm
from cnnkit._ext._omp cimport note_team, omp_last_team, omp_max_threads

#: Output tile edge, input patch edge, and the number of elementwise products per tile.
TILE = 4
PATCH = 6
POSITIONS = 36


def max_threads():
    """Threads an OpenMP region would use now (1 when built without OpenMP)."""
    return omp_max_threads()


def last_team_size():
    """Threads of the last parallel region a Winograd kernel ran (0 before the first)."""
    return omp_last_team()


# ------------------------------------------------------------------------------------------------
# 1-D transforms of CHUNK tiles at once (each 2-D transform applies one along columns, then
# along rows): input q of tile jj is at ``d[q * s + jj]``, output q at ``o[q * t + jj]``.  The
# callers pass distinct stack arrays and the loop over tiles has a fixed length, so the
# compiler vectorises it; the block buffers are copied in and out by rows.
# ------------------------------------------------------------------------------------------------
cdef enum:
    CHUNK = 32  # tiles transformed together
cdef inline void _bt(const floating* d, Py_ssize_t s, floating* o, Py_ssize_t t) noexcept nogil:
    """o (6) = B^T d (6)."""
    cdef Py_ssize_t q
    # typed constants: a literal 4 would be the double 4.0 and promote float math to double
    cdef floating k2 = 2, k4 = 4, k5 = 5
    cdef floating d0, d1, d2, d3, d4, d5
    for q in range(CHUNK):
        d0 = d[q]
        d1 = d[s + q]
        d2 = d[2 * s + q]
        d3 = d[3 * s + q]
        d4 = d[4 * s + q]
        d5 = d[5 * s + q]
        o[q] = k4 * d0 - k5 * d2 + d4
        o[t + q] = d3 + d4 - k4 * (d1 + d2)
        o[2 * t + q] = k4 * (d1 - d2) - d3 + d4
        o[3 * t + q] = k2 * (d3 - d1) - d2 + d4
        o[4 * t + q] = k2 * (d1 - d3) - d2 + d4
        o[5 * t + q] = k4 * d1 - k5 * d3 + d5


cdef inline void _b(const floating* v, Py_ssize_t s, floating* o, Py_ssize_t t) noexcept nogil:
    """o (6) = B v (6), the adjoint of _bt."""
    cdef Py_ssize_t q
    # typed constants: a literal 4 would be the double 4.0 and promote float math to double
    cdef floating k2 = 2, k4 = 4, k5 = 5
    cdef floating v0, v1, v2, v3, v4, v5
    for q in range(CHUNK):
        v0 = v[q]
        v1 = v[s + q]
        v2 = v[2 * s + q]
        v3 = v[3 * s + q]
        v4 = v[4 * s + q]
        v5 = v[5 * s + q]
        o[q] = k4 * v0
        o[t + q] = k4 * (v2 - v1 + v5) + k2 * (v4 - v3)
        o[2 * t + q] = -k5 * v0 - k4 * (v1 + v2) - v3 - v4
        o[3 * t + q] = v1 - v2 + k2 * (v3 - v4) - k5 * v5
        o[4 * t + q] = v0 + v1 + v2 + v3 + v4
        o[5 * t + q] = v5


cdef inline void _at(const floating* m, Py_ssize_t s, floating* o, Py_ssize_t t) noexcept nogil:
    """o (4) = A^T m (6)."""
    cdef Py_ssize_t q
    # typed constants: a literal 4 would be the double 4.0 and promote float math to double
    cdef floating k2 = 2, k4 = 4, k8 = 8
    cdef floating p12, n12, p34, n34
    for q in range(CHUNK):
        p12 = m[s + q] + m[2 * s + q]
        n12 = m[s + q] - m[2 * s + q]
        p34 = m[3 * s + q] + m[4 * s + q]
        n34 = m[3 * s + q] - m[4 * s + q]
        o[q] = m[q] + p12 + p34
        o[t + q] = n12 + k2 * n34
        o[2 * t + q] = p12 + k4 * p34
        o[3 * t + q] = n12 + k8 * n34 + m[5 * s + q]


cdef inline void _a(const floating* v, Py_ssize_t s, floating* o, Py_ssize_t t) noexcept nogil:
    """o (6) = A v (4), the adjoint of _at."""
    cdef Py_ssize_t q
    # typed constants: a literal 4 would be the double 4.0 and promote float math to double
    cdef floating k2 = 2, k4 = 4, k8 = 8
    cdef floating v0, v1, v2, v3
    for q in range(CHUNK):
        v0 = v[q]
        v1 = v[s + q]
        v2 = v[2 * s + q]
        v3 = v[3 * s + q]
        o[q] = v0
        o[t + q] = v0 + v1 + v2 + v3
        o[2 * t + q] = v0 - v1 + v2 - v3
        o[3 * t + q] = v0 + k2 * v1 + k4 * v2 + k8 * v3
        o[4 * t + q] = v0 - k2 * v1 + k4 * v2 - k8 * v3
        o[5 * t + q] = v3


cdef inline void _g(const double* g, Py_ssize_t s, double* o, Py_ssize_t t) noexcept nogil:
    """o (6) = G g (3), in double: the filter transform runs once per call."""
    cdef double g0 = g[0], g1 = g[s], g2 = g[2 * s]
    o[0] = g0 / 4
    o[t] = -(g0 + g1 + g2) / 6
    o[2 * t] = -(g0 - g1 + g2) / 6
    o[3 * t] = g0 / 24 + g1 / 12 + g2 / 6
    o[4 * t] = g0 / 24 - g1 / 12 + g2 / 6
    o[5 * t] = g2


cdef inline void _gt(const double* u, Py_ssize_t s, double* o, Py_ssize_t t) noexcept nogil:
    """o (3) = G^T u (6), the adjoint of _g."""
    cdef double u1 = u[s], u2 = u[2 * s], u3 = u[3 * s], u4 = u[4 * s]
    o[0] = u[0] / 4 - (u1 + u2) / 6 + (u3 + u4) / 24
    o[t] = (u2 - u1) / 6 + (u3 - u4) / 12
    o[2 * t] = (u3 + u4 - u1 - u2) / 6 + u[5 * s]


# ------------------------------------------------------------------------------------------------
# filter transform and its adjoint (the weight gradient), once per call
# ------------------------------------------------------------------------------------------------
def filter_transform(const floating[:, :, :, ::1] weight, floating[:, :, ::1] u):
    """u[xi, o, c] = (G weight[o, c] G^T)[xi] for a 3x3 ``weight`` (O, C, 3, 3)."""
    cdef Py_ssize_t o = weight.shape[0], c = weight.shape[1], oc, ch, k
    cdef double g[9]
    cdef double tmp[18]
    cdef double out[36]
    if weight.shape[2] != 3 or weight.shape[3] != 3 or u.shape[0] != 36 or u.shape[1] != o \
            or u.shape[2] != c:
        raise ValueError(f"filter_transform: weight {tuple(weight.shape)[:4]} and u "
                         f"{tuple(u.shape)[:3]} do not fit (expected (O, C, 3, 3), (36, O, C))")
    with nogil:
        for oc in range(o):
            for ch in range(c):
                for k in range(9):
                    g[k] = weight[oc, ch, k // 3, k % 3]
                for k in range(3):  # columns: tmp (6 x 3) = G g
                    _g(g + k, 3, tmp + k, 3)
                for k in range(6):  # rows: out (6 x 6) = tmp G^T
                    _g(tmp + 3 * k, 1, out + 6 * k, 1)
                for k in range(36):
                    u[k, oc, ch] = <floating> out[k]


def filter_gradient(const floating[:, :, ::1] du, floating[:, :, :, ::1] dweight):
    """dweight[o, c] = G^T du[:, o, c] G (the adjoint of :func:`filter_transform`)."""
    cdef Py_ssize_t o = dweight.shape[0], c = dweight.shape[1], oc, ch, k
    cdef double v[36]
    cdef double tmp[18]
    cdef double out[9]
    if dweight.shape[2] != 3 or dweight.shape[3] != 3 or du.shape[0] != 36 \
            or du.shape[1] != o or du.shape[2] != c:
        raise ValueError(f"filter_gradient: du {tuple(du.shape)[:3]} and dweight "
                         f"{tuple(dweight.shape)[:4]} do not fit")
    with nogil:
        for oc in range(o):
            for ch in range(c):
                for k in range(36):
                    v[k] = du[k, oc, ch]
                for k in range(6):  # columns: tmp (3 x 6) = G^T v
                    _gt(v + k, 6, tmp + k, 6)
                for k in range(3):  # rows: out (3 x 3) = tmp G
                    _gt(tmp + 6 * k, 1, out + 3 * k, 1)
                for k in range(9):
                    dweight[oc, ch, k // 3, k % 3] = <floating> out[k]


# ------------------------------------------------------------------------------------------------
# tile transforms of one block of tiles.  Tile t of the batch is image t // tiles_img, tile row
# (t % tiles_img) // tiles_w, tile column t % tiles_w.  Block buffers hold 36 matrices
# (channels x nb), matrix xi at xi * ld (``_ld``): entry (ch, j) of position xi is at
# xi * ld + ch * nb + j.  The loops run over channels outside and tiles inside, so each of the
# 36 matrices is written (read) along its rows; ld is padded so the 36 rows in flight do not
# all fall into one cache set (channels * nb is often a multiple of 4 KiB).
# ------------------------------------------------------------------------------------------------
cdef inline Py_ssize_t _ld(Py_ssize_t channels, Py_ssize_t nb) noexcept nogil:
    return channels * nb + 16


cdef inline void _tile_origin(Py_ssize_t t, Py_ssize_t tiles_img, Py_ssize_t tiles_w,
                              Py_ssize_t* n, Py_ssize_t* ty, Py_ssize_t* tx) noexcept nogil:
    cdef Py_ssize_t r = t % tiles_img
    n[0] = t // tiles_img
    ty[0] = r // tiles_w
    tx[0] = r % tiles_w


cdef inline void _next_tile(Py_ssize_t tiles_img, Py_ssize_t tiles_w, Py_ssize_t* n,
                            Py_ssize_t* ty, Py_ssize_t* tx) noexcept nogil:
    tx[0] += 1
    if tx[0] == tiles_w:
        tx[0] = 0
        ty[0] += 1
        if ty[0] * tiles_w == tiles_img:
            ty[0] = 0
            n[0] += 1


cdef void _input_block(const floating* x, Py_ssize_t c, Py_ssize_t h, Py_ssize_t w,
                       Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t tiles_img, Py_ssize_t tiles_w,
                       Py_ssize_t t0, Py_ssize_t nb, floating* v) noexcept nogil:
    """v = B^T d B of the input patches of tiles [t0, t0 + nb)."""
    cdef Py_ssize_t j0, jj, nj, ch, k, r, s, n, ty, tx, y0, x0, ld = _ld(c, nb)
    cdef floating patch[36 * CHUNK]
    cdef floating tmp[36 * CHUNK]
    cdef const floating* src
    cdef const floating* plane
    memset(patch, 0, sizeof(patch))  # lanes past a short last chunk hold finite values
    for ch in range(c):
        _tile_origin(t0, tiles_img, tiles_w, &n, &ty, &tx)
        for j0 in range(0, nb, 32):  # CHUNK
            nj = nb - j0 if nb - j0 < CHUNK else CHUNK
            for jj in range(nj):  # gather the patches, zeros outside the input
                y0 = ty * 4 - pt
                x0 = tx * 4 - pl
                plane = x + (n * c + ch) * h * w
                if y0 >= 0 and x0 >= 0 and y0 + 6 <= h and x0 + 6 <= w:
                    src = plane + y0 * w + x0
                    for r in range(6):
                        for s in range(6):
                            patch[(6 * r + s) * CHUNK + jj] = src[r * w + s]
                else:
                    for r in range(6):
                        for s in range(6):
                            if 0 <= y0 + r < h and 0 <= x0 + s < w:
                                patch[(6 * r + s) * CHUNK + jj] = plane[(y0 + r) * w + x0 + s]
                            else:
                                patch[(6 * r + s) * CHUNK + jj] = 0
                _next_tile(tiles_img, tiles_w, &n, &ty, &tx)
            for k in range(6):  # columns: tmp = B^T d
                _bt(patch + k * CHUNK, 6 * CHUNK, tmp + k * CHUNK, 6 * CHUNK)
            for k in range(6):  # rows: patch = tmp B
                _bt(tmp + 6 * k * CHUNK, CHUNK, patch + 6 * k * CHUNK, CHUNK)
            for k in range(36):
                memcpy(v + k * ld + ch * nb + j0, patch + k * CHUNK, nj * sizeof(floating))


cdef void _output_block(const floating* m, Py_ssize_t o, Py_ssize_t oh, Py_ssize_t ow,
                        Py_ssize_t tiles_img, Py_ssize_t tiles_w, Py_ssize_t t0, Py_ssize_t nb,
                        const floating* bias, floating* y) noexcept nogil:
    """y tiles [t0, t0 + nb) = A^T m A (+ bias), cropped to the (oh, ow) output planes."""
    cdef Py_ssize_t j0, jj, nj, oc, k, r, s, n, ty, tx, r0, c0, rows, cols, ld = _ld(o, nb)
    cdef floating mm[36 * CHUNK]
    cdef floating tmp[24 * CHUNK]
    cdef floating out[16 * CHUNK]
    cdef floating bv = 0
    cdef floating* dst
    memset(mm, 0, sizeof(mm))
    for oc in range(o):
        if bias != NULL:
            bv = bias[oc]
        _tile_origin(t0, tiles_img, tiles_w, &n, &ty, &tx)
        for j0 in range(0, nb, 32):  # CHUNK
            nj = nb - j0 if nb - j0 < CHUNK else CHUNK
            for k in range(36):
                memcpy(mm + k * CHUNK, m + k * ld + oc * nb + j0, nj * sizeof(floating))
            for k in range(6):  # columns: tmp (4 x 6) = A^T m
                _at(mm + k * CHUNK, 6 * CHUNK, tmp + k * CHUNK, 6 * CHUNK)
            for k in range(4):  # rows: out (4 x 4) = tmp A
                _at(tmp + 6 * k * CHUNK, CHUNK, out + 4 * k * CHUNK, CHUNK)
            for jj in range(nj):
                r0 = ty * 4
                c0 = tx * 4
                rows = oh - r0 if oh - r0 < 4 else 4
                cols = ow - c0 if ow - c0 < 4 else 4
                dst = y + ((n * o + oc) * oh + r0) * ow + c0
                for r in range(rows):
                    for s in range(cols):
                        dst[r * ow + s] = out[(4 * r + s) * CHUNK + jj] + bv
                _next_tile(tiles_img, tiles_w, &n, &ty, &tx)


cdef void _grad_output_block(const floating* dy, Py_ssize_t o, Py_ssize_t oh, Py_ssize_t ow,
                             Py_ssize_t tiles_img, Py_ssize_t tiles_w, Py_ssize_t t0,
                             Py_ssize_t nb, floating* dm) noexcept nogil:
    """dm = A dY A^T of the 4x4 output-gradient tiles [t0, t0 + nb) (zeros past the edge)."""
    cdef Py_ssize_t j0, jj, nj, oc, k, r, s, n, ty, tx, r0, c0, rows, cols, ld = _ld(o, nb)
    cdef floating tile[16 * CHUNK]
    cdef floating tmp[24 * CHUNK]
    cdef floating out[36 * CHUNK]
    cdef const floating* src
    memset(tile, 0, sizeof(tile))
    for oc in range(o):
        _tile_origin(t0, tiles_img, tiles_w, &n, &ty, &tx)
        for j0 in range(0, nb, 32):  # CHUNK
            nj = nb - j0 if nb - j0 < CHUNK else CHUNK
            for jj in range(nj):
                r0 = ty * 4
                c0 = tx * 4
                rows = oh - r0 if oh - r0 < 4 else 4
                cols = ow - c0 if ow - c0 < 4 else 4
                src = dy + ((n * o + oc) * oh + r0) * ow + c0
                for r in range(4):
                    for s in range(4):
                        if r < rows and s < cols:
                            tile[(4 * r + s) * CHUNK + jj] = src[r * ow + s]
                        else:
                            tile[(4 * r + s) * CHUNK + jj] = 0
                _next_tile(tiles_img, tiles_w, &n, &ty, &tx)
            for k in range(4):  # columns: tmp (6 x 4) = A dY
                _a(tile + k * CHUNK, 4 * CHUNK, tmp + k * CHUNK, 4 * CHUNK)
            for k in range(6):  # rows: out = tmp A^T
                _a(tmp + 4 * k * CHUNK, CHUNK, out + 6 * k * CHUNK, CHUNK)
            for k in range(36):
                memcpy(dm + k * ld + oc * nb + j0, out + k * CHUNK, nj * sizeof(floating))


cdef void _grad_input_block(const floating* dv, Py_ssize_t c, Py_ssize_t h, Py_ssize_t w,
                            Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t tiles_img,
                            Py_ssize_t tiles_w, Py_ssize_t t0, Py_ssize_t nb,
                            floating* dx) noexcept nogil:
    """Add B dV B^T of tiles [t0, t0 + nb) into their input patches of dx; padding is dropped."""
    cdef Py_ssize_t j0, jj, nj, ch, k, r, s, n, ty, tx, y0, x0, ld = _ld(c, nb)
    cdef floating tmp[36 * CHUNK]
    cdef floating patch[36 * CHUNK]
    cdef floating* plane
    cdef floating* dst
    memset(patch, 0, sizeof(patch))
    for ch in range(c):
        _tile_origin(t0, tiles_img, tiles_w, &n, &ty, &tx)
        for j0 in range(0, nb, 32):  # CHUNK
            nj = nb - j0 if nb - j0 < CHUNK else CHUNK
            for k in range(36):
                memcpy(patch + k * CHUNK, dv + k * ld + ch * nb + j0, nj * sizeof(floating))
            for k in range(6):  # columns: tmp = B dV
                _b(patch + k * CHUNK, 6 * CHUNK, tmp + k * CHUNK, 6 * CHUNK)
            for k in range(6):  # rows: patch = tmp B^T
                _b(tmp + 6 * k * CHUNK, CHUNK, patch + 6 * k * CHUNK, CHUNK)
            for jj in range(nj):
                y0 = ty * 4 - pt
                x0 = tx * 4 - pl
                plane = dx + (n * c + ch) * h * w
                if y0 >= 0 and x0 >= 0 and y0 + 6 <= h and x0 + 6 <= w:
                    dst = plane + y0 * w + x0
                    for r in range(6):
                        for s in range(6):
                            dst[r * w + s] += patch[(6 * r + s) * CHUNK + jj]
                else:
                    for r in range(6):
                        if 0 <= y0 + r < h:
                            for s in range(6):
                                if 0 <= x0 + s < w:
                                    plane[(y0 + r) * w + x0 + s] += patch[(6 * r + s) * CHUNK + jj]
                _next_tile(tiles_img, tiles_w, &n, &ty, &tx)


# ------------------------------------------------------------------------------------------------
# the kernels
# ------------------------------------------------------------------------------------------------
cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


def workspace_size(Py_ssize_t c, Py_ssize_t o, Py_ssize_t block):
    """Values of one thread's workspace for ``block`` tiles, C input and O output channels."""
    return 36 * (_ld(c, block) + _ld(o, block))


def _check_block(Py_ssize_t block, int num_threads, Py_ssize_t c, Py_ssize_t o, workspace):
    if block < 1 or num_threads < 1:
        raise ValueError("block and num_threads must be positive")
    if workspace.shape[0] < num_threads or workspace.shape[1] < workspace_size(c, o, block):
        raise ValueError(f"workspace {tuple(workspace.shape)[:2]} is smaller than "
                         f"({num_threads}, {workspace_size(c, o, block)})")


def winograd_forward(const floating[:, :, :, ::1] x, const floating[:, :, ::1] u,
                     const floating[::1] bias, floating[:, :, :, ::1] y,
                     floating[:, ::1] workspace, Py_ssize_t pt, Py_ssize_t pl,
                     Py_ssize_t block, int num_threads):
    """y = conv2d(x, g) + bias for the transformed filter u = G g G^T (36, O, C); ``bias`` may
    be None.  ``workspace`` is (threads, >= workspace_size(C, O, block))."""
    cdef Py_ssize_t n_img = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t o = y.shape[1], oh = y.shape[2], ow = y.shape[3]
    cdef Py_ssize_t tiles_w = _cdiv(ow, 4), tiles_img = _cdiv(oh, 4) * _cdiv(ow, 4)
    cdef Py_ssize_t total = n_img * tiles_img, n_blocks = _cdiv(total, block)
    cdef Py_ssize_t task, t0, nb, xi
    cdef floating* v = NULL
    cdef floating* m = NULL
    cdef const floating* bp = NULL
    cdef int tid = 0
    _check_block(block, num_threads, c, o, workspace)
    if u.shape[0] != 36 or u.shape[1] != o or u.shape[2] != c or y.shape[0] != n_img:
        raise ValueError("winograd_forward: u must be (36, O, C) and y (N, O, oh, ow)")
    if bias is not None:
        if bias.shape[0] != o:
            raise ValueError("winograd_forward: bias must have O entries")
        bp = &bias[0]
    if total == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        note_team()
        tid = threadid()
        v = &workspace[tid, 0]
        m = v + 36 * _ld(c, block)
        for task in prange(n_blocks, schedule="static"):
            t0 = task * block
            nb = total - t0 if total - t0 < block else block
            _input_block(&x[0, 0, 0, 0], c, h, w, pt, pl, tiles_img, tiles_w, t0, nb, v)
            for xi in range(36):
                gemm_rm(False, False, <int> o, <int> nb, <int> c, <floating> 1.0,
                        &u[xi, 0, 0], <int> c, v + xi * _ld(c, nb), <int> nb,
                        <floating> 0.0, m + xi * _ld(o, nb), <int> nb)
            _output_block(m, o, oh, ow, tiles_img, tiles_w, t0, nb, bp, &y[0, 0, 0, 0])


def winograd_backward(const floating[:, :, :, ::1] x, const floating[:, :, ::1] u,
                      const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                      floating[:, :, :, ::1] du_partial, floating[:, ::1] workspace,
                      Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t block, int num_threads,
                      bint compute_dx=True):
    """dx (overwritten; may be None without ``compute_dx``) and per-thread partial sums
    du_partial[t] (36, O, C) of the transformed weight gradient, which the caller zeroes,
    adds up and turns into dweight with :func:`filter_gradient`.  Thread t takes the images
    [t * per, (t + 1) * per), per = ceil(N / threads), so no two threads touch one image."""
    cdef Py_ssize_t n_img = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t o = dy.shape[1], oh = dy.shape[2], ow = dy.shape[3]
    cdef Py_ssize_t tiles_w = _cdiv(ow, 4), tiles_img = _cdiv(oh, 4) * _cdiv(ow, 4)
    cdef Py_ssize_t per = _cdiv(n_img, num_threads) if num_threads > 0 else 1
    cdef Py_ssize_t part, t0, t1, nb, xi
    cdef floating* v = NULL
    cdef floating* dm = NULL
    cdef floating* dut = NULL
    cdef int tid = 0
    _check_block(block, num_threads, c, o, workspace)
    if u.shape[0] != 36 or u.shape[1] != o or u.shape[2] != c or dy.shape[0] != n_img:
        raise ValueError("winograd_backward: u must be (36, O, C) and dy (N, O, oh, ow)")
    if du_partial.shape[0] < num_threads or du_partial.shape[1] != 36 \
            or du_partial.shape[2] != o or du_partial.shape[3] != c:
        raise ValueError("winograd_backward: du_partial must be (threads, 36, O, C)")
    if compute_dx and (dx is None or dx.shape[0] != n_img or dx.shape[1] != c
                       or dx.shape[2] != h or dx.shape[3] != w):
        raise ValueError("winograd_backward: dx must be an array shaped like x when "
                         "compute_dx is set")
    if n_img == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        note_team()
        tid = threadid()
        v = &workspace[tid, 0]
        dm = v + 36 * _ld(c, block)
        dut = &du_partial[tid, 0, 0, 0]
        for part in prange(num_threads, schedule="static"):
            t0 = part * per
            t1 = t0 + per if t0 + per < n_img else n_img
            if t0 >= t1:
                continue
            if compute_dx:
                memset(&dx[t0, 0, 0, 0], 0, (t1 - t0) * c * h * w * sizeof(floating))
            t0 = t0 * tiles_img
            t1 = t1 * tiles_img
            while t0 < t1:
                nb = t1 - t0 if t1 - t0 < block else block
                _input_block(&x[0, 0, 0, 0], c, h, w, pt, pl, tiles_img, tiles_w, t0, nb, v)
                _grad_output_block(&dy[0, 0, 0, 0], o, oh, ow, tiles_img, tiles_w, t0, nb, dm)
                for xi in range(36):
                    # dU[xi] += dM[xi] (O x nb) @ V[xi]^T (nb x C)
                    gemm_rm(False, True, <int> o, <int> c, <int> nb, <floating> 1.0,
                            dm + xi * _ld(o, nb), <int> nb, v + xi * _ld(c, nb), <int> nb,
                            <floating> 1.0, dut + xi * o * c, <int> c)
                    if compute_dx:
                        # dV[xi] (C x nb) = U[xi]^T (C x O) @ dM[xi] (O x nb), over V[xi]
                        gemm_rm(True, False, <int> c, <int> nb, <int> o, <floating> 1.0,
                                &u[xi, 0, 0], <int> c, dm + xi * _ld(o, nb), <int> nb,
                                <floating> 0.0, v + xi * _ld(c, nb), <int> nb)
                if compute_dx:
                    _grad_input_block(v, c, h, w, pt, pl, tiles_img, tiles_w, t0, nb,
                                      &dx[0, 0, 0, 0])
                t0 = t0 + nb
