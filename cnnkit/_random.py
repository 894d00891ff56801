"""The library-wide random generator used when a layer or initializer is given no ``rng``."""
from __future__ import annotations

import numpy as np

_global = np.random.default_rng()


def seed(value: int | None) -> None:
    """Reseed the generator cnnkit uses when no ``rng`` is passed (``cnnkit.seed(0)``)."""
    global _global
    if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
                              or value < 0):
        raise ValueError(f"cnnkit.seed: expected a non-negative int or None, got {value!r}")
    _global = np.random.default_rng(value)


def generator(rng=None) -> np.random.Generator:
    """Turn ``None`` (the global generator), an int seed or a Generator into a Generator."""
    if rng is None:
        return _global
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, a non-negative int seed or a numpy.random.Generator, "
                    f"got {rng!r}")
