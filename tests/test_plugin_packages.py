"""The plugin packages that live in plugins/: cnnkit-torch and cnnkit-example, installed as a
user installs them (CI does; locally: pip install ./plugins/cnnkit-torch ./plugins/cnnkit-example).
"""
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.cli import main
from cnnkit.cli.bench import CONV2D_SHAPES
from cnnkit.testing import check_variant

INSTALL = "pip install ./plugins/cnnkit-torch ./plugins/cnnkit-example"


def _installed(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _needs(*dists):
    missing = [d for d in dists if _installed(d) is None]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed; "
                              f"install the plugin packages with: {INSTALL}")


needs_both = _needs("cnnkit-torch", "cnnkit-example")
needs_torch_plugin = _needs("cnnkit-torch")
needs_example = _needs("cnnkit-example")

TORCH_LAYER_TYPES = ("conv2d", "maxpool2d", "avgpool2d", "relu", "sigmoid", "tanh", "dense")


def run_python(code, **env):
    full_env = dict(os.environ)
    for var in ("CNNKIT_IMPL", "CNNKIT_LOAD_PLUGINS", "CNNKIT_DISABLE_PLUGINS"):
        full_env.pop(var, None)
    full_env.update(env)
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, env=full_env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@needs_both
def test_cnnkit_plugins_lists_both_packages_with_versions(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert f"torch  [entrypoint]  cnnkit-torch {_installed('cnnkit-torch')}  ok" in out
    assert f"example  [entrypoint]  cnnkit-example {_installed('cnnkit-example')}  ok" in out
    assert main(["plugins", "--json"]) == 0
    rows = {p["distribution"]: p for p in json.loads(capsys.readouterr().out)["plugins"]}
    assert sorted(rows["cnnkit-torch"]["registered"]["variant"]) == sorted(
        f"{t}/torch" for t in TORCH_LAYER_TYPES)
    assert rows["cnnkit-example"]["registered"]["optimizer"] == ["lion"]


@needs_torch_plugin
def test_bench_conv2d_quick_shows_every_variant(capsys):
    assert main(["bench", "conv2d", "--quick"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("shape "))
    table = lines[start + 1:lines.index("", start)]
    # the shape is written on the first row of each shape only
    variants = [(line.split()[0] if line.startswith(" ") else line.split()[1], line)
                for line in table]
    for variant in ("cython", "numpy", "torch"):
        rows = [line for name, line in variants if name == variant]
        assert len(rows) == len(CONV2D_SHAPES), out  # one per benchmark shape
        assert all(" ok " in row for row in rows), out
    assert f"torch = plugin torch (cnnkit-torch {_installed('cnnkit-torch')})" in out


@needs_torch_plugin
@pytest.mark.parametrize("layer_type", TORCH_LAYER_TYPES)
def test_torch_variant_serves_each_layer_type(layer_type):
    reg = ck.get_registry()
    variant = reg.variants[layer_type]["torch"]
    assert variant.priority < min(v.priority for v in reg.variants_for(layer_type)
                                  if v.plugin.startswith("cnnkit.builtin."))
    report = check_variant(layer_type, "torch")
    assert report.ok, str(report)
    # it serves every feature and dtype of the built-in cases, except the pool padding per
    # side and dilation that only cnnkit's NumPy reference serves
    for _, _, reason in report.skipped:
        assert reason.startswith("does not support "), reason
        assert set(reason[len("does not support "):].split(", ")) <= {"asymmetric_padding",
                                                                       "dilation"}, reason


@needs_torch_plugin
def test_torch_variants_are_picked_only_when_asked_for():
    reg = ck.get_registry()
    conv = ck.layers.Conv2D(3, 4, 3, stride=2)  # stride 2: "cython" on any CPU
    assert conv.variant(np.float32).name == "cython"
    assert ck.layers.Dense(3, 2).variant(np.float32).name == "numpy"  # no Cython dense
    with ck.use(conv2d="torch"):
        assert conv.variant(np.float32).name == "torch"
    assert ck.layers.Conv2D(3, 4, 3, impl="torch").variant(np.float64).plugin == "torch"
    assert all(v.priority == -100 for by_name in reg.variants.values()
               for v in by_name.values() if v.plugin == "torch")


@needs_torch_plugin
def test_a_model_trains_on_torch_variants_like_on_the_builtins():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 4)
    results = []
    for impl in ({}, {t: "torch" for t in TORCH_LAYER_TYPES}):
        with ck.use(**impl):
            model = ck.models.lenet5(rng=0)
            loss = ck.losses.SoftmaxCrossEntropy()
            value = loss.forward(model.forward(x), labels)
            model.backward(loss.backward())
            results.append((value, model.layers[0].grads["weight"].copy()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-3, atol=1e-5)


SMALL_MODEL = """
    import sys
    import numpy as np
    import cnnkit as ck

    reg = ck.get_registry()
    print("registry-only:", "torch" in sys.modules)
    model = ck.models.lenet5(rng=0)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    loss = ck.losses.SoftmaxCrossEntropy()
    loss.forward(model.forward(x), np.array([1, 2]))
    model.backward(loss.backward())
    print("after-model:", "torch" in sys.modules)
    print("torch-variants:", sorted(t for t, v in reg.variants.items() if "torch" in v))
"""


@needs_torch_plugin
def test_loading_the_registry_with_the_plugin_does_not_import_torch():
    out = run_python(SMALL_MODEL)
    assert "registry-only: False" in out and "after-model: False" in out
    assert "torch-variants: ['avgpool2d', 'conv2d', 'dense'" in out


@needs_torch_plugin
def test_disabled_plugin_is_not_imported_and_torch_never_is():
    out = run_python(SMALL_MODEL + """
    print("plugin-module:", "cnnkit_torch" in sys.modules)
    try:
        ck.layers.ReLU(impl="torch").forward(x)
    except ck.SelectionError as exc:
        print("refused:", exc)
    print("at-exit:", "torch" in sys.modules)
    """, CNNKIT_DISABLE_PLUGINS="cnnkit-torch")
    assert "torch-variants: []" in out
    assert "plugin-module: False" in out
    assert "variant 'torch' of relu (chosen by impl= argument) is not registered" in out
    assert "registry-only: False" in out and "after-model: False" in out
    assert "at-exit: False" in out


@needs_example
def test_example_plugin_mish_lion_and_initializer():
    reg = ck.get_registry()
    assert reg.plugins["example"].error is None
    mish = reg.layer_class("mish")()
    assert mish.variant(np.float32).name == "cython"
    for variant in ("cython", "numpy"):
        report = check_variant("mish", variant)
        assert report.ok, str(report)
    dense = ck.layers.Dense(6, 3, weight_init="trunc_normal", rng=0)
    assert np.abs(dense.params["weight"]).max() <= 0.04
    opt = ck.optim.create("lion", [ck.Parameter(dense, "weight")], lr=0.1)
    before = dense.params["weight"].copy()
    dense.forward(np.ones((2, 6), np.float32))
    dense.backward(np.ones((2, 3), np.float32))
    opt.step()
    # Lion moves every coordinate by exactly lr on the first step (sign of the gradient)
    np.testing.assert_allclose(np.abs(dense.params["weight"] - before), 0.1, rtol=1e-5)


@needs_example
def test_kernels_lists_the_new_layer_type(capsys):
    assert main(["kernels", "mish"]) == 0
    out = capsys.readouterr().out
    assert "mish  (cnnkit_example.plugin.Mish, plugin example)" in out
    assert "cython   example" in out and "numpy    example" in out
