"""Pooling layers: MaxPool2D, AvgPool2D, GlobalAvgPool2D, GlobalMaxPool2D and LeNet-5's
trainable Subsampling (variants: ``cnnkit.builtin``, layer types ``maxpool2d``, ``avgpool2d``,
``globalavgpool2d``, ``globalmaxpool2d``, ``subsampling``)."""
from __future__ import annotations

import numpy as np

from .._checks import pair, positive_int
from .._shapes import pool_output_size
from .base import Layer, _check_planes, _init_weight_and_bias

__all__ = ["MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "GlobalMaxPool2D", "Subsampling"]


def _pool_padding(padding, owner):
    """((top, bottom), (left, right)) from an int, an (h, w) pair or that nested form."""
    if (isinstance(padding, (tuple, list)) and len(padding) == 2
            and all(isinstance(p, (tuple, list)) for p in padding)):
        (top, bottom), (left, right) = (pair(p, "padding", owner, minimum=0) for p in padding)
        return (top, bottom), (left, right)
    ph, pw = pair(padding, "padding", owner, minimum=0)
    return (ph, ph), (pw, pw)


class _Pool2D(Layer):
    """``padding``: an int, an (h, w) pair, or ((top, bottom), (left, right)) for padding that
    differs between the sides (ONNX's asymmetric pads, TensorFlow's "SAME").  Each side's
    padding is at most half the (dilated) window.  ``dilation`` spaces the window's taps as in
    ``torch.nn.MaxPool2d``.  ``config["padding"]`` holds the (top, left) padding;
    ``config["padding_after"]`` (bottom, right) and ``config["dilation"]`` are present only
    when they differ from it and from 1."""

    FEATURES = ("stride", "padding", "ceil_mode", "asymmetric_padding", "dilation")
    input_rank = 4

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, *, dilation=1,
                 impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} ({type(self).__name__})"
        self.kernel_size = pair(kernel_size, "kernel_size", owner)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", owner)
        self.dilation = pair(dilation, "dilation", owner)
        (top, bottom), (left, right) = _pool_padding(padding, owner)
        for pads, k, d in (((top, bottom), self.kernel_size[0], self.dilation[0]),
                           ((left, right), self.kernel_size[1], self.dilation[1])):
            if 2 * max(pads) > d * (k - 1) + 1:
                raise ValueError(f"{owner}: padding {padding!r} must be at most half the "
                                 f"kernel size {self.kernel_size}"
                                 + (f" (dilation {self.dilation})" if d > 1 else ""))
        self.padding = (top, left)
        self.padding_after = (bottom, right)
        self.ceil_mode = bool(ceil_mode)
        self.config = {"kernel_size": self.kernel_size, "stride": self.stride,
                       "padding": self.padding, "ceil_mode": self.ceil_mode}
        if self.padding_after != self.padding:
            self.config["padding_after"] = self.padding_after
        if self.dilation != (1, 1):
            self.config["dilation"] = self.dilation

    def get_config(self):
        padding = (self.padding if self.padding_after == self.padding else
                   ((self.padding[0], self.padding_after[0]),
                    (self.padding[1], self.padding_after[1])))
        config = {"kernel_size": self.kernel_size, "stride": self.stride, "padding": padding,
                  "ceil_mode": self.ceil_mode}
        if self.dilation != (1, 1):
            config["dilation"] = self.dilation
        return config

    def features(self):
        f = []
        if self.stride != self.kernel_size:
            f.append("stride")
        if self.padding != (0, 0) or self.padding_after != (0, 0):
            f.append("padding")
        if self.ceil_mode:
            f.append("ceil_mode")
        if self.padding_after != self.padding:
            f.append("asymmetric_padding")
        if self.dilation != (1, 1):
            f.append("dilation")
        return tuple(f)

    def output_shape(self, input_shape):
        owner = f"{self.name} ({type(self).__name__})"
        self.check_input_shape(input_shape)
        _check_planes(input_shape, owner)
        n, c, h, w = input_shape
        out = [pool_output_size(size, k, s, p, self.ceil_mode, pa, d)
               for size, k, s, p, pa, d in zip((h, w), self.kernel_size, self.stride,
                                               self.padding, self.padding_after, self.dilation)]
        if min(out) < 1:
            raise ValueError(f"{owner}: pooling window {self.kernel_size} (dilation "
                             f"{self.dilation}) is larger than the padded input "
                             f"{h + self.padding[0] + self.padding_after[0]}x"
                             f"{w + self.padding[1] + self.padding_after[1]} "
                             f"(input shape {tuple(input_shape)})")
        return (n, c, out[0], out[1])


class MaxPool2D(_Pool2D):
    """Max pooling; backward routes the gradient through the recorded argmax."""

    layer_type = "maxpool2d"


class AvgPool2D(_Pool2D):
    """Average pooling (``count_include_pad`` as in PyTorch)."""

    layer_type = "avgpool2d"
    FEATURES = _Pool2D.FEATURES + ("count_include_pad",)

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, *, dilation=1, impl=None, name=None):
        super().__init__(kernel_size, stride, padding, ceil_mode, dilation=dilation, impl=impl,
                         name=name)
        self.count_include_pad = bool(count_include_pad)
        self.config = dict(self.config, count_include_pad=self.count_include_pad)

    def get_config(self):
        config = super().get_config()
        config["count_include_pad"] = self.count_include_pad
        return config

    def features(self):
        f = super().features()
        return f + (("count_include_pad",) if not self.count_include_pad else ())


class GlobalMaxPool2D(Layer):
    """Maximum over each channel's plane: (N, C, H, W) -> (N, C) (``adaptive_max_pool2d(x, 1)``
    flattened); the gradient goes to the plane's first maximum (row-major), a NaN winning."""

    layer_type = "globalmaxpool2d"
    input_rank = 4

    def output_shape(self, input_shape):
        self.check_input_shape(input_shape)
        _check_planes(input_shape, f"{self.name} (GlobalMaxPool2D)")
        return (input_shape[0], input_shape[1])


class GlobalAvgPool2D(Layer):
    """Mean over each channel's plane: (N, C, H, W) -> (N, C) (``adaptive_avg_pool2d(x, 1)``
    flattened)."""

    layer_type = "globalavgpool2d"
    input_rank = 4

    def output_shape(self, input_shape):
        self.check_input_shape(input_shape)
        _check_planes(input_shape, f"{self.name} (GlobalAvgPool2D)")
        return (input_shape[0], input_shape[1])


class Subsampling(Layer):
    """LeNet-5's trainable subsampling (LeCun et al., 1998): per channel, the sum (``mode="sum"``)
    or mean (``mode="average"``) of non-overlapping ``kernel_size`` windows (stride = kernel,
    rows/columns that do not fill a window are dropped), times a trainable coefficient
    ``weight`` (C,), plus a trainable ``bias`` (C,).

    Default initialisation: coefficient 1, bias 0, so the layer starts as plain sum or average
    pooling and training moves it from there.  The 1998 paper instead drew every trainable
    weight uniformly in +-2.4 / fan_in (fan_in = kh * kw here); pass
    ``weight_init=("uniform", {"a": -0.6, "b": 0.6})`` for that with 2x2 windows.
    """

    layer_type = "subsampling"
    FEATURES = ("bias",)
    input_rank = 4

    def __init__(self, channels, kernel_size=2, mode="sum", bias=True, *,
                 weight_init=("constant", {"value": 1.0}), bias_init="zeros", dtype=np.float32,
                 rng=None, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (Subsampling)"
        self.channels = positive_int(channels, "channels", owner)
        self.kernel_size = pair(kernel_size, "kernel_size", owner)
        if mode not in ("sum", "average"):
            raise ValueError(f"{owner}: mode must be 'sum' or 'average', got {mode!r}")
        self.mode = mode
        fan = self.kernel_size[0] * self.kernel_size[1]
        _init_weight_and_bias(self, (self.channels,), (self.channels,), fan, fan, bias=bias,
                              weight_init=weight_init, bias_init=bias_init, dtype=dtype, rng=rng,
                              owner=owner)
        self.config = {"kernel_size": self.kernel_size, "mode": mode}

    def get_config(self):
        return {"channels": self.channels, "kernel_size": self.kernel_size, "mode": self.mode,
                "bias": self.params["bias"] is not None}

    def features(self):
        return ("bias",) if self.params["bias"] is not None else ()

    def output_shape(self, input_shape):
        owner = f"{self.name} (Subsampling)"
        self.check_input_shape(input_shape)
        n, c, h, w = input_shape
        if c != self.channels:
            raise ValueError(f"{owner}: expected {self.channels} channels, got shape "
                             f"{tuple(input_shape)}")
        kh, kw = self.kernel_size
        if h < kh or w < kw:
            raise ValueError(f"{owner}: window {self.kernel_size} is larger than the input "
                             f"(shape {tuple(input_shape)})")
        # non-overlapping windows: a pooling with stride = kernel, no padding, floor mode
        return (n, c, pool_output_size(h, kh, kh, 0, False), pool_output_size(w, kw, kw, 0, False))
