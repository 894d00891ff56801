"""The fully connected layers (variants: ``cnnkit.builtin``): ``dense``, and ``rbfoutput``,
LeNet-5's (1998) Euclidean radial-basis output units."""
from __future__ import annotations

import numpy as np

from .. import _random
from .._checks import positive_int
from .base import Layer, _check_dtype, _init_weight_and_bias

__all__ = ["Dense", "RBFOutput"]


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


class RBFOutput(Layer):
    """Euclidean radial-basis output units (LeCun et al. 1998, LeNet-5's output layer): for an
    input (N, F), y[n, k] = sum_f (x[n, f] - codes[k, f])**2, the squared distance to class
    k's code.  The predicted class is the nearest code (the smallest output), so the layer
    declares ``lower_is_better``; train it with :class:`~cnnkit.losses.RBFEuclideanLoss`.

    ``codes``: a (num_classes, in_features) array given by the user (the paper's 7x12 bitmaps
    of the characters, with -1/+1 pixels), or None to draw random -1/+1 codes from ``seed``
    (the same seed gives the same codes).  The codes are the layer's parameter ``"codes"``
    (saved with the weights) and stay fixed: the layer is not trainable unless
    ``trainable=True``.
    """

    layer_type = "rbfoutput"
    input_rank = 2
    #: the output is a distance: the predicted class is its arg-min (see
    #: :func:`cnnkit.metrics.class_scores`)
    lower_is_better = True

    def __init__(self, in_features, num_classes, codes=None, *, seed=0, trainable=False,
                 dtype=np.float32, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (RBFOutput)"
        self.in_features = positive_int(in_features, "in_features", owner)
        self.num_classes = positive_int(num_classes, "num_classes", owner)
        dtype = _check_dtype(dtype, owner)
        shape = (self.num_classes, self.in_features)
        if codes is None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise TypeError(f"{owner}: seed must be a non-negative int, got {seed!r}")
            self.seed = int(seed)
            rng = _random.generator(self.seed)
            arr = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
            self._user_codes = False
        else:
            try:
                arr = np.array(codes, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{owner}: codes must be a numeric (num_classes, in_features) "
                                f"array, got {type(codes).__name__}") from exc
            if arr.shape != shape:
                raise ValueError(f"{owner}: codes has shape {arr.shape}, expected (num_classes, "
                                 f"in_features) = {shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{owner}: codes contain NaN or Inf")
            self.seed = None
            self._user_codes = True
        self.params["codes"] = np.ascontiguousarray(arr, dtype=dtype)
        self._param_shapes = {"codes": shape}
        self.trainable = trainable

    def get_config(self):
        cfg = {"in_features": self.in_features, "num_classes": self.num_classes}
        if self._user_codes:
            cfg["codes"] = self.params["codes"].tolist()
        else:
            cfg["seed"] = self.seed
        if self.trainable:
            cfg["trainable"] = True
        return cfg

    def output_shape(self, input_shape):
        self.check_input_shape(input_shape)
        if input_shape[1] != self.in_features:
            raise ValueError(f"{self.name} (RBFOutput): expected {self.in_features} input "
                             f"features, got shape {tuple(input_shape)}")
        return (input_shape[0], self.num_classes)
