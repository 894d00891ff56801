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
import math

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
    "LeakyReluNumpy",
    "EluNumpy",
    "GeluNumpy",
    "ScaledTanhNumpy",
    "SoftmaxNumpy",
    "LogSoftmaxNumpy",
    "DropoutNumpy",
    "BatchNormNumpy",
    "GlobalAvgPool2dNumpy",
    "SubsamplingNumpy",
    "ZeroPad2dNumpy",
    "ConvTranspose2dNumpy",
    "dropout_keep_mask",
    "dropout_uniforms",
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
# activations with hyper-parameters
# ---------------------------------------------------------------------------------------------
class LeakyReluNumpy:
    """x if x > 0 else slope * x; the gradient at 0 is the slope (PyTorch)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        a = x.dtype.type(config["negative_slope"])
        return np.where(x > 0, x, x * a), ((x, a) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        x, a = ctx
        return np.where(x > 0, dy, dy * a), {}


class EluNumpy:
    """x if x > 0 else alpha * expm1(x); the gradient at 0 is alpha (PyTorch)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        a = x.dtype.type(config["alpha"])
        y = np.where(x > 0, x, a * np.expm1(np.minimum(x, 0)))
        return y, ((x, a) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        x, a = ctx
        return np.where(x > 0, dy, dy * (a * np.exp(np.minimum(x, 0)))), {}


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_CUBIC = 0.044715


def _erf(x):
    from scipy.special import erf  # imported on first use: keeps plugin loading light

    return erf(x)


class GeluNumpy:
    """x * Phi(x) (exact, with erf) or PyTorch's tanh approximation (``approximate="tanh"``)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        if config.get("approximate", "none") == "tanh":
            t = np.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x))
            y = 0.5 * x * (1 + t)
            ctx = (x, t, True)
        else:
            cdf = 0.5 * (1 + _erf(x * math.sqrt(0.5)))
            y = x * cdf
            ctx = (x, cdf, False)
        return y.astype(x.dtype, copy=False), (ctx if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        x, t, tanh_form = ctx
        if tanh_form:
            du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)
            g = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du
        else:
            g = t + x * (_INV_SQRT_2PI * np.exp(-0.5 * x * x))
        return (dy * g).astype(dy.dtype, copy=False), {}


class ScaledTanhNumpy:
    """amplitude * tanh(slope * x); backward from y: slope * (amplitude - y^2 / amplitude)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        a, s = config["amplitude"], config["slope"]
        y = (a * np.tanh(s * x)).astype(x.dtype, copy=False)
        return y, ((y, a, s) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        y, a, s = ctx
        if a == 0:
            return np.zeros_like(dy), {}
        return (dy * (s * (a - y * y / a))).astype(dy.dtype, copy=False), {}


def _feature_axis(config, ndim):
    axis = int(config.get("axis", 1))
    return axis + ndim if axis < 0 else axis


class SoftmaxNumpy:
    """exp(x - max) / sum along ``config["axis"]``; backward y * (dy - sum(dy * y))."""

    @staticmethod
    def forward(x, params, config, need_backward):
        axis = _feature_axis(config, x.ndim)
        e = np.exp(x - x.max(axis=axis, keepdims=True, initial=-np.inf))
        y = e / e.sum(axis=axis, keepdims=True)
        return y, ((y, axis) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        y, axis = ctx
        return y * (dy - np.sum(dy * y, axis=axis, keepdims=True)), {}


class LogSoftmaxNumpy:
    """x - max - log(sum(exp(x - max))); backward dy - exp(y) * sum(dy)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        axis = _feature_axis(config, x.ndim)
        shifted = x - x.max(axis=axis, keepdims=True, initial=-np.inf)
        y = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        return y, ((y, axis) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        y, axis = ctx
        return dy - np.exp(y) * np.sum(dy, axis=axis, keepdims=True), {}


# ---------------------------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def dropout_uniforms(seed, n):
    """The n uniforms in [0, 1) behind a dropout mask: splitmix64 of ``seed + (i + 1) * golden``,
    top 53 bits.  ``cnnkit._ext.activation.dropout_forward`` computes the same numbers."""
    z = np.uint64(int(seed) % 2**64) + (np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


def dropout_keep_mask(seed, shape, p):
    """Boolean keep-mask of a dropout call: element i survives when its uniform is >= p."""
    return (dropout_uniforms(seed, int(np.prod(shape))) >= p).reshape(shape)


class DropoutNumpy:
    """Inverted dropout with the mask of ``config["seed"]`` (see :func:`dropout_keep_mask`)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        p = float(config["p"])
        keep = dropout_keep_mask(config["seed"], x.shape, p)
        scale = x.dtype.type(1.0 / (1.0 - p))
        y = np.where(keep, x * scale, x.dtype.type(0))
        return y, ((keep, scale) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        keep, scale = ctx
        return np.where(keep, dy * scale, dy.dtype.type(0)), {}


# ---------------------------------------------------------------------------------------------
# batch normalisation
# ---------------------------------------------------------------------------------------------
class BatchNormNumpy:
    """Normalise with the batch mean and biased variance of every channel (axis 1), then
    ``* weight + bias``.  Statistics are accumulated in float64."""

    @staticmethod
    def forward(x, params, config, need_backward):
        n, c = x.shape[:2]
        x3 = x.reshape(n, c, -1)
        mean = x3.mean(axis=(0, 2), dtype=np.float64)
        var = x3.var(axis=(0, 2), dtype=np.float64)
        inv = 1.0 / np.sqrt(var + config["eps"])
        xhat = (x3 - mean[None, :, None]) * inv[None, :, None]
        w, b = params.get("weight"), params.get("bias")
        y = xhat if w is None else xhat * w[None, :, None] + b[None, :, None]
        y = np.ascontiguousarray(y.reshape(x.shape), dtype=x.dtype)
        ctx = (xhat, inv, mean, var, w, x.dtype, x.shape) if need_backward else None
        return y, ctx

    @staticmethod
    def statistics(ctx):
        return ctx[2], ctx[3]

    @staticmethod
    def backward(dy, ctx):
        xhat, inv, _, _, w, dtype, shape = ctx
        n, c = shape[:2]
        dy3 = dy.reshape(n, c, -1).astype(np.float64)
        m = dy3.shape[0] * dy3.shape[2]
        sum_dy = dy3.sum(axis=(0, 2))
        sum_dy_xhat = (dy3 * xhat).sum(axis=(0, 2))
        g = np.ones(c) if w is None else w.astype(np.float64)
        dx = (g * inv)[None, :, None] * (dy3 - (sum_dy[None, :, None]
                                                + xhat * sum_dy_xhat[None, :, None]) / m)
        grads = {} if w is None else {"weight": sum_dy_xhat.astype(dtype),
                                      "bias": sum_dy.astype(dtype)}
        return np.ascontiguousarray(dx.reshape(shape), dtype=dtype), grads


# ---------------------------------------------------------------------------------------------
# pooling-like layers
# ---------------------------------------------------------------------------------------------
class GlobalAvgPool2dNumpy:
    """Mean over H and W: (N, C, H, W) -> (N, C)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        y = x.mean(axis=(2, 3)).astype(x.dtype, copy=False)
        return y, (x.shape if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        shape = ctx
        g = dy / (shape[2] * shape[3])
        return np.ascontiguousarray(np.broadcast_to(g[:, :, None, None], shape)), {}


class SubsamplingNumpy:
    """LeNet-5 subsampling: per-channel coefficient * (sum or mean of k x k windows, stride k)
    + bias."""

    @staticmethod
    def _windows(x, config):
        kh, kw = config["kernel_size"]
        n, c, h, w = x.shape
        oh, ow = h // kh, w // kw
        win = x[:, :, :oh * kh, :ow * kw].reshape(n, c, oh, kh, ow, kw)
        s = win.sum(axis=(3, 5))
        if config["mode"] == "average":
            s = s / (kh * kw)
        return s

    @staticmethod
    def forward(x, params, config, need_backward):
        s = SubsamplingNumpy._windows(x, config)
        w, b = params["weight"], params.get("bias")
        y = s * w[None, :, None, None]
        if b is not None:
            y = y + b[None, :, None, None]
        y = np.ascontiguousarray(y, dtype=x.dtype)
        return y, ((s, w, b is not None, x.shape, config) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        s, w, has_bias, shape, config = ctx
        kh, kw = config["kernel_size"]
        n, c, oh, ow = dy.shape
        g = dy * w[None, :, None, None]
        if config["mode"] == "average":
            g = g / (kh * kw)
        dx = np.zeros(shape, dtype=dy.dtype)
        dx[:, :, :oh * kh, :ow * kw] = np.broadcast_to(
            g[:, :, :, None, :, None], (n, c, oh, kh, ow, kw)).reshape(n, c, oh * kh, ow * kw)
        grads = {"weight": np.einsum("ncij,ncij->c", dy, s).astype(dy.dtype, copy=False)}
        if has_bias:
            grads["bias"] = dy.sum(axis=(0, 2, 3))
        return dx, grads


class ZeroPad2dNumpy:
    """Zero padding of the last two axes; backward slices the padding off."""

    @staticmethod
    def forward(x, params, config, need_backward):
        top, bottom, left, right = config["padding"]
        y = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        return y, ((x.shape, config["padding"]) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        shape, (top, bottom, left, right) = ctx
        return np.ascontiguousarray(dy[:, :, top:top + shape[2], left:left + shape[3]]), {}


# ---------------------------------------------------------------------------------------------
# transposed convolution
# ---------------------------------------------------------------------------------------------
class ConvTranspose2dNumpy:
    """Transposed convolution as the input-gradient of a convolution: one matmul per group
    gives every (input pixel, kernel offset) contribution, col2im scatters them into the
    output enlarged by the padding (and output_padding), which is then cropped.  Backward is
    the forward convolution: im2col of the padded output gradient, two matmuls."""

    @staticmethod
    def _geometry(x_shape, w_shape, config):
        n, cin, h, wd = x_shape
        _, cog, kh, kw = w_shape
        sh, sw = config["stride"]
        ph, pw = config["padding"]
        oph, opw = config["output_padding"]
        dh, dw = config["dilation"]
        fh = (h - 1) * sh + dh * (kh - 1) + 1 + oph  # full (uncropped) output
        fw = (wd - 1) * sw + dw * (kw - 1) + 1 + opw
        return fh, fw, fh - 2 * ph, fw - 2 * pw

    @staticmethod
    def forward(x, params, config, need_backward):
        w, b = params["weight"], params.get("bias")
        groups = config["groups"]
        sh, sw = config["stride"]
        ph, pw = config["padding"]
        dh, dw = config["dilation"]
        n, cin, h, wd = x.shape
        _, cog, kh, kw = w.shape
        fh, fw, oh, ow = ConvTranspose2dNumpy._geometry(x.shape, w.shape, config)
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
        groups = config["groups"]
        sh, sw = config["stride"]
        ph, pw = config["padding"]
        dh, dw = config["dilation"]
        n, cin, h, wd = x.shape
        _, cog, kh, kw = w.shape
        fh, fw, oh, ow = ConvTranspose2dNumpy._geometry(x.shape, w.shape, config)
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
# registration
# ---------------------------------------------------------------------------------------------
_CONV_CAPS = ("stride", "padding", "asymmetric_padding", "dilation", "groups", "bias")
_POOL_CAPS = ("stride", "padding", "ceil_mode")
_CONVT_CAPS = ("stride", "padding", "output_padding", "dilation", "groups", "bias")


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
    register("leakyrelu", "numpy", LeakyReluNumpy, priority=0, dtypes=dtypes,
             description="NumPy elementwise")
    register("elu", "numpy", EluNumpy, priority=0, dtypes=dtypes, description="NumPy elementwise")
    register("gelu", "numpy", GeluNumpy, priority=0, dtypes=dtypes, capabilities=("approximate",),
             description="NumPy elementwise, scipy.special.erf or the tanh form")
    register("scaledtanh", "numpy", ScaledTanhNumpy, priority=0, dtypes=dtypes,
             description="NumPy elementwise")
    register("softmax", "numpy", SoftmaxNumpy, priority=0, dtypes=dtypes,
             description="NumPy, max-shifted")
    register("logsoftmax", "numpy", LogSoftmaxNumpy, priority=0, dtypes=dtypes,
             description="NumPy, max-shifted log-sum-exp")
    register("dropout", "numpy", DropoutNumpy, priority=0, dtypes=dtypes,
             description="NumPy splitmix64 counter-based mask")
    for bn in ("batchnorm1d", "batchnorm2d"):
        register(bn, "numpy", BatchNormNumpy, priority=0, dtypes=dtypes,
                 description="NumPy, statistics in float64")
    register("globalavgpool2d", "numpy", GlobalAvgPool2dNumpy, priority=0, dtypes=dtypes,
             description="NumPy mean over H, W")
    register("subsampling", "numpy", SubsamplingNumpy, priority=0, dtypes=dtypes,
             capabilities=("bias",), description="NumPy window reshape + sum")
    register("zeropad2d", "numpy", ZeroPad2dNumpy, priority=0, dtypes=dtypes,
             description="numpy.pad")
    register("convtranspose2d", "numpy", ConvTranspose2dNumpy, priority=0, dtypes=dtypes,
             capabilities=_CONVT_CAPS,
             description="NumPy matmul + col2im (forward), im2col + matmul (backward)")
