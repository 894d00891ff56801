"""The fully connected layer (variants: ``cnnkit.builtin``, layer type ``dense``)."""
from __future__ import annotations

import numpy as np

from .._checks import positive_int
from .base import Layer, _init_weight_and_bias

__all__ = ["Dense"]


class Dense(Layer):
    """Fully connected layer: y = x @ W.T + b with W of shape (out_features, in_features)."""

    layer_type = "dense"
    FEATURES = ("bias",)
    input_rank = 2

    def __init__(self, in_features, out_features, bias=True, *, weight_init="he_uniform",
                 bias_init="zeros", dtype=np.float32, rng=None, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (Dense)"
        self.in_features = positive_int(in_features, "in_features", owner)
        self.out_features = positive_int(out_features, "out_features", owner)
        _init_weight_and_bias(self, (self.out_features, self.in_features), (self.out_features,),
                              self.in_features, self.out_features, bias=bias,
                              weight_init=weight_init, bias_init=bias_init, dtype=dtype, rng=rng,
                              owner=owner)

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.params["bias"] is not None}

    def features(self):
        return ("bias",) if self.params["bias"] is not None else ()

    def output_shape(self, input_shape):
        self.check_input_shape(input_shape)
        if input_shape[1] != self.in_features:
            raise ValueError(f"{self.name} (Dense): expected {self.in_features} input features, "
                             f"got shape {tuple(input_shape)}")
        return (input_shape[0], self.out_features)
