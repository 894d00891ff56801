"""The "numpy" variants: plain NumPy kernels, the reference every other variant is checked against.

They favour clarity over speed (but still use BLAS for the matrix products), support every
option of every layer type and are the fallback when nothing else can serve a request.

Convolution is im2col + matmul: ``sliding_window_view`` gives every receptive field as a view,
one copy turns it into the column matrix, and one batched matmul (a batch of ``groups``) does
the products.  The backward pass scatters the column gradients back with col2im, written as a
loop over the kernel offsets that adds one strided slice of the input gradient at a time.
Pooling uses the same window views.
"""
from __future__ import annotations

import contextlib

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnnkit.plugins import hookimpl

__all__ = [
    "Conv2dNumpy",
    "MaxPool2dNumpy",
    "AvgPool2dNumpy",
    "ReluNumpy",
    "SigmoidNumpy",
    "TanhNumpy",
    "DenseNumpy",
    "conv2d_output_size",
    "pool2d_output_size",
]


# ---------------------------------------------------------------------------------------------
# shape helpers (shared with the Cython wrappers)
# ---------------------------------------------------------------------------------------------
def conv2d_output_size(size, pad_before, pad_after, kernel, stride, dilation):
    """Output length of a convolution along one axis (PyTorch's formula)."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def pool2d_output_size(size, kernel, stride, padding, ceil_mode):
    """Output length of a pooling along one axis, PyTorch's rule.

    With ``ceil_mode`` the last window may hang over the bottom/right edge, but it must start
    inside the input or the left padding; otherwise it is dropped.
    """
    span = size + 2 * padding - kernel
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = span // stride + 1
    return out


def _pool_overhang(size, out, kernel, stride, padding):
    """Extra padding needed after the input so every (ceil-mode) window lies inside the array."""
    return max(0, (out - 1) * stride + kernel - size - padding)


# ---------------------------------------------------------------------------------------------
# conv2d
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
        oh = conv2d_output_size(h, top, bottom, kh, sh, dh)
        ow = conv2d_output_size(wd, left, right, kw, sw, dw)
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


# ---------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------
def _pool_geometry(x, config):
    kh, kw = config["kernel_size"]
    sh, sw = config["stride"]
    ph, pw = config["padding"]
    ceil_mode = config["ceil_mode"]
    h, w = x.shape[2:]
    oh = pool2d_output_size(h, kh, sh, ph, ceil_mode)
    ow = pool2d_output_size(w, kw, sw, pw, ceil_mode)
    extra_h = _pool_overhang(h, oh, kh, sh, ph)
    extra_w = _pool_overhang(w, ow, kw, sw, pw)
    pads = ((0, 0), (0, 0), (ph, extra_h), (pw, extra_w))
    return kh, kw, sh, sw, ph, pw, oh, ow, pads


def _pool_windows(xp, kh, kw, sh, sw, oh, ow):
    """(N, C, oh, ow, kh*kw) copy of every pooling window of the padded input."""
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw]
    return win.reshape(*win.shape[:4], kh * kw)


def _scatter_windows(dwin, xp_shape, kh, kw, sh, sw, oh, ow):
    """Sum per-window gradients (N, C, oh, ow, kh*kw) back into a padded-input gradient."""
    dxp = np.zeros(xp_shape, dtype=dwin.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw] += dwin[..., i * kw + j]
    return dxp


class MaxPool2dNumpy:
    """Max pooling, PyTorch semantics: -inf padding, ceil_mode, ties go to the first maximum."""

    @staticmethod
    def forward(x, params, config, need_backward):
        kh, kw, sh, sw, ph, pw, oh, ow, pads = _pool_geometry(x, config)
        xp = np.pad(x, pads, constant_values=-np.inf)
        win = _pool_windows(xp, kh, kw, sh, sw, oh, ow)
        arg = np.argmax(win, axis=-1)  # first occurrence: PyTorch's tie rule (and NaN wins)
        y = np.ascontiguousarray(np.take_along_axis(win, arg[..., None], axis=-1)[..., 0])
        ctx = (x.shape, xp.shape, arg, (kh, kw, sh, sw, ph, pw, oh, ow)) if need_backward else None
        return y, ctx

    @staticmethod
    def backward(dy, ctx):
        x_shape, xp_shape, arg, (kh, kw, sh, sw, ph, pw, oh, ow) = ctx
        dwin = np.zeros((*dy.shape, kh * kw), dtype=dy.dtype)
        np.put_along_axis(dwin, arg[..., None], dy[..., None], axis=-1)
        dxp = _scatter_windows(dwin, xp_shape, kh, kw, sh, sw, oh, ow)
        h, w = x_shape[2:]
        return np.ascontiguousarray(dxp[:, :, ph : ph + h, pw : pw + w]), {}


def _avg_divisor(size, out, kernel, stride, padding, count_include_pad):
    """Per-output-position window size along one axis, PyTorch's avg_pool2d rule.

    With count_include_pad the window is clipped to the padded input (so a ceil-mode overhang
    beyond the right padding is not counted); without it, to the input itself.
    """
    start = np.arange(out) * stride - padding
    if count_include_pad:
        end = np.minimum(start + kernel, size + padding)
    else:
        end = np.minimum(start + kernel, size)
        start = np.maximum(start, 0)
    return end - start


class AvgPool2dNumpy:
    """Average pooling, PyTorch semantics (zero padding, count_include_pad, ceil_mode)."""

    @staticmethod
    def _divisor(x_shape, geometry, config, dtype):
        kh, kw, sh, sw, ph, pw, oh, ow = geometry
        include = config.get("count_include_pad", True)
        dh = _avg_divisor(x_shape[2], oh, kh, sh, ph, include)
        dw = _avg_divisor(x_shape[3], ow, kw, sw, pw, include)
        return np.outer(dh, dw).astype(dtype)

    @staticmethod
    def forward(x, params, config, need_backward):
        kh, kw, sh, sw, ph, pw, oh, ow, pads = _pool_geometry(x, config)
        geometry = (kh, kw, sh, sw, ph, pw, oh, ow)
        xp = np.pad(x, pads)
        win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw]
        div = AvgPool2dNumpy._divisor(x.shape, geometry, config, x.dtype)
        y = np.ascontiguousarray(win.sum(axis=(4, 5)) / div, dtype=x.dtype)
        ctx = (x.shape, xp.shape, geometry, div) if need_backward else None
        return y, ctx

    @staticmethod
    def backward(dy, ctx):
        x_shape, xp_shape, (kh, kw, sh, sw, ph, pw, oh, ow), div = ctx
        g = dy / div
        dxp = np.zeros(xp_shape, dtype=dy.dtype)
        for i in range(kh):
            for j in range(kw):
                dxp[:, :, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw] += g
        h, w = x_shape[2:]
        return np.ascontiguousarray(dxp[:, :, ph : ph + h, pw : pw + w]), {}


# ---------------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------------
class ReluNumpy:
    """max(x, 0); NaN propagates; the gradient at 0 is 0 (as PyTorch)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        y = np.maximum(x, 0)  # keeps NaN, keeps the dtype
        return y, (y if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        y = ctx
        return np.where(y > 0, dy, 0).astype(dy.dtype, copy=False), {}


def _sigmoid(x):
    """Stable logistic: exp is only ever taken of a non-positive number."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


class SigmoidNumpy:
    @staticmethod
    def forward(x, params, config, need_backward):
        y = _sigmoid(x)
        return y, (y if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        y = ctx
        return dy * y * (1 - y), {}


class TanhNumpy:
    @staticmethod
    def forward(x, params, config, need_backward):
        y = np.tanh(x)
        return y, (y if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        y = ctx
        return dy * (1 - y * y), {}


# ---------------------------------------------------------------------------------------------
# dense
# ---------------------------------------------------------------------------------------------
#: Matrix products below this many multiply-adds run on one BLAS thread (see ``_blas_threads``).
SMALL_PRODUCT_MACS = 1 << 27
_blas_controller = None


def _blas_threads(macs):
    """One BLAS thread for small products, BLAS's own choice for large ones.

    Splitting a small product over threads gains microseconds, but afterwards the OpenBLAS
    workers spin for a long time waiting for more work and take cores from the OpenMP kernels
    of the next layers (milliseconds lost per layer on a 2-core machine).
    """
    global _blas_controller
    if macs >= SMALL_PRODUCT_MACS:
        return contextlib.nullcontext()
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController

        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


class DenseNumpy:
    """y = x @ W.T + b, W of shape (out_features, in_features) as in PyTorch."""

    @staticmethod
    def forward(x, params, config, need_backward):
        w, b = params["weight"], params.get("bias")
        with _blas_threads(x.shape[0] * w.size):
            y = x @ w.T
        if b is not None:
            y += b
        return y, ((x, w, b is not None) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        x, w, has_bias = ctx
        with _blas_threads(x.shape[0] * w.size):
            grads = {"weight": dy.T @ x}
            dx = dy @ w
        if has_bias:
            grads["bias"] = dy.sum(axis=0)
        return dx, grads


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------
_CONV_CAPS = ("stride", "padding", "asymmetric_padding", "dilation", "groups", "bias")
_POOL_CAPS = ("stride", "padding", "ceil_mode")


@hookimpl
def cnnkit_register_variants(register):
    dtypes = ("float32", "float64")
    register("conv2d", "numpy", Conv2dNumpy, priority=0, dtypes=dtypes, capabilities=_CONV_CAPS,
             description="NumPy im2col (sliding_window_view) + matmul; the reference")
    register("maxpool2d", "numpy", MaxPool2dNumpy, priority=0, dtypes=dtypes, capabilities=_POOL_CAPS,
             description="NumPy window views + argmax; the reference")
    register("avgpool2d", "numpy", AvgPool2dNumpy, priority=0, dtypes=dtypes,
             capabilities=_POOL_CAPS + ("count_include_pad",),
             description="NumPy window views + sum; the reference")
    register("relu", "numpy", ReluNumpy, priority=0, dtypes=dtypes, description="NumPy elementwise")
    register("sigmoid", "numpy", SigmoidNumpy, priority=0, dtypes=dtypes, description="NumPy elementwise, stable")
    register("tanh", "numpy", TanhNumpy, priority=0, dtypes=dtypes, description="NumPy elementwise")
    register("dense", "numpy", DenseNumpy, priority=0, dtypes=dtypes, capabilities=("bias",),
             description="BLAS matmul")
