"""Argument checks shared by layers, losses, optimizers, schedules, configs and the command
line.  Each raises ``TypeError``/``ValueError`` naming ``owner`` (the layer or object being
built) and the offending argument."""
from __future__ import annotations

import inspect
import math

import numpy as np

#: the kernels take C ints
INT32_MAX = 2**31 - 1


def is_int(value) -> bool:
    """True for Python and NumPy integers, never for bools."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(value, what: str, owner: str) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"{owner}: {what} must be a positive int, got {value!r}")
    return int(value)


def pair(value, what: str, owner: str, *, minimum: int = 1) -> tuple[int, int]:
    """An int or a pair of ints as a pair, each >= ``minimum`` and in the kernels' int range."""
    if is_int(value):
        p = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(is_int(v) for v in value):
        p = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{owner}: {what} must be an int or a pair of ints, got {value!r}")
    if min(p) < minimum:
        raise ValueError(f"{owner}: {what} must be >= {minimum}, got {value!r}")
    if max(p) > INT32_MAX:
        raise ValueError(f"{owner}: {what} must be < 2**31 (the kernels' int range), got "
                         f"{value!r}")
    return p


def real(value, what: str, owner: str, *, low=None, low_open=False, high=None, high_open=False):
    """A finite float within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: {what} must be a number, got {value!r}")
    v = float(value)
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        rule = " and ".join(r for r in (lo, hi) if r) or "finite"
        raise ValueError(f"{owner}: {what} must be {rule}, got {value!r}")
    return v


def accepts(fn, name: str) -> bool:
    """Whether ``fn`` (a function or class) accepts a keyword argument ``name``."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
