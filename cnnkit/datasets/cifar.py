"""CIFAR-10 from its binary distribution (``cifar-10-binary.tar.gz``), never from the Python
pickles: a record is one label byte then 3,072 pixel bytes (the red, green and blue 32x32
planes, rows top to bottom), 10,000 records per file."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..io import atomic_write_bytes, atomic_write_text

__all__ = ["CIFAR10_CLASSES", "load_cifar10", "write_cifar10"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_SUBFOLDER = "cifar-10-batches-bin"
_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_TEST_FILE = "test_batch.bin"
_RECORD = 1 + 3 * 32 * 32


def _folder(path) -> str:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_cifar10: path must be a str or os.PathLike, got "
                        f"{type(path).__name__}")
    folder = os.fspath(path)
    hint = (f"download {_URL}, unpack it (tar xzf) and name the folder {_SUBFOLDER} or the "
            "folder holding it")
    if not os.path.exists(folder):
        raise FileNotFoundError(f"{folder}: CIFAR-10 folder not found; {hint}")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder}: expected a folder holding the CIFAR-10 binary "
                                 f"files; {hint}")
    inner = os.path.join(folder, _SUBFOLDER)
    if not os.path.isfile(os.path.join(folder, _TEST_FILE)) and os.path.isdir(inner):
        folder = inner
    missing = [f for f in (_TEST_FILE, _TRAIN_FILES[0])
               if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(f"{folder}: no CIFAR-10 file {missing[0]!r} (a CIFAR-10 binary "
                                f"folder holds {', '.join(_TRAIN_FILES)} and {_TEST_FILE}); "
                                f"{hint}")
    return folder


def _read(path: str) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of CIFAR-10 records "
                         f"({_RECORD} bytes each: a label byte and 3x32x32 pixels); the file is "
                         "truncated or not a CIFAR-10 binary batch")
    records = raw.reshape(-1, _RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        bad = int(np.flatnonzero(labels > 9)[0])
        raise ValueError(f"{path}: record {bad} has label {int(labels[bad])}; CIFAR-10 labels "
                         "are 0..9 (is this CIFAR-100?)")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(path: str | os.PathLike, *, dtype: Any = np.float32, normalize: bool = True
                 ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load CIFAR-10 as ``((x_train, y_train), (x_test, y_test))`` from the folder of its binary
    version (``cifar-10-batches-bin``, or the folder holding it).

    Images are ``(N, 3, 32, 32)`` in ``dtype``, scaled to [0, 1] if ``normalize``; labels are
    ``int64`` (names in :data:`CIFAR10_CLASSES`).  The training files present among
    ``data_batch_1.bin`` .. ``data_batch_5.bin`` are read in order (the first must exist)."""
    from . import _image_dtype

    dt = _image_dtype(dtype, normalize, False)
    folder = _folder(path)
    train = [_read(os.path.join(folder, f)) for f in _TRAIN_FILES
             if os.path.isfile(os.path.join(folder, f))]
    test = _read(os.path.join(folder, _TEST_FILE))

    def images(x):
        out = x.astype(dt)
        if normalize:
            np.divide(out, dt.type(255), out=out)
        return out

    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return ((images(x_train), y_train.astype(np.int64)),
            (images(test[0]), test[1].astype(np.int64)))


def write_cifar10(folder: str | os.PathLike, train, test, *, files: int = 5) -> str:
    """Write ``train`` = (images, labels) and ``test`` in CIFAR-10's binary format into
    ``folder`` (created if missing): ``files`` training batches and ``test_batch.bin``, each
    written atomically.  Images are uint8 ``(N, 3, 32, 32)``, labels 0..9.  Returns the folder.
    Useful to hand your own 32x32 images to code that reads CIFAR-10, and for tests."""
    if not isinstance(files, int) or isinstance(files, bool) or not 1 <= files <= 5:
        raise ValueError(f"write_cifar10: files must be an int in 1..5, got {files!r}")
    parts = {}
    for name, (x, y) in (("train", train), ("test", test)):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (3, 32, 32):
            raise ValueError(f"write_cifar10: {name} images must be uint8 (N, 3, 32, 32), got "
                             f"{x.shape} {x.dtype}")
        if y.shape != (len(x),) or y.dtype.kind not in "iu" or (y.size and (y.min() < 0
                                                                            or y.max() > 9)):
            raise ValueError(f"write_cifar10: {name} labels must be {len(x)} ints in 0..9")
        if len(x) == 0:
            raise ValueError(f"write_cifar10: {name} is empty")
        parts[name] = np.concatenate([y.astype(np.uint8)[:, None], x.reshape(len(x), -1)], 1)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    for i, chunk in enumerate(np.array_split(parts["train"], files)):
        if len(chunk):
            atomic_write_bytes(os.path.join(folder, _TRAIN_FILES[i]), chunk.tobytes())
    atomic_write_bytes(os.path.join(folder, _TEST_FILE), parts["test"].tobytes())
    atomic_write_text(os.path.join(folder, "batches.meta.txt"), "\n".join(CIFAR10_CLASSES) + "\n")
    return folder
