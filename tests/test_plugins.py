"""The plugin system: discovery through real entry points, lazy loading, selection precedence,
duplicates, broken plugins, filters."""
import sys
import warnings

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.plugins import (PluginError, PluginWarning, Registry, SelectionError, get_registry,
                            reset_registry)


def load(**env):
    reset_registry()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = get_registry()
    return reg, caught


def test_builtins_register_through_the_hooks():
    reg, caught = load()
    assert not [w for w in caught if issubclass(w.category, PluginWarning)]
    for name in ("cnnkit.builtin.conv", "cnnkit.builtin.pool", "cnnkit.builtin.activation",
                 "cnnkit.builtin.dropout", "cnnkit.builtin.norm", "cnnkit.builtin.dense",
                 "cnnkit.builtin.reshape", "cnnkit.builtin.merge", "cnnkit.builtin.optimizers",
                 "cnnkit.builtin.initializers"):
        assert reg.plugins[name].error is None, reg.plugins[name].error
        assert reg.plugins[name].source == "builtin"
    assert "conv2d/cython" in reg.plugins["cnnkit.builtin.conv"].registered["variant"]
    assert {"cython", "numpy"} <= set(reg.variants["conv2d"])
    assert reg.variants["conv2d"]["cython"].plugin == "cnnkit.builtin.conv"
    assert reg.layer_class("conv2d") is ck.layers.Conv2D
    assert reg.optimizer("sgd") is ck.optim.SGD
    assert "he_uniform" in reg.initializers


def test_loading_is_lazy_and_once(plugin_env, monkeypatch):
    import cnnkit.plugins as plugins

    assert plugins._registry is None
    assert "cnnkit_demo_plugin" not in sys.modules
    calls = []
    real_load = plugins.Registry.load
    monkeypatch.setattr(plugins.Registry, "load",
                        lambda self, *a, **k: (calls.append(1), real_load(self, *a, **k))[1])
    with pytest.warns(PluginWarning):
        reg = get_registry()
    assert "cnnkit_demo_plugin" in sys.modules
    assert get_registry() is reg and len(calls) == 1


def test_third_party_plugin_is_discovered_with_its_version(plugin_env):
    with pytest.warns(PluginWarning):
        reg = get_registry()
    demo = reg.plugins["demo"]
    assert demo.error is None
    assert (demo.source, demo.distribution, demo.version) == ("entrypoint", "cnnkit-demo", "1.2.3")
    assert demo.registered["layer"] == ["scale2"]
    assert sorted(demo.registered["variant"]) == ["conv2d/demo_fast", "relu/demo", "scale2/numpy"]
    assert demo.registered["optimizer"] == ["demo_sgd"]
    assert demo.registered["initializer"] == ["demo_ones"]
    # the new layer type works end to end through the registry
    layer = reg.layer_class("scale2")()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(layer.forward(x), 2 * x)
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), 2 * np.ones_like(x))
    # the optimizer and initializer are usable by name
    dense = ck.layers.Dense(3, 2, weight_init="demo_ones")
    np.testing.assert_array_equal(dense.params["weight"], np.ones((2, 3), np.float32))
    opt = ck.optim.create("demo_sgd", [ck.Parameter(dense, "weight")], lr=0.5)
    dense.forward(x)
    dense.backward(np.ones((2, 2), np.float32))
    opt.step()
    assert not np.allclose(dense.params["weight"], 1.0)


def test_broken_plugins_are_recorded_and_the_rest_works(plugin_env):
    with pytest.warns(PluginWarning) as record:
        reg = get_registry()
    messages = " ".join(str(w.message) for w in record)
    assert "broken_import" in messages and "broken_hook" in messages
    assert "not installed" in reg.plugins["broken_import"].error
    assert "ImportError" in reg.plugins["broken_import"].traceback
    assert "boom inside the hook" in reg.plugins["broken_hook"].error
    # what the failing hook registered before raising is rolled back
    assert "half_registered" not in reg.variants["relu"]
    # the rest works
    assert reg.plugins["demo"].error is None
    conv = ck.layers.Conv2D(1, 2, 3)
    assert conv.forward(np.ones((1, 1, 5, 5), np.float32)).shape == (1, 2, 3, 3)


def test_duplicate_registration_names_both_plugins(plugin_env):
    with pytest.warns(PluginWarning):
        reg = get_registry()
    err = reg.plugins["duplicate"].error
    assert "conv2d/numpy" in err
    assert "cnnkit.builtin.conv" in err and "duplicate" in err
    assert reg.variants["conv2d"]["numpy"].plugin == "cnnkit.builtin.conv"


def test_duplicate_within_one_plugin_is_an_error():
    reg = ck.plugins.Registry()

    class Dup:
        @staticmethod
        @ck.hookimpl
        def cnnkit_register_optimizers(register):
            register("x", ck.optim.SGD)
            register("X", ck.optim.SGD)

    with pytest.warns(PluginWarning, match="registered twice by plugin 'dup'"):
        assert not reg.register_plugin(Dup, "dup", strict=False)
    assert "x" not in reg.optimizers


def test_strict_mode_makes_failures_fatal(plugin_env, monkeypatch):
    monkeypatch.setenv("CNNKIT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken_hook|broken_import|duplicate"):
        get_registry()


def test_disable_filter_applies_before_import(plugin_env, monkeypatch):
    monkeypatch.setenv("CNNKIT_DISABLE_PLUGINS",
                       "broken_import,cnnkit-broken-hook,duplicate,wrong_shape")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        reg = get_registry()
    assert "cnnkit_broken_import" not in sys.modules
    assert "cnnkit_broken_hook" not in sys.modules
    assert "broken_hook" not in reg.plugins and "demo" in reg.plugins


def test_load_allow_list_applies_before_import(plugin_env, monkeypatch):
    monkeypatch.setenv("CNNKIT_LOAD_PLUGINS", "cnnkit-demo")
    reg = get_registry()
    assert [p for p in reg.plugins if reg.plugins[p].source == "entrypoint"] == ["demo"]
    for mod in ("cnnkit_broken_import", "cnnkit_broken_hook", "cnnkit_duplicate"):
        assert mod not in sys.modules
    reset_registry()
    sys.modules.pop("cnnkit_demo_plugin", None)
    monkeypatch.setenv("CNNKIT_LOAD_PLUGINS", "")
    reg = get_registry()
    assert all(p.source == "builtin" for p in reg.plugins.values())
    assert "cnnkit_demo_plugin" not in sys.modules


def test_selection_precedence(plugin_env, monkeypatch):
    with pytest.warns(PluginWarning):
        reg = get_registry()
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    # automatic: highest priority among those that support the request
    assert ck.layers.ReLU().variant(np.float32).name == "cython"
    conv = ck.layers.Conv2D(3, 4, 3)
    assert conv.variant(np.float32).name == "demo_fast"      # priority 500
    builtins = Registry()
    builtins.load(entry_points=False)
    res = conv.resolution((1, 3, 8, 8))
    assert conv.variant(np.float64, (1, 3, 8, 8)).name == builtins.select(  # demo_fast: float32
        "conv2d", dtype=np.float64, features=res.features, config=res.config).name
    dilated = ck.layers.Conv2D(3, 4, 3, dilation=2)
    winner, how, reasons = reg.explain("conv2d", dtype=np.float32, features=dilated.features())
    assert winner.name == "cython" and "dilation" in reasons["demo_fast"]
    # environment < use() < impl=
    monkeypatch.setenv("CNNKIT_IMPL", "relu=demo,conv2d=numpy")
    relu = ck.layers.ReLU()
    assert relu.variant(np.float32).name == "demo"
    with ck.use(relu="numpy"):
        assert relu.variant(np.float32).name == "numpy"
        assert ck.layers.ReLU(impl="cython").variant(np.float32).name == "cython"
        # the choice is effective for the computation itself
        before = plugin_env and sys.modules["cnnkit_demo_plugin"].ReluDemo.calls
        relu.forward(x)
        assert sys.modules["cnnkit_demo_plugin"].ReluDemo.calls == before
    relu.forward(x)
    assert sys.modules["cnnkit_demo_plugin"].ReluDemo.calls == before + 1
    assert ck.layers.Conv2D(3, 4, 3).variant(np.float32).name == "numpy"


def test_explicit_choice_that_cannot_serve_raises(plugin_env):
    with pytest.warns(PluginWarning):
        get_registry()
    layer = ck.layers.Conv2D(3, 4, 3, dilation=2, impl="demo_fast")
    with pytest.raises(SelectionError, match="demo_fast.*impl= argument.*dilation"):
        layer.forward(np.ones((1, 3, 9, 9), np.float32))
    with pytest.raises(SelectionError, match="float64"):
        ck.layers.Conv2D(3, 4, 3, impl="demo_fast", dtype=np.float64).forward(
            np.ones((1, 3, 9, 9), np.float64))
    with ck.use(conv2d="no_such_variant"):
        with pytest.raises(SelectionError, match="not registered.*cython"):
            ck.layers.Conv2D(3, 4, 3).forward(np.ones((1, 3, 9, 9), np.float32))


def test_bad_impl_env_value_is_explained(monkeypatch):
    reset_registry()
    monkeypatch.setenv("CNNKIT_IMPL", "conv2d")
    with pytest.raises(SelectionError, match="CNNKIT_IMPL"):
        ck.layers.ReLU().forward(np.ones((1, 2), np.float32))


def test_wrong_shape_variant_is_caught_naming_variant_and_plugin(plugin_env):
    with pytest.warns(PluginWarning):
        get_registry()
    relu = ck.layers.ReLU(impl="bad_shape")
    with pytest.raises(RuntimeError, match="bad_shape.*wrong_shape.*expected shape"):
        relu.forward(np.ones((2, 3), np.float32))


def test_invalid_registrations_are_rejected():
    reg = ck.plugins.Registry()

    class NoBackward:
        @staticmethod
        def forward(x, params, config, need_backward):
            return x, None

    class Bad:
        @staticmethod
        @ck.hookimpl
        def cnnkit_register_variants(register):
            register("relu", "nob", NoBackward)

    with pytest.warns(PluginWarning, match="no callable backward"):
        assert not reg.register_plugin(Bad, "bad", strict=False)

    class UnknownHook:
        @staticmethod
        @ck.hookimpl
        def cnnkit_register_layer(register):  # typo of cnnkit_register_layers
            pass

    with pytest.warns(PluginWarning, match="unknown hook"):
        assert not reg.register_plugin(UnknownHook, "typo", strict=False)


def test_each_hook_registers_through_the_callback():
    """cnnkit_register_layers, cnnkit_register_variants, cnnkit_register_optimizers and
    cnnkit_register_initializers each reach the registry, stamped with the plugin's name."""
    import numpy as np

    reg = ck.plugins.Registry()

    def constant_half(shape, *, fan_in, fan_out, rng, dtype):
        return np.full(shape, 0.5, dtype=dtype)

    class Relu2(ck.layers.ReLU):
        layer_type = "relu2"

    class P:
        @staticmethod
        @ck.hookimpl
        def cnnkit_register_layers(register):
            register("relu2", Relu2)

        @staticmethod
        @ck.hookimpl
        def cnnkit_register_variants(register):
            from cnnkit.builtin.activation import ReluNumpy

            register("relu2", "numpy", ReluNumpy)

        @staticmethod
        @ck.hookimpl
        def cnnkit_register_optimizers(register):
            register("plain", ck.optim.SGD)

        @staticmethod
        @ck.hookimpl
        def cnnkit_register_initializers(register):
            register("half", constant_half)

    assert reg.register_plugin(P, "p")
    assert reg.plugins["p"].registered == {"layer": ["relu2"], "variant": ["relu2/numpy"],
                                           "optimizer": ["plain"], "initializer": ["half"]}
    assert reg.initializers["half"] == (constant_half, "p")
    assert reg.optimizers["plain"] == (ck.optim.SGD, "p")
    assert reg.layer_types["relu2"] == (Relu2, "p")
    assert reg.variants["relu2"]["numpy"].plugin == "p"


def test_unknown_layer_type_in_use_is_an_error_on_entering():
    with pytest.raises(SelectionError, match=r"cnnkit\.use\(\): unknown layer type 'conv2dd' "
                       r"\(did you mean 'conv2d'\?\); known layer types: .*relu"):
        with ck.use(conv2dd="numpy"):
            pytest.fail("the block must not run")
    with pytest.raises(SelectionError, match="unknown layer type 'nosuchlayer'; known"):
        ck.use(relu="numpy", nosuchlayer="numpy").__enter__()
    with ck.use(ReLU="numpy"):  # layer types are case-insensitive, as everywhere
        assert ck.layers.ReLU().variant(np.float32).name == "numpy"


def test_unknown_variant_of_a_known_type_suggests_the_close_ones(monkeypatch):
    x = np.ones((1, 3, 9, 9), np.float32)
    with ck.use(conv2d="nunpy"):
        with pytest.raises(SelectionError, match=r"'nunpy' of conv2d \(chosen by cnnkit\.use\(\)\) "
                           r"is not registered \(did you mean 'numpy'\?\); registered variants"):
            ck.layers.Conv2D(3, 4, 3).forward(x)
    monkeypatch.setenv("CNNKIT_IMPL", "conv2d=cythn")
    with pytest.raises(SelectionError, match=r"chosen by CNNKIT_IMPL.*did you mean 'cython'\?"):
        ck.layers.Conv2D(3, 4, 3).forward(x)


def test_unknown_layer_type_in_impl_env_is_an_error_at_first_use(monkeypatch):
    get_registry()
    monkeypatch.setenv("CNNKIT_IMPL", "relu=numpy,conv2dd=numpy")
    for _ in range(2):  # every use, not only the first check of the value
        with pytest.raises(SelectionError, match=r"CNNKIT_IMPL: unknown layer type 'conv2dd' "
                           r"\(did you mean 'conv2d'\?\)"):
            ck.layers.ReLU().forward(np.ones((1, 2), np.float32))
    monkeypatch.setenv("CNNKIT_IMPL", "relu=numpy")
    assert ck.layers.ReLU().variant(np.float32).name == "numpy"
