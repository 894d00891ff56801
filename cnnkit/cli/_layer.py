"""Building a layer from the command line (``cnnkit kernels --explain``, ``cnnkit bench``)
as real use would, with the sizes that follow from the input shape filled in."""
from __future__ import annotations

import inspect

from .._checks import accepts as _accepts
from ._common import CommandError


def _signature(cls) -> set:
    """The named parameters of a layer class's constructor (a ``**kwargs`` catches none)."""
    try:
        return set(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return set()


#: constructor arguments that take the input's channel (or feature) count from the shape
SIZE_FROM_SHAPE = ("in_channels", "in_features", "num_features", "channels")
#: output sizes that default to the input size taken from the shape
_SAME_SIZE = {"in_channels": "out_channels", "in_features": "out_features"}
_DEFAULT_KERNEL = {"conv2d": 3, "convtranspose2d": 3, "maxpool2d": 2, "avgpool2d": 2}


def build_layer(reg, layer_type: str, input_shape: tuple, kwargs: dict, dtype="float32",
                impl=None):
    """Build ``layer_type`` from the registry for ``input_shape`` as real use would.

    Sizes that follow from the shape are filled in, for any layer class whose constructor takes
    them: ``in_channels``, ``in_features``, ``num_features`` and ``channels`` from the shape's
    second entry, ``out_channels``/``out_features`` (default: the same as the input's), and
    the ``kernel_size`` of convolutions (default 3) and pools (default 2).  Parameters are
    drawn with a fixed seed, so every build is the same layer.  Raises :class:`CommandError`
    with a readable message.
    """
    try:
        cls = reg.layer_class(layer_type)
    except KeyError as exc:
        raise CommandError(exc.args[0]) from None
    kw = dict(kwargs)
    shape = tuple(input_shape)
    rank = getattr(cls, "input_rank", None)
    if rank is not None and len(shape) != rank:
        layout = {4: " N,C,H,W", 2: " N,FEATURES"}.get(rank, "")
        raise CommandError(f"{layer_type} expects a {rank}-D input shape{layout}, got "
                           f"{','.join(map(str, shape))}")
    if len(shape) >= 2:
        for name in SIZE_FROM_SHAPE:
            if name in _signature(cls):
                kw.setdefault(name, shape[1])
                out = _SAME_SIZE.get(name)
                if out is not None and out in _signature(cls):
                    kw.setdefault(out, kw[name])
    if layer_type in _DEFAULT_KERNEL:
        kw.setdefault("kernel_size", _DEFAULT_KERNEL[layer_type])
    if _accepts(cls, "dtype"):
        kw.setdefault("dtype", dtype)
    if _accepts(cls, "rng"):
        kw.setdefault("rng", 0)
    if impl is not None:
        kw["impl"] = impl
    try:
        layer = cls(**kw)
    except (TypeError, ValueError, KeyError) as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in kw.items() if k not in ("dtype", "rng"))
        raise CommandError(f"cannot build {cls.__name__}({shown}): {exc}") from None
    try:
        out_shape = layer.output_shape((None,) + shape[1:])
    except (TypeError, ValueError) as exc:
        raise CommandError(f"input shape {shape} does not fit {layer!r}: {exc}") from None
    return layer, (shape[0],) + tuple(out_shape[1:])

