"""The README's code runs as written."""
import re
import sys
import types
import warnings
from pathlib import Path

import numpy as np

import cnnkit as ck

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_tour_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(BLOCKS[0], ns)
    assert (tmp_path / "lenet.npz").exists()
    x = ns["x_test"][:16]
    assert np.array_equal(ns["same"].predict(x), ns["model"].predict(x))
    exec(BLOCKS[1], ns)
    assert ns["model"].output_shape == (None, 10)


def test_quickstart_commands_are_the_ci_commands():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert commands[:2] == ['pip install . && cnnkit train',
                            'pip install -e ".[test]" && python -m pytest']
    assert commands[1] in ci


def test_plugin_example_registers_and_works(monkeypatch):
    plugin_src = next(b for b in BLOCKS if "cnnkit_register_layers" in b)
    module = types.ModuleType("my_cnnkit_plugin")
    exec(plugin_src, module.__dict__)
    monkeypatch.setitem(sys.modules, "my_cnnkit_plugin", module)
    reg = ck.plugins.Registry()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.load(entry_points=False)
        assert reg.register_plugin(module, "mine")
    assert sorted(reg.plugins["mine"].registered["variant"]) == ["relu/mine", "swish/numpy"]
    x = np.linspace(-3, 3, 12).reshape(3, 4)
    swish = reg.layer_class("swish")()
    monkeypatch.setattr(ck.plugins, "_registry", reg)
    y = swish.forward(x)
    np.testing.assert_allclose(y, x / (1 + np.exp(-x)))
    eps = 1e-6
    numeric = ((x + eps) / (1 + np.exp(-(x + eps))) - (x - eps) / (1 + np.exp(-(x - eps)))) / (2 * eps)
    np.testing.assert_allclose(swish.backward(np.ones_like(x)), numeric, rtol=1e-6)
    relu = ck.layers.ReLU(impl="mine")
    np.testing.assert_array_equal(relu.forward(x), np.maximum(x, 0))
    dense = ck.layers.Dense(4, 2, weight_init="ones")
    assert np.all(dense.params["weight"] == 1)
    opt = reg.optimizer("signsgd")([ck.Parameter(dense, "weight")], lr=0.5)
    dense.forward(x.astype(np.float32))
    dense.backward(np.ones((3, 2), np.float32))
    opt.step()
    assert np.all(dense.params["weight"] != 1)
