"""Layers that only move or pad values: Flatten (a reshape, no variants) and ZeroPad2D
(variants: ``cnnkit.builtin``, layer type ``zeropad2d``)."""
from __future__ import annotations

import math

import numpy as np

from .._checks import is_int
from .base import Layer

__all__ = ["Flatten", "ZeroPad2D"]


class Flatten(Layer):
    """Flatten every axis after the batch axis; no variants (a reshape)."""

    layer_type = "flatten"

    def check_input_shape(self, shape):
        if len(shape) < 2:
            raise ValueError(f"{self.name} (Flatten): expected an input with a batch axis and at "
                             f"least one more, got shape {tuple(shape)}")

    def output_shape(self, input_shape):
        self.check_input_shape(input_shape)
        return (input_shape[0], int(math.prod(input_shape[1:])))

    def variant(self, dtype=np.float32, input_shape=None):
        return None

    def forward(self, x, training=None):
        x, res = self._prepare(x)
        training = self.training if training is None else bool(training)
        self._ctx = (None, None, x.shape, x.dtype, res) if training else None
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_input_grad=True):
        if self._ctx is None:
            raise RuntimeError(f"{self.name} (Flatten): backward() needs a forward(x, "
                               "training=True) first")
        in_shape, x_dtype, res = self._ctx[2:]
        expected = in_shape[:1] + res.output_shape
        if not isinstance(dy, np.ndarray) or dy.shape != expected:
            raise ValueError(f"{self.name} (Flatten): gradient shape "
                             f"{getattr(dy, 'shape', None)} does not match the output shape "
                             f"{expected}")
        self._ctx = None
        self.grads = {}
        return dy.astype(x_dtype, copy=False).reshape(in_shape)


class ZeroPad2D(Layer):
    """Pad the last two axes with zeros.  ``padding``: an int (all sides), an (h, w) pair (top
    and bottom h, left and right w) or PyTorch's (left, right, top, bottom)."""

    layer_type = "zeropad2d"
    input_rank = 4

    def __init__(self, padding, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (ZeroPad2D)"
        if is_int(padding):
            lrtb = (int(padding),) * 4
        elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(map(is_int, padding)):
            lrtb = (int(padding[1]), int(padding[1]), int(padding[0]), int(padding[0]))
        elif isinstance(padding, (tuple, list)) and len(padding) == 4 and all(map(is_int, padding)):
            lrtb = tuple(int(v) for v in padding)
        else:
            raise TypeError(f"{owner}: padding must be an int, an (h, w) pair or (left, right, "
                            f"top, bottom), got {padding!r}")
        if min(lrtb) < 0:
            raise ValueError(f"{owner}: padding must be >= 0, got {padding!r}")
        self.padding = lrtb
        left, right, top, bottom = lrtb
        self.config = {"padding": (top, bottom, left, right)}

    def get_config(self):
        return {"padding": self.padding}

    def output_shape(self, input_shape):
        self.check_input_shape(input_shape)
        n, c, h, w = input_shape
        left, right, top, bottom = self.padding
        return (n, c, h + top + bottom, w + left + right)
