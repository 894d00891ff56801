"""What `cnnkit train` prints, and when: one line per epoch as it ends (a live bar before it
only on a terminal), resume reports and overrides, divergence and warnings in one line."""
import os
import pty
import subprocess
import sys

import numpy as np
import pytest

from cnnkit import datasets as D
from conftest import PLUGIN_DIR, write_dist_infos
from test_cli import ROOT, run_cli


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small.npz"
    (x, y), (xt, yt) = D.load_mnist()
    D.save_arrays(path, (x[:192], y[:192]), (xt[:64], yt[:64]))
    return str(path)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def test_each_epoch_shows_once_even_with_stderr_merged(tmp_path, small_data):
    res = subprocess.run([sys.executable, "-m", "cnnkit.cli", "train", "--data", small_data,
                          "--epochs", "2", "-o", str(tmp_path / "m.safetensors")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=_env(), timeout=600)
    assert res.returncode == 0, res.stdout
    assert res.stdout.count("epoch   1: loss") == 1 and res.stdout.count("epoch   2: loss") == 1
    assert "[####" not in res.stdout  # no bar when the output is not a terminal
    assert "training: 2 epochs" in res.stdout
    one = run_cli("train", "--data", small_data, "--epochs", "1", "-o",
                  str(tmp_path / "m1.safetensors"))
    assert "training: 1 epoch," in one.stdout  # not "1 epochs"


def test_live_bar_on_a_terminal_gives_way_to_the_epoch_line(tmp_path, small_data):
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cnnkit.cli", "train", "--data", small_data,
                             "--epochs", "1", "-o", str(tmp_path / "m.safetensors")],
                            stdout=subprocess.PIPE, stderr=slave, text=True, env=_env())
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        err += chunk
    out, _ = proc.communicate(timeout=600)
    os.close(master)
    assert proc.returncode == 0
    err = err.decode()
    assert "epoch 1/1 [" in err and "3/3" in err  # the live bar, on the terminal
    assert err.endswith("\r\x1b[K")  # erased when the epoch ends
    assert out.count("epoch   1: loss") == 1


def test_resume_reports_and_applies_explicit_options(tmp_path, small_data):
    ck = str(tmp_path / "ck.npz")
    res = run_cli("train", "--data", small_data, "--epochs", "1", "--checkpoint", ck,
                  "-o", str(tmp_path / "a.safetensors"))
    assert res.returncode == 0, res.stderr
    res = run_cli("train", "--data", small_data, "--epochs", "3", "--lr", "0.1", "--resume",
                  ck, "-o", str(tmp_path / "b.safetensors"))
    assert res.returncode == 0, res.stderr
    assert f"resumed from {ck} after epoch 1; training epochs 2-3" in res.stdout
    assert "--lr 0.1 overrides the checkpoint's lr 0.05" in res.stdout
    assert "optimizer: SGD lr 0.1, momentum 0.9" in res.stdout
    # the default recipe's cosine decay is stretched to the new last epoch (3) and decays from
    # the new base rate: 0.1 * (1 + cos(pi / 3)) / 2 for epoch 2
    assert "(CosineAnnealingLR: lr 0.075 for the next epoch)" in res.stdout
    assert "epoch   1:" not in res.stdout  # the replayed epoch is not shown as if it ran
    assert "epoch   2:" in res.stdout and "epoch   3:" in res.stdout
    # without --lr the checkpoint's value stays, and nothing claims otherwise
    res = run_cli("train", "--data", small_data, "--epochs", "2", "--resume", ck,
                  "-o", str(tmp_path / "c.safetensors"))
    assert "overrides" not in res.stdout and "optimizer: SGD lr 0.05" in res.stdout
    assert "SGD lr 0.05 momentum 0.9, seed" not in res.stdout
    # nothing left to train: an error, before the data is loaded
    res = run_cli("train", "--data", small_data, "--epochs", "1", "--resume", ck)
    assert res.returncode == 1
    assert "checkpoint is at epoch 1, so --epochs 1 leaves nothing to train" in res.stderr
    assert "data:" not in res.stdout


def test_divergence_is_one_line_with_a_hint(tmp_path, small_data):
    res = run_cli("train", "--data", small_data, "--epochs", "1", "--lr", "1000", "--batch-size", "16",
                  "-o", str(tmp_path / "m.safetensors"))
    assert res.returncode == 1
    assert "RuntimeWarning" not in res.stderr and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()
    assert len(last) == 1 and "diverged (lower the learning rate); --lr was 1000.0" in last[0]


def test_nan_input_is_reported_as_the_input(tmp_path):
    (x, y), _ = D.load_mnist()
    x = x[:128].copy()
    x[70, 0, 3, 3] = np.nan
    D.save_arrays(tmp_path / "nan.npz", (x, y[:128]))
    res = run_cli("train", "--data", str(tmp_path / "nan.npz"), "--epochs", "1", "-o",
                  str(tmp_path / "m.safetensors"))
    assert res.returncode == 1
    assert "nan.npz: x_train holds NaN" in res.stderr


def test_plugin_warnings_point_at_the_users_line(tmp_path):
    site = write_dist_infos(tmp_path / "site")
    script = tmp_path / "user_script.py"
    script.write_text("import cnnkit\nreg = cnnkit.get_registry()  # the user's line\n")
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(PLUGIN_DIR), env["PYTHONPATH"]])
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    assert "PluginWarning" in res.stderr
    assert "reg.load()" not in res.stderr
    assert "user_script.py:2" in res.stderr and "the user's line" in res.stderr


def test_command_line_warnings_have_no_source_lines(monkeypatch, capsys):
    import warnings

    from cnnkit import cli
    from cnnkit.cli import train

    def noisy(args):
        warnings.warn("something to know", UserWarning)
        return 0

    monkeypatch.setattr(train, "cmd_train", noisy)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # Python's default display (pytest records warnings instead): formatwarning to stderr
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: \
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
        assert cli.main(["train"]) == 0
    err = capsys.readouterr().err
    assert err == "cnnkit: UserWarning: something to know\n"


@pytest.mark.parametrize("old, new, message", [
    ("kernel_size = 5", "kernal_size = 5",
     "unexpected argument 'kernal_size' (did you mean 'kernel_size'?)"),
    ('type = "conv2d"', 'type = "conv2dd"', "unknown layer type 'conv2dd' (did you mean "
                                            "'conv2d'?)"),
    ("epochs = 10", "epochz = 10", "training.epochz: unknown key (did you mean 'epochs'?)"),
])
def test_config_typos_get_a_did_you_mean_before_the_data_loads(tmp_path, old, new, message):
    text = open(os.path.join(ROOT, "examples", "lenet5-modern.toml")).read()
    assert old in text
    cfg = tmp_path / "c.toml"
    cfg.write_text(text.replace(old, new, 1))
    (tmp_path / "empty").mkdir()  # loading data from it would fail: the config fails first
    res = run_cli("train", str(cfg), "--epochs", "1", "--data", str(tmp_path / "empty"),
                  "-o", str(tmp_path / "m.safetensors"))
    assert res.returncode == 1 and message in res.stderr, res.stderr
    assert "data:" not in res.stdout
