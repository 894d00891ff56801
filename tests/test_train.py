"""The trainer: metrics, reproducibility, resumable checkpoints, early stopping, callbacks."""
import io
import os

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import layers as L
from cnnkit.train import (Callback, CheckpointError, EarlyStopping, History, LambdaCallback,
                          evaluate, fit, load_checkpoint, save_checkpoint)


@pytest.fixture(scope="module")
def data():
    (x, y), (xv, yv) = ck.datasets.load_mnist()
    return (x[:320], y[:320]), (xv[:100], yv[:100])


def small_model(seed=0, dropout=True, name_suffix=""):
    rng = np.random.default_rng(seed)
    layers = [L.Conv2D(1, 4, 5, stride=2, name="conv", rng=rng), L.ReLU(name="relu"),
              L.MaxPool2D(2, name="pool"), L.Flatten(name="flat")]
    if dropout:
        layers.append(L.Dropout(0.3, rng=np.random.default_rng(seed + 100), name="drop"))
    layers.append(L.Dense(4 * 6 * 6, 10, name="fc", rng=rng))
    return ck.Sequential(layers, input_shape=(1, 28, 28), name="small" + name_suffix)


def make_optimizer(kind, model):
    if kind == "sgd":
        return ck.optim.SGD(model, lr=0.05, momentum=0.9)
    return ck.optim.Adam(model, lr=0.003)


def weights_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


def strip_time(history):
    return [{k: v for k, v in e.items() if k != "time"} for e in history.epochs]


# ------------------------------------------------------------------------------------ basics
def test_fit_keeps_the_readme_call_and_history_shape(data):
    train, val = data
    model = small_model(dropout=False)
    opt = ck.optim.SGD(model, lr=0.05, momentum=0.9)
    stream = io.StringIO()
    history = fit(model, train, val, optimizer=opt, epochs=2, stream=stream)
    assert isinstance(history, History) and len(history) == 2
    assert len(history["val_accuracy"]) == 2 and history.epochs[1]["epoch"] == 2
    assert set(history.epochs[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy",
                                      "lr", "time"}
    assert history["lr"] == [0.05, 0.05]
    assert history.to_dict()["loss"] == history["loss"]
    assert "epoch 2/2 [########################] 5/5" in stream.getvalue()
    ev = evaluate(model, val)
    assert ev["accuracy"] == pytest.approx(history["val_accuracy"][-1])
    assert ev["loss"] == pytest.approx(history["val_loss"][-1])


def test_fit_validates_arguments(data):
    train, val = data
    model = small_model(dropout=False)
    opt = ck.optim.SGD(model, lr=0.01)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        fit(model, train, optimizer=opt, epochs=0)
    with pytest.raises(TypeError, match="pair"):
        fit(model, train[0], optimizer=opt, epochs=1)
    with pytest.raises(ValueError, match="rng or seed"):
        fit(model, train, optimizer=opt, epochs=1, rng=1, seed=1)
    with pytest.raises(TypeError, match="Callback"):
        fit(model, train, optimizer=opt, epochs=1, callbacks=[object()])
    with pytest.raises(ValueError, match="val_loss.*validation data"):
        fit(model, train, optimizer=opt, epochs=1, early_stopping=True, verbose=False)


def test_same_seed_gives_bitwise_identical_runs(data):
    train, val = data
    runs = []
    for _ in range(2):
        model = small_model()
        opt = make_optimizer("adam", model)
        h = fit(model, train, val, optimizer=opt, epochs=2, batch_size=32, seed=7, verbose=False)
        runs.append((model, strip_time(h)))
    assert weights_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    other = small_model()
    fit(other, train, val, optimizer=make_optimizer("adam", other), epochs=2, batch_size=32,
        seed=8, verbose=False)
    assert not weights_equal(runs[0][0], other)


# ------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_resume_after_epoch_3_is_bitwise_equal_to_an_uninterrupted_run(data, tmp_path, kind):
    """With momentum SGD / Adam, a Dropout layer (its own Generator), a schedule and early
    stopping state: stop after epoch 3, resume from the checkpoint, get the same weights."""
    train, val = data

    def setup():
        model = small_model()
        opt = make_optimizer(kind, model)
        sched = ck.schedules.StepLR(opt, step_size=2, gamma=0.5)
        stopper = EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=False)
        return model, opt, sched, stopper, np.random.default_rng(123)

    model, opt, sched, stopper, rng = setup()
    full = fit(model, train, val, optimizer=opt, epochs=5, batch_size=32, rng=rng,
               scheduler=sched, early_stopping=stopper, verbose=False)

    class Interrupt(Callback):
        def on_epoch_begin(self, epoch, logs):
            if epoch == 4:
                raise KeyboardInterrupt

    ckpt = tmp_path / "run.npz"
    model2, opt2, sched2, stopper2, rng2 = setup()
    with pytest.raises(KeyboardInterrupt):
        fit(model2, train, val, optimizer=opt2, epochs=5, batch_size=32, rng=rng2,
            scheduler=sched2, early_stopping=stopper2, callbacks=[Interrupt()],
            checkpoint=ckpt, verbose=False)
    assert load_checkpoint(ckpt, small_model())[0] == 3

    model3, opt3, sched3, stopper3, rng3 = setup()   # a fresh process would start like this
    resumed = fit(model3, train, val, optimizer=opt3, epochs=5, batch_size=32, rng=rng3,
                  scheduler=sched3, early_stopping=stopper3, resume_from=ckpt, verbose=False)
    assert weights_equal(model, model3)
    assert strip_time(resumed) == strip_time(full)
    assert resumed["epoch"] == [1, 2, 3, 4, 5]
    assert opt3.state_dict()["steps"] == opt.state_dict()["steps"]
    assert sched3.last_epoch == sched.last_epoch
    assert stopper3.best == stopper.best and stopper3.wait == stopper.wait
    drop, drop3 = model.get_layer("drop"), model3.get_layer("drop")
    assert drop._rng.bit_generator.state == drop3._rng.bit_generator.state
    assert rng.bit_generator.state == rng3.bit_generator.state


def test_resume_with_batchnorm_buffers(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2, 8, 8)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int64)

    def model():
        r = np.random.default_rng(1)
        return ck.Sequential([L.Conv2D(2, 4, 3, name="c", rng=r), L.BatchNorm2D(4, name="bn"),
                              L.ReLU(name="r"), L.GlobalAvgPool2D(name="g"),
                              L.Dense(4, 2, name="d", rng=r)], input_shape=(2, 8, 8))

    a = model()
    fit(a, (x, y), optimizer=ck.optim.SGD(a, lr=0.1, momentum=0.9), epochs=4, batch_size=16,
        seed=3, verbose=False)
    b = model()
    fit(b, (x, y), optimizer=ck.optim.SGD(b, lr=0.1, momentum=0.9), epochs=2, batch_size=16,
        seed=3, verbose=False, checkpoint=tmp_path / "c.npz")
    c = model()
    fit(c, (x, y), optimizer=ck.optim.SGD(c, lr=0.1, momentum=0.9), epochs=4, batch_size=16,
        seed=99, verbose=False, resume_from=tmp_path / "c.npz")  # the seed is restored
    assert weights_equal(a, c)
    assert int(c.get_layer("bn").buffers["num_batches_tracked"]) == 16


def test_checkpoint_every_and_initial_epoch(data, tmp_path):
    train, _ = data
    model = small_model(dropout=False)
    opt = ck.optim.SGD(model, lr=0.01)
    writes = []
    ckpt = tmp_path / "c.npz"

    class Watch(Callback):
        def on_epoch_begin(self, epoch, logs):
            writes.append(load_checkpoint(ckpt, small_model(dropout=False))[0]
                          if ckpt.exists() else None)

    h = fit(model, train, optimizer=opt, epochs=5, initial_epoch=1, checkpoint=ckpt,
            checkpoint_every=2, callbacks=[Watch()], verbose=False)
    assert h["epoch"] == [2, 3, 4, 5]
    assert writes == [None, None, 3, 3]  # after epochs 3 and 5 (the last)
    assert load_checkpoint(ckpt, small_model(dropout=False))[0] == 5


# ------------------------------------------------------------------------------------ errors
def test_checkpoint_write_is_atomic(data, tmp_path, monkeypatch):
    train, _ = data
    model = small_model()
    opt = ck.optim.SGD(model, lr=0.01, momentum=0.9)
    ckpt = tmp_path / "c.npz"
    fit(model, train, optimizer=opt, epochs=1, checkpoint=ckpt, verbose=False)
    before = ckpt.read_bytes()
    calls = {"n": 0}
    real = np.lib.format.write_array

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing)
    with pytest.raises(OSError, match="disk full"):
        fit(model, train, optimizer=opt, epochs=2, initial_epoch=1, checkpoint=ckpt,
            verbose=False)
    monkeypatch.undo()
    assert ckpt.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]  # no temporary file left behind
    assert load_checkpoint(ckpt, small_model())[0] == 1


def test_bad_checkpoints_name_the_file_and_tensor(data, tmp_path):
    train, _ = data
    model = small_model()
    opt = ck.optim.SGD(model, lr=0.01, momentum=0.9)
    ckpt = tmp_path / "c.npz"
    fit(model, train, optimizer=opt, epochs=1, checkpoint=ckpt, verbose=False)

    # wrong architecture: the dense layer has another size
    rng = np.random.default_rng(0)
    other = ck.Sequential([L.Conv2D(1, 4, 5, stride=2, name="conv", rng=rng), L.ReLU(name="relu"),
                           L.MaxPool2D(2, name="pool"), L.Flatten(name="flat"),
                           L.Dropout(0.3, rng=1, name="drop"), L.Dense(144, 12, name="fc")],
                          input_shape=(1, 28, 28))
    before = other.state_dict()
    with pytest.raises(CheckpointError) as info:
        fit(other, train, optimizer=ck.optim.SGD(other, lr=0.01, momentum=0.9), epochs=2,
            resume_from=ckpt, verbose=False)
    assert str(ckpt) in str(info.value) and "'fc.weight'" in str(info.value)
    assert weights_equal_dict(before, other.state_dict())  # nothing changed

    # another optimizer
    fresh = small_model()
    with pytest.raises(CheckpointError, match=r"c\.npz.*optimizer state of type SGD; cannot resume an optimizer of type Adam"):
        load_checkpoint(ckpt, fresh, ck.optim.Adam(fresh))

    # truncated file
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(ckpt.read_bytes()[:-300])
    with pytest.raises(ValueError, match="truncated.npz"):
        load_checkpoint(bad, small_model())

    # a damaged tensor entry
    import zipfile
    damaged = tmp_path / "damaged.npz"
    with zipfile.ZipFile(ckpt) as zin, zipfile.ZipFile(damaged, "w") as zout:
        for item in zin.infolist():
            payload = zin.read(item)
            if item.filename == "model/0.weight.npy":  # structural name of the conv's weight
                payload = payload[:-8]
            zout.writestr(item, payload)
    with pytest.raises(ValueError, match=r"damaged\.npz.*'model/0\.weight'"):
        load_checkpoint(damaged, small_model())

    # a plain weight file is not a checkpoint
    weights = tmp_path / "w.npz"
    model.save_weights(weights)
    with pytest.raises(CheckpointError, match=r"w\.npz: not a cnnkit training checkpoint"):
        load_checkpoint(weights, small_model())

    # a model with a generator the checkpoint does not have
    rng = np.random.default_rng(0)
    m2 = ck.Sequential([L.Conv2D(1, 4, 5, stride=2, name="conv", rng=rng), L.ReLU(name="relu"),
                        L.MaxPool2D(2, name="pool"), L.Flatten(name="flat"),
                        L.Dropout(0.3, rng=1, name="drop"), L.Dropout(0.3, rng=2, name="drop2"),
                        L.Dense(144, 10, name="fc")], input_shape=(1, 28, 28))
    with pytest.raises(CheckpointError, match=r"c\.npz: no generator state for layer 'drop2'"):
        load_checkpoint(ckpt, m2)


def weights_equal_dict(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_save_and_load_checkpoint_directly(tmp_path):
    model = small_model()
    opt = ck.optim.Adam(model)
    rng = np.random.default_rng(5)
    rng.random(3)
    hist = History([{"epoch": 1, "loss": 0.5, "lr": 0.001, "time": 1.0}])
    save_checkpoint(tmp_path / "c.npz", model, opt, epoch=1, history=hist, rng=rng)
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:  # plain numpy reads it
        names = set(z.files)
    assert "model/0.weight" in names and any(n.startswith("rng/drop/") for n in names)
    assert any(n.startswith("trainer/rng/") for n in names)
    other = np.random.default_rng(0)
    epoch, h = load_checkpoint(tmp_path / "c.npz", small_model(), ck.optim.Adam(small_model()),
                               rng=other)
    assert epoch == 1 and h.epochs == hist.epochs
    assert other.bit_generator.state == rng.bit_generator.state


# ------------------------------------------------------------------------------------ stopping
def test_early_stopping_stops_and_restores_the_best_weights(data):
    train, val = data
    model = small_model(dropout=False)
    opt = ck.optim.SGD(model, lr=0.05, momentum=0.9)
    scripted = {1: 1.0, 2: 0.5, 3: 0.6, 4: 0.55, 5: 0.4, 6: 0.3}
    snapshots = {}

    class Script(Callback):  # runs before the stopper: rewrites the monitored metric
        def on_epoch_end(self, epoch, logs):
            logs["val_loss"] = scripted[epoch]
            snapshots[epoch] = self.model.state_dict()

    stopper = EarlyStopping(monitor="val_loss", patience=2, min_delta=0.0,
                            restore_best_weights=True)
    stream = io.StringIO()
    h = fit(model, train, val, optimizer=opt, epochs=6, callbacks=[Script()],
            early_stopping=stopper, stream=stream)
    assert len(h) == 4 and stopper.stopped_epoch == 4 and stopper.best_epoch == 2
    assert "early stopping: val_loss has not improved for 2 epochs" in h.stop_reason
    assert "stopped after epoch 4" in stream.getvalue()
    assert weights_equal_dict(model.state_dict(), snapshots[2])


def test_early_stopping_modes_and_min_delta():
    es = EarlyStopping(monitor="val_accuracy")
    assert es.mode == "max"
    es = EarlyStopping(monitor="loss", min_delta=0.1, patience=1)

    class Trainer:
        stop_training = False
        stop_reason = None

        def request_stop(self, reason=None):
            self.stop_training, self.stop_reason = True, reason

    es.trainer = Trainer()
    es.on_epoch_end(1, {"loss": 1.0})
    es.on_epoch_end(2, {"loss": 0.95})   # not better by more than min_delta
    assert es.trainer.stop_training and es.best == 1.0
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=-1)


def test_callbacks_are_called_in_order_and_can_stop(data):
    train, val = data
    model = small_model(dropout=False)
    opt = ck.optim.SGD(model, lr=0.01)
    events = []

    class Record(Callback):
        def on_train_begin(self, logs):
            events.append(("train_begin", logs["epochs"]))

        def on_epoch_begin(self, epoch, logs):
            events.append(("epoch_begin", epoch))

        def on_batch_end(self, batch, logs):
            events.append(("batch_end", batch))

        def on_epoch_end(self, epoch, logs):
            events.append(("epoch_end", epoch, sorted(logs)))

        def on_train_end(self, logs):
            events.append(("train_end", logs["epoch"]))

    second = LambdaCallback(on_epoch_end=lambda e, logs: events.append(("lambda", e)))
    fit(model, train, val, optimizer=opt, epochs=2, batch_size=160,
        callbacks=[Record(), second], verbose=False)
    keys = sorted(["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"])
    assert events == [("train_begin", 2),
                      ("epoch_begin", 1), ("batch_end", 1), ("batch_end", 2),
                      ("epoch_end", 1, keys), ("lambda", 1),
                      ("epoch_begin", 2), ("batch_end", 1), ("batch_end", 2),
                      ("epoch_end", 2, keys), ("lambda", 2),
                      ("train_end", 2)]

    class StopMidEpoch(Callback):
        def on_batch_end(self, batch, logs):
            if batch == 3:
                self.request_stop("enough")

    h = fit(model, train, optimizer=opt, epochs=5, batch_size=32, callbacks=[StopMidEpoch()],
            verbose=False)
    assert len(h) == 1 and h.stop_reason == "enough"
    with pytest.raises(TypeError, match="unknown hooks"):
        LambdaCallback(on_epoch_ends=print)


# ------------------------------------------------------------------------------------ extras
def test_regularizer_adds_the_l2_penalty(data):
    train, _ = data
    base = small_model(dropout=False)
    h0 = fit(base, train, optimizer=ck.optim.SGD(base, lr=0.0), epochs=1, seed=0,
             verbose=False)
    reg = small_model(dropout=False)
    h1 = fit(reg, train, optimizer=ck.optim.SGD(reg, lr=0.0), epochs=1, seed=0,
             regularizer=0.1, verbose=False)
    penalty = 0.05 * sum(float(np.sum(p.astype(np.float64) ** 2))
                         for k, p in reg.named_parameters().items() if k.endswith("weight"))
    assert h1["loss"][0] == pytest.approx(h0["loss"][0] + penalty, rel=1e-6)
    # the penalty's gradient shrinks the weights (lr > 0, data gradient aside)
    a, b = small_model(dropout=False), small_model(dropout=False)
    fit(a, train, optimizer=ck.optim.SGD(a, lr=0.01), epochs=1, seed=0, verbose=False)
    fit(b, train, optimizer=ck.optim.SGD(b, lr=0.01), epochs=1, seed=0, regularizer=1.0,
        verbose=False)
    assert np.sum(b.get_layer("fc").params["weight"] ** 2) < \
        np.sum(a.get_layer("fc").params["weight"] ** 2)


def test_regularizer_object_from_losses(data):
    train, _ = data
    a, b = small_model(dropout=False), small_model(dropout=False)
    ha = fit(a, train, optimizer=ck.optim.SGD(a, lr=0.01), epochs=1, seed=0, verbose=False,
             regularizer=ck.losses.L2Penalty(0.01))
    hb = fit(b, train, optimizer=ck.optim.SGD(b, lr=0.01), epochs=1, seed=0, verbose=False,
             regularizer=0.01)
    assert weights_equal(a, b) and ha["loss"] == hb["loss"]
    with pytest.raises(TypeError, match="regularizer"):
        fit(a, train, optimizer=ck.optim.SGD(a, lr=0.01), epochs=1, regularizer="l2")


def test_lbfgs_trains_through_a_closure():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float64)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = ck.Sequential([L.Dense(4, 2, dtype=np.float64, rng=rng)], input_shape=(4,))
    opt = ck.optim.LBFGS(model, lr=1.0, max_iter=5)
    h = fit(model, (x, y), optimizer=opt, epochs=3, batch_size=64, seed=0, verbose=False)
    assert h["loss"][-1] < h["loss"][0]


class _BacktrackingDescent:
    """A closure-based optimizer from outside cnnkit (no cnnkit base class): steepest descent
    whose step is halved until the loss goes down, so it must re-evaluate the model."""

    needs_closure = True

    def __init__(self, model, lr=4.0):
        self.params = list(model.parameters())
        self.lr = lr
        self.steps = self.evaluations = 0

    def zero_grad(self):
        for p in self.params:
            p.layer.grads.pop(p.key, None)

    def step(self, closure):
        loss = closure()
        self.evaluations += 1
        start = [(p, p.value.copy(), np.array(p.grad)) for p in self.params]
        t = self.lr
        for _ in range(30):
            for p, w0, g in start:
                p.value[...] = w0 - t * g
            self.evaluations += 1
            if closure() < loss:
                break
            t /= 2
        else:
            for p, w0, _ in start:
                p.value[...] = w0
        self.steps += 1
        return loss


def test_fit_honours_the_needs_closure_trait_of_any_optimizer():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 4))
    y = (x[:, 0] - x[:, 2] > 0).astype(np.int64)
    model = ck.Sequential([L.Dense(4, 2, dtype=np.float64, rng=rng)], input_shape=(4,))
    opt = _BacktrackingDescent(model)
    h = fit(model, (x, y), optimizer=opt, epochs=4, batch_size=32, seed=0, verbose=False)
    assert opt.steps == 4 * 3  # one step(closure) per batch, no plain step() on top
    assert opt.evaluations >= 2 * opt.steps  # each step re-evaluated through the closure
    assert h["loss"][-1] < 0.6 * h["loss"][0]
    assert ck.optim.LBFGS.needs_closure and not ck.optim.Optimizer.needs_closure


def test_plot_functions(tmp_path, data):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the plot extra)")
    from cnnkit import plot

    train, val = data
    model = small_model()
    h = fit(model, train, val, optimizer=ck.optim.SGD(model, lr=0.05), epochs=2, verbose=False)
    paths = plot.plot_training(h, model, tmp_path / "out")
    assert [os.path.basename(p) for p in paths] == ["loss.png", "accuracy.png", "filters.png"]
    rgb = L.Conv2D(3, 5, 3, name="rgb")
    plot.plot_filters(rgb, tmp_path / "rgb.png")
    for p in paths + [str(tmp_path / "rgb.png")]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # epochs are whole numbers on the axis, also for a one-epoch run
    from cnnkit.plot import _curves_figure, require_matplotlib

    Figure, _ = require_matplotlib()
    for n in (1, 3, 40):
        rows = [{"epoch": e, "loss": 1.0 / e} for e in range(1, n + 1)]
        ticks = _curves_figure(Figure, rows, "loss", None).axes[0].get_xticks()
        assert len(ticks) and all(float(t).is_integer() for t in ticks), (n, ticks)
    dense_only = ck.Sequential([L.Dense(4, 2)], input_shape=(4,))
    with pytest.raises(ValueError, match="no convolution"):
        plot.plot_filters(dense_only, tmp_path / "none.png")
    assert not os.path.exists(tmp_path / "none.png")
