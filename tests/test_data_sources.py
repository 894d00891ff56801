"""The user's own data: Fashion-MNIST and CIFAR-10 read from a folder, arrays from an .npz,
streamed batches in ``fit``, and the command line and configs pointing at them."""
import gzip
import os
import pickle

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import datasets as D
from cnnkit.train import fit
from test_cli import ROOT, run_cli


# ------------------------------------------------------------------------------- CIFAR-10
def _cifar_bytes(records):
    """CIFAR-10 binary records written out by hand: label byte, then R, G, B planes."""
    out = bytearray()
    for label, img in records:
        out.append(label)
        for c in range(3):
            for r in range(32):
                out.extend(int(v) for v in img[c, r])
    return bytes(out)


def _cifar_folder(path, n_train=6, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n_train + n_test, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n_train + n_test)
    path.mkdir(parents=True, exist_ok=True)
    recs = list(zip(labels.tolist(), imgs))
    (path / "data_batch_1.bin").write_bytes(_cifar_bytes(recs[:n_train // 2]))
    (path / "data_batch_2.bin").write_bytes(_cifar_bytes(recs[n_train // 2:n_train]))
    (path / "test_batch.bin").write_bytes(_cifar_bytes(recs[n_train:]))
    return imgs, labels


def test_cifar10_reads_the_binary_format_channel_by_channel(tmp_path):
    imgs, labels = _cifar_folder(tmp_path / "cifar-10-batches-bin")
    # the parent folder works too (as unpacked from the tarball)
    (xtr, ytr), (xte, yte) = D.load_cifar10(tmp_path, dtype=np.float64, normalize=False)
    assert xtr.shape == (6, 3, 32, 32) and xte.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(xtr, imgs[:6])
    np.testing.assert_array_equal(xte, imgs[6:])
    np.testing.assert_array_equal(np.concatenate([ytr, yte]), labels)
    assert ytr.dtype == np.int64
    (x32, _), _ = D.load_cifar10(tmp_path / "cifar-10-batches-bin")
    assert x32.dtype == np.float32 and np.allclose(x32, imgs[:6] / 255.0)


def test_write_cifar10_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 7)
    D.write_cifar10(tmp_path, (x, y), (x[:2], y[:2]), files=3)
    assert (tmp_path / "data_batch_3.bin").read_bytes() == _cifar_bytes(
        list(zip(y[5:].tolist(), x[5:])))
    (a, b), (c, d) = D.load_cifar10(tmp_path, normalize=False, dtype=np.float32)
    np.testing.assert_array_equal(a, x)
    np.testing.assert_array_equal(b, y)
    with pytest.raises(ValueError, match=r"uint8 \(N, 3, 32, 32\)"):
        D.write_cifar10(tmp_path, (x[:, :1], y), (x, y))


def test_cifar10_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-binary.tar.gz"):
        D.load_cifar10(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="test_batch.bin"):
        D.load_cifar10(tmp_path)
    _cifar_folder(tmp_path / "c")
    f = tmp_path / "c" / "data_batch_2.bin"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"data_batch_2\.bin.*whole number of CIFAR-10 records"):
        D.load_cifar10(tmp_path / "c")
    _cifar_folder(tmp_path / "d")
    raw = bytearray((tmp_path / "d" / "test_batch.bin").read_bytes())
    raw[3073] = 57  # the second record's label
    (tmp_path / "d" / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="record 1 has label 57"):
        D.load_cifar10(tmp_path / "d")


# ------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_reads_its_idx_folder(tmp_path):
    rng = np.random.default_rng(2)
    parts = {"train-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
             "train-labels-idx1-ubyte": rng.integers(0, 10, 5).astype(np.uint8),
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
             "t10k-labels-idx1-ubyte": rng.integers(0, 10, 2).astype(np.uint8)}
    for name, arr in parts.items():
        D.write_idx(tmp_path / (name + ".gz"), arr)
    (xtr, ytr), (xte, yte) = D.load_fashion_mnist(tmp_path, normalize=False, dtype=np.float64)
    np.testing.assert_array_equal(xtr[:, 0], parts["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(yte, parts["t10k-labels-idx1-ubyte"])
    (x, _), _, what = D.load_dataset("fashion-mnist", path=str(tmp_path))
    assert x.shape == (5, 1, 28, 28) and "Fashion-MNIST" in what
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="zalandoresearch/fashion-mnist"):
        D.load_fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match="give the folder"):
        D.load_fashion_mnist(None)


# ------------------------------------------------------------------------------- npz arrays
def test_npz_arrays_and_their_checks(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.random((20, 2, 5, 5))
    y = rng.integers(0, 3, 20)
    D.save_arrays(tmp_path / "d.npz", (x, y), (x[:4], y[:4]))
    (a, b), (c, d) = D.load_arrays(tmp_path / "d.npz")
    assert a.dtype == np.float32 and b.dtype == np.int64
    np.testing.assert_allclose(a, x.astype(np.float32))
    np.testing.assert_array_equal(d, y[:4])
    # no test arrays: the last tenth is held out for the held-out metrics
    D.save_arrays(tmp_path / "t.npz", (x, y))
    (a, _), (c, _), what = D.load_dataset("npz", path=str(tmp_path / "t.npz"))
    assert (len(a), len(c)) == (18, 2) and "held out" in what
    np.savez(tmp_path / "bad.npz", x_train=x, labels=y)
    with pytest.raises(ValueError, match="expected arrays x_train, y_train"):
        D.load_arrays(tmp_path / "bad.npz")
    np.savez(tmp_path / "obj.npz", x_train=np.array([{"a": 1}] * 3, dtype=object),
             y_train=np.zeros(3))
    with pytest.raises(ValueError, match="obj.npz"):
        D.load_arrays(tmp_path / "obj.npz")
    xn = x.copy()
    xn[3, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x_train=xn, y_train=y)
    with pytest.raises(ValueError, match="NaN"):
        D.load_arrays(tmp_path / "nan.npz")
    (tmp_path / "junk.npz").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="junk.npz: not a readable .npz"):
        D.load_arrays(tmp_path / "junk.npz")


def test_dataset_names_and_detection(tmp_path):
    with pytest.raises(D.DatasetOptionsError, match="did you mean 'cifar10'"):
        D.load_dataset("cifar-1O", path="x")
    with pytest.raises(D.DatasetOptionsError, match="needs path"):
        D.load_dataset("cifar10")
    _cifar_folder(tmp_path / "cifar-10-batches-bin")
    assert D.detect_dataset(tmp_path) == "cifar10"
    assert D.detect_dataset(tmp_path / "cifar-10-batches-bin") == "cifar10"
    assert D.detect_dataset(tmp_path / "a.npz") == "npz"
    assert D.detect_dataset(tmp_path / "mnist") == "mnist"


# ------------------------------------------------------------------------ streamed batches
def _toy(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].sum(axis=(1, 2)) > 0).astype(np.int64)
    return x, y


def _toy_model():
    L = ck.layers
    return ck.Sequential([L.Conv2D(1, 2, 3, rng=0), L.ReLU(), L.Flatten(),
                          L.Dense(72, 2, rng=1)])


def test_fit_streams_batches_from_a_generator_function_like_from_arrays():
    x, y = _toy()
    m1, m2 = _toy_model(), _toy_model()
    h1 = fit(m1, (x, y), optimizer=ck.optim.SGD(m1, lr=0.1), epochs=3, batch_size=16,
             shuffle=False, verbose=False)

    def batches():
        for i in range(0, len(x), 16):
            yield x[i:i + 16], y[i:i + 16]

    h2 = fit(m2, batches, optimizer=ck.optim.SGD(m2, lr=0.1), epochs=3, verbose=False)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for key in s1:
        np.testing.assert_array_equal(s1[key], s2[key])
    assert h1["loss"] == h2["loss"]
    # a list of batches and memory-mapped arrays stream the same way
    m3 = _toy_model()
    fit(m3, list(batches()), optimizer=ck.optim.SGD(m3, lr=0.1), epochs=3, verbose=False)
    np.testing.assert_array_equal(m3.layers[0].params["weight"], m1.layers[0].params["weight"])


def test_fit_refuses_one_shot_iterators_and_bad_batches():
    x, y = _toy()
    m = _toy_model()
    opt = ck.optim.SGD(m, lr=0.1)
    with pytest.raises(TypeError, match="one-shot iterator.*3 epochs"):
        fit(m, iter([(x, y)]), optimizer=opt, epochs=3, verbose=False)
    fit(m, iter([(x, y)]), optimizer=opt, epochs=1, verbose=False)  # one epoch is fine
    with pytest.raises(ValueError, match="batch 2 of epoch 1 has 4 inputs and 3 targets"):
        fit(m, [(x[:4], y[:4]), (x[:4], y[:3])], optimizer=opt, epochs=1, verbose=False)
    with pytest.raises(TypeError, match="batch 1 of epoch 1 is not an"):
        fit(m, [x], optimizer=opt, epochs=1, verbose=False)
    with pytest.raises(ValueError, match="no batch in epoch 1"):
        fit(m, [], optimizer=opt, epochs=1, verbose=False)


# -------------------------------------------------------------------- command line, config
def test_train_cli_reads_an_npz_and_checks_data_first(tmp_path):
    (x, y), (xt, yt) = D.load_mnist()
    D.save_arrays(tmp_path / "mine.npz", (x[:256], y[:256]), (xt[:64], yt[:64]))
    res = run_cli("train", "--data", str(tmp_path / "mine.npz"), "--epochs", "1", "-q",
                  "--output", str(tmp_path / "m.safetensors"))
    assert res.returncode == 0, res.stderr
    assert "256 training, 64 test images" in res.stdout
    res = run_cli("train", "--data", str(tmp_path / "nowhere"), "--epochs", "1")
    assert res.returncode == 1 and "--data" in res.stderr and "no such file" in res.stderr
    assert "data:" not in res.stdout
    res = run_cli("train", "--augment", "random_flop", "--epochs", "1")
    assert res.returncode == 1 and "did you mean" in res.stderr
    assert "data:" not in res.stdout


def test_cifar10_example_trains_with_augmentation(tmp_path):
    """examples/cifar10-small.toml on a few generated images in CIFAR-10's binary format."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 96)
    x = (rng.integers(0, 40, (96, 3, 32, 32)) + 20 * y[:, None, None, None]).astype(np.uint8)
    D.write_cifar10(tmp_path / "cifar-10-batches-bin", (x[:64], y[:64]), (x[64:], y[64:]))
    res = run_cli("train", os.path.join(ROOT, "examples", "cifar10-small.toml"), "--epochs", "1",
                  "-q", "--augment", "random_affine:degrees=5", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "CIFAR-10 from cifar-10-batches-bin: 64 training, 32 test" in res.stdout
    assert "augment: random_crop(padding=4), random_horizontal_flip(p=0.5), " \
           "random_affine(degrees=5.0)" in res.stdout
    assert (tmp_path / "cifar10-small.safetensors").is_file()


def test_config_augment_and_data_errors_name_the_line(tmp_path):
    cfg = tmp_path / "c.toml"
    text = open(os.path.join(ROOT, "examples", "cifar10-small.toml")).read()
    cfg.write_text(text.replace('"random_horizontal_flip"', '"random_horizontal_flop"'))
    res = run_cli("train", str(cfg), "--epochs", "1")
    assert res.returncode == 1
    assert "training.augment" in res.stderr and "random_horizontal_flip" in res.stderr
    assert ":%d" % (text.splitlines().index(
        [ln for ln in text.splitlines() if ln.startswith("augment")][0]) + 1) in res.stderr
