"""Layers through their public API: finite-difference gradients in float64 for every layer and
loss, input validation, shape inference, SGD and initializers."""
import numpy as np
import pytest

import cnnkit as ck
from cnnkit import layers as L
from gradcheck import assert_close, numeric_grad

RNG = np.random.default_rng(1234)


def check_layer_gradients(layer, x, impl_names=("cython", "numpy")):
    """Finite differences of sum(forward(x) * w) w.r.t. x and every parameter, per variant."""
    for impl in impl_names:
        layer.impl, layer._variant_key = impl, None
        y = layer.forward(x, training=True)
        w = RNG.standard_normal(y.shape)
        dx = layer.backward(w)
        grads = dict(layer.grads)

        def f():
            return float(np.sum(layer.forward(x, training=False) * w))

        assert_close(dx, numeric_grad(f, x), what=f"{layer.name}[{impl}] dx")
        for key, p in layer.params.items():
            if p is None:
                continue
            assert_close(grads[key], numeric_grad(f, p), what=f"{layer.name}[{impl}] d{key}")


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(2, 3), padding="same"),
    dict(kernel_size=3, dilation=2, padding=2, bias=False),
    dict(kernel_size=3, groups=2, stride=(1, 2)),
    dict(kernel_size=2, stride=2, padding="same"),
])
def test_conv2d_gradients(kwargs):
    layer = L.Conv2D(4, 6, dtype=np.float64, rng=0, **kwargs)
    x = RNG.standard_normal((2, 4, 7, 8))
    check_layer_gradients(layer, x)


@pytest.mark.parametrize("cls,kwargs", [
    (L.MaxPool2D, dict(kernel_size=2)),
    (L.MaxPool2D, dict(kernel_size=3, stride=2, padding=1)),
    (L.AvgPool2D, dict(kernel_size=2)),
    (L.AvgPool2D, dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    (L.AvgPool2D, dict(kernel_size=3, stride=2, ceil_mode=True)),
])
def test_pool_gradients(cls, kwargs):
    layer = cls(**kwargs)
    # distinct values so max-pool has no ties (its gradient is undefined at ties)
    x = RNG.permutation(2 * 3 * 7 * 7).reshape(2, 3, 7, 7).astype(np.float64) / 10.0
    check_layer_gradients(layer, x)


@pytest.mark.parametrize("cls", [L.ReLU, L.Sigmoid, L.Tanh])
def test_activation_gradients(cls):
    x = RNG.standard_normal((3, 2, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the ReLU kink
    check_layer_gradients(cls(), x)


def test_dense_and_flatten_gradients():
    check_layer_gradients(L.Dense(12, 5, dtype=np.float64, rng=0), RNG.standard_normal((3, 12)),
                          impl_names=("numpy",))
    flat = L.Flatten()
    x = RNG.standard_normal((2, 3, 2, 2))
    y = flat.forward(x)
    assert y.shape == (2, 12)
    np.testing.assert_array_equal(flat.backward(y), x)


def test_add_layer_gradient():
    add = L.Add()
    a, b = RNG.standard_normal((2, 3)), RNG.standard_normal((2, 3))
    np.testing.assert_allclose(add.forward([a, b]), a + b)
    da, db = add.backward(np.ones((2, 3)))
    np.testing.assert_array_equal(da, np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"same shape.*\(2, 3\) and \(2, 4\)"):
        add.forward([a, RNG.standard_normal((2, 4))])


def test_softmax_cross_entropy_gradient_and_stability():
    loss = ck.losses.SoftmaxCrossEntropy()
    logits = RNG.standard_normal((5, 4))
    labels = np.array([0, 3, 1, 1, 2])
    loss.forward(logits, labels)
    g = loss.backward()
    assert_close(g, numeric_grad(lambda: loss.forward(logits, labels), logits), what="softmax CE")
    big = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]])
    value = loss.forward(big, np.array([1, 1]))
    assert np.isfinite(value) and value == pytest.approx(1e4, rel=1e-6)
    assert np.all(np.isfinite(loss.backward()))
    with pytest.raises(ValueError, match="labels must lie in"):
        loss.forward(logits, np.array([0, 4, 1, 1, 2]))
    with pytest.raises(ValueError, match="integers of shape"):
        loss.forward(logits, labels.astype(float))
    with pytest.raises(ValueError, match="NaN"):
        loss.forward(np.full((5, 4), np.nan), labels)


def test_mse_gradient():
    loss = ck.losses.MSE()
    pred, target = RNG.standard_normal((3, 4)), RNG.standard_normal((3, 4))
    loss.forward(pred, target)
    assert_close(loss.backward(), numeric_grad(lambda: loss.forward(pred, target), pred), what="mse")


def test_same_padding_matches_tensorflow_rule():
    for size, k, s in [(7, 3, 1), (8, 2, 1), (7, 3, 2), (8, 4, 3)]:
        conv = L.Conv2D(1, 1, k, stride=s, padding="same")
        assert conv.output_shape((1, 1, size, size))[2:] == (-(-size // s),) * 2


def test_layers_validate_their_inputs():
    conv = L.Conv2D(3, 4, 3)
    with pytest.raises(ValueError, match=r"conv2d_\d+ \(Conv2D\): expected 3 input channels"):
        conv.forward(np.ones((1, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match="4-D input"):
        conv.forward(np.ones((2, 5, 5), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        conv.forward(np.ones((1, 3, 5, 5), np.int64))
    with pytest.raises(TypeError, match="does not match the parameters' dtype"):
        conv.forward(np.ones((1, 3, 5, 5), np.float64))
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv.forward(np.ones((1, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="divisible by groups"):
        L.Conv2D(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        L.Conv2D(3, 4, 0)
    with pytest.raises(ValueError, match="padding"):
        L.Conv2D(3, 4, 3, padding="full")
    with pytest.raises(ValueError, match="empty batch"):
        conv.forward(np.ones((0, 3, 5, 5), np.float32))
    with pytest.raises(RuntimeError, match="backward\\(\\) needs a forward"):
        L.ReLU().backward(np.ones((1, 2), np.float32))
    relu = L.ReLU()
    relu.forward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="gradient shape"):
        relu.backward(np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match="at most half the kernel"):
        L.MaxPool2D(2, padding=2)


def test_inference_keeps_nothing():
    conv = L.Conv2D(1, 2, 3)
    conv.forward(np.ones((1, 1, 5, 5), np.float32), training=False)
    assert conv._ctx is None
    with pytest.raises(RuntimeError):
        conv.backward(np.ones((1, 2, 3, 3), np.float32))


def test_weight_layout_is_pytorchs():
    conv = L.Conv2D(6, 8, (3, 5), groups=2)
    assert conv.params["weight"].shape == (8, 3, 3, 5)
    assert L.Dense(7, 3).params["weight"].shape == (3, 7)


def test_sgd_matches_pytorch_rule_step_by_step():
    """SGD with momentum, Nesterov and weight decay against a direct transcription of
    torch.optim.SGD's documented update (and against torch itself when installed)."""
    runs = []
    for nesterov, damp in ((False, 0.1), (True, 0.0)):
        dense = L.Dense(3, 2, dtype=np.float64, rng=0)
        w0 = dense.params["weight"].copy()
        opt = ck.optim.SGD([ck.Parameter(dense, "weight")], lr=0.1, momentum=0.9,
                           dampening=damp, weight_decay=0.01, nesterov=nesterov)
        w, buf = w0.copy(), None
        grads = [RNG.standard_normal((2, 3)) for _ in range(10)]
        for g in grads:
            dense.grads = {"weight": g}
            opt.step()
            d = g + 0.01 * w
            buf = d.copy() if buf is None else 0.9 * buf + (1 - damp) * d
            w = w - 0.1 * (d + 0.9 * buf if nesterov else buf)
        np.testing.assert_allclose(dense.params["weight"], w, rtol=1e-12)
        runs.append((nesterov, damp, dense, w0, grads))
    # torch only after both torch-free checks: the Nesterov one must run without torch too
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    for nesterov, damp, dense, w0, grads in runs:
        tw = torch.tensor(w0, requires_grad=True)
        topt = torch.optim.SGD([tw], lr=0.1, momentum=0.9, dampening=damp, weight_decay=0.01,
                               nesterov=nesterov)
        for g in grads:
            tw.grad = torch.tensor(g)
            topt.step()
        np.testing.assert_allclose(dense.params["weight"], tw.detach().numpy(), rtol=1e-10)


def test_optimizer_state_round_trip():
    """An optimizer restored from state_dict() continues exactly like the original."""
    a, b = (L.Dense(3, 2, dtype=np.float64, rng=0) for _ in range(2))
    opt_a = ck.optim.SGD([ck.Parameter(a, "weight")], lr=0.1, momentum=0.9)
    grads = [RNG.standard_normal((2, 3)) for _ in range(4)]
    for g in grads[:2]:
        a.grads = {"weight": g}
        opt_a.step()
    b.params["weight"] = a.params["weight"].copy()
    opt_b = ck.optim.SGD([ck.Parameter(b, "weight")], lr=0.5, momentum=0.0)
    state = opt_a.state_dict()
    state["state"] = {f"{b.name}.weight": s for s in state["state"].values()}
    opt_b.load_state_dict(state)
    assert opt_b.hyper["momentum"] == 0.9 and opt_b.steps == 2
    for g in grads[2:]:
        a.grads, b.grads = {"weight": g}, {"weight": g}
        opt_a.step()
        opt_b.step()
    np.testing.assert_array_equal(a.params["weight"], b.params["weight"])
    with pytest.raises(ValueError, match="lr must be"):
        ck.optim.SGD([ck.Parameter(a, "weight")], lr=-1)
    with pytest.raises(KeyError, match="unknown optimizer"):
        ck.optim.create("nope", [ck.Parameter(a, "weight")])


@pytest.mark.parametrize("name,var", [
    ("xavier_uniform", 2.0 / (50 + 30)), ("xavier_normal", 2.0 / (50 + 30)),
    ("he_uniform", 2.0 / 50), ("he_normal", 2.0 / 50),
])
def test_initializer_variances(name, var):
    arr = ck.init.initialize(name, (400, 500), fan_in=50, fan_out=30, rng=0, dtype=np.float64)
    assert arr.dtype == np.float64
    assert arr.var() == pytest.approx(var, rel=0.03)
    assert abs(arr.mean()) < 0.01
    assert np.all(ck.init.initialize("zeros", (3,), fan_in=1, fan_out=1) == 0)


def test_unknown_initializer_is_named():
    with pytest.raises(KeyError, match="unknown initializer 'nope'"):
        L.Dense(3, 2, weight_init="nope")
