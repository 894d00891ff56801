"""The reshape family's built-in plugin: ``flatten`` (:class:`~cnnkit.layers.Flatten`, computed
by the layer itself: a reshape needs no kernel) and ``zeropad2d``
(:class:`~cnnkit.layers.ZeroPad2D`, one ``"numpy"`` variant: ``numpy.pad`` is a copy already).
"""
from __future__ import annotations

import numpy as np

from cnnkit.layers import Flatten, ZeroPad2D
from cnnkit.plugins import hookimpl

__all__ = ["ZeroPad2dNumpy"]


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


@hookimpl
def cnnkit_register_layers(register):
    register("flatten", Flatten)
    register("zeropad2d", ZeroPad2D)


@hookimpl
def cnnkit_register_variants(register):
    register("zeropad2d", "numpy", ZeroPad2dNumpy, priority=0, dtypes=("float32", "float64"),
             capabilities=ZeroPad2D.FEATURES, description="numpy.pad")


# ---------------------------------------------------------------------------------------------
# ONNX export (cnnkit.onnx.export)
# ---------------------------------------------------------------------------------------------
def export_flatten_onnx(ctx, layer, inputs, input_shapes):
    return ctx.node("Flatten", inputs[:1], axis=1)


def export_zeropad2d_onnx(ctx, layer, inputs, input_shapes):
    top, bottom, left, right = layer.config["padding"]
    pads = np.array([0, 0, top, left, 0, 0, bottom, right], dtype=np.int64)
    return ctx.node("Pad", [inputs[0], ctx.constant(pads, "pads")], mode="constant")


@hookimpl
def cnnkit_register_onnx_exporters(register):
    register("flatten", export_flatten_onnx)
    register("zeropad2d", export_zeropad2d_onnx)
