"""The merge family's built-in plugin: ``add`` (:class:`~cnnkit.layers.Add`) and ``concat``
(:class:`~cnnkit.layers.Concat`).  Both take a list of inputs and are computed by the layer
itself (a sum or a ``numpy.concatenate``), so they register no variants.
"""
from __future__ import annotations

from cnnkit.layers import Add, Concat
from cnnkit.plugins import hookimpl


@hookimpl
def cnnkit_register_layers(register):
    register("add", Add)
    register("concat", Concat)


# ONNX export (cnnkit.onnx.export): Add in the order the layer sums, Concat
def export_add_onnx(ctx, layer, inputs, input_shapes):
    y = ctx.node("Add", inputs[:2])
    for x in inputs[2:]:
        y = ctx.node("Add", [y, x])
    return y


def export_concat_onnx(ctx, layer, inputs, input_shapes):
    return ctx.node("Concat", list(inputs), axis=layer.axis)


@hookimpl
def cnnkit_register_onnx_exporters(register):
    register("add", export_add_onnx)
    register("concat", export_concat_onnx)
