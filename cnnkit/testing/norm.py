"""Conformance cases and loop reference of the norm family: ``batchnorm1d``, ``batchnorm2d``
(training normalisation with the batch mean and biased variance)."""
from __future__ import annotations

import math

import numpy as np

from cnnkit.testing._cases import Case

CASES = {
    "batchnorm2d": [Case({"num_features": 3}, (4, 3, 2, 3)),
                    Case({"num_features": 2, "affine": False}, (3, 2, 3, 2)),
                    Case({"num_features": 1, "eps": 1e-3}, (2, 1, 3, 3))],
    "batchnorm1d": [Case({"num_features": 5}, (6, 5)), Case({"num_features": 3}, (4, 3, 5)),
                    Case({"num_features": 2, "affine": False}, (3, 2))],
}


def loop_batchnorm(x, params, kwargs, config):
    eps = kwargs.get("eps", 1e-5)
    y = np.empty_like(x)
    for ch in range(x.shape[1]):
        v = x[:, ch]
        y[:, ch] = (v - v.mean()) / math.sqrt(v.var() + eps)
        if params.get("weight") is not None:
            y[:, ch] = y[:, ch] * params["weight"][ch] + params["bias"][ch]
    return y


LOOP_REFERENCES = {"batchnorm1d": loop_batchnorm, "batchnorm2d": loop_batchnorm}
