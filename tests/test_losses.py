"""Losses: NLLLoss, BCEWithLogits, SoftmaxCrossEntropy(label_smoothing), MSE and L2Penalty —
float64 finite-difference gradients, PyTorch parity, stability and validation."""
import numpy as np
import pytest

import cnnkit as ck
from cnnkit import layers as L
from cnnkit.losses import MSE, BCEWithLogits, L2Penalty, NLLLoss, SoftmaxCrossEntropy
from gradcheck import assert_close, numeric_grad

RNG = np.random.default_rng(77)


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


# ------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("loss,make", [
    (NLLLoss(), lambda: (log_softmax(RNG.standard_normal((5, 4))), RNG.integers(0, 4, 5))),
    (SoftmaxCrossEntropy(), lambda: (RNG.standard_normal((5, 4)), RNG.integers(0, 4, 5))),
    (SoftmaxCrossEntropy(label_smoothing=0.2),
     lambda: (RNG.standard_normal((5, 4)), RNG.integers(0, 4, 5))),
    (SoftmaxCrossEntropy(label_smoothing=1.0),
     lambda: (RNG.standard_normal((3, 6)), RNG.integers(0, 6, 3))),
    (BCEWithLogits(), lambda: (3 * RNG.standard_normal((4, 3)), RNG.uniform(0, 1, (4, 3)))),
    (BCEWithLogits(), lambda: (RNG.standard_normal((2, 3, 2, 2)),
                               RNG.integers(0, 2, (2, 3, 2, 2)))),
    (MSE(), lambda: (RNG.standard_normal((3, 4)), RNG.standard_normal((3, 4)))),
], ids=["nll", "ce", "ce_smooth", "ce_smooth_1", "bce_soft", "bce_hard_4d", "mse"])
def test_float64_finite_difference_gradients(loss, make):
    pred, target = make()
    value = loss.forward(pred, target)
    assert isinstance(value, float)
    grad = loss.backward()
    assert grad.shape == pred.shape and grad.dtype == pred.dtype
    assert_close(grad, numeric_grad(lambda: loss.forward(pred, target), pred),
                 what=type(loss).__name__)


# ------------------------------------------------------------------------------ against PyTorch
def assert_rel(got, want, tol=1e-4, what=""):
    want = np.asarray(want)
    err = np.max(np.abs(np.asarray(got, np.float64) - want)) / max(np.max(np.abs(want)), 1e-30)
    assert err <= tol, f"{what}: relative error {err:.3g}"


def torch_loss(torch, fn, pred, target):
    tp = torch.tensor(pred, requires_grad=True)
    out = fn(tp, torch.tensor(target))
    out.backward()
    return float(out.detach()), tp.grad.numpy()


def test_nll_loss_matches_torch():
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for these tests")
    logp = log_softmax(RNG.standard_normal((8, 5))).astype(np.float32)
    labels = RNG.integers(0, 5, 8)
    loss = NLLLoss()
    value = loss.forward(logp, labels)
    tv, tg = torch_loss(torch, torch.nn.functional.nll_loss, logp, labels)
    assert value == pytest.approx(tv, rel=1e-5)
    assert_rel(loss.backward(), tg, what="nll grad")
    # LogSoftmax + NLLLoss == SoftmaxCrossEntropy
    z = RNG.standard_normal((8, 5))
    assert NLLLoss().forward(L.LogSoftmax().forward(z), labels) == \
        pytest.approx(SoftmaxCrossEntropy().forward(z, labels), rel=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 1.0])
def test_cross_entropy_label_smoothing_matches_torch(eps):
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for these tests")
    logits = (3 * RNG.standard_normal((7, 4))).astype(np.float32)
    labels = RNG.integers(0, 4, 7)
    loss = SoftmaxCrossEntropy(label_smoothing=eps)
    value = loss.forward(logits, labels)
    tv, tg = torch_loss(torch, lambda a, b: torch.nn.functional.cross_entropy(
        a, b, label_smoothing=eps), logits, labels)
    assert value == pytest.approx(tv, rel=1e-5)
    assert_rel(loss.backward(), tg, what=f"ce grad eps={eps}")


def test_bce_with_logits_matches_torch_and_is_stable():
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for these tests")
    z = (4 * RNG.standard_normal((6, 3))).astype(np.float32)
    t = RNG.uniform(0, 1, (6, 3)).astype(np.float32)
    loss = BCEWithLogits()
    value = loss.forward(z, t)
    tv, tg = torch_loss(torch, torch.nn.functional.binary_cross_entropy_with_logits, z, t)
    assert value == pytest.approx(tv, rel=1e-5)
    assert_rel(loss.backward(), tg, what="bce grad")
    big = np.array([[1e4, -1e4], [-1e4, 1e4]])
    value = loss.forward(big, np.array([[1.0, 0.0], [1.0, 0.0]]))
    assert value == pytest.approx(5e3, rel=1e-9)                    # no overflow, no log(0)
    assert np.all(np.isfinite(loss.backward()))
    tv, _ = torch_loss(torch, torch.nn.functional.binary_cross_entropy_with_logits, big,
                       np.array([[1.0, 0.0], [1.0, 0.0]]))
    assert value == pytest.approx(tv, rel=1e-9)


# ------------------------------------------------------------------------------ validation
def test_losses_validate_their_inputs_and_name_themselves():
    logp, labels = log_softmax(RNG.standard_normal((4, 3))), np.array([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"NLLLoss: labels must lie in \[0, 3\), got values in "
                                         r"\[0, 3\]"):
        NLLLoss().forward(logp, np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match=r"NLLLoss: labels must be integers of shape \(4,\)"):
        NLLLoss().forward(logp, labels[:3])
    with pytest.raises(ValueError, match="NLLLoss: prediction contains NaN"):
        NLLLoss().forward(np.full((4, 3), np.nan), labels)
    with pytest.raises(ValueError, match=r"NLLLoss: expected prediction of shape \(N, classes\)"):
        NLLLoss().forward(logp[None], labels)
    with pytest.raises(ValueError, match="BCEWithLogits: target shape .* does not match"):
        BCEWithLogits().forward(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"BCEWithLogits: targets must lie in \[0, 1\]"):
        BCEWithLogits().forward(np.zeros((2, 2)), np.array([[0, 1], [2, 0]]))
    with pytest.raises(ValueError, match="BCEWithLogits: targets contain NaN"):
        BCEWithLogits().forward(np.zeros((1, 2)), np.array([[0.5, np.nan]]))
    with pytest.raises(ValueError, match="BCEWithLogits: prediction contains NaN"):
        BCEWithLogits().forward(np.array([[np.inf, 0.0]]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: label_smoothing must be a "
                                         r"number in \[0, 1\]"):
        SoftmaxCrossEntropy(label_smoothing=1.5)
    with pytest.raises(RuntimeError, match=r"BCEWithLogits: backward\(\) needs forward\(\)"):
        BCEWithLogits().backward()


# ------------------------------------------------------------------------------ L2 penalty
def small_model():
    return ck.Sequential([L.Conv2D(1, 2, 3, rng=0, name="c"), L.BatchNorm2D(2, name="bn"),
                          L.ReLU(name="r"), L.Flatten(name="f"), L.Dense(8, 3, rng=0, name="d")],
                         input_shape=(1, 4, 4)).astype(np.float64)


def test_l2_penalty_value_and_gradient():
    model = small_model()
    pen = L2Penalty(0.01)
    weights = [model.get_layer("c").params["weight"], model.get_layer("d").params["weight"]]
    expected = 0.5 * 0.01 * sum(float((w * w).sum()) for w in weights)
    assert pen.forward(model) == pytest.approx(expected, rel=1e-12)
    assert pen(model) == pen.forward(model)
    x = RNG.standard_normal((2, 1, 4, 4))
    model.backward(np.ones_like(model.forward(x)))
    before = {k: dict(layer.grads) for k, layer in ((la.name, la) for la in model.layers)}
    pen.backward(model)
    for name in ("c", "d"):
        layer = model.get_layer(name)
        np.testing.assert_allclose(layer.grads["weight"],
                                   before[name]["weight"] + 0.01 * layer.params["weight"])
        np.testing.assert_array_equal(layer.grads["bias"], before[name]["bias"])   # biases out
    for key in ("weight", "bias"):                                                  # norm out
        np.testing.assert_array_equal(model.get_layer("bn").grads[key], before["bn"][key])
    # finite differences of the penalty w.r.t. one weight
    d = model.get_layer("d")
    d.grads = {}
    pen.backward(d)
    assert_close(d.grads["weight"], numeric_grad(lambda: pen.forward(d), d.params["weight"]),
                 what="L2Penalty")


def test_l2_penalty_options_and_sgd_equivalence():
    model = small_model()
    everything = L2Penalty(0.1, include_biases=True, include_norm=True)
    n_all = sum(p.size for p in model.named_parameters().values())
    flat = np.concatenate([p.ravel() for p in model.named_parameters().values()])
    assert everything.forward(model) == pytest.approx(0.05 * float(flat @ flat))
    assert n_all == flat.size
    # an SGD step with the penalty equals SGD's own weight_decay on the same parameters
    dense_a, dense_b = L.Dense(3, 2, rng=0, dtype=np.float64), L.Dense(3, 2, rng=0, dtype=np.float64)
    g = RNG.standard_normal((2, 3))
    dense_a.grads, dense_b.grads = {"weight": g.copy()}, {"weight": g.copy()}
    L2Penalty(0.05).backward([dense_a])
    ck.optim.SGD([ck.Parameter(dense_a, "weight")], lr=0.1).step()
    ck.optim.SGD([ck.Parameter(dense_b, "weight")], lr=0.1, weight_decay=0.05).step()
    np.testing.assert_allclose(dense_a.params["weight"], dense_b.params["weight"], rtol=1e-12)
    with pytest.raises(ValueError, match="L2Penalty: weight_decay must be a finite number >= 0"):
        L2Penalty(-1.0)
    with pytest.raises(TypeError, match="L2Penalty: expected a model"):
        L2Penalty(0.1).forward("model")
