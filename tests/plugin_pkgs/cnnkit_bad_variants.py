"""Deliberately wrong variants, each with one classic bug, for the conformance-kit tests.

They delegate the maths to the NumPy reference and break exactly one thing, so the kit's report
must name that thing.  Registered at a very low priority: they never win automatic selection.
"""
import numpy as np

import cnnkit
from cnnkit.builtin.activation import ReluNumpy
from cnnkit.builtin.conv import Conv2dNumpy

ALL_CONV = ("stride", "padding", "asymmetric_padding", "dilation", "groups", "bias")


class Conv2dPaddingOffByOne:
    """Pads one row too many at the top and one too few at the bottom (same output shape,
    shifted values) whenever there is vertical padding."""

    @staticmethod
    def forward(x, params, config, need_backward):
        top, bottom, left, right = config["padding"]
        if top or bottom:
            top, bottom = (top + 1, bottom - 1) if bottom else (top - 1, bottom + 1)
        return Conv2dNumpy.forward(x, params, dict(config, padding=(top, bottom, left, right)),
                                   need_backward)

    backward = staticmethod(Conv2dNumpy.backward)


class Conv2dNoBiasGradient:
    """Forgets the bias gradient (returns zeros)."""

    forward = staticmethod(Conv2dNumpy.forward)

    @staticmethod
    def backward(dy, ctx):
        dx, grads = Conv2dNumpy.backward(dy, ctx)
        if "bias" in grads:
            grads["bias"] = np.zeros_like(grads["bias"])
        return dx, grads


class Conv2dDropsLastGroupDx:
    """The input gradient misses the last group's channels when groups > 1."""

    forward = staticmethod(Conv2dNumpy.forward)

    @staticmethod
    def backward(dy, ctx):
        dx, grads = Conv2dNumpy.backward(dy, ctx)
        groups = ctx[3]["groups"]
        if groups > 1:
            dx = dx.copy()
            dx[:, dx.shape[1] - dx.shape[1] // groups:] = 0
        return dx, grads


class Conv2dIgnoresDilation:
    """Declares dilation but computes an undilated convolution."""

    @staticmethod
    def forward(x, params, config, need_backward):
        return Conv2dNumpy.forward(x, params, dict(config, dilation=(1, 1)), need_backward)

    backward = staticmethod(Conv2dNumpy.backward)


class ReluMutatesInput:
    """Computes the ReLU in place in its input (and still returns a correct copy)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        np.maximum(x, 0, out=x)
        y = x.copy()
        return y, (y if need_backward else None)

    backward = staticmethod(ReluNumpy.backward)


class ReluAlwaysFloat32:
    """Claims float64 but always computes and returns float32."""

    @staticmethod
    def forward(x, params, config, need_backward):
        y = np.maximum(x.astype(np.float32), 0)
        return y, (y if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        return np.where(ctx > 0, dy, 0).astype(np.float32), {}


@cnnkit.hookimpl
def cnnkit_register_variants(register):
    f = ("float32", "float64")
    register("conv2d", "bad_padding", Conv2dPaddingOffByOne, priority=-100, dtypes=f,
             capabilities=ALL_CONV)
    register("conv2d", "bad_bias_grad", Conv2dNoBiasGradient, priority=-100, dtypes=f,
             capabilities=ALL_CONV)
    register("conv2d", "bad_group_dx", Conv2dDropsLastGroupDx, priority=-100, dtypes=f,
             capabilities=ALL_CONV)
    register("conv2d", "ignores_dilation", Conv2dIgnoresDilation, priority=-100, dtypes=f,
             capabilities=ALL_CONV)
    register("relu", "mutates_input", ReluMutatesInput, priority=-100, dtypes=f)
    register("relu", "fake_float64", ReluAlwaysFloat32, priority=-100, dtypes=f)
