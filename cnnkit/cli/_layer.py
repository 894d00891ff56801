"""Building a layer from the command line (``cnnkit kernels --explain``, ``cnnkit bench``)
as real use would, with the sizes that follow from the input shape filled in."""
from __future__ import annotations

from .._checks import accepts as _accepts
from ._common import CommandError


def build_layer(reg, layer_type: str, input_shape: tuple, kwargs: dict, dtype="float32",
                impl=None):
    """Build ``layer_type`` from the registry for ``input_shape`` as real use would.

    Sizes that follow from the shape are filled in: conv2d's ``in_channels`` (and
    ``out_channels``, default: the same) and ``kernel_size`` (default 3), dense's
    ``in_features`` (and ``out_features``, default: the same), the pools' ``kernel_size``
    (default 2).  Parameters are drawn with a fixed seed, so every build is the same layer.
    Raises :class:`CommandError` with a readable message.
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
    if layer_type == "conv2d" and len(shape) == 4:
        kw.setdefault("in_channels", shape[1])
        kw.setdefault("out_channels", kw["in_channels"])
        kw.setdefault("kernel_size", 3)
    elif layer_type == "dense" and len(shape) == 2:
        kw.setdefault("in_features", shape[1])
        kw.setdefault("out_features", kw["in_features"])
    elif layer_type in ("maxpool2d", "avgpool2d"):
        kw.setdefault("kernel_size", 2)
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

