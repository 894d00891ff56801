"""cnnkit.boosting: SAMME rounds against weights computed by hand, the stage heads, the joint
weighted objective (finite differences), training from Python and from a config."""
import math
import os

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import layers as L
from cnnkit.boosting import (ERROR_CLIP, SAMMEBoosting, StagewiseBoosting, StagewiseLoss,
                             samme_round)
from cnnkit.losses import SoftmaxCrossEntropy
from gradcheck import assert_close, numeric_grad


# ------------------------------------------------------------------------------ the SAMME round
def test_samme_round_matches_hand_computed_weights():
    """K = 3 classes, 5 samples, two heads.

    Head 1 misses sample 3 only: e1 = 1/5, alpha1 = ln(0.8/0.2) + ln 2 = ln 8; sample 3's weight
    1/5 becomes 8/5, the total 12/5, so the weights are 1/12 except sample 3 at 2/3.
    Head 2 misses samples 1 and 4: e2 = 2/12 = 1/6, alpha2 = ln 5 + ln 2 = ln 10; their 1/12
    become 10/12, the total 30/12: weights 1/30, 1/3, 1/30, 8/30, 1/3."""
    labels = np.array([0, 1, 2, 0, 1])
    votes = np.array([[0, 1, 2, 1, 1],
                      [0, 2, 2, 0, 0]])
    alphas, errors, w = samme_round(votes, labels, np.ones(5), 3)
    np.testing.assert_allclose(errors, [1 / 5, 1 / 6], rtol=1e-14)
    np.testing.assert_allclose(alphas, [math.log(8), math.log(10)], rtol=1e-14)
    np.testing.assert_allclose(w, [1 / 30, 1 / 3, 1 / 30, 8 / 30, 1 / 3], rtol=1e-14)
    # the starting weights are normalised first: any positive scale gives the same round
    a2, e2, w2 = samme_round(votes, labels, np.full(5, 7.0), 3)
    np.testing.assert_allclose(w2, w, rtol=1e-14) and np.testing.assert_allclose(a2, alphas)


def test_samme_vote_by_hand():
    """Sample 1: head 1 says class 1 (ln 8), head 2 class 2 (ln 10): class 2 wins; sample 3:
    class 1 (ln 8) against class 0 (ln 10): class 0."""
    net = StagewiseBoosting(tiny_backbone(0, classes=3), stages=["pool"])
    net.alphas = np.array([math.log(8), math.log(10)])
    votes = np.array([[0, 1, 2, 1, 1], [0, 2, 2, 0, 0]])
    scores = net.vote_scores(votes)
    assert scores[1, 1] == pytest.approx(math.log(8)) and scores[1, 2] == pytest.approx(
        math.log(10))
    assert list(scores.argmax(1)) == [0, 2, 2, 0, 0]


def test_samme_round_edge_cases():
    labels = np.array([0, 1, 0, 1])
    # a perfect head: e clipped to ERROR_CLIP, alpha finite, nobody re-weighted
    a, e, w = samme_round(labels[None], labels, np.ones(4), 2)
    assert e[0] == ERROR_CLIP and a[0] == pytest.approx(math.log((1 - ERROR_CLIP) / ERROR_CLIP))
    np.testing.assert_allclose(w, 0.25)
    # chance level with K = 2 (e = 1/2) and worse than chance: alpha 0, weights unchanged
    for pred in ([0, 0, 1, 1], [1, 0, 1, 0]):
        a, e, w = samme_round(np.array([pred]), labels, np.array([1., 2., 3., 4.]), 2)
        assert a[0] == 0.0
        np.testing.assert_allclose(w, [0.1, 0.2, 0.3, 0.4])
    # every answer wrong: e clipped to 1 - ERROR_CLIP, alpha clamped to 0
    a, e, w = samme_round(1 - labels[None], labels, np.ones(4), 2)
    assert e[0] == 1 - ERROR_CLIP and a[0] == 0.0
    with pytest.raises(ValueError, match="samme_round: sample_weight must be >= 0"):
        samme_round(labels[None], labels, -np.ones(4), 2)
    with pytest.raises(ValueError, match=r"samme_round: expected predictions \(M, N\)"):
        samme_round(labels, labels, np.ones(4), 2)


# ------------------------------------------------------------------------------ the model
def tiny_backbone(seed, classes=3, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return ck.Sequential([
        L.Conv2D(1, 2, 3, padding=1, rng=rng, dtype=dtype, name="conv"),
        L.ReLU(name="relu"), L.MaxPool2D(2, name="pool"),
        L.Flatten(name="flat"), L.Dense(2 * 3 * 3, classes, rng=rng, dtype=dtype, name="fc"),
    ], input_shape=(1, 6, 6), name="tiny")


def tiny_data(n=24, classes=3, seed=4):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.standard_normal((n, 1, 6, 6)).astype(np.float32)
    x[:, 0, :2, :2] += 2.0 * y[:, None, None]  # learnable
    return x, y


def test_heads_on_the_stages_in_stage_order():
    backbone = tiny_backbone(0)
    net = StagewiseBoosting(backbone, stages=["pool", "conv"], rng=np.random.default_rng(1))
    assert net.head_names == ["conv_head", "pool_head", "fc"]
    assert [n.shape for n in net.outputs] == [(None, 3)] * 3
    x, _ = tiny_data(5)
    outs = net.forward(x, training=False)
    np.testing.assert_array_equal(outs[-1], backbone.forward(x, training=False))
    gap = StagewiseBoosting(tiny_backbone(0), stages=["pool"], head="global_avg",
                            include_output=False)
    assert [type(l).__name__ for l in gap.layers][-2:] == ["GlobalAvgPool2D", "Dense"]
    assert gap.get_layer("pool_head").params["weight"].shape == (3, 2)  # 2 channels -> 3
    assert gap.head_names == ["pool_head"]


def test_construction_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"no layer named 'pol' in tiny \(did you mean 'pool'"):
        StagewiseBoosting(tiny_backbone(0), stages=["pol"])
    with pytest.raises(ValueError, match="head must be one of flatten, global_avg"):
        StagewiseBoosting(tiny_backbone(0), stages=["pool"], head="mean")
    with pytest.raises(ValueError, match="head 'global_avg' needs a 4-D stage output"):
        StagewiseBoosting(tiny_backbone(0), stages=["flat"], head="global_avg")
    with pytest.raises(ValueError, match="not built"):
        StagewiseBoosting(ck.Sequential([L.ReLU()]), stages=[])
    with pytest.raises(ValueError, match="no weak classifier"):
        StagewiseBoosting(tiny_backbone(0), stages=[], include_output=False)
    with pytest.raises(TypeError, match="stages must be a list of layer names"):
        StagewiseBoosting(tiny_backbone(0), stages="pool")


def test_joint_objective_is_the_sum_of_weighted_head_losses_with_exact_gradients():
    """float64: the loss against a sum of SoftmaxCrossEntropy per output; a parameter's gradient
    through backbone and heads against central differences."""
    net = StagewiseBoosting(tiny_backbone(2, dtype=np.float64), stages=["conv", "pool"],
                            rng=np.random.default_rng(3))
    x, y = tiny_data(6)
    x = x.astype(np.float64)
    w = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.5])
    loss = StagewiseLoss()
    outs = net.forward(x, training=True)
    value = loss.forward(outs, y, sample_weight=w)
    want = sum(SoftmaxCrossEntropy().forward(o, y, sample_weight=w) for o in outs)
    assert value == pytest.approx(want, rel=1e-13)
    net.backward(loss.backward(), input_grads=False)
    conv = net.get_layer("conv")

    def objective():
        return loss.forward(net.forward(x, training=False), y, sample_weight=w)

    for layer in (conv, net.get_layer("conv_head")):
        grad = layer.grads["weight"].copy()
        assert_close(grad, numeric_grad(objective, layer.params["weight"]), what=layer.name)


# ------------------------------------------------------------------------------ training
class RecordingCE(SoftmaxCrossEntropy):
    seen: list = []

    def forward(self, logits, labels, sample_weight=None):
        RecordingCE.seen.append(None if sample_weight is None else sample_weight.copy())
        return super().forward(logits, labels, sample_weight)


def test_each_epoch_is_a_round_and_the_next_epoch_trains_with_its_weights():
    x, y = tiny_data(24)
    net = StagewiseBoosting(tiny_backbone(5), stages=["pool"], rng=np.random.default_rng(6))
    votes = []

    class Votes(ck.train.Callback):  # after the round: the network is the one it scored
        def on_epoch_end(self, epoch, logs):
            votes.append(net.votes(x))

    RecordingCE.seen = []
    hist = ck.boosting.fit(net, (x, y), (x[:9], y[:9]), optimizer=ck.optim.SGD(net, lr=0.05),
                           loss=RecordingCE(), epochs=2, batch_size=24, shuffle=False,
                           verbose=False, callbacks=[Votes()])
    # one full batch per epoch, two heads: epoch 1 with uniform weights
    assert len(RecordingCE.seen) == 4
    assert all(np.array_equal(s, np.ones(24)) for s in RecordingCE.seen[:2])
    alphas1, errors1, w1 = samme_round(votes[0], y, np.ones(24), 3)
    e = hist.epochs[0]
    assert [e["error_pool_head"], e["error_fc"]] == list(errors1)
    assert [e["alpha_pool_head"], e["alpha_fc"]] == list(alphas1)
    # epoch 2 trains with round 1's weights (scaled to a mean of 1)
    assert not np.allclose(w1, 1 / 24)
    for seen in RecordingCE.seen[2:]:
        np.testing.assert_allclose(seen, w1 * 24, rtol=1e-12)
    # round 2 starts from round 1's weights; the vote uses its alphas
    alphas2 = samme_round(votes[1], y, w1, 3)[0]
    np.testing.assert_allclose(net.alphas, alphas2, rtol=1e-12)
    last = hist.epochs[-1]
    assert last["accuracy"] == np.mean(net.predict(x).argmax(1) == y)
    assert last["val_accuracy"] == np.mean(net.predict(x[:9]).argmax(1) == y[:9])


def test_carry_over_compounds_the_weights_and_can_be_switched_off():
    x, y = tiny_data(24)
    results = {}
    for carry in (True, False):
        net = StagewiseBoosting(tiny_backbone(5), stages=["pool"],
                                rng=np.random.default_rng(6))
        weights = np.ones(24)
        rounds = SAMMEBoosting(net, x, y, weights, carry_over=carry)
        start = []

        class Before(ck.train.Callback):
            def on_epoch_end(self, epoch, logs):
                start.append((weights.copy(), net.votes(x)))

        ck.train.fit(net, (x, y), optimizer=ck.optim.SGD(net, lr=0.05), loss=StagewiseLoss(),
                     epochs=2, batch_size=8, seed=0, verbose=False, sample_weight=weights,
                     callbacks=[Before(), rounds])
        _, (w2_start, votes2) = start
        expect_from = w2_start if carry else np.ones(24)
        np.testing.assert_allclose(weights, samme_round(votes2, y, expect_from, 3)[2] * 24,
                                   rtol=1e-12)
        results[carry] = weights.copy()
    assert not np.allclose(results[True], results[False])


def test_boosted_training_learns_and_saves_its_votes(tmp_path):
    x, y = tiny_data(60)
    net = StagewiseBoosting(tiny_backbone(7), stages=["pool"], rng=np.random.default_rng(8))
    hist = ck.boosting.fit(net, (x, y), (x, y), optimizer=ck.optim.SGD(net, lr=0.05,
                                                                        momentum=0.9),
                           epochs=3, batch_size=10, seed=1, verbose=False)
    assert hist.epochs[-1]["val_accuracy"] > 0.6
    res = net.evaluate(x, y)
    assert res["accuracy"] == hist.epochs[-1]["val_accuracy"]
    assert len(res["head_accuracy"]) == 2
    net.save(tmp_path / "b.safetensors")
    from cnnkit.modelfile import _read

    meta = _read(str(tmp_path / "b.safetensors"))[1]
    assert meta["boosting"] == {"heads": ["pool_head", "fc"],
                                "alphas": [float(a) for a in net.alphas]}
    loaded = ck.load_model(tmp_path / "b.safetensors")
    for a, b in zip(loaded.forward(x, training=False), net.forward(x, training=False)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="the boosting rounds set the sample weights"):
        ck.boosting.fit(net, (x, y), optimizer=ck.optim.SGD(net, lr=0.1), epochs=1,
                        sample_weight=np.ones(60))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        ck.boosting.fit(net, (x, y + 1), optimizer=ck.optim.SGD(net, lr=0.1), epochs=1)


def test_a_resumed_boosted_run_equals_an_uninterrupted_one(tmp_path):
    x, y = tiny_data(30)

    def run(epochs, **kw):
        net = StagewiseBoosting(tiny_backbone(9), stages=["pool"], rng=np.random.default_rng(2))
        ck.boosting.fit(net, (x, y), optimizer=ck.optim.SGD(net, lr=0.05, momentum=0.9),
                        epochs=epochs, batch_size=8, seed=3, verbose=False, **kw)
        return net

    full = run(3)
    run(2, checkpoint=tmp_path / "c.npz")
    resumed = run(3, resume_from=tmp_path / "c.npz")
    np.testing.assert_array_equal(full.alphas, resumed.alphas)
    for k, v in full.state_dict().items():
        assert np.array_equal(v, resumed.state_dict()[k]), k


# ------------------------------------------------------------------------------ config and CLI
BOOSTED_TINY = """name = "tiny"
input_shape = [1, 28, 28]

[[layers]]
type = "conv2d"
name = "conv"
in_channels = 1
out_channels = 4
kernel_size = 5
stride = 2

[[layers]]
type = "relu"
name = "relu"

[[layers]]
type = "maxpool2d"
name = "pool"
kernel_size = 2

[[layers]]
type = "flatten"
name = "flat"

[[layers]]
type = "dense"
name = "fc"
in_features = 144
out_features = 10

[training]
epochs = 2
batch_size = 32
optimizer = { name = "sgd", lr = 0.01, momentum = 0.9 }
data = { name = "mnist", train_size = 300, test_size = 100 }

[training.boosting]
stages = ["pool"]
head = "global_avg"
"""


def test_cnnkit_train_runs_a_boosted_config(tmp_path):
    from test_cli import run_cli

    cfg = tmp_path / "boosted.toml"
    cfg.write_text(BOOSTED_TINY)
    res = run_cli("train", str(cfg), "-q", "-o", str(tmp_path / "b.safetensors"))
    assert res.returncode == 0, res.stderr
    assert "boosting: SAMME over pool_head, fc" in res.stdout
    assert "held-out accuracy:" in res.stdout
    loaded = ck.load_model(tmp_path / "b.safetensors")
    assert [n.name for n in loaded.outputs] == ["pool_head", "fc"]


def test_boosted_example_builds_and_its_section_is_checked():
    from cnnkit import config as C

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = C.load_config(os.path.join(root, "examples", "lenet5-boosted.toml"))
    spec = C.training_from_config(cfg)
    net = C.make_boosted(spec, C.model_from_config(cfg))
    assert net.head_names == ["pool1_head", "pool2_head", "fc3"]
    assert C.make_boosted(C.training_from_config({}), "unchanged") == "unchanged"
    for bad, msg in (({"stages": ["pool"], "rounds": 3}, "unknown key 'rounds'"),
                     ({"stages": "pool"}, "stages must be a list of layer names"),
                     ({"stages": ["pool"], "carry_over": 1}, "carry_over must be true or false"),
                     ([], "must be a table")):
        with pytest.raises(C.ConfigError, match="training.boosting: .*" + msg):
            C.training_from_config({"training": {"boosting": bad}})
    spec = C.training_from_config({"training": {"boosting": {"stages": ["nope"]}}})
    with pytest.raises(C.ConfigError, match="training.boosting: StagewiseBoosting: no layer "
                                            "named 'nope'"):
        C.make_boosted(spec, tiny_backbone(0))
