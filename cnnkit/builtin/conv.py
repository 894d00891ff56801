"""The conv family's built-in plugin: ``conv2d`` (:class:`~cnnkit.layers.Conv2D`) and
``convtranspose2d`` (:class:`~cnnkit.layers.ConvTranspose2D`), each with

- ``"numpy"``: the reference.  im2col + matmul: ``sliding_window_view`` gives every receptive
  field as a view, one copy turns it into the column matrix, and one batched matmul (a batch of
  ``groups``) does the products.  Backward scatters the column gradients back with col2im, a
  loop over the kernel offsets adding one strided slice of the input gradient at a time.
- ``"cython"``: ``cnnkit._ext.conv`` (priority 100): im2col/col2im in Cython, one BLAS GEMM per
  group and image, an OpenMP team over the images of the batch (forward: over bands of output
  rows when the batch is smaller than the team) with BLAS single-threaded inside it
  (:func:`cnnkit._threads.single_threaded_blas`).  When the columns of the whole batch fit
  ``COL_WORKSPACE_BYTES`` (small-channel layers such as LeNet's) the forward pass keeps them for
  the weight gradient instead of rebuilding them in backward.
- ``"winograd"``: ``cnnkit._ext.winograd``, Winograd F(4x4, 3x3) for 3x3 kernels with stride 1,
  dilation 1 and groups 1 (any padding): float32 and float64 on request, picked automatically
  for float32 only, where its error (:data:`WINOGRAD_FLOAT32_BOUND`) stays within the 1e-4 of
  the output scale every float32 variant is held to.  ``"winograd-avx2"`` / ``"-avx512"``: the
  same with the tile transforms compiled for those instruction sets (ranked above it).
"""
from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnnkit._ext import conv as _conv
from cnnkit._ext import winograd as _winograd
from cnnkit._shapes import conv_output_size, conv_transpose_output_size
from cnnkit._threads import get_num_threads, single_threaded_blas
from cnnkit.builtin._kernel_args import (INT32_MAX, ISA_FEATURES, checked_once, config_int,
                                         config_ints, contiguous, grad_like, isa_build,
                                         weight_and_bias, workspace)
from cnnkit.layers import Conv2D, ConvTranspose2D
from cnnkit.plugins import hookimpl

__all__ = ["COL_WORKSPACE_BYTES", "SERIAL_MACS", "Conv2dNumpy", "Conv2dCython",
           "ConvTranspose2dNumpy", "ConvTranspose2dCython", "Conv2dWinograd",
           "WINOGRAD_FLOAT32_BOUND", "Conv2dDirect", "DIRECT_AUTO_MAX_TAPS"]

#: Upper bound of the im2col workspace of one convolution call, all threads together.  Each
#: thread holds the columns of one band of output rows of one image; bands are as tall as fit
#: (a whole image for ordinary sizes), but never less than one output row.  Columns kept from
#: forward to backward (the whole batch's) are held to the same bound.
COL_WORKSPACE_BYTES = 32 * 2**20

#: Convolutions with fewer multiply-adds than this run on one thread.
SERIAL_MACS = 1 << 18

#: The transposed convolution (groups 1) by the packed products: the forward phase by phase
#: (``conv_transpose2d_forward_phases``, dilation 1), the backward by
#: ``conv_transpose2d_backward`` (dy's columns built once, read by both products without BLAS
#: packing them again).  False: GEMM + scatter and the conv2d column path, as grouped layers.
PACKED_KERNELS = True

#: Bytes of one band of the transposed convolution backward's packed columns and packed input:
#: cache-sized, so that both products read the band while it is in L2.
PACKED_BAND_BYTES = 256 * 2**10

#: Bytes of the products of one band of positions in the phase-by-phase forward: L1/L2-sized
#: until they are written to the output.
PHASES_BAND_BYTES = 64 * 2**10

#: Where the packed path pays (measured against GEMM + scatter and the conv2d column path on
#: k4 s2 p1 layers, AVX2): the forward by phases needs at least 8 output channels (with 3, the
#: register blocks are a quarter empty: 1.15-1.26x slower) and 128 input positions per image
#: (on 8x8 images with 256 channels, 1.1-1.5x slower: too few positions per phase to fill
#: whole blocks); the backward needs 128 positions per image or a weight gradient of at most
#: 1 MiB (each image adds into the per-thread weight gradient: with 256 channels at 8x8,
#: 2 MiB per image, 1.1x slower; 64 channels at 16x16: 0.6-0.8x).
PHASES_MIN_OUT_CHANNELS = 8
PACKED_MIN_POSITIONS = 128
PACKED_MAX_DW_BYTES = 2**20

#: The phase-by-phase forward copies each image once per column shift of its taps (rows then
#: start on vector boundaries and hold no padding columns) up to this many copies; beyond, one
#: padded copy is read at every shift.
PHASES_MAX_COPIES = 4

#: Priority of the "cython-<isa>" variants (the "cython" kernels compiled per instruction set)
#: against "cython"'s 100: above it only where measured at least as fast.
#: Below for now: the AVX2 build measured within noise of the portable one (fwd+bwd,
#: interleaved, ratios 0.95-1.12: BLAS already dispatches on the CPU, the rest is memory
#: bound); the AVX-512 build is not measured yet.
ISA_PRIORITY = {"avx2": 99, "avx512": 99}

#: The transposed convolution's builds with 32-byte vectors and up run the packed products
#: (``packed_available``), measured ahead of the portable build's BLAS path (k4 s2 p1,
#: 64 -> 32 channels, fwd+bwd: about 0.3x its time): above "cython" where the CPU has them,
#: the measured AVX2 build first.
CONVT_ISA_PRIORITY = {"avx2": 102, "avx512": 101}

#: Priority of the "direct" variants (None: the portable build).  The portable build's 16-byte
#: vectors leave it behind im2col, so it is chosen only on request; the AVX2 and AVX-512 builds
#: rank above "cython" (and below Winograd) where ``direct_auto_refusal`` lets them.
DIRECT_PRIORITY = {None: 50, "avx2": 105, "avx512": 106}
#: Winograd's builds: above the others where they apply (3x3 stride 1, float32, 16+ channels)
WINOGRAD_PRIORITY = {None: 110, "avx2": 111, "avx512": 112}


# ---------------------------------------------------------------------------------------------
# the reference (numpy)
# ---------------------------------------------------------------------------------------------
def _im2col(xp, kh, kw, sh, sw, dh, dw, oh, ow, groups):
    """Column matrix of the padded input ``xp``: shape (groups, N*oh*ow, C/groups*kh*kw).

    Row ``n*oh*ow + i*ow + j`` holds the receptive field of output pixel (i, j) of image n,
    ordered (channel, kernel row, kernel column) like the weight's trailing dimensions.
    """
    n, c = xp.shape[:2]
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    win = sliding_window_view(xp, (span_h, span_w), axis=(2, 3))  # (N, C, Hp', Wp', span_h, span_w)
    win = win[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw, ::dh, ::dw]
    cg = c // groups
    win = win.reshape(n, groups, cg, oh, ow, kh, kw)
    cols = win.transpose(1, 0, 3, 4, 2, 5, 6)  # (g, N, oh, ow, cg, kh, kw)
    return cols.reshape(groups, n * oh * ow, cg * kh * kw)  # the one copy


def _col2im(dcols, xp_shape, kh, kw, sh, sw, dh, dw, oh, ow, groups):
    """Inverse scatter of ``_im2col``: sum the column gradients into a padded-input gradient."""
    n, c, hp, wp = xp_shape
    cg = c // groups
    d = dcols.reshape(groups, n, oh, ow, cg, kh, kw).transpose(1, 0, 4, 5, 6, 2, 3)
    d = d.reshape(n, c, kh, kw, oh, ow)
    dxp = np.zeros(xp_shape, dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            dxp[:, :, r0 : r0 + (oh - 1) * sh + 1 : sh, c0 : c0 + (ow - 1) * sw + 1 : sw] += d[:, :, i, j]
    return dxp


def _effective_weight(w, config):
    """The kernel the cross-correlation applies: unconnected pairs of a connection table zeroed
    (whatever the stored weight holds there), turned 180 degrees for ``flip_kernel``."""
    table = config.get("connections")
    if table is not None:
        w = w * np.asarray(table, dtype=bool)[:, :, None, None]
    if config.get("flip_kernel"):
        w = w[:, :, ::-1, ::-1]
    return w


def _stored_weight_grad(dw, config):
    """The gradient of the stored weight from that of the kernel applied: turned back for
    ``flip_kernel``, exactly zero on the unconnected pairs of a connection table."""
    if config.get("flip_kernel"):
        dw = dw[:, :, ::-1, ::-1]
    table = config.get("connections")
    if table is not None:
        dw = dw * np.asarray(table, dtype=bool)[:, :, None, None]
    return np.ascontiguousarray(dw)


#: Cost of one extra BLAS product of the skipping plan, in multiply-adds per output pixel:
#: small products run far below peak (LeNet's C3 as 24 products of 1-6 rows measured 3.5x
#: slower than one dense product over zeroed weights), so unconnected pairs are skipped only
#: when that saves more than the extra calls cost (block-structured tables).
RUN_PRODUCT_COST = 1024


@functools.lru_cache(maxsize=64)
def _connection_runs(table, kernel_area, product_cost):
    """The Cython kernels' plan for a connection table (tuple of rows of bools, out x in), as
    (runs, None) or (None, mask).  Runs: int32 rows (first output, output count, first input,
    input count), consecutive outputs with the same inputs merged into one block, one row per
    run of consecutive connected inputs.  Mask (out, in, 1, 1) instead when one dense product
    over zeroed weights is cheaper (``product_cost``: :data:`RUN_PRODUCT_COST`)."""
    runs = []
    o, c = len(table), len(table[0])
    oc = 0
    while oc < o:
        end = oc + 1
        while end < o and table[end] == table[oc]:
            end += 1
        start = None
        for ic, on in enumerate(tuple(table[oc]) + (False,)):
            if on and start is None:
                start = ic
            elif not on and start is not None:
                runs.append((oc, end - oc, start, ic - start))
                start = None
        oc = end
    computed = sum(ob * ci for _, ob, _, ci in runs) * kernel_area
    if computed + (len(runs) - 1) * product_cost >= o * c * kernel_area:
        mask = np.array(table, dtype=bool)[:, :, None, None]
        mask.setflags(write=False)
        return None, mask
    out = np.array(runs, dtype=np.int32).reshape(-1, 4)
    out.setflags(write=False)
    return out, None


class Conv2dNumpy:
    """2-D cross-correlation (PyTorch's conv2d) with stride, asymmetric padding, dilation, groups;
    a connection table masks the weight, ``flip_kernel`` turns it (true convolution)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        w, b = _effective_weight(params["weight"], config), params.get("bias")
        sh, sw = config["stride"]
        top, bottom, left, right = config["padding"]
        dh, dw = config["dilation"]
        groups = config["groups"]
        n, c, h, wd = x.shape
        o, cg, kh, kw = w.shape
        oh = conv_output_size(h, top, bottom, kh, sh, dh)
        ow = conv_output_size(wd, left, right, kw, sw, dw)
        xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))) if any(config["padding"]) else x
        cols = _im2col(xp, kh, kw, sh, sw, dh, dw, oh, ow, groups)
        wmat = w.reshape(groups, o // groups, cg * kh * kw)
        out = np.matmul(cols, wmat.transpose(0, 2, 1))  # (g, N*oh*ow, O/g)
        y = out.reshape(groups, n, oh, ow, o // groups).transpose(1, 0, 4, 2, 3).reshape(n, o, oh, ow)
        if b is not None:
            y = y + b.reshape(1, o, 1, 1)
        y = np.ascontiguousarray(y, dtype=x.dtype)
        ctx = (x, w, b is not None, config, xp.shape) if need_backward else None
        return y, ctx

    @staticmethod
    def backward(dy, ctx):
        x, w, has_bias, config, xp_shape = ctx
        sh, sw = config["stride"]
        top, bottom, left, right = config["padding"]
        dh, dw = config["dilation"]
        groups = config["groups"]
        n = x.shape[0]
        o, cg, kh, kw = w.shape
        oh, ow = dy.shape[2:]
        # recompute the columns rather than keeping a batch-sized matrix alive between passes
        xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))) if any(config["padding"]) else x
        cols = _im2col(xp, kh, kw, sh, sw, dh, dw, oh, ow, groups)
        dyg = dy.reshape(n, groups, o // groups, oh * ow).transpose(1, 0, 3, 2).reshape(groups, n * oh * ow, o // groups)
        wmat = w.reshape(groups, o // groups, cg * kh * kw)
        dw_ = np.matmul(dyg.transpose(0, 2, 1), cols).reshape(w.shape)
        dcols = np.matmul(dyg, wmat)  # (g, N*oh*ow, cg*kh*kw)
        dxp = _col2im(dcols, xp_shape, kh, kw, sh, sw, dh, dw, oh, ow, groups)
        dx = np.ascontiguousarray(dxp[:, :, top : top + x.shape[2], left : left + x.shape[3]])
        grads = {"weight": _stored_weight_grad(dw_.astype(w.dtype, copy=False), config)}
        if has_bias:
            grads["bias"] = dy.sum(axis=(0, 2, 3)).astype(w.dtype, copy=False)
        return dx, grads


class ConvTranspose2dNumpy:
    """Transposed convolution as the input-gradient of a convolution: one matmul per group
    gives every (input pixel, kernel offset) contribution, col2im scatters them into the
    output enlarged by the padding (and output_padding), which is then cropped.  Backward is
    the forward convolution: im2col of the padded output gradient, two matmuls."""

    @staticmethod
    def _geometry(x_shape, w_shape, config):
        """groups, stride, padding, dilation, input shape, (out/groups, kh, kw) and
        (full height, full width, output height, output width), unpacked once for both passes."""
        n, cin, h, wd = x_shape
        _, cog, kh, kw = w_shape
        sh, sw = config["stride"]
        ph, pw = config["padding"]
        oph, opw = config["output_padding"]
        dh, dw = config["dilation"]
        fh = conv_transpose_output_size(h, kh, sh, 0, oph, dh)  # full (uncropped) output
        fw = conv_transpose_output_size(wd, kw, sw, 0, opw, dw)
        return (config["groups"], (sh, sw), (ph, pw), (dh, dw), (n, cin, h, wd), (cog, kh, kw),
                (fh, fw, fh - 2 * ph, fw - 2 * pw))

    @staticmethod
    def forward(x, params, config, need_backward):
        w, b = params["weight"], params.get("bias")
        (groups, (sh, sw), (ph, pw), (dh, dw), (n, cin, h, wd), (cog, kh, kw),
         (fh, fw, oh, ow)) = ConvTranspose2dNumpy._geometry(x.shape, w.shape, config)
        cig = cin // groups
        xg = x.reshape(n, groups, cig, h * wd).transpose(1, 0, 3, 2).reshape(groups, n * h * wd, cig)
        wmat = w.reshape(groups, cig, cog * kh * kw)
        cols = np.matmul(xg, wmat)  # (g, N*h*w, cog*kh*kw)
        full = _col2im(cols, (n, cog * groups, fh, fw), kh, kw, sh, sw, dh, dw, h, wd, groups)
        y = full[:, :, ph:ph + oh, pw:pw + ow]
        if b is not None:
            y = y + b.reshape(1, -1, 1, 1)
        y = np.ascontiguousarray(y, dtype=x.dtype)
        return y, ((x, w, b is not None, config) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        x, w, has_bias, config = ctx
        (groups, (sh, sw), (ph, pw), (dh, dw), (n, cin, h, wd), (cog, kh, kw),
         (fh, fw, oh, ow)) = ConvTranspose2dNumpy._geometry(x.shape, w.shape, config)
        dfull = np.zeros((n, dy.shape[1], fh, fw), dtype=dy.dtype)
        dfull[:, :, ph:ph + oh, pw:pw + ow] = dy
        dcols = _im2col(dfull, kh, kw, sh, sw, dh, dw, h, wd, groups)  # (g, N*h*w, cog*kh*kw)
        cig = cin // groups
        wmat = w.reshape(groups, cig, cog * kh * kw)
        dxg = np.matmul(dcols, wmat.transpose(0, 2, 1))  # (g, N*h*w, cig)
        dx = dxg.reshape(groups, n, h * wd, cig).transpose(1, 0, 3, 2).reshape(x.shape)
        xg = x.reshape(n, groups, cig, h * wd).transpose(1, 0, 2, 3)  # (g, N, cig, hw)
        xg = xg.transpose(0, 2, 1, 3).reshape(groups, cig, n * h * wd)
        dw_ = np.matmul(xg, dcols).reshape(w.shape)
        grads = {"weight": np.ascontiguousarray(dw_, dtype=w.dtype)}
        if has_bias:
            grads["bias"] = dy.sum(axis=(0, 2, 3)).astype(w.dtype, copy=False)
        return np.ascontiguousarray(dx, dtype=x.dtype), grads


# ---------------------------------------------------------------------------------------------
# the compiled kernels (cython)
# ---------------------------------------------------------------------------------------------
def _conv_plan(x_shape, w_shape, oh, ow, itemsize, direct, split_images):
    """(threads, rows per band, workspace shape) for one call.

    Forward (``split_images``) may cut images into bands of output rows so that a batch
    smaller than the thread count still keeps every thread busy; backward parallelises over
    whole images only (bands of one image overlap in the input gradient).
    """
    n, c = x_shape[:2]
    o, _, kh, kw = w_shape
    threads = max(1, get_num_threads())
    k = c * kh * kw
    if n * o * oh * ow * (k // max(c // w_shape[1], 1)) < SERIAL_MACS:
        threads = 1  # waking a thread team costs more than it saves on tiny convolutions
    rows = oh if direct else max(1, min(oh, (COL_WORKSPACE_BYTES // threads) // max(k * ow * itemsize, 1)))
    if split_images:
        if n < threads:
            per_image = -(-threads // max(n, 1))
            rows = max(1, min(rows, -(-oh // per_image)))
        threads = max(1, min(threads, n * -(-oh // rows)))
    else:
        threads = max(1, min(threads, n))
    return threads, rows, (threads, 1 if direct else k * rows * ow)


def _kept_columns(x_shape, w_shape, oh, ow, itemsize, direct):
    """A buffer for the columns of the whole batch when they fit ``COL_WORKSPACE_BYTES``, else
    None.  Kept from one kernel to the next, the columns are built once instead of twice (the
    weight gradient reads what the forward product read)."""
    if direct:
        return None
    n, c = x_shape[:2]
    k = c * w_shape[2] * w_shape[3]
    if n * k * oh * ow * itemsize > COL_WORKSPACE_BYTES:
        return None
    return (n, k, oh * ow)


def _kernel_weight_and_runs(w, config):
    """The weight the Cython kernels read (turned for ``flip_kernel``), the connection table's
    runs for the kernels to skip unconnected pairs, and the table as a mask when the plan is
    one dense product instead (the weight then zeroed on unconnected pairs here, whatever the
    parameter holds there, and the weight gradient zeroed there after)."""
    if config.get("flip_kernel"):
        w = w[:, :, ::-1, ::-1]
    table = config.get("connections")
    runs = mask = None
    if table is not None:
        runs, mask = _connection_runs(table, w.shape[2] * w.shape[3], RUN_PRODUCT_COST)
        if mask is not None:
            w = np.where(mask, w, w.dtype.type(0))
    return np.ascontiguousarray(w), runs, mask


class Conv2dCython:
    """2-D cross-correlation: im2col/col2im in Cython, one BLAS GEMM per group and image; with a
    connection table one product per output channel and run of connected input channels."""

    _kernels = _conv

    @staticmethod
    @checked_once
    def _check(x, w, b, config):
        if x.ndim != 4 or w.ndim != 4:
            raise ValueError(f"conv2d expects x (N, C, H, W) and weight (O, C/g, kh, kw), got {x.shape}, {w.shape}")
        groups = config_int(config["groups"], "groups", "conv2d")
        o, cg, kh, kw = w.shape
        if groups < 1 or o % groups or cg * groups != x.shape[1]:
            raise ValueError(f"conv2d: weight {w.shape} does not fit input {x.shape} with groups={groups}")
        if b is not None and b.shape != (o,):
            raise ValueError(f"conv2d: bias shape {b.shape}, expected ({o},)")
        if min(o, cg, kh, kw) < 1 or min(x.shape[2:]) < 1:
            raise ValueError(f"conv2d: empty weight {w.shape} or empty image planes in {x.shape}")
        sh, sw = config_ints(config, "stride", 2, "conv2d")
        top, bottom, left, right = config_ints(config, "padding", 4, "conv2d")
        dh, dw = config_ints(config, "dilation", 2, "conv2d")
        if (min(sh, sw, dh, dw) < 1 or min(top, bottom, left, right) < 0
                or max(sh, sw, dh, dw, top, bottom, left, right) > INT32_MAX):
            raise ValueError(f"conv2d: invalid config {config} (stride and dilation must lie in "
                             "[1, 2**31), padding in [0, 2**31))")
        oh = conv_output_size(x.shape[2], top, bottom, kh, sh, dh)
        ow = conv_output_size(x.shape[3], left, right, kw, sw, dw)
        if oh < 1 or ow < 1:
            raise ValueError(f"conv2d: input {x.shape} is smaller than the (dilated) kernel {w.shape}")
        if oh * ow > INT32_MAX or cg * kh * kw > INT32_MAX or x.shape[2] * x.shape[3] > INT32_MAX:
            raise ValueError("conv2d: matrix dimensions exceed the 32-bit BLAS interface")
        direct = (kh, kw, sh, sw, top, bottom, left, right) == (1, 1, 1, 1, 0, 0, 0, 0)
        return (sh, sw, top, left, dh, dw, groups), oh, ow, direct

    @classmethod
    def forward(cls, x, params, config, need_backward, *, fuse_relu=False):
        """``fuse_relu`` (for the executor's conv2d+relu fusion): return relu(conv2d(x))."""
        x = contiguous(x)
        w, b = weight_and_bias(params, x.dtype)
        geom, oh, ow, direct = Conv2dCython._check(x, w, b, config)
        w, runs, mask = _kernel_weight_and_runs(w, config)
        y = np.empty((x.shape[0], w.shape[0], oh, ow), dtype=x.dtype)
        threads, rows, ws_shape = _conv_plan(x.shape, w.shape, oh, ow, x.itemsize, direct, True)
        kept = _kept_columns(x.shape, w.shape, oh, ow, x.itemsize, direct) if need_backward else None
        cols = None if kept is None else np.empty(kept, dtype=x.dtype)
        ws = workspace((threads, 1) if cols is not None else ws_shape, x.dtype)
        with single_threaded_blas():
            cls._kernels.conv2d_forward(x, w, b, y, ws, *geom, rows, threads, cols,
                                        bool(fuse_relu), runs)
        ctx = ((x, w, b is not None, geom, oh, ow, direct, cols, rows, runs, mask,
                bool(config.get("flip_kernel"))) if need_backward else None)
        return y, ctx

    @classmethod
    def backward(cls, dy, ctx, need_input_grad=True):
        x, w, has_bias, geom, oh, ow, direct, cols, fwd_rows, runs, mask, flipped = ctx
        n, o = x.shape[0], w.shape[0]
        dy = grad_like(dy, x.dtype, (n, o, oh, ow), "conv2d")
        threads, rows, ws_shape = _conv_plan(x.shape, w.shape, oh, ow, x.itemsize, direct, False)
        if cols is not None:
            # the kept columns are laid out by the forward pass's bands
            rows = fwd_rows
            ws_shape = (threads, cols.shape[1] * rows * ow if need_input_grad else 1)
        ws = workspace(ws_shape, x.dtype)
        dx = np.empty_like(x) if need_input_grad else None
        dw_part = np.zeros((threads, o, w[0].size), dtype=x.dtype)
        db_part = np.zeros((threads, o), dtype=x.dtype) if has_bias else None
        with single_threaded_blas():
            cls._kernels.conv2d_backward(x, w, dy, dx, dw_part, db_part, ws, *geom, rows,
                                         threads, bool(need_input_grad), cols, runs)
        dw_ = (dw_part[0] if threads == 1 else dw_part.sum(axis=0)).reshape(w.shape)
        if mask is not None:
            dw_ = np.where(mask, dw_, dw_.dtype.type(0))
        grads = {"weight": np.ascontiguousarray(dw_[:, :, ::-1, ::-1]) if flipped else dw_}
        if has_bias:
            grads["bias"] = db_part[0] if threads == 1 else db_part.sum(axis=0)
        return dx, grads


def direct_refusal(config, dtype=None):
    """Why the direct variants cannot serve ``config`` (None if they can): they compute stride
    1, dilation 1 and groups 1, with any padding."""
    problems = []
    ks = config.get("kernel_size")
    if ks is None:
        problems.append("a configuration without kernel_size")
    for key in ("stride", "dilation"):
        value = config.get(key, (1, 1))
        if tuple(value) != (1, 1):
            problems.append(f"{key} {tuple(value)}")
    if config.get("groups", 1) != 1:
        problems.append(f"groups={config['groups']}")
    if isinstance(config.get("padding"), str) and config["padding"] != "valid":
        problems.append(f"padding {config['padding']!r} unresolved")
    if problems:
        return f"the direct kernels compute stride 1, dilation 1, groups 1, not {', '.join(problems)}"
    return None


#: Automatic selection picks a direct variant only up to this many multiply-adds per output
#: value (input channels x kernel area): above it, BLAS's GEMM amortises its packing and the
#: register-blocked loop has no edge left.
DIRECT_AUTO_MAX_TAPS = 512


def direct_auto_refusal(config, dtype=None):
    """Why automatic selection should not pick a direct variant for ``config``, or None."""
    channels, ks = config.get("channels"), config.get("kernel_size")
    if channels is None or ks is None:
        return "a configuration without channels or kernel_size"
    taps = channels[0] * ks[0] * ks[1]
    if taps > DIRECT_AUTO_MAX_TAPS:
        return (f"slower than im2col + GEMM above {DIRECT_AUTO_MAX_TAPS} input channels x "
                f"kernel taps (has {taps})")
    return None


#: What the direct variants serve of Conv2D's features (stride 1, dilation 1, groups 1 only)
DIRECT_FEATURES = ("padding", "asymmetric_padding", "bias", "connections", "flip_kernel")


def _direct_weights(w):
    """(O, C, kh, kw) -> the kernels' (C*kh*kw, O4) layout, zero columns up to 4 | O4."""
    o = w.shape[0]
    wt = np.zeros((w[0].size, -(-o // 4) * 4), dtype=w.dtype)
    wt[:, :o] = w.reshape(o, -1).T
    return wt


def _image_threads(n, macs):
    """Threads for a kernel that splits whole images: one below ``SERIAL_MACS`` multiply-adds,
    else the team, at most one per image."""
    return 1 if macs < SERIAL_MACS else max(1, min(get_num_threads(), n))


class Conv2dDirect:
    """Stride-1 cross-correlation without im2col or GEMM: register-blocked loops over every tap
    (``cnnkit._ext.conv``'s direct kernels): forward, weight gradient, and the input gradient as
    the forward loop transposed (each output gradient block added into every tap's place of the
    padded input), all on the padded-width grid."""

    _kernels = _conv

    @classmethod
    def unavailable(cls):
        """Why this build cannot run the direct kernels (a compiler without vector
        extensions), or None."""
        if cls._kernels.direct_available():
            return None
        return "not built: the compiler has no vector extensions for the direct kernels"

    @classmethod
    def _geometry(cls, x, w, b, config):
        if not cls._kernels.direct_available():
            raise RuntimeError("conv2d (direct): this build has no direct kernels")
        (sh, sw, top, left, dh, dw, groups), oh, ow, _ = Conv2dCython._check(x, w, b, config)
        kh, kw = w.shape[2:]
        bottom = oh + kh - 1 - x.shape[2] - top
        right = ow + kw - 1 - x.shape[3] - left
        if (sh, sw, dh, dw, groups) != (1, 1, 1, 1, 1):
            raise ValueError("conv2d (direct): " + (direct_refusal(
                dict(config, kernel_size=(kh, kw))) or "unsupported configuration"))
        return top, left, bottom, right, oh, ow

    @classmethod
    def forward(cls, x, params, config, need_backward, *, fuse_relu=False, relu_pool2=False):
        """``fuse_relu``: relu(conv2d(x)) (the executor's conv2d+relu fusion); ``relu_pool2``:
        max_pool2d(relu(conv2d(x)), 2) in one pass, the convolution's output never stored (the
        fused chain conv2d+relu+maxpool2d, ``builtin/fusions.py``)."""
        x = contiguous(x)
        w, b = weight_and_bias(params, x.dtype)
        top, left, bottom, right, oh, ow = cls._geometry(x, w, b, config)
        if relu_pool2 and (oh < 2 or ow < 2):
            raise ValueError(f"conv2d+relu+maxpool2d: the convolution's output {(oh, ow)} is "
                             "smaller than the 2x2 pooling window")
        w = np.ascontiguousarray(_effective_weight(w, config))
        n, c = x.shape[:2]
        o, _, kh, kw = w.shape
        threads = _image_threads(n, n * o * oh * ow * w[0].size)
        size = cls._kernels.direct_layout(c, o, oh, ow, kh, kw, x.itemsize)[2]
        ws = workspace((threads, size), x.dtype)
        ctx = (x, w, b is not None, (top, left, bottom, right), oh, ow, config)
        if relu_pool2:
            y = np.empty((n, o, oh // 2, ow // 2), dtype=x.dtype)
            argmax = np.empty(y.shape, dtype=np.uint8) if need_backward else None
            cls._kernels.conv2d_direct_forward(x, _direct_weights(w), b, y, ws, top, left, kh,
                                               kw, threads, relu_pool2=True, argmax=argmax,
                                               conv_oh=oh, conv_ow=ow)
            ctx = (ctx, y, argmax)
        else:
            y = np.empty((n, o, oh, ow), dtype=x.dtype)
            cls._kernels.conv2d_direct_forward(x, _direct_weights(w), b, y, ws, top, left, kh,
                                               kw, threads, bool(fuse_relu))
        return y, (ctx if need_backward else None)

    @classmethod
    def backward_relu_pool2(cls, dy, ctx, need_input_grad=True):
        conv_ctx, y, argmax = ctx
        dy = grad_like(dy, y.dtype, y.shape, "conv2d+relu+maxpool2d")
        return cls.backward(dy, conv_ctx, need_input_grad, pooled=(y, argmax))

    @classmethod
    def backward(cls, dy, ctx, need_input_grad=True, pooled=None):
        x, w, has_bias, (top, left, bottom, right), oh, ow, config = ctx
        n, c = x.shape[:2]
        o, _, kh, kw = w.shape
        if pooled is not None:
            # the fused chain's gradient, routed to the convolution's output: a dense array
            # only on the slow path below
            y, argmax = pooled
            db = np.empty(o, dtype=x.dtype) if has_bias else None
            pool_args = (y, argmax, oh, ow, np.empty((n, o), dtype=x.dtype) if has_bias else None,
                         db)
        else:
            dy = grad_like(dy, x.dtype, (n, o, oh, ow), "conv2d")
            pool_args = ()
        if not np.isfinite(x).all():
            if pooled is not None:
                dy = _unpool_relu(dy, y, argmax, (n, o, oh, ow))
            # the weight-gradient loop multiplies the dropped grid columns by zero, which turns
            # an inf or NaN of the input into NaN where the reference has none
            geom = (1, 1, top, left, 1, 1, 1)
            one_by_one = (kh, kw, top, bottom, left, right) == (1, 1, 0, 0, 0, 0)
            dx, grads = Conv2dCython.backward(dy, (x, w, has_bias, geom, oh, ow, one_by_one, None,
                                                   oh, None, None, False), need_input_grad)
            grads["weight"] = _stored_weight_grad(grads["weight"], config)
            return dx, grads
        threads = _image_threads(n, n * o * oh * ow * w[0].size)
        size = cls._kernels.direct_backward_size(c, o, oh, ow, kh, kw, x.itemsize,
                                                 need_input_grad)
        ws = workspace((threads, size), x.dtype)
        dw_part = np.zeros((threads, w[0].size, -(-o // 4) * 4), dtype=x.dtype)
        dx = np.empty_like(x) if need_input_grad else None
        cls._kernels.conv2d_direct_backward(x, dy, _direct_weights(w), dx, dw_part, ws, top,
                                            left, kh, kw, threads, *pool_args)
        dwt = dw_part[0] if threads == 1 else dw_part.sum(axis=0)
        grads = {"weight": _stored_weight_grad(
            np.ascontiguousarray(dwt[:, :o].T).reshape(w.shape), config)}
        if has_bias:  # (the fused chain's kernel summed it into db)
            grads["bias"] = _bias_grad(cls._kernels, dy, x.dtype) if pooled is None else db
        return dx, grads


def _bias_grad(kernels, dy, dtype):
    """The bias gradient: dy summed per channel by ``kernels.channel_sums`` (a quarter of
    NumPy's ``dy.sum(axis=(0, 2, 3))`` time on 2 threads)."""
    db = np.empty(dy.shape[1], dtype=dtype)
    kernels.channel_sums(dy, db, 1 if dy.size < SERIAL_MACS else max(1, get_num_threads()))
    return db


def _gather(w, index):
    """w's values at ``index`` into its flattening, where index w.size stands for a zero: the
    packed weights below in one gather."""
    flat = np.empty(w.size + 1, dtype=w.dtype)
    flat[:-1] = w.reshape(-1)
    flat[-1] = 0
    return flat.take(index)


@functools.lru_cache(maxsize=64)
def _packed_index(c, k, mr):
    """Where the packed weight (ceil(C/mr), ceil(K/mr)*mr, mr) of the packed backward takes
    each value from w viewed as (C, K): block b, row r, lane l is w[b*mr + l, r], zero past
    C and K."""
    kp = -(-k // mr) * mr
    rows = np.arange(-(-c // mr) * mr).reshape(-1, 1, mr)
    cols = np.arange(kp).reshape(1, kp, 1)
    index = np.where((rows < c) & (cols < k), rows * k + cols, c * k).ravel()
    index.flags.writeable = False
    return index


@functools.lru_cache(maxsize=64)
def _phase_plan(c, cout, kh, kw, sh, sw, ph, pw, h, wd, oh, ow, mr, vector, max_copies):
    """The phase table of ``conv_transpose2d_forward_phases``, the index (for :func:`_gather`)
    of its packed phase weights in w (C, Cout, kh, kw), and the layout of the image's copies
    (top, left, hp, pitch, copies): one copy per column shift, rows of a whole number of
    ``vector`` values, where that takes at most ``max_copies`` copies, else one padded copy
    whose rows are read at every shift."""
    rows, cols = _phase_axis(kh, sh, ph, oh), _phase_axis(kw, sw, pw, ow)
    top = max(len(t) for _, t, _, _ in rows) - 1
    left = max(len(t) for _, t, _, _ in cols) - 1
    hp = max(top + h, max(m0 + nm for _, _, m0, nm in rows) + top)
    copies = max(m0 + left for _, t, m0, nm in cols if t and nm) + 1 if any(
        t and nm for _, t, _, nm in cols) else 1
    if copies <= max_copies:
        pitch = -(-max(nm for _, _, _, nm in cols) // vector) * vector
    else:
        copies = 1
        pitch = max(left + wd, max(m0 + nm for _, _, m0, nm in cols) + left)
    flat = np.arange(c * cout * kh * kw).reshape(c, cout, kh, kw)
    table, blocks, offset = [], [], 0
    for rh, taps_h, mh0, nmh in rows:
        for rw, taps_w, mw0, nmw in cols:
            kk = c * len(taps_h) * len(taps_w)
            table.append((len(taps_h), len(taps_w), kk, offset, mh0, nmh, mw0, nmw,
                          mh0 * sh + rh - ph, mw0 * sw + rw - pw))
            if kk:
                # (Cout, C*th*tw) with the taps turned, packed (ceil(Cout/mr), kk, mr)
                a = np.full((-(-cout // mr) * mr, kk), flat.size)
                a[:cout] = flat[:, :, taps_h[::-1]][:, :, :, taps_w[::-1]].transpose(
                    1, 0, 2, 3).reshape(cout, kk)
                blocks.append(a.reshape(-1, mr, kk).transpose(0, 2, 1).ravel())
                offset += blocks[-1].size
    index = np.concatenate(blocks) if blocks else np.full(1, flat.size)
    table = np.array(table, dtype=np.int64)
    index.flags.writeable = table.flags.writeable = False
    return table, index, top, left, hp, pitch, copies


def _phase_axis(k, s, p, out):
    """The phases of one axis of a transposed convolution (dilation 1): for each r < s, the
    taps k' = r, r + s, ... that reach the outputs o with (o + p) mod s = r, and those outputs
    as o = m*s + r - p for m in [m0, m0 + count)."""
    phases = []
    for r in range(s):
        m0 = -(-(p - r) // s)
        count = max(0, (out - 1 + p - r) // s - m0 + 1)
        phases.append((r, list(range(r, k, s)), m0, count))
    return phases


def _unpool_relu(dy, y, argmax, shape):
    """The gradient of the convolution's output from that of max_pool2d(relu(.), 2): each
    window's gradient at its maximum's place where the pooled value is > 0, zeros elsewhere."""
    full = np.zeros(shape, dtype=dy.dtype)
    n, o, oh2, ow2 = dy.shape
    passed = np.where(y > 0, dy, 0)
    for at in range(4):
        i, j = divmod(at, 2)
        view = full[:, :, i:2 * oh2:2, j:2 * ow2:2]
        np.copyto(view, passed, where=(argmax == at))
    return full


class ConvTranspose2dCython:
    """Transposed convolution.  Forward: per image and group one GEMM ``W_g^T @ x_g`` and a
    scatter into the output (``cnnkit._ext.conv``).  Backward reuses the convolution kernels:
    the input gradient *is* ``conv2d(dy, W)`` with the same stride/padding/dilation/groups, and
    the weight gradient is the convolution weight gradient with the roles of x and dy swapped."""

    _kernels = _conv

    @staticmethod
    def _check(x, w, b, config):
        if x.ndim != 4 or w.ndim != 4:
            raise ValueError(f"convtranspose2d expects x (N, C, H, W) and weight (C, O/g, kh, kw), "
                             f"got {x.shape}, {w.shape}")
        groups = config_int(config["groups"], "groups", "convtranspose2d")
        cin, cog, kh, kw = w.shape
        if groups < 1 or cin != x.shape[1] or cin % groups:
            raise ValueError(f"convtranspose2d: weight {w.shape} does not fit input {x.shape} "
                             f"with groups={groups}")
        if b is not None and b.shape != (cog * groups,):
            raise ValueError(f"convtranspose2d: bias shape {b.shape}, expected ({cog * groups},)")
        if min(cin, cog, kh, kw) < 1 or min(x.shape[2:]) < 1:
            raise ValueError(f"convtranspose2d: empty weight {w.shape} or empty image planes in "
                             f"{x.shape}")
        sh, sw = config_ints(config, "stride", 2, "convtranspose2d")
        ph, pw = config_ints(config, "padding", 2, "convtranspose2d")
        oph, opw = config_ints(config, "output_padding", 2, "convtranspose2d")
        dh, dw = config_ints(config, "dilation", 2, "convtranspose2d")
        if (min(sh, sw, dh, dw) < 1 or min(ph, pw, oph, opw) < 0
                or max(sh, sw, dh, dw, ph, pw, oph, opw) > INT32_MAX):
            raise ValueError(f"convtranspose2d: invalid config {config} (stride and dilation must "
                             "lie in [1, 2**31), padding in [0, 2**31))")
        h, wd = x.shape[2:]
        oh = conv_transpose_output_size(h, kh, sh, ph, oph, dh)
        ow = conv_transpose_output_size(wd, kw, sw, pw, opw, dw)
        if oh < 1 or ow < 1:
            raise ValueError(f"convtranspose2d: padding {config['padding']} leaves no output for "
                             f"input {x.shape}")
        if oh * ow > INT32_MAX or h * wd > INT32_MAX or cog * kh * kw > INT32_MAX:
            raise ValueError("convtranspose2d: matrix dimensions exceed the 32-bit BLAS interface")
        direct = (kh, kw, sh, sw, ph, pw, oh, ow) == (1, 1, 1, 1, 0, 0, h, wd)
        return (sh, sw, ph, pw, dh, dw, groups), oh, ow, direct

    @classmethod
    def forward(cls, x, params, config, need_backward):
        x = contiguous(x)
        w, b = weight_and_bias(params, x.dtype)
        geom, oh, ow, direct = ConvTranspose2dCython._check(x, w, b, config)
        n, cin, h, wd = x.shape
        cout = w.shape[1] * geom[-1]
        k = cout * w.shape[2] * w.shape[3]
        threads = _image_threads(n, n * cin * h * wd * k)
        y = np.empty((n, cout, oh, ow), dtype=x.dtype)
        if (geom[-1] == 1 and geom[4:6] == (1, 1) and PACKED_KERNELS
                and cout >= PHASES_MIN_OUT_CHANNELS and h * wd >= PACKED_MIN_POSITIONS
                and cls._kernels.packed_available()):
            cls._phases_forward(x, w, b, y, geom, threads)
        else:
            rows = max(1, min(h, (COL_WORKSPACE_BYTES // threads) // max(k * wd * x.itemsize, 1)))
            ws = workspace((threads, k * rows * wd), x.dtype)
            with single_threaded_blas():
                cls._kernels.conv_transpose2d_forward(x, w, b, y, ws, *geom, rows, threads)
        return y, ((x, w, b is not None, geom, oh, ow, direct) if need_backward else None)

    @classmethod
    def _phases_forward(cls, x, w, b, y, geom, threads):
        """y = conv_transpose2d(x, w) + b (groups 1, dilation 1) phase by phase:
        ``conv_transpose2d_forward_phases`` writes each output once from a product that reads
        the padded image in place."""
        sh, sw, ph, pw = geom[:4]
        n, c, h, wd = x.shape
        cout, kh, kw = w.shape[1:]
        oh, ow = y.shape[2:]
        mr = cls._kernels.phases_rows(cout)
        vector = cls._kernels.packed_layout(x.itemsize)[1] // 2  # values per vector
        nr = vector * (3 if mr == 4 else 2)  # positions per register block
        table, index, top, left, hp, pitch, copies = _phase_plan(
            c, cout, kh, kw, sh, sw, ph, pw, h, wd, oh, ow, mr, vector, PHASES_MAX_COPIES)
        wph = _gather(w, index)
        band = nr * max(1, min(-(-(hp * pitch) // nr),
                               PHASES_BAND_BYTES // (x.itemsize * nr * cout)))
        ws = workspace((threads, cls._kernels.phases_size(c, cout, hp, pitch, copies, band,
                                                          x.itemsize)), x.dtype)
        cls._kernels.conv_transpose2d_forward_phases(x, wph, table, b, y, ws, sh, sw, top, left,
                                                     hp, pitch, copies, band, threads)

    @classmethod
    def backward(cls, dy, ctx, need_input_grad=True):
        x, w, has_bias, geom, oh, ow, direct = ctx
        n, cin, h, wd = x.shape
        dy = grad_like(dy, x.dtype, (n, w.shape[1] * geom[-1], oh, ow), "convtranspose2d")
        sh, sw, ph, pw, dh, dw, groups = geom
        if (groups == 1 and PACKED_KERNELS and cls._kernels.packed_available()
                and (h * wd >= PACKED_MIN_POSITIONS
                     or cin * w[0].size * x.itemsize <= PACKED_MAX_DW_BYTES)):
            dx, grads = cls._packed_backward(x, w, dy, geom, need_input_grad)
            if has_bias:
                grads["bias"] = _bias_grad(cls._kernels, dy, x.dtype)
            return dx, grads
        conv_geom = (sh, sw, ph, pw, dh, dw, groups)  # the convolution dy -> x
        dx = cols = None
        with single_threaded_blas():
            if need_input_grad:
                threads, rows, ws_shape = _conv_plan(dy.shape, w.shape, h, wd, x.itemsize,
                                                     direct, True)
                # the columns of dy serve both products: dx here, the weight gradient below
                kept = _kept_columns(dy.shape, w.shape, h, wd, x.itemsize, direct)
                cols = None if kept is None else np.empty(kept, dtype=x.dtype)
                fwd_rows = rows
                dx = np.empty_like(x)
                cls._kernels.conv2d_forward(dy, w, None, dx,
                                            workspace((threads, 1) if cols is not None
                                                      else ws_shape, x.dtype),
                                            *conv_geom, rows, threads, cols)
            threads, rows, ws_shape = _conv_plan(dy.shape, w.shape, h, wd, x.itemsize, direct,
                                                 False)
            if cols is not None:
                rows, ws_shape = fwd_rows, (threads, 1)
            dw_part = np.zeros((threads, cin, w[0].size), dtype=x.dtype)
            cls._kernels.conv2d_backward(dy, w, x, None, dw_part, None,
                                         workspace(ws_shape, x.dtype), *conv_geom, rows,
                                         threads, False, cols)
        grads = {"weight": (dw_part[0] if threads == 1 else dw_part.sum(axis=0)).reshape(w.shape)}
        if has_bias:
            grads["bias"] = _bias_grad(cls._kernels, dy, x.dtype)
        return dx, grads

    @classmethod
    def _packed_backward(cls, x, w, dy, geom, need_input_grad):
        """Input and weight gradient (groups 1) by ``conv_transpose2d_backward``: the columns
        of dy built once per band, in the layout its register blocks read."""
        sh, sw, ph, pw, dh, dw, _ = geom
        n, c, h, wd = x.shape
        mr, nr = cls._kernels.packed_layout(x.itemsize)
        k = w[0].size
        kp = -(-k // mr) * mr
        wpk = _gather(w, _packed_index(c, k, mr)).reshape(-1, kp, mr)
        qwidth = -(-c // nr) * nr
        panels = -(-(h * wd) // nr)
        band = max(1, min(panels, PACKED_BAND_BYTES // (x.itemsize * nr * (kp + qwidth))))
        threads = _image_threads(n, n * c * h * wd * k)
        cout, kh, kw = w.shape[1:]
        oh, ow = dy.shape[2:]
        hq, wq = h + (kh - 1) * dh // sh, wd + (kw - 1) * dw // sw  # dy's phase planes
        ws = workspace((threads, cls._kernels.packed_backward_size(
            c, kp, band, sh * sw * cout * hq * wq, x.itemsize)), x.dtype)
        dwt = np.zeros((threads, kp, qwidth), dtype=x.dtype)
        dx = np.empty_like(x) if need_input_grad else None
        cls._kernels.conv_transpose2d_backward(x, wpk, dy, dx, dwt, ws, kh, kw, sh, sw, ph, pw,
                                               dh, dw, hq, wq, band, threads)
        dwt = dwt[0] if threads == 1 else dwt.sum(axis=0)
        return dx, {"weight": np.ascontiguousarray(dwt[:k, :c].T).reshape(w.shape)}


# ---------------------------------------------------------------------------------------------
# Winograd F(4x4, 3x3) (cython): 3x3, stride 1, dilation 1, groups 1
# ---------------------------------------------------------------------------------------------
#: Bound on max|y - y_ref| / max|y_ref| of the Winograd variant in float32 (forward, input and
#: weight gradient) against the float64 reference of the same float32-rounded inputs.  Measured
#: up to 1.4e-5 over the fuzz suite's shapes and layers of 64 to 2048 channels (normal and
#: uniform data), so the bound keeps a 3x margin; im2col + GEMM stays under 5e-7 there.  The
#: transforms amplify rounding (entries of B^T and A^T up to 5 and 8).  float64: ~1e-14.
WINOGRAD_FLOAT32_BOUND = 5e-5

#: Tiles per block: the block's transformed input and products (36 * (C + O) * tiles values
#: per thread) stay cache-sized, and each of the 36 GEMMs still has a long dimension.
WINOGRAD_BLOCK_TILES = 256

_WINO_ONLY = "3x3 kernels with stride 1, dilation 1 and groups 1"

#: Automatic selection picks Winograd only when input and output channels both reach this: the
#: tile transforms cost per channel what the GEMMs cost per channel pair, so with few channels
#: im2col wins (3 -> 16 channels: about 2.4x slower than "cython"; 16 -> 16: about 0.65x).
WINOGRAD_AUTO_MIN_CHANNELS = 16


def winograd_refusal(config, dtype=None):
    """Why the Winograd variant cannot serve ``config`` (None if it can): it computes only
    3x3 kernels with stride 1, dilation 1 and groups 1.  ``dtype`` is there for the
    ``supports`` protocol; the dtypes are declared at registration."""
    problems = []
    ks = config.get("kernel_size")
    if ks is None:  # a configuration from elsewhere than Conv2D: never guess the kernel
        problems.append("a configuration without kernel_size")
    elif tuple(ks) != (3, 3):
        problems.append(f"kernel {ks[0]}x{ks[1]}")
    for key, label in (("stride", "stride"), ("dilation", "dilation")):
        value = config.get(key, (1, 1))
        if tuple(value) != (1, 1):
            problems.append(f"{label} {tuple(value)}")
    if config.get("groups", 1) != 1:
        problems.append(f"groups={config['groups']}")
    if problems:
        return f"Winograd F(4x4,3x3) computes only {_WINO_ONLY}, not {', '.join(problems)}"
    return None


def winograd_auto_refusal(config, dtype=None):
    """Why automatic selection should not pick Winograd for ``config`` (slower), or None."""
    channels = config.get("channels")
    if channels is not None and min(channels) < WINOGRAD_AUTO_MIN_CHANNELS:
        return (f"slower than im2col below {WINOGRAD_AUTO_MIN_CHANNELS} input or output "
                f"channels (has {channels[0]} -> {channels[1]})")
    return None


def _winograd_plan(n_tiles, per_image, c, o, itemsize, split_images):
    """(threads, tiles per block) for one call: blocks within the workspace bound and the block
    size; forward splits blocks over the team, backward whole images."""
    threads = max(1, get_num_threads())
    if n_tiles * 36 * c * o < SERIAL_MACS:
        threads = 1
    if split_images:
        threads = max(1, min(threads, n_tiles // per_image))
    per_thread = COL_WORKSPACE_BYTES // threads // (36 * (c + o) * itemsize)
    block = max(1, min(WINOGRAD_BLOCK_TILES, per_thread))
    if not split_images:
        block = max(1, min(block, -(-n_tiles // threads)))
        threads = max(1, min(threads, -(-n_tiles // block)))
    return threads, block


class Conv2dWinograd:
    """3x3 stride-1 cross-correlation by Winograd F(4x4, 3x3) (``cnnkit._ext.winograd``): per
    4x4 output tile, ``y = A^T [(G g G^T) * (B^T d B)] A``, the elementwise products summed over
    channels as 36 GEMMs (one per tile position) over blocks of tiles; the input and weight
    gradients through the transposed transforms.  About 4x fewer multiply-adds than im2col,
    at the price of a larger float32 rounding error (:data:`WINOGRAD_FLOAT32_BOUND` of the
    output scale; float64 stays near 1e-14)."""

    _kernels = _winograd

    @staticmethod
    def _check(x, w, b, config):
        geom, oh, ow, _ = Conv2dCython._check(x, w, b, config)
        reason = winograd_refusal(dict(config, kernel_size=w.shape[2:]))
        if reason:
            raise ValueError(f"conv2d (winograd): {reason}")
        return geom[2], geom[3], oh, ow

    @classmethod
    def forward(cls, x, params, config, need_backward):
        x = contiguous(x)
        w, b = weight_and_bias(params, x.dtype)
        pt, pl, oh, ow = Conv2dWinograd._check(x, w, b, config)
        n, c = x.shape[:2]
        o = w.shape[0]
        u = np.empty((36, o, c), dtype=x.dtype)
        cls._kernels.filter_transform(w, u)
        y = np.empty((n, o, oh, ow), dtype=x.dtype)
        per_image = -(-oh // 4) * -(-ow // 4)
        threads, block = _winograd_plan(n * per_image, per_image, c, o, x.itemsize, False)
        ws = workspace((threads, cls._kernels.workspace_size(c, o, block)), x.dtype)
        with single_threaded_blas():
            cls._kernels.winograd_forward(x, u, b, y, ws, pt, pl, block, threads)
        ctx = (x, u, w.shape, b is not None, pt, pl, oh, ow) if need_backward else None
        return y, ctx

    @classmethod
    def backward(cls, dy, ctx, need_input_grad=True):
        x, u, w_shape, has_bias, pt, pl, oh, ow = ctx
        n, c = x.shape[:2]
        o = w_shape[0]
        dy = grad_like(dy, x.dtype, (n, o, oh, ow), "conv2d")
        per_image = -(-oh // 4) * -(-ow // 4)
        threads, block = _winograd_plan(n * per_image, per_image, c, o, x.itemsize, True)
        ws = workspace((threads, cls._kernels.workspace_size(c, o, block)), x.dtype)
        dx = np.empty_like(x) if need_input_grad else None
        du_part = np.zeros((threads, 36, o, c), dtype=x.dtype)
        with single_threaded_blas():
            cls._kernels.winograd_backward(x, u, dy, dx, du_part, ws, pt, pl, block, threads,
                                        bool(need_input_grad))
        dw = np.empty(w_shape, dtype=x.dtype)
        cls._kernels.filter_gradient(du_part[0] if threads == 1 else du_part.sum(axis=0), dw)
        grads = {"weight": dw}
        if has_bias:
            grads["bias"] = _bias_grad(_conv, dy, x.dtype)
        return dx, grads


# ---------------------------------------------------------------------------------------------
# registration: written out per family as a third-party plugin writes it (the blocks of
# the families look alike on purpose; a shared helper would hide the plugin API they show)
# ---------------------------------------------------------------------------------------------
@hookimpl
def cnnkit_register_layers(register):
    register("conv2d", Conv2D)
    register("convtranspose2d", ConvTranspose2D)


@hookimpl
def cnnkit_register_variants(register):
    dtypes = ("float32", "float64")
    register("conv2d", "numpy", Conv2dNumpy, priority=0, dtypes=dtypes,
             capabilities=Conv2D.FEATURES,
             description="NumPy im2col (sliding_window_view) + matmul; the reference")
    register("conv2d", "cython", Conv2dCython, priority=100, dtypes=dtypes,
             capabilities=Conv2D.FEATURES,
             description="Cython im2col/col2im, BLAS GEMM per image and group, OpenMP over images")
    register("convtranspose2d", "numpy", ConvTranspose2dNumpy, priority=0, dtypes=dtypes,
             capabilities=ConvTranspose2D.FEATURES,
             description="NumPy matmul + col2im (forward), im2col + matmul (backward)")
    register("convtranspose2d", "cython", ConvTranspose2dCython, priority=100, dtypes=dtypes,
             capabilities=ConvTranspose2D.FEATURES,
             description="Cython GEMM + scatter forward; backward through the conv2d kernels "
                         "(the AVX2/AVX-512 builds: packed products, see their description)")
    winograd = dict(dtypes=dtypes, auto_dtypes=("float32",), auto_supports=winograd_auto_refusal,
                    tolerance={"float32": WINOGRAD_FLOAT32_BOUND},
                    capabilities=("padding", "bias"), supports=winograd_refusal)
    register("conv2d", "winograd", Conv2dWinograd, priority=WINOGRAD_PRIORITY[None], **winograd,
             description="Winograd F(4x4,3x3): tile transforms + 36 BLAS GEMMs; 3x3/s1/d1/g1 "
                         f"only; float32 error <= {WINOGRAD_FLOAT32_BOUND:g} of the output scale")
    register("conv2d", "direct", Conv2dDirect, priority=DIRECT_PRIORITY[None], dtypes=dtypes,
             capabilities=DIRECT_FEATURES, supports=direct_refusal,
             auto_supports=direct_auto_refusal,
             description="register-blocked direct loops, no im2col/GEMM; stride 1, groups 1")
    # the same kernels compiled per instruction set; refused on a CPU without the features
    for isa, cpu in ISA_FEATURES.items():
        register("conv2d", f"direct-{isa}", isa_build(Conv2dDirect, "conv", isa),
                 priority=DIRECT_PRIORITY[isa], dtypes=dtypes,
                 capabilities=DIRECT_FEATURES,
                 supports=direct_refusal, auto_supports=direct_auto_refusal, cpu_features=cpu,
                 description=f"as direct, compiled for {', '.join(cpu)}")
        register("conv2d", f"winograd-{isa}", isa_build(Conv2dWinograd, "winograd", isa),
                 priority=WINOGRAD_PRIORITY[isa], cpu_features=cpu, **winograd,
                 description=f"as winograd (its tile transforms) compiled for {', '.join(cpu)}")
        register("conv2d", f"cython-{isa}", isa_build(Conv2dCython, "conv", isa),
                 priority=ISA_PRIORITY[isa], dtypes=dtypes, capabilities=Conv2D.FEATURES,
                 cpu_features=cpu, description=f"as cython, compiled for {', '.join(cpu)}")
        register("convtranspose2d", f"cython-{isa}", isa_build(ConvTranspose2dCython, "conv", isa),
                 priority=CONVT_ISA_PRIORITY[isa], dtypes=dtypes,
                 capabilities=ConvTranspose2D.FEATURES, cpu_features=cpu,
                 description="register-blocked packed products (groups 1): forward phase by "
                             "phase (dilation 1), backward on dy's columns built once; "
                             f"compiled for {', '.join(cpu)}")


# ---------------------------------------------------------------------------------------------
# ONNX export (cnnkit.onnx.export): Conv and ConvTranspose, the weights in PyTorch's layout
# as ONNX wants them
# ---------------------------------------------------------------------------------------------
def _onnx_conv_weight(ctx, layer):
    """Conv2D's weight as ONNX's Conv computes it: a connection table (when the layer has one)
    zeroes the unconnected (output, input) pairs, and ``flip_kernel`` (true convolution) turns
    the kernel 180 degrees, since Conv is a cross-correlation."""
    connections = getattr(layer, "connections", None)
    flip = bool(getattr(layer, "flip_kernel", False))
    if connections is None and not flip:
        return ctx.param(layer, "weight")
    w = np.array(layer.params["weight"], dtype=np.float64)
    if connections is not None:
        table = np.asarray(connections, dtype=bool)
        out_c, cin_g = w.shape[:2]
        if table.shape != (out_c, cin_g):  # a full (out, in) table of a grouped convolution
            groups = layer.in_channels // cin_g
            rows = np.arange(out_c)[:, None]
            table = table[rows, (rows // (out_c // groups)) * cin_g + np.arange(cin_g)]
        w = w * table[:, :, None, None]
    if flip:
        w = w[:, :, ::-1, ::-1]
    return ctx.constant(w, "weight_" + "_".join(
        n for n, on in (("masked", connections is not None), ("flipped", flip)) if on))


def _onnx_bias(ctx, layer):
    return [ctx.param(layer, "bias")] if layer.params.get("bias") is not None else []


def export_conv2d_onnx(ctx, layer, inputs, input_shapes):
    config = layer.resolve(input_shapes[0])
    top, bottom, left, right = config["padding"]
    return ctx.node("Conv", [inputs[0], _onnx_conv_weight(ctx, layer)] + _onnx_bias(ctx, layer),
                    kernel_shape=layer.kernel_size, strides=config["stride"],
                    pads=[top, left, bottom, right], dilations=config["dilation"],
                    group=config["groups"])


def export_convtranspose2d_onnx(ctx, layer, inputs, input_shapes):
    config = layer.resolve(input_shapes[0])
    ph, pw = config["padding"]
    return ctx.node("ConvTranspose",
                    [inputs[0], ctx.param(layer, "weight")] + _onnx_bias(ctx, layer),
                    kernel_shape=layer.kernel_size, strides=config["stride"],
                    pads=[ph, pw, ph, pw], output_padding=config["output_padding"],
                    dilations=config["dilation"], group=config["groups"])


@hookimpl
def cnnkit_register_onnx_exporters(register):
    register("conv2d", export_conv2d_onnx)
    register("convtranspose2d", export_convtranspose2d_onnx)
