"""The graph executor: DAGs with fan-out, several inputs/outputs, shape inference errors,
training vs inference, summaries, weights round trip."""
import numpy as np
import pytest

import cnnkit as ck
from cnnkit import layers as L
from gradcheck import assert_close, numeric_grad

RNG = np.random.default_rng(7)


def residual_model(dtype=np.float64):
    x = ck.Input((2, 6, 6), name="x")
    h = L.Conv2D(2, 3, 3, padding=1, dtype=dtype, rng=1, name="c1")(x)
    a = L.Tanh(name="t")(h)                       # h fans out to three consumers
    b = L.Conv2D(3, 3, 1, dtype=dtype, rng=2, name="c2")(h)
    s = L.Add(name="add")([a, b, h])
    p = L.MaxPool2D(2, name="pool")(s)
    y = L.Dense(27, 4, dtype=dtype, rng=3, name="fc")(L.Flatten(name="flat")(p))
    return ck.Model(x, y, name="resnetish")


def test_dag_with_fan_out_gradients_match_finite_differences():
    model = residual_model()
    x = RNG.standard_normal((2, 2, 6, 6))
    w = RNG.standard_normal((2, 4))
    model.forward(x, training=True)
    dx = model.backward(w)
    grads = {f"{l.name}.{k}": g for l in model.layers for k, g in l.grads.items()}

    def f():
        return float(np.sum(model.forward(x, training=False) * w))

    assert_close(dx, numeric_grad(f, x), what="dx")
    for name, p in model.named_parameters().items():
        assert_close(grads[name], numeric_grad(f, p), what=name)


def test_multiple_inputs_and_outputs():
    a, b = ck.Input((4,), name="a"), ck.Input((4,), name="b")
    s = L.Add(name="s")([a, b])
    o1 = L.Dense(4, 2, dtype=np.float64, rng=0, name="o1")(s)
    o2 = L.Tanh(name="o2")(s)
    model = ck.Model([a, b], [o1, o2])
    xa, xb = RNG.standard_normal((3, 4)), RNG.standard_normal((3, 4))
    y1, y2 = model.forward([xa, xb])
    np.testing.assert_allclose(y2, np.tanh(xa + xb))
    w1, w2 = RNG.standard_normal(y1.shape), RNG.standard_normal(y2.shape)
    da, db = model.backward([w1, w2])

    def f():
        r1, r2 = model.forward([xa, xb], training=False)
        return float(np.sum(r1 * w1) + np.sum(r2 * w2))

    assert_close(da, numeric_grad(f, xa), what="da")
    assert_close(db, numeric_grad(f, xb), what="db")
    with pytest.raises(ValueError, match="list of 2 input arrays"):
        model.forward(xa)


def test_shape_mismatch_names_node_and_shapes():
    x = ck.Input((1, 28, 28))
    h = L.Conv2D(1, 6, 5, name="conv")(x)
    with pytest.raises(ValueError, match=r"fc \(Dense\): expected 400 input features, got shape "
                                         r"\(None, 3456\).*from node 'flat'"):
        L.Dense(400, 10, name="fc")(L.Flatten(name="flat")(h))
    g = L.MaxPool2D(2, name="pool")(h)
    with pytest.raises(ValueError, match=r"add \(Add\).*\(N, 6, 24, 24\) and \(N, 6, 12, 12\)"):
        L.Add(name="add")([h, g])
    with pytest.raises(ValueError, match="conv2 .*expected 4 input channels"):
        ck.Sequential([L.Conv2D(1, 6, 5), L.Conv2D(4, 2, 3, name="conv2")], input_shape=(1, 28, 28))


def test_graph_structure_errors():
    x = ck.Input((3,))
    layer = L.ReLU()
    layer(x)
    with pytest.raises(ValueError, match="already part of a graph"):
        layer(x)
    other = ck.Input((3,))
    y = L.Add()([x, other])
    with pytest.raises(ValueError, match="not among the model's inputs"):
        ck.Model(x, y)
    with pytest.raises(TypeError, match="graph node"):
        L.ReLU()("not a node")


def test_sequential_builds_lazily_and_reports_summary():
    model = ck.Sequential([L.Conv2D(1, 4, 3, name="c"), L.ReLU(name="r"), L.Flatten(name="f"),
                           L.Dense(4 * 26 * 26, 10, name="d")])
    with pytest.raises(RuntimeError, match="not built"):
        model.summary()
    out = model.forward(RNG.standard_normal((2, 1, 28, 28)).astype(np.float32))
    assert out.shape == (2, 10)
    text = model.summary()
    assert "c (Conv2D)" in text and "cython" in text and "(N, 4, 26, 26)" in text
    assert f"Total params: {4 * 9 + 4 + 4 * 26 * 26 * 10 + 10:,}" in text
    assert "d (Dense)" in text and "numpy" in text


def test_inference_keeps_nothing_and_frees_intermediates():
    model = residual_model(np.float32)
    model.forward(RNG.standard_normal((2, 2, 6, 6)).astype(np.float32), training=False)
    assert all(layer._ctx is None for layer in model.layers)
    model.eval()
    model.forward(RNG.standard_normal((2, 2, 6, 6)).astype(np.float32))
    assert all(layer._ctx is None for layer in model.layers)
    with pytest.raises(RuntimeError, match="needs a forward"):
        model.backward(np.ones((2, 4), np.float32))


def test_training_decreases_loss_and_weights_round_trip(tmp_path):
    model = residual_model(np.float32)
    x = RNG.standard_normal((16, 2, 6, 6)).astype(np.float32)
    y = RNG.integers(0, 4, 16)
    loss = ck.losses.SoftmaxCrossEntropy()
    opt = ck.optim.SGD(model, lr=0.1, momentum=0.9)
    first = loss.forward(model.forward(x), y)
    for _ in range(30):
        opt.zero_grad()
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        opt.step()
    assert loss.forward(model.forward(x, training=False), y) < first * 0.5
    path = tmp_path / "w.npz"
    model.save_weights(path)
    fresh = residual_model(np.float32)
    meta = fresh.load_weights(path)
    assert meta["model"] == "resnetish"
    np.testing.assert_array_equal(fresh.forward(x, training=False), model.forward(x, training=False))
    wrong = ck.Sequential([L.Dense(3, 2, name="fc")], input_shape=(3,))
    with pytest.raises(ValueError, match="w.npz"):
        wrong.load_weights(path)


def test_float64_model_via_astype():
    model = residual_model(np.float32).astype(np.float64)
    assert model.dtype == np.float64
    assert model.forward(RNG.standard_normal((1, 2, 6, 6))).dtype == np.float64


def test_input_gradient_can_be_skipped_without_changing_parameter_gradients():
    model = residual_model()
    x = RNG.standard_normal((2, 2, 6, 6))
    w = RNG.standard_normal((2, 4))
    model.forward(x, training=True)
    dx = model.backward(w)
    full = {f"{l.name}.{k}": g.copy() for l in model.layers for k, g in l.grads.items()}
    for impl in ("cython", "numpy"):
        with ck.use(conv2d=impl):
            model.forward(x, training=True)
            assert model.backward(w, input_grads=False) is None
        for l in model.layers:
            for k, g in l.grads.items():
                np.testing.assert_allclose(g, full[f"{l.name}.{k}"], rtol=1e-10, atol=1e-12)
    assert model.get_layer("c1").variant(np.float64).skips_input_grad
    assert dx.shape == x.shape
