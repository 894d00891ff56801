"""Data sets by name, as a config's ``data`` entry names them: ``"mnist"`` (the embedded sample
or a folder of IDX files), ``"fashion-mnist"`` (a folder of its IDX files), ``"cifar10"`` (a
folder of its binary files), ``"npz"`` (the user's arrays in one ``.npz``) and ``"synthetic"``
(:func:`~cnnkit.datasets.synthetic_data`)."""
from __future__ import annotations

import math
import os
import re

import numpy as np

from .synthetic import synthetic_data

DATASETS = ("mnist", "fashion-mnist", "cifar10", "npz", "synthetic")


class DatasetOptionsError(ValueError):
    """The name or the options of a data set request are wrong (not its files)."""


def _canonical(name):
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _pixel_range(value):
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in value)
            and value[0] < value[1]):
        raise DatasetOptionsError(f"pixel_range must be [low, high] with low < high, got "
                                  f"{value!r}")
    return float(value[0]), float(value[1])


def load_dataset(name, *, dtype=np.float32, train_size=None, test_size=None, **options):
    """``((x_train, y_train), (x_test, y_test), description)`` of the data set ``name``, cut to
    the first ``train_size`` / ``test_size`` samples when given.

    ``mnist`` takes ``path`` (a folder of the standard IDX files; default: the embedded sample)
    and ``pixel_range = [low, high]`` (black..white mapped to low..high); ``synthetic`` takes
    the arguments of :func:`~cnnkit.datasets.synthetic_data` (sizes default to 512 / 128).
    Wrong names or options raise :class:`DatasetOptionsError`; unreadable files raise what
    :func:`~cnnkit.datasets.load_mnist` raises."""
    if not isinstance(name, str):
        raise DatasetOptionsError(f"a data set name must be a string, got {name!r}")
    for what, n in (("train_size", train_size), ("test_size", test_size)):
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise DatasetOptionsError(f"{what} must be a positive int, got {n!r}")
    kind = _canonical(name)
    if kind in ("fashionmnist", "cifar10", "npz"):
        path = options.pop("path", None)
        if options:
            raise DatasetOptionsError(f"unknown {name} options {sorted(options)}; it takes "
                                      "path, train_size, test_size")
        if path is None:
            raise DatasetOptionsError(f"{name} needs path = the folder (or, for npz, the file) "
                                      "holding it")
        (xtr, ytr), (xte, yte), what = _load_files(kind, path, dtype)
    elif kind == "mnist":
        from . import load_mnist

        path = options.pop("path", None)
        pixel_range = options.pop("pixel_range", None)
        if options:
            raise DatasetOptionsError(f"unknown mnist options {sorted(options)}; it takes "
                                      "path, train_size, test_size, pixel_range")
        if pixel_range is not None:
            pixel_range = _pixel_range(pixel_range)
        (xtr, ytr), (xte, yte) = load_mnist(path, dtype=dtype)
        what = path or "embedded MNIST sample"
        if pixel_range is not None:  # black..white mapped to low..high (the paper: -0.1..1.175)
            lo, hi = pixel_range
            xtr = (lo + (hi - lo) * xtr).astype(dtype)
            xte = (lo + (hi - lo) * xte).astype(dtype)
            what += f", pixels scaled to [{lo}, {hi}]"
    elif kind == "synthetic":
        sizes = {"train_size": train_size or 512, "test_size": test_size or 128}
        train_size = test_size = None  # generated at that size already
        try:
            (xtr, ytr), (xte, yte) = synthetic_data(**options, **sizes, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise DatasetOptionsError(str(exc)) from None
        what = f"synthetic {xtr.shape[1:]} task, {len(np.unique(ytr))} classes"
    else:
        raise DatasetOptionsError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}"
                                  + _did_you_mean(name))
    if train_size:
        xtr, ytr = xtr[:train_size], ytr[:train_size]
    if test_size:
        xte, yte = xte[:test_size], yte[:test_size]
    return (xtr, ytr), (xte, yte), what


def _did_you_mean(name):
    import difflib

    close = difflib.get_close_matches(name.lower(), DATASETS, n=2)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def _load_files(kind, path, dtype):
    from . import load_arrays, load_cifar10, load_fashion_mnist

    if kind == "fashionmnist":
        train, test = load_fashion_mnist(path, dtype=dtype)
        return train, test, f"Fashion-MNIST from {path}"
    if kind == "cifar10":
        train, test = load_cifar10(path, dtype=dtype)
        return train, test, f"CIFAR-10 from {path}"
    train, test = load_arrays(path, dtype=dtype)
    what = f"arrays from {path}"
    if test is None:  # hold out the last tenth, as Keras' validation_split does
        x, y = train
        cut = len(x) - max(1, len(x) // 10)
        if cut < 1:
            raise DatasetOptionsError(f"{path}: {len(x)} samples and no x_test/y_test: too few "
                                      "to hold out a test split")
        train, test = (x[:cut], y[:cut]), (x[cut:], y[cut:])
        what += f" (no test arrays: the last {len(test[0])} samples held out)"
    return train, test, what


def detect_dataset(path) -> str:
    """The data set name a ``--data`` path holds: ``npz`` for a ``.npz`` file, ``cifar10`` for a
    folder of CIFAR-10 binary files, else ``mnist`` (IDX files, MNIST or Fashion-MNIST: the two
    have the same files and shapes)."""
    p = os.fspath(path)
    if p.lower().endswith(".npz") or os.path.isfile(p):
        return "npz"
    for folder in (p, os.path.join(p, "cifar-10-batches-bin")):
        if os.path.isfile(os.path.join(folder, "test_batch.bin")):
            return "cifar10"
    return "mnist"
