"""Weight initializers.  Each is registered as a plugin (``cnnkit.builtin.initializers``) and
picked by name, e.g. ``Conv2D(..., weight_init="xavier_uniform")``.  Signature:
``fn(shape, *, fan_in, fan_out, rng, dtype, **options)``."""
from __future__ import annotations

import math

import numpy as np

from . import _random
from .plugins import get_registry

_GAINS = {"linear": 1.0, "conv": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3.0, "relu": math.sqrt(2.0),
          "selu": 0.75}


def gain(nonlinearity: str = "relu", param: float | None = None) -> float:
    """Recommended gain for a nonlinearity, as ``torch.nn.init.calculate_gain``."""
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity not in _GAINS:
        raise ValueError(f"init.gain: unknown nonlinearity {nonlinearity!r}; known: "
                         f"{', '.join(sorted(list(_GAINS) + ['leaky_relu']))}")
    return _GAINS[nonlinearity]


def _check(name, shape, fan_in, fan_out, dtype):
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError(f"initializer {name}: shape must be a tuple of non-negative ints, got "
                         f"{shape!r}")
    if fan_in <= 0 or fan_out <= 0:
        raise ValueError(f"initializer {name}: fan_in and fan_out must be positive, got "
                         f"{fan_in}, {fan_out}")
    return np.dtype(dtype)


def zeros(shape, *, fan_in=1, fan_out=1, rng=None, dtype=np.float32):
    _check("zeros", shape, fan_in, fan_out, dtype)
    return np.zeros(shape, dtype=dtype)


def xavier_uniform(shape, *, fan_in, fan_out, rng=None, dtype=np.float32, gain=1.0):
    _check("xavier_uniform", shape, fan_in, fan_out, dtype)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _random.generator(rng).uniform(-bound, bound, size=shape).astype(dtype)


def xavier_normal(shape, *, fan_in, fan_out, rng=None, dtype=np.float32, gain=1.0):
    _check("xavier_normal", shape, fan_in, fan_out, dtype)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return (_random.generator(rng).standard_normal(size=shape) * std).astype(dtype)


def _he_fan(name, fan_in, fan_out, mode):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"initializer {name}: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    return fan_in if mode == "fan_in" else fan_out


def he_uniform(shape, *, fan_in, fan_out, rng=None, dtype=np.float32, mode="fan_in",
               nonlinearity="relu", a=None):
    _check("he_uniform", shape, fan_in, fan_out, dtype)
    fan = _he_fan("he_uniform", fan_in, fan_out, mode)
    bound = gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return _random.generator(rng).uniform(-bound, bound, size=shape).astype(dtype)


def he_normal(shape, *, fan_in, fan_out, rng=None, dtype=np.float32, mode="fan_in",
              nonlinearity="relu", a=None):
    _check("he_normal", shape, fan_in, fan_out, dtype)
    fan = _he_fan("he_normal", fan_in, fan_out, mode)
    std = gain(nonlinearity, a) / math.sqrt(fan)
    return (_random.generator(rng).standard_normal(size=shape) * std).astype(dtype)


def initialize(name: str, shape, *, fan_in, fan_out, rng=None, dtype=np.float32, **options):
    """Call a registered initializer by name."""
    fn = get_registry().initializer(name)
    return fn(tuple(shape), fan_in=fan_in, fan_out=fan_out, rng=_random.generator(rng),
              dtype=dtype, **options)


def available() -> list[str]:
    return sorted(get_registry().initializers)
