"""Pooling layers: MaxPool2D, AvgPool2D, GlobalAvgPool2D and LeNet-5's trainable Subsampling
(variants: ``cnnkit.builtin``, layer types ``maxpool2d``, ``avgpool2d``, ``globalavgpool2d``,
``subsampling``)."""
from __future__ import annotations

import numpy as np

from .._checks import pair, positive_int
from .._shapes import pool_output_size
from .base import Layer, _check_planes, _init_weight_and_bias

__all__ = ["MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Subsampling"]


class _Pool2D(Layer):
    FEATURES = ("stride", "padding", "ceil_mode")
    input_rank = 4

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, *, impl=None,
                 name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} ({type(self).__name__})"
        self.kernel_size = pair(kernel_size, "kernel_size", owner)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", owner)
        self.padding = pair(padding, "padding", owner, minimum=0)
        if self.padding[0] * 2 > self.kernel_size[0] or self.padding[1] * 2 > self.kernel_size[1]:
            raise ValueError(f"{owner}: padding {self.padding} must be at most half the kernel "
                             f"size {self.kernel_size}")
        self.ceil_mode = bool(ceil_mode)
        self.config = {"kernel_size": self.kernel_size, "stride": self.stride,
                       "padding": self.padding, "ceil_mode": self.ceil_mode}

    def get_config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "ceil_mode": self.ceil_mode}

    def features(self):
        f = []
        if self.stride != self.kernel_size:
            f.append("stride")
        if self.padding != (0, 0):
            f.append("padding")
        if self.ceil_mode:
            f.append("ceil_mode")
        return tuple(f)

    def output_shape(self, input_shape):
        owner = f"{self.name} ({type(self).__name__})"
        self.check_input_shape(input_shape)
        _check_planes(input_shape, owner)
        n, c, h, w = input_shape
        out = [pool_output_size(size, k, s, p, self.ceil_mode)
               for size, k, s, p in zip((h, w), self.kernel_size, self.stride, self.padding)]
        if min(out) < 1:
            raise ValueError(f"{owner}: pooling window {self.kernel_size} is larger than the "
                             f"padded input {h + 2 * self.padding[0]}x{w + 2 * self.padding[1]} "
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
                 count_include_pad=True, *, impl=None, name=None):
        super().__init__(kernel_size, stride, padding, ceil_mode, impl=impl, name=name)
        self.count_include_pad = bool(count_include_pad)
        self.config = dict(self.config, count_include_pad=self.count_include_pad)

    def get_config(self):
        return dict(super().get_config(), count_include_pad=self.count_include_pad)

    def features(self):
        f = super().features()
        return f + (("count_include_pad",) if not self.count_include_pad else ())


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
