"""The library-wide random generator used when a layer or initializer is given no ``rng``."""
from __future__ import annotations

import contextlib

import numpy as np

_global = np.random.default_rng()
#: global position (in its batch) of the first sample a layer is computing: 0 in one process;
#: in data-parallel training, where the rank's shard starts in the global batch
_sample_offset = 0
_GOLDEN = 0x9E3779B97F4A7C15


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


def sample_offset() -> int:
    """Where the batch being computed starts in its global batch (0 outside data-parallel
    training).  A layer drawing per-element random numbers from a counter-based generator
    advances its counter by this many samples, so a sample's numbers depend on its place in the
    global batch, never on how the batch was split across ranks."""
    return _sample_offset


@contextlib.contextmanager
def batch_offset(start: int):
    """Run the enclosed forward passes as the part of a global batch that starts at ``start``."""
    global _sample_offset
    previous, _sample_offset = _sample_offset, int(start)
    try:
        yield
    finally:
        _sample_offset = previous


def advance_counter(seed: int, steps: int) -> int:
    """The seed of a splitmix64 counter sequence (``seed + (i + 1) * golden``) moved on by
    ``steps`` elements: element i of the result is element ``i + steps`` of the original."""
    return (int(seed) + int(steps) * _GOLDEN) % 2**64
