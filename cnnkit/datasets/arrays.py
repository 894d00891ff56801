"""The user's own arrays in one ``.npz`` file: ``x_train``, ``y_train`` and, optionally,
``x_test``, ``y_test``; read with pickling disabled."""
from __future__ import annotations

import os
import zipfile

import numpy as np

__all__ = ["load_arrays", "save_arrays"]

_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_arrays(path: str | os.PathLike, *, dtype=np.float32):
    """``((x_train, y_train), (x_test, y_test))`` from an ``.npz`` written by
    :func:`save_arrays` or ``np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)``.

    Inputs are cast to ``dtype`` (pixels are taken as they are: scale them before saving);
    class labels must be integers.  Without ``x_test``/``y_test`` the test pair is ``None``.
    Object arrays are refused (nothing is unpickled)."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_arrays: path must be a str or os.PathLike, got "
                        f"{type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such .npz file")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npz of arrays ({exc})") from None
    unknown = sorted(set(data) - set(_KEYS))
    if unknown or "x_train" not in data or "y_train" not in data:
        raise ValueError(f"{path}: expected arrays x_train, y_train (and optionally x_test, "
                         f"y_test), found {sorted(data)}")
    if ("x_test" in data) != ("y_test" in data):
        raise ValueError(f"{path}: x_test and y_test come together")
    dt = np.dtype(dtype)
    out = []
    for split in ("train", "test"):
        if f"x_{split}" not in data:
            out.append(None)
            continue
        x, y = data[f"x_{split}"], data[f"y_{split}"]
        if x.dtype.kind not in "biuf" or x.ndim < 2:
            raise ValueError(f"{path}: x_{split} must be a numeric array with a sample axis, "
                             f"got {x.shape} {x.dtype}")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"{path}: x_{split} holds {len(x)} samples but y_{split} {len(y)}"
                             + (" (empty)" if len(x) == 0 else ""))
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ValueError(f"{path}: x_{split} holds NaN or infinite values")
        if y.dtype.kind in "iu":
            y = y.astype(np.int64)
        elif y.dtype.kind == "f":
            y = y.astype(dt)
        else:
            raise ValueError(f"{path}: y_{split} must be integer labels or float targets, got "
                             f"{y.dtype}")
        out.append((x.astype(dt), y))
    if out[1] is not None and out[0][0].shape[1:] != out[1][0].shape[1:]:
        raise ValueError(f"{path}: x_train samples are {out[0][0].shape[1:]} but x_test samples "
                         f"{out[1][0].shape[1:]}")
    return out[0], out[1]


def save_arrays(path: str | os.PathLike, train, test=None) -> None:
    """Write ``train`` = (x, y) and optionally ``test`` to ``path`` (an ``.npz``, atomically),
    for :func:`load_arrays`, ``cnnkit train --data FILE.npz`` and a config's
    ``data = {name = "npz", path = "FILE.npz"}``."""
    from ..io import atomic_open

    arrays = {"x_train": np.asarray(train[0]), "y_train": np.asarray(train[1])}
    if test is not None:
        arrays.update(x_test=np.asarray(test[0]), y_test=np.asarray(test[1]))
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
