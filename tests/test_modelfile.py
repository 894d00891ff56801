"""One-file models: config and weights in one safetensors file, read by any safetensors tool,
written atomically, rebuilt by ``ck.load_model`` in a fresh process."""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import cnnkit as ck
from cnnkit import config as C
from cnnkit import layers as L
from cnnkit.modelfile import ModelFileError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.default_rng(0)


def run_python(*args, cwd=None):
    env = dict(os.environ, CNNKIT_LOAD_PLUGINS="")
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def trained_graph():
    """A graph with unnamed and named layers and BatchNorm statistics away from defaults."""
    x = ck.Input((2, 6, 6))
    h = L.ReLU()(L.Conv2D(2, 4, 3, padding=1, rng=1)(x))
    r = L.BatchNorm2D(4, name="bn")(L.Conv2D(4, 4, 3, padding=1, bias=False, rng=2)(h))
    y = L.Dense(4 * 36, 3, name="head", rng=3)(L.Flatten()(L.Add()([h, r])))
    model = ck.Model(x, y, name="small")
    for _ in range(3):
        model.forward(RNG.standard_normal((8, 2, 6, 6)).astype(np.float32), training=True)
    return model


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(
        sa[k].dtype == sb[k].dtype and np.array_equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_round_trip_keeps_architecture_weights_and_buffers(tmp_path, suffix):
    for model, shape in ((ck.models.lenet5(rng=0), (1, 28, 28)), (trained_graph(), (2, 6, 6))):
        path = tmp_path / f"{model.name}{suffix}"
        model.save(path, metadata={"val_accuracy": 0.5})
        loaded = ck.load_model(path)
        assert type(loaded) is type(model) and loaded.name == model.name
        assert C.model_to_config(loaded) == C.model_to_config(model)
        assert same_state(loaded, model)
        x = RNG.standard_normal((4, *shape)).astype(np.float32)
        np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
        assert loaded.load_weights(path)["val_accuracy"] == 0.5
    assert sorted(os.listdir(tmp_path)) == sorted(f"{n}{suffix}" for n in ("lenet5", "small"))


def test_any_safetensors_reader_sees_weights_and_config(tmp_path):
    model = trained_graph()
    model.save(tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="numpy") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert sorted(tensors) == sorted(model.state_dict())
    assert "bn.running_var" in tensors and "bn.num_batches_tracked" in tensors
    assert int(tensors["bn.num_batches_tracked"]) == 3
    np.testing.assert_array_equal(tensors["bn.running_mean"],
                                  model.get_layer("bn").buffers["running_mean"])
    assert meta["cnnkit.format"] == "model"
    assert json.loads(meta["cnnkit.config"]) == C.model_to_config(model)


def test_saved_in_one_process_loaded_in_another(tmp_path):
    script = """
import sys
import numpy as np
import cnnkit as ck
from cnnkit import layers as L
L.Dense(2, 2), L.Conv2D(1, 1, 1)          # other layers first: default names move on
x = ck.Input((2, 6, 6))
h = L.ReLU()(L.Conv2D(2, 4, 3, padding=1)(x))
r = L.BatchNorm2D(4)(L.Conv2D(4, 4, 3, padding=1)(h))
model = ck.Model(x, L.Dense(144, 3)(L.Flatten()(L.Add()([h, r]))))
model.forward(np.random.default_rng(0).random((8, 2, 6, 6), dtype=np.float32), training=True)
model.save(sys.argv[1] + "/m.safetensors")
np.save(sys.argv[1] + "/x.npy", np.random.default_rng(1).random((5, 2, 6, 6), dtype=np.float32))
np.save(sys.argv[1] + "/y.npy", model.predict(np.load(sys.argv[1] + "/x.npy")))
"""
    res = run_python("-c", script, str(tmp_path))
    assert res.returncode == 0, res.stderr
    model = ck.load_model(str(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(model.predict(np.load(tmp_path / "x.npy")),
                                  np.load(tmp_path / "y.npy"))
    # the unnamed layers keep their positional keys in the rebuilt model
    assert "0.weight" in model.state_dict() and "3.running_mean" in model.state_dict()


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    first = ck.models.lenet5(rng=0)
    first.save(path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck.io.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        ck.models.lenet5(rng=1).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.safetensors"]


def test_damaged_files_give_errors_naming_the_file(tmp_path):
    good = tmp_path / "good.safetensors"
    ck.models.lenet5(rng=0).save(good)
    data = good.read_bytes()
    cases = {"truncated.safetensors": data[:-100], "empty.safetensors": b"",
             "short.safetensors": data[:5], "garbage.safetensors": b"not a model at all" * 10,
             "header.safetensors": struct.pack("<Q", 10**9) + data[8:],
             "json.safetensors": struct.pack("<Q", 4) + b"{no}" + b"\0" * 16,
             "cut_header.safetensors": data[:200]}
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ModelFileError, match=f"^{tmp_path / name}: "):
            ck.load_model(tmp_path / name)
        with pytest.raises(ValueError, match=name):
            ck.models.lenet5().load_weights(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        ck.load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="folder"):
        ck.load_model(tmp_path)


def test_files_without_a_cnnkit_config(tmp_path):
    model = ck.models.lenet5(rng=0)
    # a safetensors file from another tool, keyed like torch.nn.Sequential: weights load,
    # but it is not a model file
    foreign = tmp_path / "foreign.safetensors"
    save_file(model.state_dict(), str(foreign), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match=r"foreign\.safetensors: not a cnnkit model file"):
        ck.load_model(foreign)
    fresh = ck.models.lenet5(rng=1)
    fresh.load_weights(foreign)
    assert same_state(fresh, model)
    # weights saved alone are not a model either
    model.save_weights(tmp_path / "w.safetensors")
    model.save_weights(tmp_path / "w.npz")
    for name in ("w.safetensors", "w.npz"):
        with pytest.raises(ModelFileError, match=rf"{name}: not a cnnkit model file"):
            ck.load_model(tmp_path / name)
    # a config that does not build names the file
    bad = tmp_path / "bad.safetensors"
    cfg = C.model_to_config(model)
    cfg["layers"][0]["kernal_size"] = 3
    save_file(model.state_dict(), str(bad), metadata={"cnnkit.format": "model",
                                                      "cnnkit.config": json.dumps(cfg)})
    with pytest.raises(ModelFileError, match=r"bad\.safetensors: cannot build.*kernal_size"):
        ck.load_model(bad)
    # weights that do not fit the config name the file and the tensor
    odd = tmp_path / "odd.safetensors"
    state = model.state_dict()
    state["0.bias"] = np.zeros(7, np.float32)
    save_file(state, str(odd), metadata={"cnnkit.format": "model",
                                         "cnnkit.config": json.dumps(C.model_to_config(model))})
    with pytest.raises(ValueError, match=r"odd\.safetensors: '0\.bias'.*\(7,\).*\(6,\)"):
        ck.load_model(odd)


def test_inputs_are_validated(tmp_path):
    model = ck.models.lenet5(rng=0)
    with pytest.raises(TypeError, match="str or os.PathLike"):
        model.save(123)
    with pytest.raises(TypeError, match="metadata must be a dict"):
        model.save(tmp_path / "m.safetensors", metadata=["a"])
    with pytest.raises(ValueError, match="'config'.*set by cnnkit"):
        model.save(tmp_path / "m.safetensors", metadata={"config": "{}"})
    with pytest.raises(ValueError, match="JSON"):
        model.save(tmp_path / "m.safetensors", metadata={"x": object()})
    with pytest.raises(TypeError, match="str or os.PathLike"):
        ck.load_model(None)
    with pytest.raises(TypeError, match="Model or Sequential"):
        ck.modelfile.save_model(L.Dense(2, 2), tmp_path / "d.safetensors")
    with pytest.raises(TypeError, match=r"'a'.*numpy array"):
        ck.modelfile.save_safetensors(tmp_path / "t.safetensors", {"a": [1.0]})
    with pytest.raises(TypeError, match="str -> str"):
        ck.modelfile.save_safetensors(tmp_path / "t.safetensors", {}, {"a": 1})
    assert not [p for p in os.listdir(tmp_path)]


def test_cli_train_writes_a_one_file_model_by_default(tmp_path):
    res = run_python("-m", "cnnkit.cli", "train", "--epochs", "1", "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    path = tmp_path / "lenet5.safetensors"
    assert f"model saved to {path}" in res.stdout
    model = ck.load_model(path)
    (_, _), (x_test, y_test) = ck.datasets.load_mnist()
    line = [l for l in res.stdout.splitlines() if l.startswith("held-out accuracy")][0]
    accuracy = float(line.split()[2].rstrip("%")) / 100
    pred = model.predict(x_test).argmax(axis=1)
    assert np.mean(pred == y_test) == pytest.approx(accuracy, abs=1e-4)
    assert model.load_weights(path)["epochs"] == 1


def test_format_follows_the_name(tmp_path):
    model = ck.models.lenet5(rng=0)
    # weights: .npz unless the name says safetensors (cnnkit 0.1 wrote .npz under any name)
    model.save_weights(tmp_path / "w.bin")
    model.save_weights(tmp_path / "w.safetensors")
    # a model: safetensors unless the name says .npz
    model.save(tmp_path / "m.bin")
    model.save(tmp_path / "m.npz")
    zip_magic = b"PK\x03\x04"
    assert (tmp_path / "w.bin").read_bytes()[:4] == zip_magic
    assert (tmp_path / "m.npz").read_bytes()[:4] == zip_magic
    for name in ("w.safetensors", "m.bin"):
        with safe_open(str(tmp_path / name), framework="numpy") as f:
            assert sorted(f.keys()) == sorted(model.state_dict())
    for name in ("m.bin", "m.npz"):
        assert same_state(ck.load_model(tmp_path / name), model)
