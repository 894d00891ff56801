"""A small learnable image task generated on the fly, for examples and tests that must not
depend on a download."""
from __future__ import annotations

import math

import numpy as np


def _count(name, value, low=1):
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) \
            or value < low:
        raise ValueError(f"synthetic_data: {name} must be an int >= {low}, got {value!r}")
    return int(value)


def synthetic_data(shape=(3, 32, 32), classes=4, train_size=512, test_size=128, noise=0.5,
                   seed=0, dtype=np.float32):
    """A small learnable image task: each class is a smooth random template (low-frequency
    patterns, upsampled) plus per-image Gaussian noise of std ``noise`` and a random shift of the
    template's brightness.  Returns ((x_train, y_train), (x_test, y_test))."""
    if not isinstance(shape, (tuple, list)) or len(shape) != 3:
        raise ValueError(f"synthetic_data: shape must be (channels, height, width), got "
                         f"{shape!r}")
    shape = tuple(_count(f"shape[{i}]", s) for i, s in enumerate(shape))
    classes = _count("classes", classes)
    train_size, test_size = _count("train_size", train_size), _count("test_size", test_size)
    if (not isinstance(noise, (int, float, np.integer, np.floating))
            or isinstance(noise, (bool, np.bool_)) or not math.isfinite(noise) or noise < 0):
        raise ValueError(f"synthetic_data: noise must be a finite number >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    c, h, w = shape
    coarse = rng.normal(size=(classes, c, max(h // 8, 1), max(w // 8, 1)))
    reps = (-(-h // coarse.shape[2]), -(-w // coarse.shape[3]))
    templates = np.repeat(np.repeat(coarse, reps[0], axis=2), reps[1], axis=3)[:, :, :h, :w]

    def make(n):
        y = np.arange(n) % classes
        rng.shuffle(y)
        x = templates[y] + noise * rng.normal(size=(n,) + shape) \
            + 0.3 * rng.normal(size=(n, 1, 1, 1))
        return x.astype(dtype), y.astype(np.int64)

    return make(train_size), make(test_size)
