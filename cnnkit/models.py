"""Ready-made architectures."""
from __future__ import annotations

import math

import numpy as np

from . import layers as L
from .graph import Sequential


def lenet5(num_classes: int = 10, *, in_channels: int = 1, dtype=np.float32, rng=None,
           impl: dict | None = None) -> Sequential:
    """The modern LeNet-5 for 28x28 inputs: conv 6@5x5 pad 2, ReLU, max-pool 2, conv 16@5x5,
    ReLU, max-pool 2, dense 120, 84, ``num_classes``.

    ``impl`` maps layer types to variant names (``{"conv2d": "numpy"}``).  Weights and biases
    start from PyTorch's default initialisation (uniform in +-1/sqrt(fan_in), i.e. He-uniform
    with the leaky-ReLU gain for slope sqrt(5)), so the same recipe trains the same way in both.
    """
    impl = dict(impl or {})
    torch_default = ("he_uniform", {"nonlinearity": "leaky_relu", "a": math.sqrt(5)})
    conv, pool, relu = impl.get("conv2d"), impl.get("maxpool2d"), impl.get("relu")
    dense = impl.get("dense")
    kw = {"dtype": dtype, "rng": rng, "weight_init": torch_default, "bias_init": torch_default}
    return Sequential([
        L.Conv2D(in_channels, 6, 5, padding=2, impl=conv, name="conv1", **kw),
        L.ReLU(impl=relu, name="relu1"),
        L.MaxPool2D(2, impl=pool, name="pool1"),
        L.Conv2D(6, 16, 5, impl=conv, name="conv2", **kw),
        L.ReLU(impl=relu, name="relu2"),
        L.MaxPool2D(2, impl=pool, name="pool2"),
        L.Flatten(name="flatten"),
        L.Dense(16 * 5 * 5, 120, impl=dense, name="fc1", **kw),
        L.ReLU(impl=relu, name="relu3"),
        L.Dense(120, 84, impl=dense, name="fc2", **kw),
        L.ReLU(impl=relu, name="relu4"),
        L.Dense(84, num_classes, impl=dense, name="fc3", **kw),
    ], input_shape=(in_channels, 28, 28), name="lenet5")
