"""Convolution layers: Conv2D and ConvTranspose2D (variants: ``cnnkit.builtin``, layer types
``conv2d`` and ``convtranspose2d``)."""
from __future__ import annotations

import numpy as np

from .._checks import pair, positive_int
from .._shapes import conv_output_size, conv_transpose_output_size, same_padding
from .base import Layer, _check_conv_input, _conv_features, _init_weight_and_bias


def _set_channels_kernel_stride(layer, in_channels, out_channels, kernel_size, stride, owner):
    layer.in_channels = positive_int(in_channels, "in_channels", owner)
    layer.out_channels = positive_int(out_channels, "out_channels", owner)
    layer.kernel_size = pair(kernel_size, "kernel_size", owner)
    layer.stride = pair(stride, "stride", owner)

__all__ = ["Conv2D", "ConvTranspose2D"]


def _check_groups(layer, owner):
    if layer.in_channels % layer.groups or layer.out_channels % layer.groups:
        raise ValueError(f"{owner}: in_channels ({layer.in_channels}) and out_channels "
                         f"({layer.out_channels}) must both be divisible by groups "
                         f"({layer.groups})")


class Conv2D(Layer):
    """2-D cross-correlation over NCHW input, PyTorch's weight layout (out, in/groups, kh, kw).

    ``padding`` is an int, an (h, w) pair, ``"valid"`` (0) or ``"same"`` (output size
    ceil(input / stride); odd padding puts the extra row/column at the bottom/right, as PyTorch
    and TensorFlow do).  ``config["padding"]`` is (top, bottom, left, right); with ``"same"``
    it depends on the input size and is resolved per input shape (:meth:`resolve`).
    """

    layer_type = "conv2d"
    FEATURES = ("stride", "padding", "asymmetric_padding", "dilation", "groups", "bias")
    input_rank = 4

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, weight_init="he_uniform", bias_init="zeros",
                 dtype=np.float32, rng=None, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (Conv2D)"
        _set_channels_kernel_stride(self, in_channels, out_channels, kernel_size, stride, owner)
        self.dilation = pair(dilation, "dilation", owner)
        self.groups = positive_int(groups, "groups", owner)
        _check_groups(self, owner)
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"{owner}: padding must be 'valid', 'same', an int or a pair, "
                                 f"got {padding!r}")
            self.padding = padding
        else:
            self.padding = pair(padding, "padding", owner, minimum=0)
        kh, kw = self.kernel_size
        cin_g = self.in_channels // self.groups
        _init_weight_and_bias(self, (self.out_channels, cin_g, kh, kw), (self.out_channels,),
                              cin_g * kh * kw, self.out_channels * kh * kw, bias=bias,
                              weight_init=weight_init, bias_init=bias_init, dtype=dtype, rng=rng,
                              owner=owner)
        ph, pw = (0, 0) if isinstance(self.padding, str) else self.padding
        # kernel size and channels, for the supports() checks of variants limited to some
        # kernels or sizes (winograd: 3x3 only, picked automatically from 16 channels)
        self.config = {"stride": self.stride, "padding": (ph, ph, pw, pw),
                       "dilation": self.dilation, "groups": self.groups,
                       "kernel_size": self.kernel_size,
                       "channels": (self.in_channels, self.out_channels)}

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride,
                "padding": self.padding, "dilation": self.dilation, "groups": self.groups,
                "bias": self.params["bias"] is not None}

    def _resolve_padding(self, h, w):
        """(top, bottom, left, right) padding for an h x w input."""
        if self.padding == "same":
            return (same_padding(h, self.kernel_size[0], self.stride[0], self.dilation[0])
                    + same_padding(w, self.kernel_size[1], self.stride[1], self.dilation[1]))
        return self.config["padding"]

    def _resolve(self, input_shape):
        if self.padding != "same":
            return self.config, self.features()
        pads = self._resolve_padding(input_shape[2], input_shape[3])
        return dict(self.config, padding=pads), self._features_for(pads)

    def _features_for(self, padding):
        pt, pb, pl, pr = padding
        return _conv_features(self, padding=any(padding), asymmetric_padding=pt != pb or pl != pr)

    def features(self):
        return self._features_for(self.config["padding"])

    def output_shape(self, input_shape):
        owner = f"{self.name} (Conv2D)"
        n, c, h, w = _check_conv_input(self, input_shape, owner)
        pt, pb, pl, pr = self._resolve_padding(h, w)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        oh = conv_output_size(h, pt, pb, kh, sh, dh)
        ow = conv_output_size(w, pl, pr, kw, sw, dw)
        if oh < 1 or ow < 1:
            raise ValueError(f"{owner}: (dilated) kernel {dh * (kh - 1) + 1}x{dw * (kw - 1) + 1} "
                             f"is larger than the padded input {h + pt + pb}x{w + pl + pr} (input "
                             f"shape {tuple(input_shape)})")
        return (n, self.out_channels, oh, ow)


class ConvTranspose2D(Layer):
    """Transposed 2-D convolution (the gradient of Conv2D w.r.t. its input), PyTorch's
    ``conv_transpose2d``: weight (in, out/groups, kh, kw), output size
    ``(H - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1``.

    The default initialisation follows PyTorch's fan convention for transposed convolutions
    (fan_in = out/groups * kh * kw, from the weight's second axis).
    """

    layer_type = "convtranspose2d"
    FEATURES = ("stride", "padding", "output_padding", "dilation", "groups", "bias")
    input_rank = 4

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, *, weight_init="he_uniform",
                 bias_init="zeros", dtype=np.float32, rng=None, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (ConvTranspose2D)"
        _set_channels_kernel_stride(self, in_channels, out_channels, kernel_size, stride, owner)
        self.padding = pair(padding, "padding", owner, minimum=0)
        self.output_padding = pair(output_padding, "output_padding", owner, minimum=0)
        self.dilation = pair(dilation, "dilation", owner)
        self.groups = positive_int(groups, "groups", owner)
        _check_groups(self, owner)
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):
                raise ValueError(f"{owner}: output_padding {self.output_padding} must be smaller "
                                 f"than stride {self.stride} or dilation {self.dilation}")
        kh, kw = self.kernel_size
        cout_g = self.out_channels // self.groups
        # PyTorch's transposed-convolution fans: fan_in from the weight's second axis
        _init_weight_and_bias(self, (self.in_channels, cout_g, kh, kw), (self.out_channels,),
                              cout_g * kh * kw, self.in_channels * kh * kw, bias=bias,
                              weight_init=weight_init, bias_init=bias_init, dtype=dtype, rng=rng,
                              owner=owner)
        self.config = {"stride": self.stride, "padding": self.padding,
                       "output_padding": self.output_padding, "dilation": self.dilation,
                       "groups": self.groups}

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "output_padding": self.output_padding, "groups": self.groups,
                "bias": self.params["bias"] is not None, "dilation": self.dilation}

    def features(self):
        return _conv_features(self, padding=self.padding != (0, 0),
                              output_padding=self.output_padding != (0, 0))

    def output_shape(self, input_shape):
        owner = f"{self.name} (ConvTranspose2D)"
        n, c, h, w = _check_conv_input(self, input_shape, owner)
        out = [conv_transpose_output_size(size, k, s, p, op, d)
               for size, k, s, p, op, d in zip((h, w), self.kernel_size, self.stride,
                                               self.padding, self.output_padding, self.dilation)]
        if min(out) < 1:
            raise ValueError(f"{owner}: padding {self.padding} leaves no output for input shape "
                             f"{tuple(input_shape)} (output would be {out[0]}x{out[1]})")
        return (n, self.out_channels, out[0], out[1])
