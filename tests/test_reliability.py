"""Reliability: interrupted saves, threads, determinism, memory growth, bounded workspace."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import layers as L
from cnnkit.builtin import _kernel_args
from cnnkit.builtin import conv as builtin_conv


def _lenet_step_fn(batch=64, seed=0):
    model = ck.models.lenet5(rng=seed)
    opt = ck.optim.SGD(model, lr=0.05, momentum=0.9)
    loss = ck.losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(seed)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch)

    def step():
        opt.zero_grad()
        value = loss.forward(model.forward(x, training=True), y)
        model.backward(loss.backward(), input_grads=False)
        opt.step()
        return value

    return model, step


def test_killed_writer_leaves_the_previous_file_intact(tmp_path):
    """A process killed in the middle of save_weights never damages the existing file."""
    target = tmp_path / "weights.npz"
    original = {"w": np.arange(10, dtype=np.float32)}
    ck.io.save_weights(target, original, {"v": 1})
    child = textwrap.dedent(f"""
        import numpy as np, cnnkit as ck
        big = {{f"t{{i}}": np.full(8_000_000, i, dtype=np.float64) for i in range(8)}}
        print("ready", flush=True)
        while True:
            ck.io.save_weights({str(target)!r}, big)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        # wait until a temporary file is being written next to the target, then kill
        while time.monotonic() < deadline:
            temps = [p for p in os.listdir(tmp_path) if p != "weights.npz"]
            if temps and os.path.getsize(tmp_path / temps[0]) > 1_000_000:
                break
            time.sleep(0.005)
        else:
            pytest.fail("the writer never started writing a temporary file")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    arrays, meta = ck.io.load_weights(target)
    if "w" in arrays:  # the kill came before the first replace: the original is intact
        np.testing.assert_array_equal(arrays["w"], original["w"])
        assert meta == {"v": 1}
    else:  # or a complete new file replaced it, never a partial one
        assert sorted(arrays) == [f"t{i}" for i in range(8)]
        assert all(np.all(arrays[f"t{i}"] == i) for i in range(8))


def test_inference_from_four_threads_matches_serial():
    model = ck.models.lenet5(rng=0).eval()
    rng = np.random.default_rng(1)
    batches = [rng.random((16, 1, 28, 28), dtype=np.float32) for _ in range(8)]
    serial = [model.forward(b, training=False) for b in batches]
    results = {}
    errors = []

    def work(tid):
        try:
            for rep in range(3):
                for i, b in enumerate(batches):
                    results[(tid, rep, i)] = model.forward(b, training=False)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (tid, rep, i), out in results.items():
        np.testing.assert_array_equal(out, serial[i])


def test_same_seed_same_threads_is_bitwise_identical():
    runs = []
    for _ in range(2):
        model, step = _lenet_step_fn(seed=3)
        losses = [step() for _ in range(15)]
        runs.append((losses, model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for k in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][k], runs[1][1][k])


def test_one_and_two_threads_agree_within_float32_rounding():
    outs = {}
    for n in (1, 2):
        with ck.num_threads(n):
            assert ck.get_num_threads() == n
            model, step = _lenet_step_fn(seed=5)
            for _ in range(3):
                step()
            outs[n] = model.state_dict()
    for k in outs[1]:
        np.testing.assert_allclose(outs[1][k], outs[2][k], rtol=1e-4, atol=1e-5, err_msg=k)


def _rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_two_thousand_training_steps_do_not_grow_memory():
    _, step = _lenet_step_fn(batch=32)
    for _ in range(200):
        step()
    before = _rss_bytes()
    for _ in range(1800):
        step()
    growth = _rss_bytes() - before
    assert growth < 16 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB"


def test_conv2d_workspace_stays_bounded():
    """(16,128,28,28) -> 128@3x3 pad 1 forward+backward: the column workspace is capped at
    COL_WORKSPACE_BYTES; everything else allocated is inputs, outputs and gradients."""
    conv = L.Conv2D(128, 128, 3, padding=1, rng=0)
    x = np.random.default_rng(0).standard_normal((16, 128, 28, 28), dtype=np.float32)
    y = conv.forward(x)
    conv.backward(np.ones_like(y))  # warm the per-thread workspace cache
    tracemalloc.start()
    try:
        y = conv.forward(x)
        dx = conv.backward(np.ones_like(y))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tensors = x.nbytes + y.nbytes * 2 + dx.nbytes + conv.params["weight"].nbytes * 3
    assert peak <= tensors + 4 * 2**20, (peak, tensors)
    cached = sum(b.nbytes for b in _kernel_args._workspaces.__dict__.values())
    assert cached <= builtin_conv.COL_WORKSPACE_BYTES


def test_variant_returning_the_wrong_dtype_is_caught_naming_variant_and_plugin(monkeypatch):
    reg = ck.plugins.Registry()
    reg.load(entry_points=False)

    class Float64Relu:
        @staticmethod
        def forward(x, params, config, need_backward):
            return np.maximum(x, 0).astype(np.float64), None

        @staticmethod
        def backward(dy, ctx):
            return dy, {}

    class Plugin:
        @staticmethod
        @ck.hookimpl
        def cnnkit_register_variants(register):
            register("relu", "f64", Float64Relu)

    assert reg.register_plugin(Plugin, "sloppy-plugin")
    monkeypatch.setattr(ck.plugins, "_registry", reg)
    with pytest.raises(RuntimeError, match=r"variant 'f64' from plugin 'sloppy-plugin' returned "
                                           r"shape \(2, 3\), dtype float64; expected shape "
                                           r"\(2, 3\), dtype float32"):
        L.ReLU(impl="f64").forward(np.ones((2, 3), np.float32))


@pytest.mark.parametrize("impl", ["cython", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_tanh_stay_finite_for_huge_logits(impl, dtype):
    x = np.array([[-1e4, -50.0, 0.0, 50.0, 1e4]], dtype=dtype)
    for cls in (L.Sigmoid, L.Tanh):
        layer = cls(impl=impl)
        y = layer.forward(x, training=True)
        dx = layer.backward(np.ones_like(y))
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    y = L.Sigmoid(impl=impl).forward(x)
    assert y[0, 0] == 0.0 and y[0, -1] == 1.0 and y[0, 2] == 0.5


def test_check_finite_stops_training_at_the_layer_that_produced_nan():
    model = ck.Sequential([L.Dense(4, 8, name="fc1", rng=0), L.ReLU(name="act"),
                           L.Dense(8, 3, name="fc2", rng=0)], input_shape=(4,))
    model.get_layer("fc2").params["weight"][0, 0] = np.inf  # a corrupted weight
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 4)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    opt = ck.optim.SGD(model, lr=0.1)
    with pytest.raises(FloatingPointError, match=r"layer 'fc2' \(Dense\) produced \d+ NaN/Inf "
                                                 r"value\(s\) in its output"):
        ck.train.fit(model, (x, y), optimizer=opt, epochs=1, verbose=False, check_finite=True)
    assert model.check_finite is False  # restored after fit
    # off by default: fit sees the non-finite output, without naming a layer
    with pytest.raises(FloatingPointError, match="output became NaN/Inf at epoch 1, step 1"):
        ck.train.fit(model, (x, y), optimizer=opt, epochs=1, verbose=False)


def test_check_finite_names_the_layer_whose_gradient_overflows():
    model = ck.Sequential([L.Dense(4, 4, name="fc1", rng=0), L.Tanh(name="t"),
                           L.Dense(4, 2, name="fc2", rng=0)], input_shape=(4,))
    model.check_finite = True
    x = np.ones((2, 4), np.float32)
    model.forward(x)
    with pytest.raises(FloatingPointError, match=r"layer 'fc2' \(Dense\).*gradient"):
        model.backward(np.full((2, 2), np.nan, np.float32))
