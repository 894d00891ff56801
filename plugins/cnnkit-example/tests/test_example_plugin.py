"""The plugin's registrations, used the way a cnnkit user uses them."""
import numpy as np
import pytest

import cnnkit as ck
from cnnkit_example.plugin import Lion


def test_everything_is_registered():
    reg = ck.get_registry()
    info = reg.plugins["example"]
    assert info.error is None, info.error
    assert (info.distribution, info.version) == ("cnnkit-example", "0.1.0")
    assert info.registered == {"layer": ["mish"], "variant": ["mish/numpy", "mish/cython"],
                               "optimizer": ["lion"], "initializer": ["trunc_normal"]}


def test_mish_picks_the_cython_kernel_and_matches_known_values():
    layer = ck.get_registry().layer_class("mish")()
    assert layer.variant(np.float64).name == "cython"
    x = np.array([[-50.0, -1.0, 0.0, 1.0, 50.0]])
    # x * tanh(log(1 + e^x)), by hand
    want = x * np.tanh(np.log1p(np.exp(x)))
    np.testing.assert_allclose(layer.forward(x), want, rtol=1e-12, atol=1e-30)


def test_mish_in_a_model_trains():
    ck.seed(0)
    L = ck.layers
    model = ck.Sequential([L.Dense(4, 8), ck.get_registry().layer_class("mish")(), L.Dense(8, 2)],
                          input_shape=(4,))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    loss = ck.losses.SoftmaxCrossEntropy()
    opt = ck.optim.create("lion", model, lr=1e-2)
    first = None
    for _ in range(60):
        value = loss.forward(model.forward(x), y)
        first = value if first is None else first
        opt.zero_grad()
        model.backward(loss.backward())
        opt.step()
    assert value < 0.5 * first


def test_large_arrays_run_the_parallel_loop():
    layer = ck.get_registry().layer_class("mish")()
    x = np.random.default_rng(1).standard_normal((64, 4096)).astype(np.float32)
    ref = ck.get_registry().layer_class("mish")(impl="numpy")
    np.testing.assert_allclose(layer.forward(x), ref.forward(x), rtol=1e-6, atol=1e-7)
    dy = np.ones_like(x)
    np.testing.assert_allclose(layer.backward(dy), ref.backward(dy), rtol=1e-5, atol=1e-6)


def test_trunc_normal_initializer():
    dense = ck.layers.Dense(200, 100, weight_init=("trunc_normal", {"std": 0.05}), rng=0,
                            dtype=np.float64)
    w = dense.params["weight"]
    assert w.dtype == np.float64 and np.abs(w).max() <= 0.1
    assert abs(w.std() - 0.05 * 0.8796) < 0.002  # std of a normal truncated at +-2 sigma
    with pytest.raises(ValueError, match="std > 0"):
        ck.layers.Dense(3, 2, weight_init=("trunc_normal", {"std": 0.0}))


def test_lion_rejects_bad_hyperparameters():
    dense = ck.layers.Dense(3, 2)
    with pytest.raises(ValueError, match="betas"):
        Lion(dense_params(dense), betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr"):
        Lion(dense_params(dense), lr=-1)


def dense_params(dense):
    return [ck.Parameter(dense, "weight"), ck.Parameter(dense, "bias")]
