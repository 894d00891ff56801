"""The reshape family's built-in plugin: ``flatten`` (:class:`~cnnkit.layers.Flatten`, computed
by the layer itself: a reshape needs no kernel), ``zeropad2d``, ``pad2d`` and ``upsample2d``
(one ``"numpy"`` variant each: ``numpy.pad`` and a broadcast copy are single passes already).
"""
from __future__ import annotations

import numpy as np

from cnnkit.layers import Flatten, Pad2D, Upsample2D, ZeroPad2D
from cnnkit.plugins import hookimpl

__all__ = ["ZeroPad2dNumpy", "Pad2dNumpy", "Upsample2dNumpy"]


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


_NUMPY_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


def _source_matrix(size, before, after, mode):
    """(size + before + after, size) 0/1 matrix: row i marks the input position padded
    position i copies (a zero row where a constant is written)."""
    index = np.pad(np.arange(size), (before, after), mode=_NUMPY_MODES[mode],
                   **({"constant_values": -1} if mode == "constant" else {}))
    return (index[:, None] == np.arange(size)[None, :]).astype(np.float64)


class Pad2dNumpy:
    """Cropping (negative padding), then ``numpy.pad``; backward slices the constant padding
    off, or sums each reflected/replicated position's gradient into the input position it
    copies (two small matrix products)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        top, bottom, left, right = config["padding"]
        h, w = x.shape[2:]
        crop = (max(-top, 0), h - max(-bottom, 0), max(-left, 0), w - max(-right, 0))
        xc = x[:, :, crop[0]:crop[1], crop[2]:crop[3]]
        widths = ((0, 0), (0, 0), (max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0)))
        mode = config["mode"]
        extra = {"constant_values": config["value"]} if mode == "constant" else {}
        y = np.ascontiguousarray(np.pad(xc, widths, mode=_NUMPY_MODES[mode], **extra))
        return y, ((x.shape, crop, widths, mode) if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        shape, crop, widths, mode = ctx
        h, w = crop[1] - crop[0], crop[3] - crop[2]
        if mode == "constant":  # the padding took no input values: a slice
            (top, _), (left, _) = widths[2:]
            kept = dy[:, :, top:top + h, left:left + w]
        else:
            mh = _source_matrix(h, *widths[2], mode).astype(dy.dtype)
            mw = _source_matrix(w, *widths[3], mode).astype(dy.dtype)
            kept = np.matmul(mh.T, dy @ mw)
        if kept.shape == tuple(shape):
            return np.ascontiguousarray(kept), {}
        dx = np.zeros(shape, dtype=dy.dtype)
        dx[:, :, crop[0]:crop[1], crop[2]:crop[3]] = kept
        return dx, {}


class Upsample2dNumpy:
    """Nearest upsampling as a broadcast copy; backward sums each block of copies."""

    @staticmethod
    def forward(x, params, config, need_backward):
        sh, sw = config["scale_factor"]
        n, c, h, w = x.shape
        y = np.broadcast_to(x[:, :, :, None, :, None], (n, c, h, sh, w, sw))
        return (np.ascontiguousarray(y.reshape(n, c, h * sh, w * sw)),
                ((sh, sw) if need_backward else None))

    @staticmethod
    def backward(dy, ctx):
        sh, sw = ctx
        n, c, oh, ow = dy.shape
        dx = dy.reshape(n, c, oh // sh, sh, ow // sw, sw).sum(axis=(3, 5))
        return np.ascontiguousarray(dx, dtype=dy.dtype), {}


@hookimpl
def cnnkit_register_layers(register):
    register("flatten", Flatten)
    register("zeropad2d", ZeroPad2D)
    register("pad2d", Pad2D)
    register("upsample2d", Upsample2D)


@hookimpl
def cnnkit_register_variants(register):
    register("zeropad2d", "numpy", ZeroPad2dNumpy, priority=0, dtypes=("float32", "float64"),
             capabilities=ZeroPad2D.FEATURES, description="numpy.pad")
    register("pad2d", "numpy", Pad2dNumpy, priority=0, dtypes=("float32", "float64"),
             capabilities=Pad2D.FEATURES, description="numpy.pad (constant, reflect, edge)")
    register("upsample2d", "numpy", Upsample2dNumpy, priority=0, dtypes=("float32", "float64"),
             capabilities=Upsample2D.FEATURES, description="NumPy broadcast copy")


# ---------------------------------------------------------------------------------------------
# ONNX export (cnnkit.onnx.export)
# ---------------------------------------------------------------------------------------------
def export_flatten_onnx(ctx, layer, inputs, input_shapes):
    return ctx.node("Flatten", inputs[:1], axis=1)


def export_zeropad2d_onnx(ctx, layer, inputs, input_shapes):
    top, bottom, left, right = layer.config["padding"]
    pads = np.array([0, 0, top, left, 0, 0, bottom, right], dtype=np.int64)
    return ctx.node("Pad", [inputs[0], ctx.constant(pads, "pads")], mode="constant")


def export_pad2d_onnx(ctx, layer, inputs, input_shapes):
    top, bottom, left, right = layer.config["padding"]
    pads = np.array([0, 0, top, left, 0, 0, bottom, right], dtype=np.int64)
    mode = {"replicate": "edge"}.get(layer.mode, layer.mode)
    args = [inputs[0], ctx.constant(pads, "pads")]
    if mode == "constant":
        args.append(ctx.constant(np.array(layer.value), "value"))
    return ctx.node("Pad", args, mode=mode)


def export_upsample2d_onnx(ctx, layer, inputs, input_shapes):
    """Resize, nearest, with the coordinate rule that repeats each pixel scale times."""
    scales = np.array([1, 1, *layer.scale_factor], dtype=np.float32)
    return ctx.node("Resize", [inputs[0], "", ctx.constant(scales, "scales", np.float32)],
                    mode="nearest", coordinate_transformation_mode="asymmetric",
                    nearest_mode="floor")


@hookimpl
def cnnkit_register_onnx_exporters(register):
    register("flatten", export_flatten_onnx)
    register("zeropad2d", export_zeropad2d_onnx)
    register("pad2d", export_pad2d_onnx)
    register("upsample2d", export_upsample2d_onnx)
