"""RBFOutput (LeNet-5's Euclidean RBF units) and its criteria, against a loop reference and
central finite differences in float64; prediction by the nearest code in training, evaluation
and predict_classes."""
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import config as C
from cnnkit.layers import Dense, RBFOutput
from cnnkit.losses import RBFEuclideanLoss, RBFMAPLoss
from cnnkit.metrics import predict_classes
from cnnkit.train import evaluate, fit
from gradcheck import assert_close, numeric_grad

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lenet5-1998.toml"


def test_rbf_output_is_the_squared_distance_to_each_code():
    codes = np.array([[1.0, -1, 1], [-1, -1, 1]])
    layer = RBFOutput(3, 2, codes, dtype=np.float64)
    x = np.array([[1.0, -1, 1], [0.5, 2, 0]])
    # by hand: row 0 is code 0 (0) and differs from code 1 in one place by 2 (4);
    # row 1: (0.5-1)^2 + 3^2 + 1 = 10.25 and 1.5^2 + 3^2 + 1 = 12.25
    np.testing.assert_allclose(layer.forward(x), [[0.0, 4.0], [10.25, 12.25]], rtol=0,
                               atol=1e-15)


def test_rbf_output_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    layer = RBFOutput(5, 4, seed=1, trainable=True, dtype=np.float64)
    x = rng.standard_normal((3, 5))
    dy = rng.standard_normal((3, 4))
    layer.forward(x, training=True)
    dx = layer.backward(dy)

    def f():
        return float(np.sum(layer.forward(x, training=False) * dy))

    assert_close(dx, numeric_grad(f, x), what="dx")
    assert_close(layer.grads["codes"], numeric_grad(f, layer.params["codes"]), what="dcodes")


def test_codes_are_fixed_by_seed_and_not_trained_by_default():
    a, b, c = (RBFOutput(84, 10, seed=s) for s in (7, 7, 8))
    assert np.array_equal(a.params["codes"], b.params["codes"])
    assert not np.array_equal(a.params["codes"], c.params["codes"])
    assert set(np.unique(a.params["codes"])) == {-1.0, 1.0}
    assert not a.trainable
    model = ck.Sequential([Dense(4, 84), a])
    model.build((4,))
    before = a.params["codes"].copy()
    opt = ck.optim.SGD(model, lr=0.1, momentum=0.9, weight_decay=0.1)
    loss = RBFEuclideanLoss()
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    for _ in range(3):
        loss.forward(model.forward(x, training=True), np.arange(8) % 10)
        model.backward(loss.backward())
        opt.step()
    assert np.array_equal(a.params["codes"], before)


def test_rbf_output_checks_its_arguments():
    with pytest.raises(ValueError, match=r"codes has shape \(2, 3\), expected .*\(3, 2\)"):
        RBFOutput(2, 3, np.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        RBFOutput(2, 1, [[np.nan, 1.0]])
    with pytest.raises(TypeError, match="seed"):
        RBFOutput(2, 3, seed=-1)
    with pytest.raises(ValueError, match="input features"):
        RBFOutput(2, 3).forward(np.zeros((1, 4), dtype=np.float32))


def test_criteria_values_and_gradients():
    rng = np.random.default_rng(3)
    d = rng.random((4, 3)) * 5
    labels = np.array([0, 2, 1, 2])
    loss = RBFEuclideanLoss()
    assert loss.forward(d, labels) == pytest.approx(np.mean(d[np.arange(4), labels]))
    g = loss.backward()

    def f():
        return loss.forward(d, labels)

    assert_close(g, numeric_grad(f, d), what="euclidean")
    mapl = RBFMAPLoss(j=0.5)
    by_hand = np.mean([d[n, labels[n]] + np.log(np.exp(-0.5) + np.exp(-d[n]).sum())
                       for n in range(4)])
    assert mapl.forward(d, labels) == pytest.approx(by_hand, rel=1e-12)
    g = mapl.backward()

    def fm():
        return mapl.forward(d, labels)

    assert_close(g, numeric_grad(fm, d), what="map")
    assert RBFEuclideanLoss().class_scores(d) is not d and np.array_equal(
        np.argmax(RBFEuclideanLoss().class_scores(d), 1), np.argmin(d, 1))


def _model_with_codes():
    """x -> RBF units whose codes are the inputs of classes 0..2: sample n is nearest to the
    code of its label, and farthest from another one (argmax would pick that one)."""
    codes = np.array([[1.0, 1, 1, 1], [-1, -1, -1, -1], [1, -1, 1, -1]])
    model = ck.Sequential([RBFOutput(4, 3, codes, dtype=np.float64)])
    model.build((4,))
    x = codes[[0, 1, 2, 0, 2]] * 0.9
    y = np.array([0, 1, 2, 0, 2])
    return model, x, y


def test_prediction_is_the_nearest_code_in_evaluate_and_predict_classes():
    model, x, y = _model_with_codes()
    assert np.array_equal(predict_classes(model, x), y)
    result = evaluate(model, (x, y), loss=RBFEuclideanLoss(), metrics=["per_class_accuracy"])
    assert result["accuracy"] == 1.0
    assert np.all(result["per_class_accuracy"] == 1.0)
    # the plain arg-max of distances gets every sample wrong here
    assert np.all(np.argmax(model.predict(x), 1) != y)


def test_training_accuracy_uses_the_nearest_code():
    model, x, y = _model_with_codes()
    opt = ck.optim.SGD(model, lr=0.0)
    history = fit(model, (x, y), (x, y), optimizer=opt, loss=RBFEuclideanLoss(), epochs=1,
                  batch_size=5, verbose=False, seed=0)
    assert history.epochs[0]["accuracy"] == 1.0 and history.epochs[0]["val_accuracy"] == 1.0


def test_rbf_output_round_trips_through_configs(tmp_path):
    codes = [[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]
    model = ck.Sequential([Dense(3, 2, name="f"), RBFOutput(2, 3, codes, name="u")])
    model.build((3,))
    seeded = ck.Sequential([Dense(3, 2), RBFOutput(2, 3, seed=5, name="u")])
    seeded.build((3,))
    for m in (model, seeded):
        again = C.model_from_config(C.loads(C.dumps(C.model_to_config(m), "toml"), "toml"))
        assert np.array_equal(again.get_layer("u").params["codes"],
                              m.get_layer("u").params["codes"])
    path = tmp_path / "rbf.safetensors"
    model.save(path)
    assert np.array_equal(ck.load_model(path).get_layer("u").params["codes"], codes)
    spec = C.training_from_config({"training": {"loss": "rbf_euclidean"}})
    assert isinstance(C.make_loss(spec), RBFEuclideanLoss)
    spec = C.training_from_config({"training": {"loss": {"name": "rbf_map", "j": 2.0}}})
    assert C.make_loss(spec).j == 2.0


def test_the_1998_example_is_the_published_network():
    from cnnkit.layers import LENET5_C3_TABLE

    model = C.load_model(EXAMPLE)
    c1 = model.get_layer("C1")  # the 28x28 image padded to 32x32, then 5x5 -> 28x28
    assert c1.padding == (2, 2) and c1.output_shape((None, 1, 28, 28)) == (None, 6, 28, 28)
    assert np.array_equal(model.get_layer("C3").connections, LENET5_C3_TABLE)
    assert isinstance(model.layers[-1], RBFOutput)
    spec = C.training_from_config(C.load_config(EXAMPLE))
    assert isinstance(C.make_loss(spec), RBFEuclideanLoss)
