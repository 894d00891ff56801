"""What every Cython wrapper does before a kernel runs: arrays made C-contiguous with the right
dtype, config entries checked as ints, gradient shapes checked, scratch buffers handed out.

Everything that reaches a nogil loop is checked at this boundary, so a wrong call raises
``ValueError``/``TypeError`` instead of reading out of bounds.
"""
from __future__ import annotations

import functools
import math
import threading

import numpy as np

from cnnkit._checks import INT32_MAX, is_int
from cnnkit._ext import ISA_FEATURES, isa_module

__all__ = ["INT32_MAX", "ISA_FEATURES", "as_input", "checked_once", "config_int", "config_ints",
           "contiguous", "grad_like", "isa_build", "weight_and_bias", "workspace"]


def contiguous(a):
    """``a`` as a C-contiguous array of the same shape (``np.ascontiguousarray`` would turn a
    0-d array into a 1-d one, and the kernels would return the wrong shape)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def as_input(a, dtype, name):
    """A C-contiguous array of exactly ``dtype`` (parameters and gradients are never cast)."""
    a = np.asarray(a)
    if a.dtype != dtype:
        raise ValueError(f"{name} has dtype {a.dtype}, expected {dtype}")
    return contiguous(a)


def weight_and_bias(params, dtype):
    """``params["weight"]`` and ``params.get("bias")`` (which may be None) as kernel inputs."""
    b = params.get("bias")
    return (as_input(params["weight"], dtype, "weight"),
            None if b is None else as_input(b, dtype, "bias"))


def grad_like(dy, dtype, shape, what):
    """The output gradient ``dy`` of a backward call, checked: ``dtype`` and ``shape`` are the
    forward output's."""
    dy = as_input(dy, dtype, "dy")
    if dy.shape != tuple(shape):
        raise ValueError(f"{what} backward: dy has shape {dy.shape}, expected {tuple(shape)}")
    return dy


def config_int(value, what, owner):
    """An int hyper-parameter from a config; floats, strings and bools are refused rather than
    truncated or parsed by ``int()``."""
    if not is_int(value):
        raise TypeError(f"{owner}: {what} must be an int, got {value!r}")
    return int(value)


def config_ints(config, key, n, owner):
    """The n ints of ``config[key]`` (a tuple or list)."""
    values = config[key]
    if not isinstance(values, (tuple, list)) or len(values) != n:
        raise TypeError(f"{owner}: config[{key!r}] must be {n} ints, got {values!r}")
    return tuple(config_int(v, f"config[{key!r}]", owner) for v in values)


_workspaces = threading.local()


def workspace(shape, dtype):
    """Scratch buffer (column matrices and friends), reused across calls from the same Python
    thread.

    Keeping it avoids page-faulting tens of MB of fresh memory on every call (expensive in
    virtual machines); each calling thread gets its own, so concurrent calls from several
    Python threads never share one.
    """
    size = math.prod(int(n) for n in shape)  # np.prod costs microseconds on a tuple
    key = np.dtype(dtype).str
    cache = _workspaces.__dict__
    buf = cache.get(key)
    if buf is None or buf.size < size:
        buf = cache[key] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


_MAX_CHECKED = 64


def checked_once(check):
    """Decorate a wrapper's ``check(*arrays, config)`` (shapes, dtypes and config entries in,
    geometry out, raising for bad arguments; an array may be None) so that it runs once per
    argument set.

    The key is what the check reads: the arrays' shapes and dtypes and the config, by identity
    with its values compared (a layer hands the same resolved config dict on every call; the
    entry keeps it alive so its id is not reused).  A check that raises caches nothing.
    """
    cache = {}

    @functools.wraps(check)
    def cached(*args):
        config = args[-1]
        key = (tuple(None if a is None else (a.shape, a.dtype) for a in args[:-1]), id(config))
        values = tuple(config.values())
        hit = cache.get(key)
        if hit is not None and hit[0] is config and hit[1] == values:
            return hit[2]
        result = check(*args)
        if len(cache) >= _MAX_CHECKED:
            cache.clear()
        cache[key] = (config, values, result)
        return result

    return cached


class _IsaKernels:
    """Stands in for ``cnnkit._ext.<module>_<isa>``: imported on the first kernel call (never
    by registration, since on a CPU without the instructions even its import may fault) and
    only once :func:`cnnkit._ext.isa_module` allows it."""

    def __init__(self, module, isa):
        self._module, self._isa, self._loaded = module, isa, None

    def unavailable(self):
        return isa_module(self._module, self._isa)[1]

    def __getattr__(self, name):
        if name.startswith("_"):  # not a kernel (and no recursion before __init__ ran)
            raise AttributeError(name)
        if self._loaded is None:
            mod, reason = isa_module(self._module, self._isa)
            if mod is None:
                raise RuntimeError(f"cnnkit._ext.{self._module}_{self._isa} cannot run here: "
                                   f"{reason}")
            self._loaded = mod
        return getattr(self._loaded, name)


@functools.lru_cache(maxsize=None)
def isa_build(cls, module, isa):
    """The Cython wrapper class ``cls`` (whose class methods call the kernels through
    ``cls._kernels``) on the ``isa`` build of ``cnnkit._ext.<module>`` instead of the portable
    one: an instance of a subclass, one per arguments, which pickles as this call (a layer
    holding it stays picklable).  Register it with ``cpu_features=ISA_FEATURES[isa]``; its
    ``unavailable()`` says "not built: ..." when the build left that module out."""
    kernels = _IsaKernels(module, isa)
    sub = type(f"{cls.__name__}_{isa}", (cls,), {
        "__module__": cls.__module__,
        "__doc__": f"{cls.__name__} on cnnkit._ext.{module}_{isa}.",
        "_kernels": kernels,
        "unavailable": staticmethod(kernels.unavailable),
        "__reduce__": lambda self: (isa_build, (cls, module, isa)),
    })
    return sub()
