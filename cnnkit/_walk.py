"""One inference pass layer by layer, for tools that need what each layer receives or gives
(data-driven initialisation, feature-map pictures): :func:`run_layers`."""
from __future__ import annotations

import numpy as np


def run_layers(model, x, before=None, *, who="run_layers"):
    """Run the single-input ``model`` on ``x`` (inference mode) one layer at a time, in the
    graph's order; ``before(layer, input)`` is called before each layer computes (a merge
    layer gets its list of inputs).  Returns [(layer, output)] in that order."""
    from .graph import Input  # the graph imports the layers, which import the callers

    x = np.asarray(x)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{who}: expected a non-empty batch of inputs, got shape {x.shape}")
    if getattr(model, "_built", True) is False:
        model.build(x.shape[1:])
    if len(model.inputs) != 1:
        raise ValueError(f"{who}: supports single-input models")
    values = {model.inputs[0]: x.astype(model.dtype, copy=False)}
    outputs = []
    for node in model.nodes:
        if isinstance(node, Input):
            continue
        layer = node.layer
        inputs = [values[p] for p in node.inputs]
        arg = inputs if layer.is_merge else inputs[0]
        if before is not None:
            before(layer, arg)
        values[node] = layer.forward(arg, training=False)
        outputs.append((layer, values[node]))
    return outputs
