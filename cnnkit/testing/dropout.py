"""Conformance cases and loop reference of the dropout family: ``dropout``.

The mask is a function of the seed the layer draws at run time, so the loop reference reads
that one value from ``config``; ``p`` comes from the constructor arguments.
"""
from __future__ import annotations

import numpy as np

from cnnkit.testing._cases import Case

CASES = {
    "dropout": [Case({"p": 0.5, "rng": 0}, (4, 7)), Case({"p": 0.2, "rng": 1}, (2, 3, 4, 5)),
                Case({"p": 0.0, "rng": 2}, (1, 3))],
}


def loop_dropout(x, params, kwargs, config):
    """Python-int splitmix64, one element at a time."""
    mask64 = 2**64 - 1
    seed, p = int(config["seed"]), float(kwargs.get("p", 0.5))
    flat = x.reshape(-1)
    out = np.empty_like(flat)
    for i, v in enumerate(flat):
        z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & mask64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask64
        z ^= z >> 31
        out[i] = v / (1 - p) if (z >> 11) / 2.0**53 >= p else 0.0
    return out.reshape(x.shape)


LOOP_REFERENCES = {"dropout": loop_dropout}
