"""The command line, end to end, as a user runs it."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import PLUGIN_DIR, write_dist_infos


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, env=None, cwd=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    # this tree's cnnkit, also when the command runs in another folder
    full_env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + [p for p in [full_env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, "-m", "cnnkit.cli", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=600)


def test_train_default_recipe_reaches_95_percent(tmp_path):
    """The README's first command: LeNet-5, 10 epochs on the embedded MNIST sample."""
    out = tmp_path / "lenet.npz"
    res = run_cli("train", "--output", str(out))
    assert res.returncode == 0, res.stderr
    # one line per epoch on stdout as it ends (the live bar is for terminals only)
    assert [l.split(":")[0] for l in res.stdout.splitlines() if l.startswith("epoch ")] == [
        f"epoch {e:>3}" for e in range(1, 11)]
    assert "[####" not in res.stderr
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
    assert "cnnkit.builtin.conv" in names
    site = write_dist_infos(tmp_path / "site")
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(PLUGIN_DIR)]
                                         + sys.path)}
    res = run_cli("plugins", "--json", env=env)
    plugins = {p["name"]: p for p in json.loads(res.stdout)["plugins"]}
    assert plugins["demo"]["version"] == "1.2.3"
    assert "relu/demo" in plugins["demo"]["registered"]["variant"]
    assert "boom inside the hook" in plugins["broken_hook"]["error"]
    res = run_cli("plugins", env=env)
    assert res.returncode == 1  # some plugins FAILED: a script checking the install sees it
    assert "demo  [entrypoint]  cnnkit-demo 1.2.3  ok" in res.stdout
    assert "broken_import  [entrypoint]  cnnkit-broken-import 0.1  FAILED" in res.stdout
    assert "variants: scale2/numpy" in res.stdout


# --------------------------------------------------------------------------- cnnkit train CONFIG
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

TINY_CONFIG = """name = "tiny"
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
type = "flatten"
name = "flat"

[[layers]]
type = "dropout"
name = "drop"
p = 0.2

[[layers]]
type = "dense"
name = "fc"
in_features = 576
out_features = 10

[training]
epochs = 2
batch_size = 32
seed = 3
optimizer = { name = "adam", lr = 0.003 }
schedule = { name = "step", step_size = 1, gamma = 0.5 }
data = { name = "mnist", train_size = 256, test_size = 100 }
"""


def test_train_config_end_to_end(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_CONFIG)
    res = run_cli("train", str(cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "256 training, 100 test samples" in res.stdout
    assert "drop (Dropout)" in res.stdout and "Adam lr 0.003" in res.stdout
    assert "schedule StepLR" in res.stdout
    assert "epoch   1:" in res.stdout and "epoch   2:" in res.stdout
    assert "held-out accuracy" in res.stdout
    out = tmp_path / "tiny.safetensors"  # named after the config, one-file model by default
    assert out.exists()
    import cnnkit as ck

    model = ck.load_model(out)
    assert model.get_layer("fc").params["weight"].shape == (10, 576)


def test_train_config_overrides_checkpoint_and_resume(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_CONFIG)
    full = run_cli("train", str(cfg), "--epochs", "3", "-o", str(tmp_path / "full.npz"), "-q")
    assert full.returncode == 0, full.stderr
    assert "training: 3 epochs" in full.stdout
    part = run_cli("train", str(cfg), "--epochs", "2", "-o", str(tmp_path / "part.npz"), "-q",
                   "--checkpoint", str(tmp_path / "ckpt.npz"))
    assert part.returncode == 0, part.stderr
    resumed = run_cli("train", str(cfg), "--epochs", "3", "-o", str(tmp_path / "resumed.npz"),
                      "-q", "--resume", str(tmp_path / "ckpt.npz"))
    assert resumed.returncode == 0, resumed.stderr
    import cnnkit as ck

    a, _ = ck.io.load_weights(tmp_path / "full.npz")
    b, _ = ck.io.load_weights(tmp_path / "resumed.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # the resumed run says what it resumed and reports the epoch it ran, as the full run did
    epochs = lambda text: [l for l in text.splitlines() if l.startswith("epoch ")]
    strip = lambda lines: [l.rsplit("(", 1)[0] for l in lines]
    assert "after epoch 2; training epoch 3" in resumed.stdout
    assert strip(epochs(resumed.stdout)) == strip(epochs(full.stdout))[2:]
    # a checkpoint from another model is refused, naming the file and tensor
    other = tmp_path / "other.toml"
    other.write_text(TINY_CONFIG.replace("out_channels = 4", "out_channels = 5")
                     .replace("in_features = 576", "in_features = 720"))
    res = run_cli("train", str(other), "-q", "--resume", str(tmp_path / "ckpt.npz"),
                  "--epochs", "3", "-o", str(tmp_path / "x.npz"))
    assert res.returncode == 1
    assert "ckpt.npz" in res.stderr and "'conv.weight'" in res.stderr


def test_train_config_errors_name_file_and_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(TINY_CONFIG.replace("kernel_size = 5", "kernel_size = 5\nkernal = 3"))
    res = run_cli("train", str(cfg), "-o", str(tmp_path / "w.npz"))
    assert res.returncode == 1
    assert f"{cfg}:10: layers[0] \"conv\" (conv2d): unexpected argument 'kernal'" in res.stderr
    assert not (tmp_path / "w.npz").exists()
    res = run_cli("train", str(tmp_path / "missing.toml"))
    assert res.returncode == 1 and "missing.toml: config file not found" in res.stderr


def test_modern_example_is_the_default_recipe(tmp_path):
    a = run_cli("train", "--epochs", "1", "-q", "-o", str(tmp_path / "a.npz"))
    b = run_cli("train", os.path.join(EXAMPLES, "lenet5-modern.toml"), "--epochs", "1", "-q",
                "-o", str(tmp_path / "b.npz"))
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    import cnnkit as ck

    wa, _ = ck.io.load_weights(tmp_path / "a.npz")
    wb, _ = ck.io.load_weights(tmp_path / "b.npz")
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("example", ["lenet5-1998", "lenet5-modern"])
def test_lenet_examples_reach_95_percent(tmp_path, example):
    """The examples with their configured training sections, as a user runs them."""
    res = run_cli("train", os.path.join(EXAMPLES, f"{example}.toml"), "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    line = [l for l in res.stdout.splitlines() if l.startswith("held-out accuracy")][0]
    assert float(line.split()[2].rstrip("%")) >= 95.0, res.stdout
    import cnnkit as ck

    assert ck.load_model(tmp_path / f"{example}.safetensors").output_shape == (None, 10)


def test_plot_writes_pngs(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the plot extra)")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_CONFIG)
    res = run_cli("train", str(cfg), "--epochs", "2", "-q", "-o", str(tmp_path / "w.npz"),
                  "--plot", str(tmp_path / "plots"))
    assert res.returncode == 0, res.stderr
    for name in ("loss.png", "accuracy.png", "filters.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, name
        assert f"plot written to {tmp_path / 'plots' / name}" in res.stdout


def test_plot_without_matplotlib_says_which_extra(tmp_path):
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(fake)] + sys.path)}
    res = run_cli("train", "--plot", str(tmp_path / "plots"), "-o", str(tmp_path / "w.npz"),
                  env=env)
    assert res.returncode == 1
    assert 'pip install "cnnkit[plot]"' in res.stderr
    assert "epoch" not in res.stderr and not (tmp_path / "w.npz").exists()  # before training


# --------------------------------------------------------------------------- checks before work
def test_train_impl_is_checked_before_loading_data(tmp_path):
    res = run_cli("train", "--impl", "conv2dd=numpy", "-o", str(tmp_path / "w.npz"))
    assert res.returncode == 2 and "data:" not in res.stdout
    assert ("argument --impl: unknown layer type 'conv2dd' (did you mean 'conv2d'?)"
            in res.stderr)
    res = run_cli("train", "--impl", "conv2d=nosuch", "-o", str(tmp_path / "w.npz"))
    assert res.returncode == 2 and "data:" not in res.stdout
    assert "argument --impl: unknown variant 'nosuch' of conv2d" in res.stderr
    assert "cnnkit.use()" not in res.stderr
    # (the instruction-set builds "cython-avx2", ... and the direct ones come between)
    assert re.search(r"registered variants: cython, (cython-\w+, )*direct, (direct-\w+, )*numpy",
                     res.stderr)
    res = run_cli("train", "--impl", "relu=cythn", "-o", str(tmp_path / "w.npz"))
    assert res.returncode == 2 and "(did you mean 'cython'?)" in res.stderr
    assert not (tmp_path / "w.npz").exists()


def test_impl_env_with_unknown_layer_type_fails_naming_it(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_CONFIG)
    res = run_cli("train", str(cfg), "-q", "-o", str(tmp_path / "w.npz"),
                  env={"CNNKIT_IMPL": "conv2dd=numpy"})
    assert res.returncode == 1
    assert "CNNKIT_IMPL: unknown layer type 'conv2dd' (did you mean 'conv2d'?)" in res.stderr
    assert res.stdout == "" and not (tmp_path / "w.npz").exists()  # before the data
    res = run_cli("train", str(cfg), "-q", "-o", str(tmp_path / "w.npz"),
                  env={"CNNKIT_IMPL": "conv2d=nosuch"})
    assert res.returncode == 1 and res.stdout == ""
    assert "CNNKIT_IMPL: unknown variant 'nosuch' of conv2d" in res.stderr


@pytest.mark.parametrize("option, value, message", [
    ("--output", "missing/w.safetensors", "--output {}: folder {} does not exist"),
    ("--output", ".", "--output {}: is a folder; give a file name"),
    ("--checkpoint", "missing/ck.npz", "--checkpoint {}: folder {} does not exist"),
    ("--plot", "afile/plots", "--plot {}: {} is not a folder"),
])
def test_train_outputs_are_checked_before_loading_data(tmp_path, option, value, message):
    (tmp_path / "afile").write_text("")
    path = str(tmp_path / value)
    folder = os.path.dirname(path)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_CONFIG)
    args = ["-o", str(tmp_path / "w.npz"), option, path]  # a later -o wins
    for config in ([], [str(cfg)]):  # the default recipe and a config
        if option == "--plot":
            pytest.importorskip("matplotlib", reason="matplotlib is not installed (plot extra)")
        res = run_cli("train", *config, *args, "--data", str(tmp_path / "no_mnist_here"))
        assert res.returncode == 1, res.stderr
        # one line naming the option, before the data (a missing folder) is even looked at
        assert res.stderr.splitlines() == [
            "cnnkit train: error: " + message.format(path, folder).rstrip()], res.stderr
        assert res.stdout == ""


def test_train_output_in_an_unwritable_folder_fails_at_once(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        probe = ro / "probe"
        try:  # root writes anyway; /proc refuses everyone
            probe.write_text("")
            probe.unlink()
            target = "/proc/w.npz"
        except OSError:
            target = str(ro / "w.npz")
        res = run_cli("train", "-o", target)
    finally:
        ro.chmod(0o700)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith(f"cnnkit train: error: --output {target}: cannot write in folder")
    assert len(res.stderr.splitlines()) == 1


# --------------------------------------------------------------------------- pipes
@pytest.mark.parametrize("args", [("plugins", "--json"), ("kernels",), ("plugins",)])
def test_a_closed_pipe_ends_quietly(args):
    read_end, write_end = os.pipe()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.Popen([sys.executable, "-m", "cnnkit.cli", *args], stdout=write_end,
                            stderr=subprocess.PIPE, text=True, env=env)
    os.close(write_end)
    os.close(read_end)  # the reader is gone before the command writes anything (`| head -0`)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode in (0, 141), err
    assert err == ""
