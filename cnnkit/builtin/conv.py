"""The conv family's built-in plugin: ``conv2d`` (:class:`~cnnkit.layers.Conv2D`) and
``convtranspose2d`` (:class:`~cnnkit.layers.ConvTranspose2D`), each with

- ``"numpy"``: the reference.  im2col + matmul: ``sliding_window_view`` gives every receptive
  field as a view, one copy turns it into the column matrix, and one batched matmul (a batch of
  ``groups``) does the products.  Backward scatters the column gradients back with col2im, a
  loop over the kernel offsets adding one strided slice of the input gradient at a time.
- ``"cython"``: ``cnnkit._ext.conv`` (priority 100): im2col/col2im in Cython, one BLAS GEMM per
  group and image, an OpenMP team over the images of the batch (forward: over bands of output
  rows when the batch is smaller than the team) with BLAS single-threaded inside it
  (:func:`cnnkit._threads.single_threaded_blas`).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnnkit._ext import conv as _conv
from cnnkit._shapes import conv_output_size, conv_transpose_output_size
from cnnkit._threads import get_num_threads, single_threaded_blas
from cnnkit.builtin._kernel_args import (INT32_MAX, ISA_FEATURES, config_int, config_ints,
                                         contiguous, grad_like, isa_build, weight_and_bias,
                                         workspace)
from cnnkit.layers import Conv2D, ConvTranspose2D
from cnnkit.plugins import hookimpl

__all__ = ["COL_WORKSPACE_BYTES", "SERIAL_MACS", "Conv2dNumpy", "Conv2dCython",
           "ConvTranspose2dNumpy", "ConvTranspose2dCython"]

#: Upper bound of the im2col workspace of one convolution call, all threads together.  Each
#: thread holds the columns of one band of output rows of one image; bands are as tall as fit
#: (a whole image for ordinary sizes), but never less than one output row.
COL_WORKSPACE_BYTES = 32 * 2**20

#: Convolutions with fewer multiply-adds than this run on one thread.
SERIAL_MACS = 1 << 18

#: Priority of the "cython-<isa>" variants (the "cython" kernels compiled per instruction set)
#: against "cython"'s 100: above it only where measured at least as fast.
#: Below for now: the AVX2 build measured within noise of the portable one (fwd+bwd,
#: interleaved, ratios 0.95-1.12: BLAS already dispatches on the CPU, the rest is memory
#: bound); the AVX-512 build is not measured yet.
ISA_PRIORITY = {"avx2": 99, "avx512": 99}


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


class Conv2dNumpy:
    """2-D cross-correlation (PyTorch's conv2d) with stride, asymmetric padding, dilation, groups."""

    @staticmethod
    def forward(x, params, config, need_backward):
        w, b = params["weight"], params.get("bias")
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
        grads = {"weight": np.ascontiguousarray(dw_, dtype=w.dtype)}
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


class Conv2dCython:
    """2-D cross-correlation: im2col/col2im in Cython, one BLAS GEMM per group and image."""

    _kernels = _conv

    @staticmethod
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
    def forward(cls, x, params, config, need_backward):
        x = contiguous(x)
        w, b = weight_and_bias(params, x.dtype)
        geom, oh, ow, direct = Conv2dCython._check(x, w, b, config)
        y = np.empty((x.shape[0], w.shape[0], oh, ow), dtype=x.dtype)
        threads, rows, ws_shape = _conv_plan(x.shape, w.shape, oh, ow, x.itemsize, direct, True)
        ws = workspace(ws_shape, x.dtype)
        with single_threaded_blas():
            cls._kernels.conv2d_forward(x, w, b, y, ws, *geom, rows, threads)
        ctx = (x, w, b is not None, geom, oh, ow, direct) if need_backward else None
        return y, ctx

    @classmethod
    def backward(cls, dy, ctx, need_input_grad=True):
        x, w, has_bias, geom, oh, ow, direct = ctx
        n, o = x.shape[0], w.shape[0]
        dy = grad_like(dy, x.dtype, (n, o, oh, ow), "conv2d")
        threads, rows, ws_shape = _conv_plan(x.shape, w.shape, oh, ow, x.itemsize, direct, False)
        ws = workspace(ws_shape, x.dtype)
        dx = np.empty_like(x) if need_input_grad else None
        dw_part = np.zeros((threads, o, w[0].size), dtype=x.dtype)
        db_part = np.zeros((threads, o), dtype=x.dtype) if has_bias else None
        with single_threaded_blas():
            cls._kernels.conv2d_backward(x, w, dy, dx, dw_part, db_part, ws, *geom, rows,
                                         threads, bool(need_input_grad))
        grads = {"weight": (dw_part[0] if threads == 1 else dw_part.sum(axis=0)).reshape(w.shape)}
        if has_bias:
            grads["bias"] = db_part[0] if threads == 1 else db_part.sum(axis=0)
        return dx, grads


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
        threads = max(1, min(get_num_threads(), n))
        if n * cin * h * wd * k < SERIAL_MACS:
            threads = 1
        rows = max(1, min(h, (COL_WORKSPACE_BYTES // threads) // max(k * wd * x.itemsize, 1)))
        ws = workspace((threads, k * rows * wd), x.dtype)
        y = np.empty((n, cout, oh, ow), dtype=x.dtype)
        with single_threaded_blas():
            cls._kernels.conv_transpose2d_forward(x, w, b, y, ws, *geom, rows, threads)
        return y, ((x, w, b is not None, geom, oh, ow, direct) if need_backward else None)

    @classmethod
    def backward(cls, dy, ctx, need_input_grad=True):
        x, w, has_bias, geom, oh, ow, direct = ctx
        n, cin, h, wd = x.shape
        dy = grad_like(dy, x.dtype, (n, w.shape[1] * geom[-1], oh, ow), "convtranspose2d")
        sh, sw, ph, pw, dh, dw, groups = geom
        conv_geom = (sh, sw, ph, pw, dh, dw, groups)  # the convolution dy -> x
        dx = None
        with single_threaded_blas():
            if need_input_grad:
                threads, rows, ws_shape = _conv_plan(dy.shape, w.shape, h, wd, x.itemsize,
                                                     direct, True)
                dx = np.empty_like(x)
                cls._kernels.conv2d_forward(dy, w, None, dx, workspace(ws_shape, x.dtype),
                                            *conv_geom, rows, threads)
            threads, rows, ws_shape = _conv_plan(dy.shape, w.shape, h, wd, x.itemsize, direct,
                                                 False)
            dw_part = np.zeros((threads, cin, w[0].size), dtype=x.dtype)
            cls._kernels.conv2d_backward(dy, w, x, None, dw_part, None,
                                         workspace(ws_shape, x.dtype), *conv_geom, rows,
                                         threads, False)
        grads = {"weight": (dw_part[0] if threads == 1 else dw_part.sum(axis=0)).reshape(w.shape)}
        if has_bias:
            grads["bias"] = dy.sum(axis=(0, 2, 3))
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
             description="Cython GEMM + scatter forward; backward through the conv2d kernels")
    # the same kernels compiled per instruction set; refused on a CPU without the features
    for isa, cpu in ISA_FEATURES.items():
        register("conv2d", f"cython-{isa}", isa_build(Conv2dCython, "conv", isa),
                 priority=ISA_PRIORITY[isa], dtypes=dtypes, capabilities=Conv2D.FEATURES,
                 cpu_features=cpu, description=f"as cython, compiled for {', '.join(cpu)}")
        register("convtranspose2d", f"cython-{isa}", isa_build(ConvTranspose2dCython, "conv", isa),
                 priority=ISA_PRIORITY[isa], dtypes=dtypes,
                 capabilities=ConvTranspose2D.FEATURES, cpu_features=cpu,
                 description=f"as cython, compiled for {', '.join(cpu)}")
