"""model.fit / model.evaluate, metrics, logger callbacks, frozen layers and gradient
clipping: each against an independent computation."""
import csv
import json

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import metrics as M
from cnnkit.train import CSVLogger, Callback, JSONLinesLogger, evaluate, fit

L = ck.layers


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 6, 6))
    y = rng.integers(0, 3, n)
    return x, y


def _model(dtype=np.float64):
    m = ck.Sequential([L.Conv2D(1, 2, 3, rng=0), L.ReLU(), L.Flatten(), L.Dense(32, 3, rng=1)],
                      input_shape=(1, 6, 6))
    return m.astype(dtype)


# ------------------------------------------------------------------------- model methods
def test_model_fit_and_evaluate_match_the_free_functions():
    x, y = _data()
    m1, m2 = _model(), _model()
    h1 = fit(m1, (x, y), (x[:10], y[:10]), optimizer=ck.optim.SGD(m1, lr=0.1), epochs=2,
             seed=0, verbose=False)
    h2 = m2.fit(x, y, validation_data=(x[:10], y[:10]), optimizer=ck.optim.SGD(m2, lr=0.1),
                epochs=2, seed=0, verbose=False)
    assert h1["loss"] == h2["loss"] and h1["val_accuracy"] == h2["val_accuracy"]
    np.testing.assert_array_equal(m1.layers[3].params["weight"], m2.layers[3].params["weight"])
    assert m2.evaluate(x, y) == evaluate(m1, (x, y))
    m3 = _model()
    m3.fit(x, y, optimizer="sgd", epochs=1, verbose=False)  # a registered name
    with pytest.raises(TypeError, match="optimizer must be"):
        m3.fit(x, y, optimizer=3, verbose=False)


# ----------------------------------------------------------------------------- metrics
def test_top_k_accuracy_against_a_loop_with_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, (200, 6)).astype(np.float64)  # many ties
    y = rng.integers(0, 6, 200)
    for k in (1, 2, 3, 6):
        hits = 0
        for s, t in zip(scores, y):
            order = sorted(range(6), key=lambda j: (-s[j], j))  # ties: lower index first
            hits += t in order[:k]
        assert M.top_k_accuracy(y, scores, k) == hits / 200
    assert M.top_k_accuracy(y, scores, 1) == M.accuracy(y, scores)


def test_confusion_matrix_and_per_class_accuracy():
    y = np.array([0, 0, 1, 2, 2, 2])
    p = np.array([0, 1, 1, 2, 0, 2])
    cm = M.confusion_matrix(y, p, num_classes=4)
    expect = np.zeros((4, 4), int)
    for t, q in zip(y, p):
        expect[t, q] += 1
    np.testing.assert_array_equal(cm, expect)
    pca = M.per_class_accuracy(y, p, num_classes=4)
    np.testing.assert_allclose(pca[:3], [0.5, 1.0, 2 / 3])
    assert np.isnan(pca[3])
    with pytest.raises(ValueError, match="label 2 >= num_classes 2"):
        M.confusion_matrix(y, p, num_classes=2)
    with pytest.raises(ValueError, match="did you mean 'accuracy'"):
        M.parse_metric("acuracy")


def test_evaluate_metrics():
    x, y = _data()
    m = _model()
    out = m.evaluate(x, y, batch_size=7, metrics=["top_k_accuracy:2", "confusion_matrix",
                                                  "per_class_accuracy"])
    scores = m.predict(x)
    assert out["top2_accuracy"] == M.top_k_accuracy(y, scores, 2)
    np.testing.assert_array_equal(out["confusion_matrix"],
                                  M.confusion_matrix(y, scores.argmax(1), 3))
    assert out["confusion_matrix"].sum() == len(y)
    assert out["accuracy"] == pytest.approx(np.trace(out["confusion_matrix"]) / len(y))


# ----------------------------------------------------------------------------- loggers
class _Peek(Callback):
    """Reads the log file while training runs: each epoch's line must be there already."""

    def __init__(self, path):
        self.path, self.lines = path, []

    def on_epoch_end(self, epoch, logs):
        self.lines.append(open(self.path).read().count("\n"))


def test_csv_and_json_lines_loggers_write_each_epoch_at_once(tmp_path):
    x, y = _data()
    m = _model()
    log = tmp_path / "log.csv"
    peek = _Peek(log)
    fit(m, (x, y), (x, y), optimizer=ck.optim.SGD(m, lr=0.1), epochs=3, verbose=False,
        callbacks=[CSVLogger(log), peek], checkpoint=str(tmp_path / "ck.npz"))
    assert peek.lines == [2, 3, 4]  # header + one line per epoch, flushed
    rows = list(csv.DictReader(open(log)))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= set(rows[0])
    jl = tmp_path / "log.jsonl"
    m2 = _model()
    h = fit(m2, (x, y), optimizer=ck.optim.SGD(m2, lr=0.1), epochs=2, verbose=False,
            callbacks=[JSONLinesLogger(jl)])
    recs = [json.loads(line) for line in open(jl)]
    assert [r["loss"] for r in recs] == h["loss"]
    # a resumed run appends instead of truncating
    m3 = _model()
    fit(m3, (x, y), (x, y), optimizer=ck.optim.SGD(m3, lr=0.1), epochs=4, verbose=False,
        callbacks=[CSVLogger(log)], resume_from=str(tmp_path / "ck.npz"))
    assert [int(r["epoch"]) for r in csv.DictReader(open(log))] == [1, 2, 3, 4]


# ---------------------------------------------------------------------- frozen layers
@pytest.mark.parametrize("make", [
    lambda m: ck.optim.SGD(m, lr=0.1, momentum=0.9, weight_decay=0.1),
    lambda m: ck.optim.Adam(m, lr=0.01, weight_decay=0.1),
    lambda m: ck.optim.AdamW(m, lr=0.01),
    lambda m: ck.optim.RMSProp(m, lr=0.01, weight_decay=0.1),
    lambda m: ck.optim.AdaGrad(m, lr=0.1, weight_decay=0.1),
    lambda m: ck.optim.LBFGS(m, lr=0.5, max_iter=3),
], ids=["sgd", "adam", "adamw", "rmsprop", "adagrad", "lbfgs"])
def test_every_optimizer_leaves_frozen_layers_alone(make):
    x, y = _data()
    m = _model()
    m.layers[0].trainable = False
    frozen = {k: v.copy() for k, v in m.layers[0].params.items()}
    free = m.layers[3].params["weight"].copy()
    fit(m, (x, y), optimizer=make(m), epochs=2, verbose=False, regularizer=0.5)
    for k, v in frozen.items():
        np.testing.assert_array_equal(m.layers[0].params[k], v)
    assert not np.array_equal(m.layers[3].params["weight"], free)
    # unfrozen again, it trains
    m.layers[0].trainable = True
    fit(m, (x, y), optimizer=make(m), epochs=1, verbose=False)
    assert not np.array_equal(m.layers[0].params["weight"], frozen["weight"])
    assert "Frozen params" not in m.summary()


def test_trainable_is_checked_and_shown():
    m = _model()
    with pytest.raises(TypeError, match="trainable must be True or False"):
        m.layers[0].trainable = "no"
    m.layers[0].trainable = False
    assert "Frozen params: 20" in m.summary()
    assert ck.losses.L2Penalty(1.0).forward(m) == pytest.approx(
        0.5 * float(np.sum(m.layers[3].params["weight"] ** 2)))


# ---------------------------------------------------------------------- gradient clipping
def _grads_after_backward(x, y, scale=50.0):
    m = _model()
    loss = ck.losses.SoftmaxCrossEntropy()
    out = m.forward(x * scale, training=True)
    loss.forward(out, y)
    m.backward(loss.backward(), input_grads=False)
    return m


def test_clip_grad_norm_and_value_against_numpy_and_torch():
    x, y = _data()
    m = _grads_after_backward(x, y)
    grads = [p.grad.copy() for p in m.parameters()]
    total = np.sqrt(sum(np.sum(g ** 2) for g in grads))
    assert total > 1.0
    got = ck.optim.clip_grad_norm(m, 1.0)
    assert got == pytest.approx(total, rel=1e-12)
    for p, g in zip(m.parameters(), grads):
        np.testing.assert_allclose(p.grad, g * (1.0 / (total + 1e-6)), rtol=1e-12)
    m2 = _grads_after_backward(x, y)
    ck.optim.clip_grad_value(m2, 0.01)
    for p, g in zip(m2.parameters(), grads):
        np.testing.assert_array_equal(p.grad, np.clip(g, -0.01, 0.01))
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (test extra)")
    ts = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads]
    for norm in (2.0, 1.0, float("inf")):
        for t, g in zip(ts, grads):
            t.grad = torch.from_numpy(g.copy())
        m3 = _grads_after_backward(x, y)
        expect = float(torch.nn.utils.clip_grad_norm_(ts, 0.5, norm_type=norm))
        assert ck.optim.clip_grad_norm(m3, 0.5, norm_type=norm) == pytest.approx(expect)
        for p, t in zip(m3.parameters(), ts):
            np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-10)


def test_fit_clips_before_the_step():
    x, y = _data()
    m1, m2 = _model(), _model()
    fit(m1, (x * 50, y), optimizer=ck.optim.SGD(m1, lr=0.1), epochs=1, batch_size=40,
        verbose=False, clip_grad_norm=0.1)
    m2 = _grads_after_backward(x, y)
    ck.optim.clip_grad_norm(m2, 0.1)
    ck.optim.SGD(m2, lr=0.1).step()
    np.testing.assert_allclose(m1.layers[3].params["weight"], m2.layers[3].params["weight"],
                               rtol=1e-12)
    with pytest.raises(ValueError, match="clip_grad_norm must be > 0"):
        fit(m1, (x, y), optimizer=ck.optim.SGD(m1, lr=0.1), clip_grad_norm=0, verbose=False)
