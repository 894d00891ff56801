"""Conformance cases and loop references of the activation family: ``relu``, ``sigmoid``,
``tanh``, ``leakyrelu``, ``elu``, ``gelu``, ``scaledtanh``, ``softmax``, ``logsoftmax``,
``clip``, ``relu6``.

Hyper-parameters come from the case's constructor arguments with PyTorch's (and LeCun's, for
scaledtanh) defaults written out here.
"""
from __future__ import annotations

import math

import numpy as np

from cnnkit.testing._cases import Case

_PLAIN = [Case({}, (4, 7)), Case({}, (2, 3, 4, 5)), Case({}, (1, 1))]
_SOFTMAX = [Case({}, (4, 7)), Case({}, (2, 3, 4, 5)), Case({"axis": -1}, (2, 3, 4, 5)),
            Case({"axis": 2}, (2, 3, 4)), Case({}, (1, 1))]

CASES = {
    "relu": _PLAIN,
    "sigmoid": _PLAIN,
    "tanh": _PLAIN,
    "leakyrelu": [Case({}, (4, 7)), Case({"negative_slope": 0.2}, (2, 3, 4, 5)),
                  Case({"negative_slope": -0.5}, (1, 1))],
    "elu": [Case({}, (4, 7)), Case({"alpha": 0.5}, (2, 3, 4, 5)), Case({"alpha": 1.7}, (1, 1))],
    "gelu": [Case({}, (4, 7)), Case({"approximate": "tanh"}, (2, 3, 4, 5)),
             Case({"approximate": "tanh"}, (1, 1)), Case({}, (2, 3, 2, 2))],
    "scaledtanh": _PLAIN + [Case({"amplitude": 2.0, "slope": 0.5}, (3, 4))],
    "softmax": _SOFTMAX,
    "logsoftmax": _SOFTMAX,
    # bounds between the inputs' values (distinct, so no input lies on a bound)
    "clip": [Case({"min_value": -0.5, "max_value": 0.7}, (4, 7)),
             Case({"min_value": 0.1}, (2, 3, 4, 5)), Case({"max_value": -0.2}, (3, 4)),
             Case({}, (2, 3))],
    "relu6": [Case({}, (4, 7)),
              Case({}, (2, 3, 4, 5), lambda rng, shape: rng.uniform(-3, 9, shape))],
}


def _loop_softmax(x, kwargs, log):
    axis = kwargs.get("axis", 1) % x.ndim
    moved = np.moveaxis(x, axis, -1)
    out = np.empty_like(moved)
    for idx in np.ndindex(moved.shape[:-1]):
        row = moved[idx]
        lse = row.max() + math.log(sum(math.exp(v - row.max()) for v in row))
        out[idx] = row - lse if log else np.exp(row - lse)
    return np.moveaxis(out, -1, axis)


def _loop_gelu(x, kwargs):
    if kwargs.get("approximate", "none") == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(x)


def _loop_clip(v, lo, hi):
    if lo is not None and v < lo:
        return lo
    if hi is not None and v > hi:
        return hi
    return v


def _loop_sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


LOOP_REFERENCES = {
    "relu": lambda x, params, kwargs, config: np.where(x > 0, x, 0.0),
    "sigmoid": lambda x, params, kwargs, config: _loop_sigmoid(x),
    "tanh": lambda x, params, kwargs, config: np.sinh(x) / np.cosh(x),
    "leakyrelu": lambda x, params, kwargs, config: (
        np.maximum(x, 0) + kwargs.get("negative_slope", 0.01) * np.minimum(x, 0)),
    "elu": lambda x, params, kwargs, config: np.where(
        x > 0, x, kwargs.get("alpha", 1.0) * (np.exp(x) - 1)),
    "gelu": lambda x, params, kwargs, config: _loop_gelu(x, kwargs),
    "scaledtanh": lambda x, params, kwargs, config: (
        kwargs.get("amplitude", 1.7159) * np.tanh(kwargs.get("slope", 2.0 / 3.0) * x)),
    "softmax": lambda x, params, kwargs, config: _loop_softmax(x, kwargs, False),
    "logsoftmax": lambda x, params, kwargs, config: _loop_softmax(x, kwargs, True),
    "clip": lambda x, params, kwargs, config: np.vectorize(
        lambda v: _loop_clip(v, kwargs.get("min_value"), kwargs.get("max_value")),
        otypes=[float])(x),
    "relu6": lambda x, params, kwargs, config: np.vectorize(lambda v: _loop_clip(v, 0, 6),
                                                            otypes=[float])(x),
}
