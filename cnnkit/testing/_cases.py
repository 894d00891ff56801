"""Test cases, and the built-in ones collected from the family modules of this package.

Each public module of ``cnnkit.testing`` (``conv``, ``pool``, ...) defines ``CASES`` (layer
type -> cases), ``LOOP_REFERENCES`` (layer type -> slow forward) and optionally
``LOOP_BACKWARD`` (layer type -> slow input gradient).  A loop reference is called as
``fn(x, params, kwargs, config)`` in float64: the geometry and hyper-parameters come from the
case's constructor arguments ``kwargs``, never from the layer; ``config`` is read only for
values the layer draws at run time (dropout's seed).  ``LOOP_BACKWARD`` entries take ``dy`` too.
"""
from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass
from typing import Callable

import numpy as np


def distinct_inputs(rng: np.random.Generator, shape) -> np.ndarray:
    """Float64 inputs whose values are all distinct and at least 0.25 away from zero.

    Distinct values keep max-pooling free of ties, the distance from zero keeps ReLU-like
    operations away from their kink, so finite differences are meaningful.
    """
    n = int(math.prod(shape))
    mags = np.linspace(0.25, 2.0, n) if n > 1 else np.ones(n)
    rng.shuffle(mags)
    signs = rng.choice(np.array([-1.0, 1.0]), size=n)
    return (mags * signs).reshape(shape)


@dataclass
class Case:
    """One test case: constructor keyword arguments of the layer and the input shape (with the
    batch axis).  ``make_input(rng, shape)`` returns the float64 input (default:
    :func:`distinct_inputs`); pass one when your layer has kinks elsewhere than at zero.
    ``gradcheck=False`` skips the finite-difference check (inputs sitting on a kink, such as
    max-pooling ties)."""

    kwargs: dict
    input_shape: tuple
    make_input: Callable[[np.random.Generator, tuple], np.ndarray] | None = None
    gradcheck: bool = True

    def label(self, layer_type: str) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{layer_type}({args}) x{tuple(self.input_shape)}"


def as_case(item, layer_type) -> Case:
    if isinstance(item, Case):
        return item
    if isinstance(item, (tuple, list)) and len(item) in (2, 3) and isinstance(item[0], dict):
        return Case(dict(item[0]), tuple(int(s) for s in item[1]), *item[2:])
    raise TypeError(f"cnnkit.testing: a case of {layer_type} must be a Case or a "
                    f"(layer_kwargs, input_shape) pair, got {item!r}")


_tables = None


def _family_tables():
    """(cases, loop forwards, loop backwards) of every family module, imported once."""
    global _tables
    if _tables is None:
        import cnnkit.testing as package

        cases, forwards, backwards = {}, {}, {}
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            cases.update(getattr(module, "CASES", {}))
            forwards.update(getattr(module, "LOOP_REFERENCES", {}))
            backwards.update(getattr(module, "LOOP_BACKWARD", {}))
        _tables = cases, forwards, backwards
    return _tables


def builtin_cases(layer_type: str) -> list[Case] | None:
    """The built-in cases of a built-in layer type (``None`` for other layer types)."""
    cases = _family_tables()[0].get(layer_type.lower())
    return None if cases is None else list(cases)


def loop_reference(layer_type: str):
    """(forward, backward or None) loop references of a built-in layer type, or (None, None)."""
    _, forwards, backwards = _family_tables()
    return forwards.get(layer_type), backwards.get(layer_type)


def default_cases(layer_type, layer_cls) -> tuple[list[Case] | None, str | None]:
    """Built-in cases, or for a new layer type constructible without arguments, random inputs
    of rank 2 and 4 (or of its ``input_rank``)."""
    cases = builtin_cases(layer_type)
    if cases is not None:
        return cases, None
    try:
        layer_cls()
    except Exception as exc:
        return None, (f"layer type {layer_type!r} has no built-in cases and cannot be built "
                      f"without arguments ({type(exc).__name__}: {exc}); pass "
                      "cases=[(layer_kwargs, input_shape), ...]")
    rank = getattr(layer_cls, "input_rank", None)
    shapes = {None: [(3, 5), (2, 3, 4, 5)], 2: [(3, 5)], 4: [(2, 3, 4, 5)]}.get(rank)
    if shapes is None:
        shapes = [(2,) + tuple(range(3, 2 + rank))]
    return [Case({}, s) for s in shapes], None
