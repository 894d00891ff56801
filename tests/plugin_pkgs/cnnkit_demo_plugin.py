"""A small third-party cnnkit plugin used by the test-suite (exposed through a real entry point).

It registers a new layer type, variants of built-in layer types, an optimizer and an
initializer, exactly as an external package would."""
import numpy as np

import cnnkit
from cnnkit.layers import Layer



class Scale2(Layer):
    """y = 2 x (a new layer type)."""

    layer_type = "scale2"


class Scale2Numpy:
    @staticmethod
    def forward(x, params, config, need_backward):
        return 2.0 * x, (True if need_backward else None)

    @staticmethod
    def backward(dy, ctx):
        return 2.0 * dy, {}


class ReluDemo:
    """A correct ReLU, registered below the built-ins' priority."""

    calls = 0

    @staticmethod
    def forward(x, params, config, need_backward):
        ReluDemo.calls += 1
        y = np.maximum(x, 0)
        return y, (x > 0 if need_backward else None)

    @staticmethod
    def backward(dy, mask):
        return dy * mask, {}


class ConvNoDilation:
    """A conv2d variant with a high priority that does not support dilation or groups:
    it delegates to the NumPy reference for the maths."""

    calls = 0

    @staticmethod
    def forward(x, params, config, need_backward):
        from cnnkit.builtin.conv import Conv2dNumpy

        ConvNoDilation.calls += 1
        return Conv2dNumpy.forward(x, params, config, need_backward)

    @staticmethod
    def backward(dy, ctx):
        from cnnkit.builtin.conv import Conv2dNumpy

        return Conv2dNumpy.backward(dy, ctx)


class DemoSGD(cnnkit.optim.Optimizer):
    def __init__(self, model_or_params, lr=0.1):
        super().__init__(model_or_params, lr=lr)

    def step(self):
        for p, g in self._grads():
            p.value -= self.hyper["lr"] * g


def ones(shape, *, fan_in, fan_out, rng, dtype):
    return np.ones(shape, dtype=dtype)


@cnnkit.hookimpl
def cnnkit_register_layers(register):
    register("scale2", Scale2)


@cnnkit.hookimpl
def cnnkit_register_variants(register):
    register("scale2", "numpy", Scale2Numpy)
    register("relu", "demo", ReluDemo, priority=50, dtypes=("float32", "float64"))
    register("conv2d", "demo_fast", ConvNoDilation, priority=500, dtypes=("float32",),
             capabilities=("stride", "padding", "bias"))


@cnnkit.hookimpl
def cnnkit_register_optimizers(register):
    register("demo_sgd", DemoSGD)


@cnnkit.hookimpl
def cnnkit_register_initializers(register):
    register("demo_ones", ones)
