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
