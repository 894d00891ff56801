"""Per-sample weights in every loss and in fit/evaluate, soft cross-entropy targets and MSE's
reductions: finite differences in float64, PyTorch, plain NumPy formulas, bitwise all-ones."""
import numpy as np
import pytest

import cnnkit as ck
from cnnkit import layers as L
from cnnkit.losses import MSE, BCEWithLogits, NLLLoss, SoftmaxCrossEntropy
from gradcheck import assert_close, numeric_grad

RNG = np.random.default_rng(1313)


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def soft_rows(n, k):
    t = RNG.uniform(0, 1, (n, k))
    return t / t.sum(axis=1, keepdims=True)


def weights(n):
    w = RNG.uniform(0, 3, n)
    w[0] = 0.0  # a zero weight is allowed
    return w


CASES = {
    "ce": (SoftmaxCrossEntropy, lambda: (RNG.standard_normal((6, 4)), RNG.integers(0, 4, 6))),
    "ce_smooth": (lambda: SoftmaxCrossEntropy(label_smoothing=0.3),
                  lambda: (RNG.standard_normal((6, 4)), RNG.integers(0, 4, 6))),
    "ce_soft": (SoftmaxCrossEntropy, lambda: (RNG.standard_normal((6, 4)), soft_rows(6, 4))),
    "ce_soft_smooth": (lambda: SoftmaxCrossEntropy(label_smoothing=0.2),
                       lambda: (RNG.standard_normal((6, 4)), soft_rows(6, 4))),
    "nll": (NLLLoss, lambda: (log_softmax(RNG.standard_normal((6, 4))), RNG.integers(0, 4, 6))),
    "nll_soft": (NLLLoss, lambda: (log_softmax(RNG.standard_normal((6, 4))), soft_rows(6, 4))),
    "bce": (BCEWithLogits, lambda: (RNG.standard_normal((6, 2, 3)),
                                    RNG.uniform(0, 1, (6, 2, 3)))),
    **{f"mse_{r}": (lambda r=r: MSE(reduction=r),
                    lambda: (RNG.standard_normal((6, 3, 2)), RNG.standard_normal((6, 3, 2))))
       for r in MSE.REDUCTIONS},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_weighted_loss_gradients_match_finite_differences(case):
    make_loss, make = CASES[case]
    pred, target = make()
    w = weights(len(pred))
    loss = make_loss()
    loss.forward(pred, target, sample_weight=w)
    grad = loss.backward()
    assert grad.shape == pred.shape and grad.dtype == pred.dtype
    assert_close(grad, numeric_grad(lambda: loss.forward(pred, target, sample_weight=w), pred),
                 what=case)
    assert np.all(grad[0] == 0)  # the zero-weight sample gets no gradient


@pytest.mark.parametrize("case", sorted(CASES))
def test_weighted_loss_is_the_weighted_mean_of_per_sample_losses(case):
    """sum_i w_i l_i / sum_i w_i, each l_i the loss of sample i alone; "sum"-like reductions
    keep the scale of a sum (N times that weighted mean)."""
    make_loss, make = CASES[case]
    pred, target = make()
    w = weights(len(pred))
    loss = make_loss()
    per = np.array([loss.forward(pred[i:i + 1], target[i:i + 1]) for i in range(len(pred))])
    want = np.sum(w * per) / np.sum(w)
    if getattr(loss, "reduction", "mean") in ("sum", "half_sum"):
        want *= len(pred)
    assert loss.forward(pred, target, sample_weight=w) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_ones_weights_are_bitwise_the_unweighted_loss(case, dtype):
    make_loss, make = CASES[case]
    for n in (1, 7, 64, 257):
        pred, target = make()
        reps = -(-n // len(pred))
        pred = np.concatenate([pred] * reps)[:n].astype(dtype)
        target = np.concatenate([target] * reps)[:n]
        loss = make_loss()
        a, ga = loss.forward(pred, target), loss.backward()
        b, gb = loss.forward(pred, target, sample_weight=np.ones(n)), loss.backward()
        assert a == b and np.array_equal(ga, gb) and ga.dtype == gb.dtype, (case, n)


def test_weighted_cross_entropy_matches_torch_with_labels_and_soft_targets():
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for these tests")
    F = torch.nn.functional
    z = (2 * RNG.standard_normal((9, 5))).astype(np.float64)
    labels = RNG.integers(0, 5, 9)
    soft = soft_rows(9, 5)
    w = weights(9)
    for target, eps in ((labels, 0.0), (labels, 0.1), (soft, 0.0), (soft, 0.25)):
        tz = torch.tensor(z, requires_grad=True)
        per = F.cross_entropy(tz, torch.tensor(target), reduction="none", label_smoothing=eps)
        tw = torch.tensor(w)
        ((per * tw).sum() / tw.sum()).backward()
        want = float(((per * tw).sum() / tw.sum()).detach())
        loss = SoftmaxCrossEntropy(label_smoothing=eps)
        assert loss.forward(z, target, sample_weight=w) == pytest.approx(want, rel=1e-12)
        assert_close(loss.backward(), tz.grad.numpy(), rtol=1e-10, what=f"eps={eps}")
        # unweighted soft targets: torch's own mean reduction
        assert SoftmaxCrossEntropy(label_smoothing=eps).forward(z, target) == pytest.approx(
            float(F.cross_entropy(torch.tensor(z), torch.tensor(target), label_smoothing=eps)),
            rel=1e-12)


def test_one_hot_targets_give_the_label_result():
    z = RNG.standard_normal((8, 6)).astype(np.float32)
    labels = RNG.integers(0, 6, 8)
    one_hot = np.eye(6, dtype=np.float32)[labels]
    for loss, pred in ((SoftmaxCrossEntropy(), z), (NLLLoss(), log_softmax(z))):
        a, ga = loss.forward(pred, labels), loss.backward()
        b, gb = loss.forward(pred, one_hot), loss.backward()
        assert a == b and np.array_equal(ga, gb)


def test_mse_reductions_as_written():
    """mean = sum/(N*C); sum; half_sum = 1/2 sum_n sum_c (t - y)^2 (gradient y - t);
    mean_per_sample = 1/N sum_n sum_c (t - y)^2, checked against plain sums and torch."""
    y = RNG.standard_normal((5, 3))
    t = RNG.standard_normal((5, 3))
    sq = (t - y) ** 2
    want = {"mean": sq.sum() / 15, "sum": sq.sum(), "half_sum": 0.5 * sq.sum(),
            "mean_per_sample": sq.sum() / 5}
    for red, value in want.items():
        loss = MSE(reduction=red)
        assert loss.forward(y, t) == pytest.approx(value, rel=1e-13), red
        grad = loss.backward()
        if red == "half_sum":
            np.testing.assert_allclose(grad, y - t, rtol=1e-14)
    assert MSE().reduction == "mean"
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for these tests")
    for red in ("mean", "sum"):
        assert MSE(red).forward(y, t) == pytest.approx(float(torch.nn.functional.mse_loss(
            torch.tensor(y), torch.tensor(t), reduction=red)), rel=1e-13)


def test_weights_and_soft_targets_are_validated():
    z = RNG.standard_normal((4, 3))
    labels = np.array([0, 1, 2, 0])
    loss = SoftmaxCrossEntropy()
    for bad, msg in ((np.ones(3), r"sample_weight must be real numbers of shape \(4,\)"),
                     (np.ones((4, 1)), r"sample_weight must be real numbers of shape \(4,\)"),
                     (np.array([1, np.nan, 1, 1]), "sample_weight contains NaN"),
                     (np.array([1, np.inf, 1, 1]), "sample_weight contains NaN or Inf"),
                     (np.array([1, -1, 1, 1]), "sample_weight must be >= 0"),
                     (np.zeros(4), "sample_weight is all zero"),
                     (np.array(["a"] * 4), "sample_weight must be real numbers")):
        with pytest.raises(ValueError, match="SoftmaxCrossEntropy: " + msg):
            loss.forward(z, labels, sample_weight=bad)
    soft = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"row 2 sums to"):
        bad = soft.copy()
        bad[2, 0] += 0.1
        loss.forward(z, bad)
    with pytest.raises(ValueError, match="soft targets must be >= 0"):
        bad = soft.copy()
        bad[1] = [1.5, -0.5, 0.0]
        loss.forward(z, bad)
    with pytest.raises(ValueError, match=r"soft targets must be real numbers of shape \(4, 3\)"):
        loss.forward(z, np.full((4, 2), 0.5))
    with pytest.raises(ValueError, match="NLLLoss: soft targets contain NaN"):
        NLLLoss().forward(log_softmax(z), np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="MSE: reduction must be one of"):
        MSE(reduction="avg")
    with pytest.raises(ValueError, match="MSE: sample_weight"):
        MSE().forward(z, z, sample_weight=np.ones(5))


def test_config_names_the_loss_options():
    from cnnkit import config as C

    spec = C.training_from_config({"training": {"loss": {"name": "mse",
                                                         "reduction": "half_sum"}}})
    loss = C.make_loss(spec)
    assert isinstance(loss, MSE) and loss.reduction == "half_sum"
    spec = C.training_from_config({"training": {"loss": {"name": "mse", "reduction": "x"}}})
    with pytest.raises(C.ConfigError, match="training.loss: MSE: reduction must be one of"):
        C.make_loss(spec)


# ------------------------------------------------------------------------------ fit / evaluate
def small_net(seed):
    rng = np.random.default_rng(seed)
    return ck.Sequential([L.Conv2D(1, 3, 3, rng=rng), L.ReLU(), L.Flatten(),
                          L.Dense(3 * 6 * 6, 4, rng=rng)], input_shape=(1, 8, 8))


def small_data(n=40):
    rng = np.random.default_rng(5)
    return (rng.standard_normal((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 4, n))


def train(sample_weight=None, **kw):
    model = small_net(0)
    opt = ck.optim.SGD(model, lr=0.1, momentum=0.9)
    hist = ck.train.fit(model, small_data(), small_data(16), optimizer=opt, epochs=2,
                        batch_size=8, seed=3, verbose=False, sample_weight=sample_weight, **kw)
    return model, hist


def test_fit_with_all_ones_weights_is_bitwise_the_unweighted_run():
    m1, h1 = train()
    m2, h2 = train(np.ones(40))
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert np.array_equal(a, b), k
    assert h1.to_dict()["loss"] == h2.to_dict()["loss"]
    assert h1.to_dict()["accuracy"] == h2.to_dict()["accuracy"]


def test_fit_weights_steer_training_like_duplicated_samples():
    """Integer weights on a full-batch gradient step equal repeating each sample that often."""
    x, y = small_data(12)
    w = np.array([0, 1, 2, 3] * 3, dtype=np.float64)
    models = []
    for data, weight in (((x, y), w), ((np.repeat(x, w.astype(int), axis=0),
                                        np.repeat(y, w.astype(int))), None)):
        model = small_net(1).astype(np.float64)
        opt = ck.optim.SGD(model, lr=0.5)
        ck.train.fit(model, (data[0].astype(np.float64), data[1]), optimizer=opt, epochs=1,
                     batch_size=100, shuffle=False, verbose=False, sample_weight=weight)
        models.append(model.state_dict())
    for k in models[0]:
        np.testing.assert_allclose(models[0][k], models[1][k], rtol=1e-12, atol=1e-14)


def test_evaluate_weighted_loss_and_accuracy():
    model = small_net(2)
    x, y = small_data(30)
    w = RNG.uniform(0, 2, 30)
    res = model.evaluate(x, y, sample_weight=w, batch_size=7)
    out = model.forward(x, training=False)
    per = np.array([SoftmaxCrossEntropy().forward(out[i:i + 1], y[i:i + 1]) for i in range(30)])
    assert res["loss"] == pytest.approx(np.sum(w * per) / w.sum(), rel=1e-5)
    assert res["accuracy"] == pytest.approx(np.sum(w * (out.argmax(1) == y)) / w.sum())
    plain = model.evaluate(x, y, batch_size=7)
    assert model.evaluate(x, y, sample_weight=np.ones(30), batch_size=7) == plain
    with pytest.raises(ValueError, match="evaluate: sample_weight must be >= 0"):
        model.evaluate(x, y, sample_weight=-w)


def test_fit_checks_sample_weight():
    model = small_net(0)
    opt = ck.optim.SGD(model, lr=0.1)
    with pytest.raises(ValueError, match=r"fit: sample_weight must be real numbers of shape "
                                         r"\(40,\)"):
        ck.train.fit(model, small_data(), optimizer=opt, epochs=1, verbose=False,
                     sample_weight=np.ones(39))
    with pytest.raises(TypeError, match="fit: sample_weight needs train as a pair"):
        ck.train.fit(model, [small_data(8)], optimizer=opt, epochs=1, verbose=False,
                     sample_weight=np.ones(8))
