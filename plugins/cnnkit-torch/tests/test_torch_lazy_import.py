"""PyTorch is imported when a "torch" variant first computes, never when the registry loads."""
import subprocess
import sys

import numpy as np
import pytest

import cnnkit as ck


def run(code):
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_loading_the_registry_does_not_import_torch():
    out = run("import sys, cnnkit as ck\n"
              "reg = ck.get_registry()\n"
              "assert 'conv2d/torch' in reg.plugins['torch'].registered['variant']\n"
              "m = ck.Sequential([ck.layers.Conv2D(1, 2, 3), ck.layers.ReLU()])\n"
              "m.forward(__import__('numpy').ones((1, 1, 5, 5), 'float32'))\n"
              "print('torch' in sys.modules)")
    assert out == "False"


def test_first_use_imports_torch():
    out = run("import sys, numpy as np, cnnkit as ck\n"
              "ck.layers.ReLU(impl='torch').forward(np.ones((2, 3), np.float32))\n"
              "print('torch' in sys.modules)")
    assert out == "True"


@pytest.mark.parametrize("layer", [
    lambda: ck.layers.Conv2D(2, 3, 3, padding="same", impl="torch"),
    lambda: ck.layers.MaxPool2D(2, impl="torch"),
    lambda: ck.layers.AvgPool2D(3, stride=2, padding=1, impl="torch"),
    lambda: ck.layers.ReLU(impl="torch"),
    lambda: ck.layers.Sigmoid(impl="torch"),
    lambda: ck.layers.Tanh(impl="torch"),
    lambda: ck.layers.Dense(8 * 4 * 4, 5, impl="torch"),
], ids=["conv2d", "maxpool2d", "avgpool2d", "relu", "sigmoid", "tanh", "dense"])
def test_layers_use_the_torch_variant(layer):
    layer = layer()
    shape = (2, 128) if isinstance(layer, ck.layers.Dense) else (2, 2, 8, 8)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    assert layer.variant(np.float32).plugin == "torch"
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape and dx.dtype == np.float32
