"""Merge layers: Add and Concat take a list of inputs and return a list of input gradients
(no variants: a sum and a copy)."""
from __future__ import annotations

import numpy as np

from .._checks import is_int
from .._shapes import fmt_shape
from .base import FLOAT_DTYPES, Layer, _axis

__all__ = ["Add", "Concat"]


def _check_inputs(xs, owner):
    if not isinstance(xs, (list, tuple)) or len(xs) < 2:
        raise ValueError(f"{owner}: expects a list of at least two arrays")
    for x in xs:
        if not isinstance(x, np.ndarray) or x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{owner}: inputs must be float32/float64 numpy arrays")
        if x.dtype != xs[0].dtype:
            raise TypeError(f"{owner}: inputs have different dtypes {xs[0].dtype} and {x.dtype}")


class Add(Layer):
    """Element-wise sum of two or more inputs of the same shape (residual connections)."""

    layer_type = "add"
    is_merge = True

    def output_shape(self, input_shapes):
        if not isinstance(input_shapes, list) or len(input_shapes) < 2:
            raise ValueError(f"{self.name} (Add): expects a list of at least two inputs")
        first = input_shapes[0]
        for s in input_shapes[1:]:
            if tuple(s) != tuple(first):
                raise ValueError(f"{self.name} (Add): all inputs must have the same shape, got "
                                 + " and ".join(fmt_shape(x) for x in input_shapes))
        return tuple(first)

    def variant(self, dtype=np.float32, input_shape=None):
        return None

    def forward(self, xs, training=None):
        _check_inputs(xs, f"{self.name} (Add)")
        self.output_shape([x.shape for x in xs])
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out += x
        training = self.training if training is None else bool(training)
        self._ctx = (len(xs), out.shape, out.dtype) if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        if self._ctx is None:
            raise RuntimeError(f"{self.name} (Add): backward() needs a forward(x, training=True) "
                               "first")
        n, shape, dtype = self._ctx
        if not isinstance(dy, np.ndarray) or dy.shape != shape:
            raise ValueError(f"{self.name} (Add): gradient shape {getattr(dy, 'shape', None)} does "
                             f"not match the output shape {shape}")
        self._ctx = None
        self.grads = {}
        return [dy.astype(dtype, copy=False)] * n


class Concat(Layer):
    """Concatenate two or more inputs along ``axis`` (default 1, channels); every other axis
    must agree.  A merge layer like :class:`Add`; no variants (a copy)."""

    layer_type = "concat"
    is_merge = True

    def __init__(self, axis=1, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        if not is_int(axis):
            raise TypeError(f"{self.name} (Concat): axis must be an int, got {axis!r}")
        self.axis = int(axis)
        self.config = {"axis": self.axis}

    def get_config(self):
        return {"axis": self.axis}

    def output_shape(self, input_shapes):
        owner = f"{self.name} (Concat)"
        if not isinstance(input_shapes, list) or len(input_shapes) < 2:
            raise ValueError(f"{owner}: expects a list of at least two inputs")
        shapes = [tuple(s) for s in input_shapes]
        ndim = len(shapes[0])
        if any(len(s) != ndim for s in shapes):
            raise ValueError(f"{owner}: all inputs must have the same rank, got "
                             + " and ".join(fmt_shape(s) for s in shapes))
        a = _axis(self.axis, ndim, owner)
        for s in shapes[1:]:
            if any(s[i] != shapes[0][i] for i in range(1, ndim) if i != a):
                raise ValueError(f"{owner}: inputs must match on every axis but {a}, got "
                                 + " and ".join(fmt_shape(x) for x in shapes))
        total = sum(s[a] for s in shapes)
        return shapes[0][:a] + (total,) + shapes[0][a + 1:]

    def variant(self, dtype=np.float32, input_shape=None):
        return None

    def forward(self, xs, training=None):
        owner = f"{self.name} (Concat)"
        _check_inputs(xs, owner)
        self.output_shape([x.shape for x in xs])
        if len({x.shape[0] for x in xs}) != 1:
            raise ValueError(f"{owner}: inputs have different batch sizes: "
                             + " and ".join(str(x.shape) for x in xs))
        a = _axis(self.axis, xs[0].ndim, owner)
        out = np.concatenate(xs, axis=a)
        training = self.training if training is None else bool(training)
        self._ctx = (a, [x.shape[a] for x in xs], out.shape, out.dtype) if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        owner = f"{self.name} (Concat)"
        if self._ctx is None:
            raise RuntimeError(f"{owner}: backward() needs a forward(x, training=True) first")
        a, sizes, shape, dtype = self._ctx
        if not isinstance(dy, np.ndarray) or dy.shape != shape:
            raise ValueError(f"{owner}: gradient shape {getattr(dy, 'shape', None)} does not "
                             f"match the output shape {shape}")
        self._ctx = None
        self.grads = {}
        return [np.ascontiguousarray(g, dtype=dtype)
                for g in np.split(dy, np.cumsum(sizes)[:-1], axis=a)]
