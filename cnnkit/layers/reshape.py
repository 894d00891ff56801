"""Layers that only move or pad values: Flatten (a reshape, no variants), ZeroPad2D, Pad2D and
Upsample2D (variants: ``cnnkit.builtin``, layer types ``zeropad2d``, ``pad2d``,
``upsample2d``)."""
from __future__ import annotations

import math

import numpy as np

from .._checks import is_int, pair, real
from .base import Layer, _check_planes

__all__ = ["Flatten", "ZeroPad2D", "Pad2D", "Upsample2D"]


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


def _lrtb(padding, owner):
    """(left, right, top, bottom) from an int, an (h, w) pair or that 4-tuple."""
    if is_int(padding):
        return (int(padding),) * 4
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(map(is_int, padding)):
        return (int(padding[1]), int(padding[1]), int(padding[0]), int(padding[0]))
    if isinstance(padding, (tuple, list)) and len(padding) == 4 and all(map(is_int, padding)):
        return tuple(int(v) for v in padding)
    raise TypeError(f"{owner}: padding must be an int, an (h, w) pair or (left, right, top, "
                    f"bottom), got {padding!r}")


class ZeroPad2D(Layer):
    """Pad the last two axes with zeros.  ``padding``: an int (all sides), an (h, w) pair (top
    and bottom h, left and right w) or PyTorch's (left, right, top, bottom)."""

    layer_type = "zeropad2d"
    input_rank = 4

    def __init__(self, padding, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (ZeroPad2D)"
        lrtb = _lrtb(padding, owner)
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


#: Pad2D's modes, named as ``torch.nn.functional.pad`` names them
PAD_MODES = ("constant", "reflect", "replicate")


class Pad2D(Layer):
    """Pad the last two axes, ``torch.nn.functional.pad``'s rules: ``mode="constant"`` (with
    ``value``), ``"reflect"`` (mirror without repeating the edge; each side's padding smaller
    than the axis) or ``"replicate"`` (repeat the edge; ONNX's ``"edge"``).  ``padding`` as
    :class:`ZeroPad2D`'s: an int, an (h, w) pair or (left, right, top, bottom).  A negative
    padding crops that side first (as ONNX's Pad and ``F.pad`` do)."""

    layer_type = "pad2d"
    input_rank = 4

    def __init__(self, padding, mode="constant", value=0.0, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (Pad2D)"
        self.padding = _lrtb(padding, owner)
        if mode not in PAD_MODES:
            raise ValueError(f"{owner}: mode must be one of {', '.join(PAD_MODES)}, got "
                             f"{mode!r}")
        self.mode = mode
        self.value = real(value, "value", owner)
        if mode != "constant" and self.value != 0.0:
            raise ValueError(f"{owner}: value is used by mode 'constant' only, got mode {mode!r}")
        left, right, top, bottom = self.padding
        self.config = {"padding": (top, bottom, left, right), "mode": mode, "value": self.value}

    def get_config(self):
        return {"padding": self.padding, "mode": self.mode, "value": self.value}

    def output_shape(self, input_shape):
        owner = f"{self.name} (Pad2D)"
        self.check_input_shape(input_shape)
        n, c, h, w = input_shape
        left, right, top, bottom = self.padding
        kept = (h - max(-top, 0) - max(-bottom, 0), w - max(-left, 0) - max(-right, 0))
        if min(kept) < 1:
            raise ValueError(f"{owner}: negative padding {self.padding} crops the whole input "
                             f"(shape {tuple(input_shape)})")
        if self.mode == "reflect" and (max(top, bottom) >= kept[0] or max(left, right) >= kept[1]):
            raise ValueError(f"{owner}: reflect padding {self.padding} must be smaller than the "
                             f"padded axes ({kept[0]}x{kept[1]} for input shape "
                             f"{tuple(input_shape)})")
        return (n, c, h + top + bottom, w + left + right)


class Upsample2D(Layer):
    """Nearest-neighbour upsampling by integer factors: every pixel repeated ``scale_factor``
    times along H and W (``torch.nn.Upsample(scale_factor=s, mode="nearest")``)."""

    layer_type = "upsample2d"
    input_rank = 4

    def __init__(self, scale_factor=2, mode="nearest", *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (Upsample2D)"
        self.scale_factor = pair(scale_factor, "scale_factor", owner)
        if mode != "nearest":
            raise ValueError(f"{owner}: mode must be 'nearest', got {mode!r}")
        self.mode = mode
        self.config = {"scale_factor": self.scale_factor}

    def get_config(self):
        return {"scale_factor": self.scale_factor, "mode": self.mode}

    def output_shape(self, input_shape):
        self.check_input_shape(input_shape)
        _check_planes(input_shape, f"{self.name} (Upsample2D)")
        n, c, h, w = input_shape
        return (n, c, h * self.scale_factor[0], w * self.scale_factor[1])
