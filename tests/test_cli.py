"""The command line, end to end, as a user runs it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import PLUGIN_DIR, write_dist_infos


def run_cli(*args, env=None, cwd=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "cnnkit.cli", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=600)


def test_train_default_recipe_reaches_95_percent(tmp_path):
    """The README's first command: LeNet-5, 10 epochs on the embedded MNIST sample."""
    out = tmp_path / "lenet.npz"
    res = run_cli("train", "--output", str(out))
    assert res.returncode == 0, res.stderr
    assert "epoch 10/10 [########################] 63/63" in res.stderr  # the progress bar
    line = [l for l in res.stdout.splitlines() if l.startswith("held-out accuracy")][0]
    accuracy = float(line.split()[2].rstrip("%"))
    assert accuracy >= 95.0, res.stdout
    assert "conv1 (Conv2D)" in res.stdout and "cython" in res.stdout
    import cnnkit as ck

    model = ck.models.lenet5()
    meta = model.load_weights(out)
    assert meta["val_accuracy"] == pytest.approx(accuracy / 100, abs=1e-4)
    (_, _), (x_test, y_test) = ck.datasets.load_mnist()
    pred = model.predict(x_test).argmax(axis=1)
    assert np.mean(pred == y_test) == pytest.approx(accuracy / 100, abs=1e-4)


def test_train_options_and_variant_choice(tmp_path):
    out = tmp_path / "w.npz"
    res = run_cli("train", "--epochs", "1", "--batch-size", "128", "--lr", "0.02",
                  "--impl", "conv2d=numpy", "--output", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    assert "numpy" in [l for l in res.stdout.splitlines() if "conv1" in l][0]
    assert "epoch   1:" in res.stdout and out.exists()
    assert "[####" not in res.stderr  # --quiet: no progress bar


def test_train_bad_arguments_and_data_folder(tmp_path):
    res = run_cli("train", "--epochs", "0")
    assert res.returncode == 2 and "positive integer" in res.stderr
    res = run_cli("train", "--data", str(tmp_path), "--output", str(tmp_path / "w.npz"))
    assert res.returncode == 1
    assert "train-images-idx3-ubyte" in res.stderr
    assert not (tmp_path / "w.npz").exists()


def test_train_on_an_idx_folder(tmp_path):
    from cnnkit.datasets import load_mnist, write_idx

    (xtr, ytr), (xte, yte) = load_mnist(normalize=False, dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", xtr[:256, 0])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", ytr[:256].astype(np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", xte[:64, 0])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", yte[:64].astype(np.uint8))
    res = run_cli("train", "--data", str(tmp_path), "--epochs", "1", "-q",
                  "--output", str(tmp_path / "w.npz"))
    assert res.returncode == 0, res.stderr
    assert "256 training, 64 test images" in res.stdout


def test_plugins_lists_builtins_and_third_party(tmp_path):
    res = run_cli("plugins", "--json")
    assert res.returncode == 0, res.stderr
    names = {p["name"] for p in json.loads(res.stdout)["plugins"]}
    assert "cnnkit.builtin.cython_variants" in names
    site = write_dist_infos(tmp_path / "site")
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(PLUGIN_DIR)]
                                         + sys.path)}
    res = run_cli("plugins", "--json", env=env)
    plugins = {p["name"]: p for p in json.loads(res.stdout)["plugins"]}
    assert plugins["demo"]["version"] == "1.2.3"
    assert "relu/demo" in plugins["demo"]["registered"]["variant"]
    assert "boom inside the hook" in plugins["broken_hook"]["error"]
    res = run_cli("plugins", env=env)
    assert res.returncode == 0
    assert "demo  [entrypoint]  cnnkit-demo 1.2.3  ok" in res.stdout
    assert "broken_import  [entrypoint]  cnnkit-broken-import 0.1  FAILED" in res.stdout
    assert "variants: scale2/numpy" in res.stdout
