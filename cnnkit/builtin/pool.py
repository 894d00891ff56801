"""The pool family's built-in plugin: ``maxpool2d``, ``avgpool2d`` (PyTorch's rules: padding,
ceil_mode, count_include_pad, max-pool ties to the first maximum), ``globalavgpool2d``,
``globalmaxpool2d`` and LeNet-5's trainable ``subsampling``, each with

- ``"numpy"``: the reference, on strided views of the padded input (one per window tap);
- ``"cython"``: ``cnnkit._ext.pool`` (priority 100), direct loops, OpenMP over (image, channel);
  dedicated row loops for 2x2 and 3x3 windows at stride 2, and for max pooling a vector
  kernel as wide as the build's instruction set (``globalmaxpool2d`` has none: it is one
  reduction, NumPy's own loop).

Padding that differs between the sides and dilated windows (what ONNX models and TensorFlow's
"SAME" padding use) are served by the NumPy variants only: automatic selection keeps the
compiled kernels for everything else.
"""
from __future__ import annotations

import numpy as np

from cnnkit._ext import pool as _pool
from cnnkit._shapes import pool_output_size, pool_overhang
from cnnkit.builtin._kernel_args import (INT32_MAX, ISA_FEATURES, checked_once, config_ints,
                                         contiguous, grad_like, isa_build, weight_and_bias)
from cnnkit.layers import AvgPool2D, GlobalAvgPool2D, GlobalMaxPool2D, MaxPool2D, Subsampling
from cnnkit.plugins import hookimpl

#: Priority of the "cython-<isa>" variants (the "cython" kernels compiled per instruction set)
#: against "cython"'s 100: above it only where measured at least as fast.
#: Below for now: the AVX2 build measured within noise of the portable one (fwd+bwd,
#: interleaved, ratios 0.95-1.12: BLAS already dispatches on the CPU, the rest is memory
#: bound); the AVX-512 build is not measured yet.
ISA_PRIORITY = {"avx2": 99, "avx512": 99}

__all__ = ["MaxPool2dNumpy", "MaxPool2dCython", "AvgPool2dNumpy", "AvgPool2dCython",
           "GlobalAvgPool2dNumpy", "GlobalAvgPool2dCython", "GlobalMaxPool2dNumpy",
           "SubsamplingNumpy", "SubsamplingCython"]


# ---------------------------------------------------------------------------------------------
# the reference (numpy)
# ---------------------------------------------------------------------------------------------
def _window_geometry(x, config):
    """The pooling geometry of ``config`` on input ``x``: a dict with the kernel, stride and
    dilation pairs, the output size and the ``np.pad`` widths (the padding before the input,
    the padding after it plus any ceil-mode overhang)."""
    kernel, stride = config["kernel_size"], config["stride"]
    before = config["padding"]
    after = config.get("padding_after", before)
    dilation = config.get("dilation", (1, 1))
    out = tuple(pool_output_size(size, k, s, p, config["ceil_mode"], pa, d)
                for size, k, s, p, pa, d in zip(x.shape[2:], kernel, stride, before, after,
                                                dilation))
    extra = tuple(max(pa, pool_overhang(size, o, k, s, p, d))
                  for size, o, k, s, p, pa, d in zip(x.shape[2:], out, kernel, stride, before,
                                                     after, dilation))
    pads = ((0, 0), (0, 0), (before[0], extra[0]), (before[1], extra[1]))
    return {"kernel": kernel, "stride": stride, "dilation": dilation, "out": out,
            "pads": pads, "after": after}


def _window_slices(g, i, j):
    """The slices of the padded input read by tap (i, j) of every window."""
    (sh, sw), (dh, dw), (oh, ow) = g["stride"], g["dilation"], g["out"]
    return (slice(i * dh, i * dh + (oh - 1) * sh + 1, sh),
            slice(j * dw, j * dw + (ow - 1) * sw + 1, sw))


def _pool_windows(xp, g):
    """(N, C, oh, ow, kh*kw) copy of every pooling window of the padded input."""
    kh, kw = g["kernel"]
    return np.stack([xp[(..., *_window_slices(g, i, j))] for i in range(kh) for j in range(kw)],
                    axis=-1)


def _scatter_windows(dwin, xp_shape, g):
    """Sum per-window gradients (N, C, oh, ow, kh*kw) back into a padded-input gradient."""
    kh, kw = g["kernel"]
    dxp = np.zeros(xp_shape, dtype=dwin.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[(..., *_window_slices(g, i, j))] += dwin[..., i * kw + j]
    return dxp


def _unpad(dxp, x_shape, g):
    top, left = g["pads"][2][0], g["pads"][3][0]
    h, w = x_shape[2:]
    return np.ascontiguousarray(dxp[:, :, top:top + h, left:left + w])


class MaxPool2dNumpy:
    """Max pooling, PyTorch semantics: -inf padding, ceil_mode, ties go to the first maximum;
    any padding per side and dilation."""

    @staticmethod
    def forward(x, params, config, need_backward):
        g = _window_geometry(x, config)
        xp = np.pad(x, g["pads"], constant_values=-np.inf)
        win = _pool_windows(xp, g)
        arg = np.argmax(win, axis=-1)  # first occurrence: PyTorch's tie rule (and NaN wins)
        y = np.ascontiguousarray(np.take_along_axis(win, arg[..., None], axis=-1)[..., 0])
        # a window of -inf only: PyTorch routes its gradient to the first in-input position,
        # where argmax would pick the first position, maybe padding
        inside = _pool_windows(np.pad(np.ones((1, 1, *x.shape[2:])), g["pads"]), g)
        arg = np.where(y == -np.inf, np.argmax(inside, axis=-1), arg)
        ctx = (x.shape, xp.shape, arg, g) if need_backward else None
        return y, ctx

    @staticmethod
    def backward(dy, ctx):
        x_shape, xp_shape, arg, g = ctx
        kh, kw = g["kernel"]
        dwin = np.zeros((*dy.shape, kh * kw), dtype=dy.dtype)
        np.put_along_axis(dwin, arg[..., None], dy[..., None], axis=-1)
        return _unpad(_scatter_windows(dwin, xp_shape, g), x_shape, g), {}


class AvgPool2dNumpy:
    """Average pooling, PyTorch semantics (zero padding, count_include_pad, ceil_mode); any
    padding per side and dilation.  The divisor of a window counts its taps inside the padded
    input (``count_include_pad``, a ceil-mode overhang beyond the padding not counted) or
    inside the input."""

    @staticmethod
    def _divisor(x_shape, g, include, dtype):
        h, w = x_shape[2:]
        (top, extra_h), (left, extra_w) = g["pads"][2:]
        counted = np.zeros((1, 1, top + h + extra_h, left + w + extra_w))
        if include:  # the padded input, without the ceil-mode overhang beyond its padding
            bottom, right = g["after"]
            counted[..., :top + h + bottom, :left + w + right] = 1
        else:
            counted[..., top:top + h, left:left + w] = 1
        return _pool_windows(counted, g).sum(axis=-1)[0, 0].astype(dtype)

    @staticmethod
    def forward(x, params, config, need_backward):
        g = _window_geometry(x, config)
        xp = np.pad(x, g["pads"])
        div = AvgPool2dNumpy._divisor(x.shape, g, config.get("count_include_pad", True),
                                      x.dtype)
        y = np.ascontiguousarray(_pool_windows(xp, g).sum(axis=-1) / div, dtype=x.dtype)
        ctx = (x.shape, xp.shape, g, div) if need_backward else None
        return y, ctx

    @staticmethod
    def backward(dy, ctx):
        x_shape, xp_shape, g, div = ctx
        kh, kw = g["kernel"]
        dwin = np.broadcast_to((dy / div)[..., None], (*dy.shape, kh * kw))
        return _unpad(_scatter_windows(dwin, xp_shape, g), x_shape, g), {}


class GlobalMaxPool2dNumpy:
    """Maximum over H and W: (N, C, H, W) -> (N, C); the gradient goes to the first maximum."""

    @staticmethod
    def forward(x, params, config, need_backward):
        flat = x.reshape(*x.shape[:2], -1)
        arg = np.argmax(flat, axis=-1)  # first occurrence, NaN wins
        y = np.ascontiguousarray(np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0])
        return y, ((x.shape, arg) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        shape, arg = ctx
        dx = np.zeros((*shape[:2], shape[2] * shape[3]), dtype=dy.dtype)
        np.put_along_axis(dx, arg[..., None], dy[..., None], axis=-1)
        return dx.reshape(shape), {}


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


# ---------------------------------------------------------------------------------------------
# the compiled kernels (cython)
# ---------------------------------------------------------------------------------------------
@checked_once
def _checked_geometry(x, config):
    """The compiled kernels' geometry ((kh, kw, sh, sw, ph, pw), oh, ow), checked once per
    input shape and config."""
    if x.ndim != 4:
        raise ValueError(f"pooling expects (N, C, H, W), got {x.shape}")
    if (tuple(config.get("padding_after", config["padding"])) != tuple(config["padding"])
            or tuple(config.get("dilation", (1, 1))) != (1, 1)):
        raise ValueError(f"pooling: the compiled kernels take symmetric padding and no "
                         f"dilation, got {config}")
    kh, kw = config_ints(config, "kernel_size", 2, "pooling")
    sh, sw = config_ints(config, "stride", 2, "pooling")
    ph, pw = config_ints(config, "padding", 2, "pooling")
    if (min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0 or 2 * ph > kh or 2 * pw > kw
            or max(kh, kw, sh, sw) > INT32_MAX):
        raise ValueError(f"pooling: invalid config {config} (kernel and stride must lie in "
                         "[1, 2**31), padding at most half the kernel)")
    if min(x.shape[2:]) < 1:
        raise ValueError(f"pooling: input {x.shape} has empty image planes")
    oh = pool_output_size(x.shape[2], kh, sh, ph, bool(config["ceil_mode"]))
    ow = pool_output_size(x.shape[3], kw, sw, pw, bool(config["ceil_mode"]))
    if oh < 1 or ow < 1:
        raise ValueError(f"pooling: input {x.shape} is smaller than the kernel {(kh, kw)}")
    return (kh, kw, sh, sw, ph, pw), oh, ow


class MaxPool2dCython:
    """Max pooling; the argmax (the maximum's place inside its window, one byte per output) is
    kept only when a backward pass will follow."""

    _kernels = _pool

    @classmethod
    def forward(cls, x, params, config, need_backward):
        x = contiguous(x)
        geom, oh, ow = _checked_geometry(x, config)
        window = geom[0] * geom[1]
        if window > INT32_MAX:
            raise ValueError(f"maxpool2d: window {geom[:2]} too large for int32 argmax indices")
        y = np.empty((*x.shape[:2], oh, ow), dtype=x.dtype)
        argmax = None
        if need_backward:
            compact = window <= cls._kernels.MAX_UINT8_WINDOW
            argmax = np.empty(y.shape, dtype=np.uint8 if compact else np.intc)
        cls._kernels.maxpool2d_forward(x, y, argmax, *geom)
        return y, ((x.shape, x.dtype, argmax, geom) if need_backward else None)

    @classmethod
    def backward(cls, dy, ctx):
        x_shape, dtype, argmax, geom = ctx
        dy = grad_like(dy, dtype, argmax.shape, "maxpool2d")
        dx = np.empty(x_shape, dtype=dtype)
        cls._kernels.maxpool2d_backward(dy, argmax, dx, *geom)
        return dx, {}


class AvgPool2dCython:
    """Average pooling with PyTorch's divisor rules (count_include_pad, ceil_mode)."""

    _kernels = _pool

    @classmethod
    def forward(cls, x, params, config, need_backward):
        x = contiguous(x)
        geom, oh, ow = _checked_geometry(x, config)
        include = bool(config.get("count_include_pad", True))
        y = np.empty((*x.shape[:2], oh, ow), dtype=x.dtype)
        cls._kernels.avgpool2d_forward(x, y, *geom, include)
        return y, ((x.shape, x.dtype, y.shape, geom, include) if need_backward else None)

    @classmethod
    def backward(cls, dy, ctx):
        x_shape, dtype, y_shape, geom, include = ctx
        dy = grad_like(dy, dtype, y_shape, "avgpool2d")
        dx = np.empty(x_shape, dtype=dtype)
        cls._kernels.avgpool2d_backward(dy, dx, *geom, include)
        return dx, {}


class GlobalAvgPool2dCython:
    """Plane means, summed in double; parallel over (image, channel)."""

    _kernels = _pool

    @classmethod
    def forward(cls, x, params, config, need_backward):
        x = contiguous(x)
        if x.ndim != 4:
            raise ValueError(f"globalavgpool2d expects (N, C, H, W), got {x.shape}")
        if min(x.shape[2:]) < 1:
            raise ValueError(f"globalavgpool2d: input {x.shape} has empty image planes")
        y = np.empty(x.shape[:2], dtype=x.dtype)
        cls._kernels.global_avgpool2d_forward(x, y)
        return y, ((x.shape, x.dtype) if need_backward else None)

    @classmethod
    def backward(cls, dy, ctx):
        shape, dtype = ctx
        dy = grad_like(dy, dtype, shape[:2], "globalavgpool2d")
        dx = np.empty(shape, dtype=dtype)
        cls._kernels.global_avgpool2d_backward(dy, dx)
        return dx, {}


class SubsamplingCython:
    """LeNet-5 subsampling in one pass per plane; keeps the window sums for the coefficient
    gradient."""

    _kernels = _pool

    @classmethod
    def forward(cls, x, params, config, need_backward):
        x = contiguous(x)
        if x.ndim != 4:
            raise ValueError(f"subsampling expects (N, C, H, W), got {x.shape}")
        kh, kw = config_ints(config, "kernel_size", 2, "subsampling")
        w, b = weight_and_bias(params, x.dtype)
        n, c, h, wd = x.shape
        if w.shape != (c,) or (b is not None and b.shape != (c,)) or kh < 1 or kw < 1:
            raise ValueError(f"subsampling: parameters {w.shape} do not fit input {x.shape}")
        oh, ow = h // kh, wd // kw
        if oh < 1 or ow < 1:
            raise ValueError(f"subsampling: input {x.shape} is smaller than the window {(kh, kw)}")
        average = config["mode"] == "average"
        y = np.empty((n, c, oh, ow), dtype=x.dtype)
        sums = np.empty_like(y) if need_backward else None
        cls._kernels.subsampling_forward(x, w, b, y, sums, kh, kw, average)
        return y, ((sums, w, b is not None, x.shape, kh, kw, average) if need_backward else None)

    @classmethod
    def backward(cls, dy, ctx):
        sums, w, has_bias, shape, kh, kw, average = ctx
        dy = grad_like(dy, w.dtype, sums.shape, "subsampling")
        dx = np.empty(shape, dtype=w.dtype)
        cls._kernels.subsampling_backward(dy, w, dx, kh, kw, average)
        grads = {"weight": np.einsum("ncij,ncij->c", dy, sums)}
        if has_bias:
            grads["bias"] = dy.sum(axis=(0, 2, 3))
        return dx, grads


# ---------------------------------------------------------------------------------------------
# registration: written out per family as a third-party plugin writes it (the blocks of
# the families look alike on purpose; a shared helper would hide the plugin API they show)
# ---------------------------------------------------------------------------------------------
@hookimpl
def cnnkit_register_layers(register):
    register("maxpool2d", MaxPool2D)
    register("avgpool2d", AvgPool2D)
    register("globalavgpool2d", GlobalAvgPool2D)
    register("globalmaxpool2d", GlobalMaxPool2D)
    register("subsampling", Subsampling)


@hookimpl
def cnnkit_register_variants(register):
    dtypes = ("float32", "float64")
    # the compiled kernels pad symmetrically and read contiguous windows
    compiled = {cls: tuple(f for f in cls.FEATURES if f not in ("asymmetric_padding", "dilation"))
                for cls in (MaxPool2D, AvgPool2D, GlobalAvgPool2D, Subsampling)}
    register("maxpool2d", "numpy", MaxPool2dNumpy, priority=0, dtypes=dtypes,
             capabilities=MaxPool2D.FEATURES, description="NumPy window views + argmax; the reference")
    register("maxpool2d", "cython", MaxPool2dCython, priority=100, dtypes=dtypes,
             capabilities=compiled[MaxPool2D],
             description="Cython direct loops, OpenMP over (image, channel), uint8 argmax")
    register("avgpool2d", "numpy", AvgPool2dNumpy, priority=0, dtypes=dtypes,
             capabilities=AvgPool2D.FEATURES, description="NumPy window views + sum; the reference")
    register("avgpool2d", "cython", AvgPool2dCython, priority=100, dtypes=dtypes,
             capabilities=compiled[AvgPool2D],
             description="Cython direct loops, OpenMP over (image, channel)")
    register("globalavgpool2d", "numpy", GlobalAvgPool2dNumpy, priority=0, dtypes=dtypes,
             capabilities=GlobalAvgPool2D.FEATURES, description="NumPy mean over H, W")
    register("globalavgpool2d", "cython", GlobalAvgPool2dCython, priority=100, dtypes=dtypes,
             capabilities=GlobalAvgPool2D.FEATURES, description="Cython, OpenMP over (image, channel)")
    register("globalmaxpool2d", "numpy", GlobalMaxPool2dNumpy, priority=0, dtypes=dtypes,
             capabilities=GlobalMaxPool2D.FEATURES, description="NumPy argmax over H*W")
    register("subsampling", "numpy", SubsamplingNumpy, priority=0, dtypes=dtypes,
             capabilities=Subsampling.FEATURES, description="NumPy window reshape + sum")
    register("subsampling", "cython", SubsamplingCython, priority=100, dtypes=dtypes,
             capabilities=Subsampling.FEATURES, description="Cython, OpenMP over (image, channel)")
    # the same kernels compiled per instruction set; refused on a CPU without the features
    for isa, cpu in ISA_FEATURES.items():
        for layer_cls, cython in ((MaxPool2D, MaxPool2dCython), (AvgPool2D, AvgPool2dCython),
                                  (GlobalAvgPool2D, GlobalAvgPool2dCython),
                                  (Subsampling, SubsamplingCython)):
            register(layer_cls.layer_type, f"cython-{isa}", isa_build(cython, "pool", isa),
                     priority=ISA_PRIORITY[isa], dtypes=dtypes, capabilities=compiled[layer_cls],
                     cpu_features=cpu, description=f"as cython, compiled for {', '.join(cpu)}")


# ---------------------------------------------------------------------------------------------
# ONNX export (cnnkit.onnx.export)
# ---------------------------------------------------------------------------------------------
def _onnx_pool_geometry(layer, input_shape):
    """(begin pads, end pads, extra end pads) in floor mode giving the layer's output size.

    onnx's shape inference and onnxruntime disagree on ceil_mode's last window when it would
    start in the right padding (PyTorch, and cnnkit, drop it; a 4-wide input, window 2,
    stride 3, padding 1: onnx infers 3 outputs, onnxruntime computes 2), so ceil mode is
    written as floor mode with the overhang of the last window as extra end padding."""
    begin, end, extra = [], [], []
    after = getattr(layer, "padding_after", layer.padding)
    dilation = getattr(layer, "dilation", (1, 1))
    for size, k, s, p, q, d in zip(input_shape[2:], layer.kernel_size, layer.stride,
                                   layer.padding, after, dilation):
        out = pool_output_size(size, k, s, p, layer.ceil_mode, q, d)
        e = max(0, (out - 1) * s + d * (k - 1) + 1 - (size + p + q))
        begin.append(p)
        end.append(q + e)
        extra.append(e)
    return begin, end, extra


def _onnx_dilations(layer):
    dilation = tuple(getattr(layer, "dilation", (1, 1)))
    return {} if dilation == (1, 1) else {"dilations": list(dilation)}


def export_maxpool2d_onnx(ctx, layer, inputs, input_shapes):
    begin, end, _ = _onnx_pool_geometry(layer, input_shapes[0])
    return ctx.node("MaxPool", inputs[:1], kernel_shape=layer.kernel_size, strides=layer.stride,
                    pads=begin + end, **_onnx_dilations(layer))


def export_avgpool2d_onnx(ctx, layer, inputs, input_shapes):
    begin, end, extra = _onnx_pool_geometry(layer, input_shapes[0])
    x = inputs[0]
    include_pad = layer.count_include_pad
    if any(extra) and include_pad and (any(begin) or any(e - x for e, x in zip(end, extra))):
        # PyTorch's divisor counts the padding but not a ceil-mode overhang: pad with zeros
        # explicitly, then average over what lies inside the padded input
        after = [e - x for e, x in zip(end, extra)]
        x = ctx.node("Pad", [x, ctx.constant(np.array([0, 0] + begin + [0, 0] + after,
                                                      dtype=np.int64), "pads")], mode="constant")
        begin, end = [0, 0], extra
        include_pad = False
    elif any(extra):
        include_pad = False  # no padding: only the overhang, which the divisor never counts
    dilations = _onnx_dilations(layer)
    if dilations and ctx.opset < 19:
        raise ValueError(f"{layer.name} (AvgPool2D): a dilated average pooling needs ONNX opset "
                         f"19 or later (AveragePool has no dilations before), got opset {ctx.opset}")
    return ctx.node("AveragePool", [x], kernel_shape=layer.kernel_size, strides=layer.stride,
                    pads=begin + end, count_include_pad=int(include_pad), **dilations)


def export_globalavgpool2d_onnx(ctx, layer, inputs, input_shapes):
    return ctx.node("Flatten", [ctx.node("GlobalAveragePool", inputs[:1])], axis=1)


def export_globalmaxpool2d_onnx(ctx, layer, inputs, input_shapes):
    return ctx.node("Flatten", [ctx.node("GlobalMaxPool", inputs[:1])], axis=1)


def export_subsampling_onnx(ctx, layer, inputs, input_shapes):
    """The window mean (AveragePool drops the rows and columns that do not fill a window, as
    the layer does) times the per-channel coefficient (times the window size for sums), plus
    the bias."""
    kh, kw = layer.kernel_size
    coef = np.asarray(layer.params["weight"], dtype=np.float64)
    if layer.mode == "sum":
        coef = coef * (kh * kw)
    y = ctx.node("AveragePool", inputs[:1], kernel_shape=layer.kernel_size,
                 strides=layer.kernel_size)
    y = ctx.node("Mul", [y, ctx.constant(coef.reshape(1, -1, 1, 1), "coefficient")])
    if layer.params.get("bias") is not None:
        y = ctx.node("Add", [y, ctx.constant(np.reshape(layer.params["bias"], (1, -1, 1, 1)),
                                             "bias")])
    return y


@hookimpl
def cnnkit_register_onnx_exporters(register):
    register("maxpool2d", export_maxpool2d_onnx)
    register("avgpool2d", export_avgpool2d_onnx)
    register("globalavgpool2d", export_globalavgpool2d_onnx)
    register("globalmaxpool2d", export_globalmaxpool2d_onnx)
    register("subsampling", export_subsampling_onnx)
