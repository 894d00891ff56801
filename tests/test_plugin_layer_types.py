"""A plugin whose variants name a layer type nobody registered fails as a whole, with the
reason; variants for another plugin's layer type are fine whatever the loading order."""
import warnings

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.layers import ReLU
from cnnkit.plugins import PluginWarning, Registry, hookimpl

from cnnkit.builtin.activation import ReluNumpy


class Typo:
    @hookimpl
    def cnnkit_register_variants(register):
        register("relu", "typo_ok", ReluNumpy)
        register("rleu", "typo_fast", ReluNumpy)

    @hookimpl
    def cnnkit_register_optimizers(register):
        register("typo_sgd", ck.optim.SGD)


class NewType(ReLU):
    layer_type = "newtype"


class Provider:
    @hookimpl
    def cnnkit_register_layers(register):
        register("newtype", NewType)


class Consumer:
    @hookimpl
    def cnnkit_register_variants(register):
        register("newtype", "fast", ReluNumpy)


def _registry():
    reg = Registry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg.load(entry_points=False)
    return reg


def test_variants_for_an_unknown_layer_type_fail_the_plugin():
    reg = _registry()
    with pytest.warns(PluginWarning, match=r"'rleu'.*did you mean 'relu'"):
        assert not reg.register_plugin(Typo, "typo")
    info = reg.plugins["typo"]
    assert "layer type(s) no plugin registered: 'rleu'" in info.error
    # the plugin is skipped whole, like any failed plugin: nothing it registered stays
    assert "typo_ok" not in reg.variants["relu"] and "rleu" not in reg.variants
    assert "typo_sgd" not in reg.optimizers
    assert all(not keys for keys in info.registered.values())


def test_variants_for_another_plugins_layer_type_in_any_order():
    reg = _registry()
    reg.register_plugin(Provider, "provider")
    assert reg.register_plugin(Consumer, "consumer")
    assert "fast" in reg.variants["newtype"]
    # while loading, the consumer may come first: the check waits for every plugin
    reg = _registry()
    assert reg.register_plugin(Consumer, "consumer", deferred=True)
    reg.register_plugin(Provider, "provider")
    reg._check_variant_layer_types(strict=False)
    assert reg.plugins["consumer"].error is None and "fast" in reg.variants["newtype"]


def test_plugins_listing_fits_100_columns_and_names_builtin_versions():
    import json

    from test_cli import run_cli

    res = run_cli("plugins")
    assert res.returncode == 0, res.stderr
    assert max(len(line) for line in res.stdout.splitlines()) <= 100
    assert "relu/numpy" in res.stdout and "logsoftmax/cython" in res.stdout  # wrapped, not cut
    rows = json.loads(run_cli("plugins", "--json").stdout)["plugins"]
    assert all(r["version"] == ck.__version__ for r in rows if r["source"] == "builtin")


class ScaledSoftsign(ck.layers.Layer):
    """x * scale / (1 + |x|): its get_config() below forgets ``scale`` (the bug the kit must
    catch: a saved model would come back with scale 1)."""

    layer_type = "scaledsoftsign"
    input_rank = None

    def __init__(self, scale=1.0, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        self.scale = float(scale)
        self.config = {"scale": self.scale}

    def get_config(self):
        return {}


class ScaledSoftsignFixed(ScaledSoftsign):
    def get_config(self):
        return {"scale": self.scale}


class SoftsignNumpy:
    @staticmethod
    def forward(x, params, config, need_backward):
        return x * config["scale"] / (1 + np.abs(x)), ((x, config["scale"]) if need_backward
                                                         else None)

    @staticmethod
    def backward(dy, ctx):
        x, scale = ctx
        return dy * scale / (1 + np.abs(x)) ** 2, {}


def _softsign_registry(cls):
    class Plugin:
        @hookimpl
        def cnnkit_register_layers(register):
            register("scaledsoftsign", cls)

        @hookimpl
        def cnnkit_register_variants(register):
            register("scaledsoftsign", "numpy", SoftsignNumpy)

    reg = _registry()
    assert reg.register_plugin(Plugin, "softsign")
    return reg


def test_conformance_kit_checks_that_a_plugin_layers_config_round_trips():
    from cnnkit.testing import check_variant

    cases = [({"scale": 2.0}, (2, 3)), ({"scale": 2.0}, (2, 1, 3, 3))]
    report = check_variant("scaledsoftsign", "numpy", registry=_softsign_registry(ScaledSoftsign),
                           cases=cases)
    config = [f for f in report.failures if f.check == "config"]
    assert len(config) == 1 and "leaves out a constructor argument" in config[0].message
    report = check_variant("scaledsoftsign", "numpy", cases=cases,
                           registry=_softsign_registry(ScaledSoftsignFixed))
    assert report.ok, str(report)


def test_the_guides_layer_with_parameters_conforms():
    """docs/plugin-guide.md's ChannelScale example, run as written, passes the kit."""
    import pathlib
    import re
    import types

    from cnnkit.testing import check_variant

    guide = (pathlib.Path(__file__).parents[1] / "docs" / "plugin-guide.md").read_text()
    section = guide[guide.index("### A layer with parameters"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("guide_channelscale")
    exec(compile(code, "plugin-guide.md", "exec"), module.__dict__)
    from cnnkit.plugins import get_registry, reset_registry

    reset_registry()  # the example registers into the process registry, as an installed one
    try:
        reg = get_registry()
        assert reg.register_plugin(module, "guide")
        layer = reg.layer_class("channelscale")(3, rng=0)
        assert np.array_equal(layer.params["weight"], np.full(3, 0.5, np.float32))
        report = check_variant("channelscale", "numpy",
                               cases=[({"channels": 3}, (2, 3, 4, 4)), ({"channels": 2}, (5, 2))])
        assert report.ok, str(report)
    finally:
        reset_registry()


def test_kernels_listing_and_explain_fit_100_columns():
    from test_cli import run_cli

    for args in (["kernels"], ["kernels", "--explain", "conv2d", "--shape", "64,3,32,32",
                               "--args", "out_channels=8,kernel_size=3"]):
        res = run_cli(*args)
        assert res.returncode == 0, res.stderr
        assert max(len(line) for line in res.stdout.splitlines()) <= 100, args
    assert "Winograd F(4x4,3x3)" in run_cli("kernels", "conv2d").stdout  # folded, not cut
